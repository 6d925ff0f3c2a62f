"""``spikesort info``: what a finished output folder holds."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from spikesort.errors import SpikesortError
from spikesort.layout import PARAMS_PY

from .app import main


def folder_info(folder: Path) -> dict:
    """What a finished output folder holds: units, spikes, labels, duration, version."""
    import numpy as np

    folder = Path(folder)
    if not folder.exists():
        raise SpikesortError(f"output folder not found: {folder}")
    if not folder.is_dir():
        raise SpikesortError(f"{folder} is not a folder")
    from spikesort.pipeline.checkpoints import finished_stages, is_unfinished

    # a folder of ours without the completion marker (written last) is unfinished, even if it
    # already holds Phy files; a Phy folder made elsewhere (no marker, no spikesort log) is described
    if is_unfinished(folder):
        done = ", ".join(finished_stages(folder)) or "none"
        raise SpikesortError(
            f"{folder} holds an unfinished spikesort run (finished stages: {done}): continue it "
            f"with `spikesort run RECORDING ... -o {folder} --resume`"
        )
    from spikesort.layout import SPIKE_CLUSTERS, SPIKE_TEMPLATES, SPIKE_TIMES
    from spikesort.outputs.folder import UnreadableFile, read_folder

    files = read_folder(folder)
    if not files.has(SPIKE_TIMES):
        raise SpikesortError(f"{folder} is not a finished spikesort output folder (no spike_times.npy)")
    try:
        times = files.array(SPIKE_TIMES, mmap=True)
        clusters = files.array(SPIKE_CLUSTERS, mmap=True)
        if clusters is None:
            clusters = files.array(SPIKE_TEMPLATES, mmap=True)
    except UnreadableFile as exc:
        raise SpikesortError(f"cannot read the arrays in {folder}: {exc.reason}") from None
    info: dict = dict(folder=str(folder), n_spikes=int(times.shape[0]))
    info["n_units"] = int(len(np.unique(clusters))) if clusters is not None else None
    run = files.run_record_or_empty()
    info["version"] = run.get("version")
    rec = run.get("recording") if isinstance(run.get("recording"), dict) else {}
    info["duration_s"] = run.get("duration_s", rec.get("duration_s"))
    info["sampling_rate_hz"] = run.get("sampling_rate_hz", rec.get("sampling_rate_hz"))
    info["n_channels"] = run.get("n_channels", rec.get("n_channels"))
    timings = run.get("timings_s") or {}
    info["sort_s"] = float(sum(timings.values())) if timings else None
    try:
        labels = files.labels()  # a curator's cluster_group.tsv wins over the sorter's own labels
    except OSError:
        labels = {}
    counts: dict = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    info["labels"] = counts
    info["phy"] = files.has(PARAMS_PY)
    return info


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
def info(folder):
    """Describe a finished output FOLDER: units, spikes, labels, duration."""
    s = folder_info(folder)
    click.echo(f"folder:     {s['folder']}")
    click.echo(f"units:      {s['n_units'] if s['n_units'] is not None else 'unknown'}")
    click.echo(f"spikes:     {s['n_spikes']}")
    if s["labels"]:
        click.echo("labels:     " + ", ".join(f"{v} {k}" for k, v in sorted(s["labels"].items())))
    if s["duration_s"] is not None:
        rate = f" at {s['sampling_rate_hz']:g} Hz" if s["sampling_rate_hz"] else ""
        click.echo(f"duration:   {float(s['duration_s']):.1f} s{rate}")
    if s["n_channels"] is not None:
        click.echo(f"channels:   {s['n_channels']}")
    if s["sort_s"] is not None:
        click.echo(f"sort time:  {s['sort_s']:.1f} s" + (f" (spikesort {s['version']})" if s["version"] else ""))
    if s["phy"]:
        click.echo(f"open in Phy: phy template-gui {shlex.quote(str(Path(s['folder']) / PARAMS_PY))}")
