"""The online sorter, measured: replay a recording at real-time pace into a growing file, sort it
with ``spikesort.online`` while it grows, and report latency, backlog, new units and accuracy
beside the offline sort of the same recording.

    python scripts/benchmark.py --online [--online-replays static64 zigzag64] [--online-repeats 2]
    python -m benchmarks.online write SRC.dat DST.dat --n-channels 32 --rate 20000 --speed 4   # the writer alone

Latency of a spike = its batch's ``emitted_unix_s`` minus the wall time at which the writer had
appended (and flushed) the block of 50 ms that holds the spike's sample. The writer is another
process; both clocks are the machine's ``time.time()``. Reported for the spikes recorded after
the warm-up stretch (sample >= warmup_s), as p50 / p95 / max over:
- ``all``: every such spike, the pooled spikes of new units included (emitted when their unit
  is found, so up to ``recluster_s`` plus the time to gather them late by design);
- ``matched``: the spikes matched by a template (new units' pooled spikes left out);
- ``live``: the spikes written after the warm-up's batch was emitted (the sorter streaming).
Backlog: recording written but not yet sorted, as each batch was emitted (``batch.backlog_s``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .online_recordings import (  # noqa: F401 - the tests import these from here
    GAIN_UV,
    REPLAYS,
    _probe_json,
    make_drifting_recording,
    make_recording,
    prepare,
    write_growing,
)

log = logging.getLogger(__name__)

ACCURACY = 0.8  # well detected: accuracy >= this (delta 0.4 ms), as the accuracy benchmark counts


def _compare(gt_samples, gt_labels, samples, units, fs):
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting

    gt = NumpySorting.from_samples_and_labels([gt_samples], [gt_labels], fs)
    tested = NumpySorting.from_samples_and_labels([samples], [units], fs)
    return compare_sorter_to_ground_truth(gt, tested, exhaustive_gt=True, delta_time=0.4)


def _pct(x: np.ndarray) -> list | None:
    return [round(float(v), 3) for v in (*np.percentile(x, [50, 95]), x.max())] if len(x) else None


def latency_s(csv_samples: np.ndarray, emitted: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """Emission time minus the wall time at which each spike's sample was written (NaN: never written)."""
    i = np.searchsorted(marks[:, 1], csv_samples, side="right")
    out = np.full(len(csv_samples), np.nan)
    ok = i < len(marks)
    out[ok] = emitted[ok] - marks[i[ok], 0]
    return out


def _looped_truth(src: dict, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of ``total`` samples of a replay that loops over its source."""
    n = src["n_samples"]
    parts = [(src["samples"] + k * n, src["labels"]) for k in range(-(-total // n))]
    s, lab = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    keep = s < total
    return s[keep], lab[keep]


def _offline(src: dict, folder: Path, *, log_fn) -> dict:
    """Well-detected units of ``spikesort.sort`` on the replay's source file."""
    import spikesort
    from spikesort.io.probes import attach_probe, load_probe
    from spikesort.io.recordings import open_recording

    fs = src["sampling_rate_hz"]
    rec = attach_probe(
        open_recording(src["path"], sampling_rate_hz=fs, n_channels=src["n_channels"], dtype="int16"),
        load_probe(src["probe"]),
    )
    t0 = time.time()
    res = spikesort.sort(rec, folder, overwrite=True)
    wall = time.time() - t0
    cmp = _compare(src["samples"], src["labels"], res.spike_times, res.spike_clusters, fs)
    shutil.rmtree(folder, ignore_errors=True)
    log_fn(f"offline sort of the source: {wall:.1f} s")
    return {"offline_well": len(cmp.get_well_detected_units(ACCURACY)), "offline_sort_s": round(wall, 1)}


def replay(
    name: str,
    *,
    cache_dir: Path,
    work_dir: Path,
    duration_s: float | None = None,
    speed: float = 1.0,
    warmup_s: float = 120.0,
    offline: bool = True,
    seed: int = 0,
    n_jobs: int = 2,
    log_fn=print,
) -> dict:
    """One replay of recording ``name`` (see :mod:`.online_recordings`): returns the row."""
    import spikesort
    from spikesort.online.emit import read_csv

    src = prepare(name, cache_dir=cache_dir, seed=seed, n_jobs=n_jobs)
    fs, n_ch = src["sampling_rate_hz"], src["n_channels"]
    duration_s = duration_s or src["n_samples"] / fs
    folder = work_dir / f"online_{name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    dst, marks_path, out = folder / "growing.dat", folder / "marks.npy", folder / "out"
    load = os.getloadavg()
    writer = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.online", "write", str(src["path"]), str(dst), "--n-channels", str(n_ch)]
        + ["--rate", str(fs), "--speed", str(speed), "--log", str(marks_path), "--duration", str(duration_s)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    batches = []
    t_start = time.time()
    try:
        for b in spikesort.online(
            dst,
            probe=src["probe"],
            output_folder=out,
            sampling_rate_hz=fs,
            n_channels=n_ch,
            dtype="int16",
            overwrite=True,
            warmup_s=warmup_s,
            idle_stop_s=5.0,
        ):
            batches.append((b.index, b.chunk_start, b.chunk_stop, b.emitted_unix_s, b.backlog_s, list(b.new_units)))
    finally:
        writer.wait()
    t_stop = time.time()
    samples, units, amps, emitted = read_csv(out / "online" / "spikes.csv")
    marks = np.load(marks_path)
    phy = (np.load(out / "spike_times.npy").ravel(), np.load(out / "spike_clusters.npy").ravel())
    after = samples >= int(warmup_s * fs)
    lat = latency_s(samples, emitted, marks)
    warm_emitted = batches[0][3]
    written = np.interp(samples, marks[:, 1], marks[:, 0])
    live = after & (written >= warm_emitted)
    matched = amps != 1.0  # a new unit's pooled spikes (amplitude 1) are emitted late, by design
    gt_s, gt_l = _looped_truth(src, int(marks[-1, 1]))
    cmp = _compare(gt_s, gt_l, samples, units, fs)
    # new units: ground-truth units matched by a unit found after the warm-up
    born = {u: (b[2], b[3]) for b in batches[1:] for u in b[5]}
    acc = cmp.get_performance()["accuracy"]
    delays = []
    for g, u in cmp.hungarian_match_12.items():
        if int(u) in born and acc[g] >= 0.5:
            first = gt_s[(gt_l == g) & (gt_s >= int(warmup_s * fs))].min()
            stop, t_emit = born[int(u)]
            delays.append(
                (int(g), round((stop - first) / fs, 1), round(t_emit - np.interp(first, marks[:, 1], marks[:, 0]), 1))
            )
    bl = np.array([(b[3], b[4]) for b in batches[1:]]) if len(batches) > 1 else np.zeros((0, 2))
    half = bl[len(bl) // 2 :]
    growth = float(np.polyfit(half[:, 0] - half[0, 0], half[:, 1], 1)[0] * 60) if len(half) > 10 else None
    row = {
        "replay": name,
        "channels": n_ch,
        "duration_s": duration_s,
        "speed": speed,
        "warmup_s": warmup_s,
        "load_before": [round(v, 2) for v in load],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "wall_s": round(t_stop - t_start, 1),
        "warmup_emitted_after_s": round(warm_emitted - marks[np.searchsorted(marks[:, 1], int(warmup_s * fs)), 0], 2),
        "latency_all_s": _pct(lat[after & np.isfinite(lat)]),
        "latency_matched_s": _pct(lat[after & matched & np.isfinite(lat)]),
        "latency_live_s": _pct(lat[live & np.isfinite(lat)]),
        "n_spikes_after_warmup": int(after.sum()),
        "backlog_max_s": round(float(bl[:, 1].max()), 2) if len(bl) else None,
        "backlog_last_quarter_mean_s": round(float(bl[3 * len(bl) // 4 :, 1].mean()), 3) if len(bl) else None,
        "backlog_growth_s_per_min": None if growth is None else round(growth, 4),
        "backlog_series": [[round(t - t_start, 1), round(v, 2)] for t, v in bl[:: max(1, len(bl) // 30)]],
        "n_gt": int(len(np.unique(gt_l))),
        "online_well": len(cmp.get_well_detected_units(ACCURACY)),
        "online_units": int(len(np.unique(units))),
        "online_redundant": len(cmp.get_redundant_units()),
        "phy_well": len(_compare(gt_s, gt_l, *phy, fs).get_well_detected_units(ACCURACY)),
        # after the idle stop (5 s after the writer's last block): the last samples, then the Phy folder
        "stop_s": round(t_stop - marks[-1, 0] - 5.0, 1),
        "new_unit_delays": delays,  # (GT unit, recording s, wall s) from its first spike after the warm-up
    }
    shutil.rmtree(folder, ignore_errors=True)  # the growing file: as long as the recording
    if offline:
        row.update(_offline(src, work_dir / f"offline_{name}", log_fn=log_fn))
    return row


def _lat(v) -> str:
    return "–" if not v else " / ".join(f"{x:.2f}" for x in v)


def online_table(*, rows: list[dict]) -> str:
    head = (
        "| replay | load (1 min) | latency p50 / p95 / max s, all after warm-up | matched | live | backlog max s "
        "| backlog last quarter s | growth s/min | new unit found after s | well detected online (Phy folder) "
        "| offline | stop s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("status", "ok") != "ok":
            lines.append(f"| {r['replay']} | {r.get('error', 'failed')} |")
            continue
        delays = ", ".join(f"{d[1]:g}" for d in r["new_unit_delays"]) or "–"
        lines.append(
            f"| {r['replay']} {r['channels']} ch × {r['duration_s']:g} s "
            f"| {r['load_before'][0]:.1f}–{r['load_after'][0]:.1f} "
            f"| {_lat(r['latency_all_s'])} | {_lat(r['latency_matched_s'])} | {_lat(r['latency_live_s'])} "
            f"| {r['backlog_max_s']} | {r['backlog_last_quarter_mean_s']} | {r['backlog_growth_s_per_min']} | {delays} "
            f"| {r['online_well']}/{r['n_gt']} ({r.get('phy_well', '–')}) | {r.get('offline_well', '–')}/{r['n_gt']} "
            f"| {r.get('stop_s', '–')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    """``python -m benchmarks.online write ...``: the writer process of a replay."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.online")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="append SRC to DST at a pace")
    w.add_argument("src", type=Path)
    w.add_argument("dst", type=Path)
    w.add_argument("--n-channels", type=int, required=True)
    w.add_argument("--rate", type=float, required=True)
    w.add_argument("--speed", type=float, default=1.0)
    w.add_argument("--log", type=Path)
    w.add_argument("--pause-at", type=float)
    w.add_argument("--pause", type=float, default=0.0)
    w.add_argument("--duration", type=float, help="seconds of recording to write, looping over SRC")
    a = ap.parse_args(argv)
    write_growing(
        a.src,
        a.dst,
        n_channels=a.n_channels,
        sampling_rate_hz=a.rate,
        speed=a.speed,
        log_path=a.log,
        pause_at_s=a.pause_at,
        pause_s=a.pause,
        duration_s=a.duration,
    )


if __name__ == "__main__":
    main()
