"""TRACKS/: tracks.csv, motion.csv, tracking.json and tracks.png, each written atomically."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import numpy as np

from spikesort.atomic import write_atomic
from spikesort.errors import SpikesortError

log = logging.getLogger(__name__)

__all__ = ["TRACKS_CSV", "MOTION_CSV", "TRACKING_JSON", "TRACKS_PNG", "TRACK_LOG", "check_output", "write_outputs"]

from spikesort.layout import LOG_FILE as TRACK_LOG  # the command's log  # noqa: E402
from spikesort.layout import TRACKING_JSON, TRACKS_CSV, TRACKS_PNG  # noqa: E402
from spikesort.layout import TRACKS_MOTION_CSV as MOTION_CSV  # noqa: E402

OUR_FILES = (TRACKS_CSV, MOTION_CSV, TRACKING_JSON, TRACKS_PNG, TRACK_LOG)


def check_output(out: Path, *, overwrite: bool) -> None:
    """An existing result is not replaced without ``overwrite``; a folder of other files is never used."""
    if out.exists() and not out.is_dir():
        raise SpikesortError(f"output path {out} is a file, not a folder")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        if names & set(OUR_FILES) - {TRACK_LOG} and not overwrite:
            raise SpikesortError(f"output folder {out} already holds tracks: use --overwrite to replace them")
        other = sorted(names - set(OUR_FILES))
        if other:
            raise SpikesortError(
                f"output folder {out} holds other files ({', '.join(other[:3])}): choose an empty or new folder"
            )


def _text(write_rows) -> bytes:
    buf = io.StringIO(newline="")
    write_rows(csv.writer(buf, lineterminator="\n"))
    return buf.getvalue().encode("utf8")


def _num(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.4f}"


def write_outputs(result, sessions, out: Path, *, figure: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def tracks(w):
        w.writerow(["track_id", "session", "unit_id", "probability"])
        for r in result.rows:
            w.writerow([r.track_id, r.session, r.unit_id, _num(r.probability)])

    def motion(w):
        w.writerow(["session_a", "session_b", "depth_um", "shift_um"])
        for p in result.pairs:
            for d, s in zip(p.motion.depths_um, p.motion.shifts_um):
                w.writerow([result.sessions[p.a], result.sessions[p.b], f"{d:.1f}", f"{s:.2f}"])

    write_atomic(out / TRACKS_CSV, lambda f: f.write(_text(tracks)))
    write_atomic(out / MOTION_CSV, lambda f: f.write(_text(motion)))
    from spikesort import __version__

    summary = dict(
        spikesort_version=__version__,
        sessions=[dict(folder=s.folder, n_units=s.n_units, duration_s=round(s.duration_s, 3)) for s in sessions],
        n_tracks=result.n_tracks,
        pairs=[
            dict(
                session_a=result.sessions[p.a],
                session_b=result.sessions[p.b],
                n_links=len(p.links),
                rigid_shift_um=round(float(np.median(p.motion.shifts_um)), 2),
                motion_depths_um=[round(float(v), 1) for v in p.motion.depths_um],
                motion_shifts_um=[round(float(v), 2) for v in p.motion.shifts_um],
                seconds=round(p.seconds, 3),
            )
            for p in result.pairs
        ],
        calibration=[
            None
            if m is None
            else dict(
                positives=m.n_positive,
                negatives=m.n_negative,
                features=["atanh(cosine)", "sqrt(distance_um)", "|log amp ratio|"],
                mean=m.mean.round(4).tolist(),
                scale=m.scale.round(4).tolist(),
                coef=m.coef.round(4).tolist(),
                intercept=round(m.intercept, 4),
            )
            for m in result.models
        ],
    )
    write_atomic(out / TRACKING_JSON, lambda f: f.write((json.dumps(summary, indent=1) + "\n").encode("utf8")))
    if figure:
        try:
            write_figure(result, sessions, out / TRACKS_PNG)
        except Exception as exc:  # the tracks are written and safe: a figure problem must not fail the run
            log.warning("figure not written (%s)", exc)
    log.info("tracks written to %s", out / TRACKS_CSV)


def write_figure(result, sessions, path: Path) -> None:
    """Units by depth (x: session), lines between linked units, coloured by track."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {s: i for i, s in enumerate(result.sessions)}
    unit_index = [{int(u): k for k, u in enumerate(s.unit_ids)} for s in sessions]
    fig, ax = plt.subplots(figsize=(1.6 * len(sessions) + 2, 7))
    try:
        for k, s in enumerate(sessions):
            ax.scatter(np.full(s.n_units, k), s.positions[:, 1], s=12, color="0.6", zorder=2)
        by_track: dict[int, list] = {}
        for r in result.rows:
            by_track.setdefault(r.track_id, []).append(r)
        cmap = plt.get_cmap("tab20")
        for tid, rows in by_track.items():
            if len(rows) < 2:
                continue
            xs = [index[r.session] for r in rows]
            ys = [sessions[index[r.session]].positions[unit_index[index[r.session]][r.unit_id], 1] for r in rows]
            ax.plot(xs, ys, "-o", color=cmap(tid % 20), lw=1, ms=3, zorder=3)
        ax.set_xticks(range(len(sessions)))
        ax.set_xticklabels([Path(s).name or s for s in result.sessions], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("depth (µm, each session's own probe frame)")
        ax.set_title(f"{result.n_tracks} tracks; lines join matched units")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    write_atomic(path, lambda f: f.write(buf.getvalue()))
