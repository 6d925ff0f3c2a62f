"""``spikesort probes list`` and ``spikesort probes show``: the bundled probe files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from spikesort.errors import SpikesortError

from .app import main


@main.group("probes")
def probes_group():
    """The bundled probe files, usable by name with --probe."""


@probes_group.command("list")
def probes_list():
    """List the bundled probes."""
    from spikesort.io.probes import bundled_probes_dir, list_bundled_probes

    names = list_bundled_probes()
    if not names:
        raise SpikesortError(f"no bundled probes found (looked in {bundled_probes_dir()})")
    width = max(len(n) for n in names)
    for name in names:
        n_ch, description = _probe_brief(bundled_probes_dir() / f"{name}.json")
        click.echo(f"{name:<{width}}  {n_ch:>4} ch  {description}".rstrip())


def _probe_brief(path: Path) -> tuple[int, str]:
    # plain JSON read: listing must not fail on one odd file
    try:
        data = json.loads(path.read_text(encoding="utf8"))
        probes = data["probes"]
        n = sum(len(p["contact_positions"]) for p in probes)
        description = probes[0].get("annotations", {}).get("description", "")
        return n, str(description)
    except (OSError, ValueError, KeyError, TypeError):
        return 0, "(unreadable)"


def _smallest_gap(values) -> float | None:
    import numpy as np

    u = np.unique(np.round(np.asarray(values, dtype=float), 3))
    gaps = np.diff(u)
    return float(gaps.min()) if gaps.size else None


def probe_summary(probegroup) -> dict:
    """Channel count, shanks, extent and pitch of a probe group."""
    import numpy as np

    from spikesort.io.probes import probe_channel_count

    pos = np.concatenate([p.contact_positions[:, :2] for p in probegroup.probes])
    shanks = set()
    for i, p in enumerate(probegroup.probes):
        ids = p.shank_ids if p.shank_ids is not None and len(p.shank_ids) else None
        shanks.update((i, s) for s in (ids if ids is not None else [""]))
    nearest = None
    if len(pos) > 1:
        d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)) if len(pos) <= 4000 else None
        if d is not None:
            np.fill_diagonal(d, np.inf)
            nearest = float(d.min())
    name = probegroup.probes[0].annotations.get("name") or probegroup.probes[0].annotations.get("model_name")
    return dict(
        name=str(name or "probe"),
        channels=int(probe_channel_count(probegroup)),
        contacts=int(len(pos)),
        probes=len(probegroup.probes),
        shanks=len(shanks),
        x_um=(float(pos[:, 0].min()), float(pos[:, 0].max())),
        y_um=(float(pos[:, 1].min()), float(pos[:, 1].max())),
        x_pitch_um=_smallest_gap(pos[:, 0]),
        y_pitch_um=_smallest_gap(pos[:, 1]),
        nearest_um=nearest,
    )


def _fmt_um(v) -> str:
    return "-" if v is None else f"{v:.4g} µm"


@probes_group.command("show")
@click.argument("name")
@click.option(
    "--plot",
    "plot",
    type=click.Path(path_type=Path),
    metavar="OUT.png",
    help="also draw the contact layout into this image file",
)
def probes_show(name, plot):
    """Describe a probe (bundled NAME or probe file): channels, shanks, extent, pitch."""
    from spikesort.io.probes import load_probe

    group = load_probe(name)
    s = probe_summary(group)
    click.echo(f"probe:      {s['name']}")
    click.echo(f"channels:   {s['channels']} ({s['contacts']} contacts connected)")
    click.echo(f"shanks:     {s['shanks']}")
    click.echo(f"x extent:   {s['x_um'][0]:g} to {s['x_um'][1]:g} µm")
    click.echo(f"y extent:   {s['y_um'][0]:g} to {s['y_um'][1]:g} µm")
    click.echo(
        f"pitch:      x {_fmt_um(s['x_pitch_um'])}, y {_fmt_um(s['y_pitch_um'])}, "
        f"nearest contacts {_fmt_um(s['nearest_um'])}"
    )
    if plot is not None:
        _plot_probe(group, plot, title=s["name"])
        click.echo(f"layout:     {plot}")


def _plot_probe(group, path: Path, *, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SpikesortError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    pos = np.concatenate([p.contact_positions[:, :2] for p in group.probes])
    pad = 40.0
    lo, hi = pos.min(axis=0) - pad, pos.max(axis=0) + pad
    # tall probes get a tall figure, within reason
    fig_h = float(np.clip(4 * (hi[1] - lo[1]) / (hi[0] - lo[0]), 3, 14))
    fig, ax = plt.subplots(figsize=(5, fig_h))
    try:
        from probeinterface.plotting import plot_probegroup

        plot_probegroup(group, ax=ax, same_axes=True, with_device_index=len(pos) <= 64)
        # zoom on the contacts, not on the whole shank outline
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_title(title)
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise SpikesortError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
