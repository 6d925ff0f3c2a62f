"""The online sorter, measured: replay a recording at real-time pace into a growing file, sort it
with ``spikesort.online`` while it grows, and report latency, backlog and accuracy beside the
offline sort of the same file.

    python -m benchmarks.online --channels 64 --duration 300 --speed 1
    python -m benchmarks.online write SRC.dat DST.dat --n-channels 32 --rate 20000 --speed 4   # the writer alone

Latency: from the moment a sample was written (the writer logs the wall time of every block it
appends) to the emitted_unix_s of its spike's batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

GAIN_UV = 0.195


def make_recording(
    folder: Path,
    *,
    duration_s: float,
    n_channels: int = 32,
    n_units: int = 8,
    sampling_rate_hz: float = 20000.0,
    late_unit_s: float | None = None,
    seed: int = 0,
) -> dict:
    """Simulate a static recording (int16, GAIN_UV µV per step) into folder/source.dat and its
    ground truth into folder/gt.npz. ``late_unit_s``: the last unit fires only from then on."""
    from spikeinterface.core import NumpySorting
    from spikeinterface.core.generate import generate_ground_truth_recording, generate_sorting

    from spikesort.demo import _demo_probe

    folder.mkdir(parents=True, exist_ok=True)
    fs = float(sampling_rate_hz)
    sorting = generate_sorting(
        num_units=n_units,
        sampling_frequency=fs,
        durations=[duration_s],
        firing_rates=(4.0, 9.0),
        refractory_period_ms=4.0,
        seed=seed,
    )
    samples, labels = sorting.to_spike_vector()["sample_index"], sorting.to_spike_vector()["unit_index"]
    if late_unit_s is not None:
        keep = (labels != n_units - 1) | (samples >= int(late_unit_s * fs))
        samples, labels = samples[keep], labels[keep]
    sorting = NumpySorting.from_samples_and_labels([samples], [labels], fs, unit_ids=np.arange(n_units))
    rec, _ = generate_ground_truth_recording(
        durations=[duration_s],
        sampling_frequency=fs,
        num_channels=n_channels,
        num_units=n_units,
        sorting=sorting,
        probe=_demo_probe(n_channels),
        ms_before=1.5,
        ms_after=3.0,
        generate_unit_locations_kwargs=dict(
            margin_um=20.0,
            minimum_z=5.0,
            maximum_z=35.0,
            minimum_distance=18.0,
            max_iteration=100,
            distance_strict=False,
        ),
        generate_templates_kwargs=dict(unit_params=dict(alpha=(250.0, 500.0), spatial_decay=(10, 45))),
        noise_kwargs=dict(noise_levels=7.0, strategy="on_the_fly"),
        seed=seed,
    )
    _save_int16(rec, folder / "source.dat", fs)
    np.savez(folder / "gt.npz", samples=samples, labels=labels, fs=fs)
    return dict(path=folder / "source.dat", n_channels=n_channels, sampling_rate_hz=fs, samples=samples, labels=labels)


def make_drifting_recording(
    folder: Path,
    *,
    duration_s: float,
    n_channels: int = 32,
    n_units: int = 8,
    sampling_rate_hz: float = 20000.0,
    drift_um: float = 20.0,
    period_s: float = 20.0,
    start_s: float = 0.0,
    seed: int = 0,
) -> dict:
    """A recording whose probe moves rigidly in a zigzag of +-``drift_um`` from ``start_s`` on
    (folder/source.dat, int16), its ground truth and the displacement (gt.npz)."""
    from spikeinterface.generation import generate_drifting_recording

    from spikesort.demo import CLEAR_TEMPLATES, CLEAR_UNIT_LOCATIONS, _demo_probe

    folder.mkdir(parents=True, exist_ok=True)
    fs = float(sampling_rate_hz)
    _, rec, sorting, extra = generate_drifting_recording(
        num_units=n_units,
        duration=duration_s,
        sampling_frequency=fs,
        probe=_demo_probe(n_channels),
        generate_displacement_vector_kwargs=dict(
            displacement_sampling_frequency=5.0,
            drift_start_um=[0.0, drift_um],
            drift_stop_um=[0.0, -drift_um],
            drift_step_um=1.0,
            motion_list=[
                dict(
                    drift_mode="zigzag",
                    non_rigid_gradient=None,
                    t_start_drift=start_s,
                    t_end_drift=None,
                    period_s=period_s,
                )
            ],
        ),
        generate_unit_locations_kwargs=CLEAR_UNIT_LOCATIONS,
        generate_templates_kwargs=CLEAR_TEMPLATES,
        generate_sorting_kwargs=dict(firing_rates=(4.0, 9.0), refractory_period_ms=4.0),
        seed=seed,
        extra_outputs=True,
    )
    _save_int16(rec, folder / "source.dat", fs)
    sv = sorting.to_spike_vector()
    # the units' displacement along the probe (µm) at 5 Hz; rigid: every unit moves alike
    disp = np.asarray(extra["unit_displacements"])[:, 0, 1]
    np.savez(folder / "gt.npz", samples=sv["sample_index"], labels=sv["unit_index"], fs=fs, displacement=disp)
    return dict(
        path=folder / "source.dat",
        n_channels=n_channels,
        sampling_rate_hz=fs,
        samples=sv["sample_index"],
        labels=sv["unit_index"],
        extra=extra,
        displacement=disp,
    )


def _save_int16(rec, path: Path, fs: float) -> None:
    step = int(10 * fs)  # 10 s at a time: 300 s of 64 channels would be 2.3 GB of float32
    with open(path, "wb") as fh:
        for s0 in range(0, rec.get_num_samples(0), step):
            x = rec.get_traces(0, start_frame=s0, end_frame=min(s0 + step, rec.get_num_samples(0)))
            fh.write(np.round(x / GAIN_UV).clip(-32768, 32767).astype("<i2").tobytes())


def write_growing(
    src: Path,
    dst: Path,
    *,
    n_channels: int,
    sampling_rate_hz: float,
    speed: float = 1.0,
    block_s: float = 0.05,
    log_path: Path | None = None,
    pause_at_s: float | None = None,
    pause_s: float = 0.0,
) -> None:
    """Append ``src`` to ``dst`` in blocks at ``speed`` x real time; log (wall time, samples written)."""
    frame = 2 * n_channels
    data = np.fromfile(src, dtype="<i2").reshape(-1, n_channels)
    block = max(1, int(block_s * sampling_rate_hz))
    marks = []
    t0 = time.time()
    paused = False
    with open(dst, "ab") as fh:
        for start in range(0, len(data), block):
            stop = min(len(data), start + block)
            due = t0 + stop / sampling_rate_hz / speed + (pause_s if paused else 0.0)
            if pause_at_s is not None and not paused and start / sampling_rate_hz >= pause_at_s:
                paused = True
                due += pause_s
            time.sleep(max(0.0, due - time.time()))
            fh.write(data[start:stop].tobytes())
            fh.flush()
            marks.append((time.time(), stop))
    if log_path is not None:
        np.save(log_path, np.asarray(marks, dtype=np.float64))
    del frame


def latency_s(csv_samples: np.ndarray, emitted: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """Emission time minus the wall time at which each spike's sample was written."""
    i = np.searchsorted(marks[:, 1], csv_samples, side="right")
    ok = i < len(marks)
    return emitted[ok] - marks[i[ok], 0]


def _well_detected(gt_samples, gt_labels, samples, units, fs) -> int:
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting

    gt = NumpySorting.from_samples_and_labels([gt_samples], [gt_labels], fs)
    tested = NumpySorting.from_samples_and_labels([samples], [units], fs)
    cmp = compare_sorter_to_ground_truth(gt, tested, exhaustive_gt=True, delta_time=0.4)
    return len(cmp.get_well_detected_units(0.8))


def benchmark(
    *, folder: Path, n_channels: int, duration_s: float, speed: float, warmup_s: float, n_units: int, fs: float
) -> dict:
    import spikesort
    from spikesort.online.emit import read_csv

    made = make_recording(
        folder, duration_s=duration_s, n_channels=n_channels, n_units=n_units, sampling_rate_hz=fs, late_unit_s=None
    )
    dst = folder / "growing.dat"
    dst.unlink(missing_ok=True)
    marks_path = folder / "marks.npy"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.online",
            "write",
            str(made["path"]),
            str(dst),
            "--n-channels",
            str(n_channels),
            "--rate",
            str(fs),
            "--speed",
            str(speed),
            "--log",
            str(marks_path),
        ]
    )
    backlog = []
    probe = _probe_json(folder, n_channels)
    t0 = time.time()
    try:
        for b in spikesort.online(
            dst,
            probe=probe,
            output_folder=folder / "online_out",
            sampling_rate_hz=fs,
            n_channels=n_channels,
            dtype="int16",
            overwrite=True,
            warmup_s=warmup_s,
            idle_stop_s=5.0,
        ):
            n = dst.stat().st_size // (2 * n_channels)
            backlog.append((time.time(), (n - b.chunk_stop) / fs))
    finally:
        writer.wait()
    samples, units, amps, emitted = read_csv(folder / "online_out" / "online" / "spikes.csv")
    marks = np.load(marks_path)
    after = samples >= int(warmup_s * fs)
    lat = latency_s(samples[after], emitted[after], marks)
    t_off = time.time()
    offline = spikesort.sort(_recording(made["path"], n_channels, fs, probe), folder / "offline_out", overwrite=True)
    t_off = time.time() - t_off
    bl = np.asarray(backlog)
    # after the sorter worked off the backlog the warm-up's sort left (samples written while it ran)
    caught = bl[np.flatnonzero(bl[:, 1] < 1.0)[0], 0] if np.any(bl[:, 1] < 1.0) else np.inf
    steady = samples[after] >= np.interp(caught, marks[:, 0], marks[:, 1])
    matched = amps[after] != 1.0  # a new unit's pooled spikes (amplitude 1) are emitted late, by design
    pct = {
        f"latency_{name}_p50_p95_max_s": [
            round(float(v), 3) for v in (*np.percentile(lat[sel], [50, 95]), lat[sel].max())
        ]
        for name, sel in (("steady", steady[: len(lat)]), ("steady_matched", (steady & matched)[: len(lat)]))
        if np.any(sel)
    }
    return {
        **pct,
        "channels": n_channels,
        "duration_s": duration_s,
        "speed": speed,
        "warmup_s": warmup_s,
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "latency_max_s": float(lat.max()),
        "backlog_max_s": float(bl[:, 1].max()),
        "backlog_last_quarter_mean_s": float(bl[int(0.75 * len(bl)) :, 1].mean()),
        "backlog_series": [[round(t - t0, 1), round(v, 3)] for t, v in bl[:: max(1, len(bl) // 40)]],
        "online_well_detected": _well_detected(made["samples"], made["labels"], samples, units, fs),
        "offline_well_detected": _well_detected(
            made["samples"], made["labels"], offline.spike_times, offline.spike_clusters, fs
        ),
        "n_gt_units": n_units,
        "offline_sort_s": round(t_off, 1),
    }


def _probe_json(folder: Path, n_channels: int) -> Path:
    from probeinterface import write_probeinterface

    from spikesort.demo import _demo_probe

    path = folder / "probe.json"
    write_probeinterface(path, _demo_probe(n_channels))
    return path


def _recording(path, n_channels, fs, probe):
    from spikesort.io.probes import attach_probe, load_probe
    from spikesort.io.recordings import open_recording

    return attach_probe(
        open_recording(path, sampling_rate_hz=fs, n_channels=n_channels, dtype="int16"), load_probe(probe)
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.online")
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("write", help="append SRC to DST at a pace")
    w.add_argument("src", type=Path)
    w.add_argument("dst", type=Path)
    w.add_argument("--n-channels", type=int, required=True)
    w.add_argument("--rate", type=float, required=True)
    w.add_argument("--speed", type=float, default=1.0)
    w.add_argument("--log", type=Path)
    w.add_argument("--pause-at", type=float)
    w.add_argument("--pause", type=float, default=0.0)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--units", type=int, default=30)
    ap.add_argument("--rate", type=float, default=30000.0)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=120.0)
    ap.add_argument("--folder", type=Path, default=Path("bench_online"))
    a = ap.parse_args(argv)
    if a.cmd == "write":
        write_growing(
            a.src,
            a.dst,
            n_channels=a.n_channels,
            sampling_rate_hz=a.rate,
            speed=a.speed,
            log_path=a.log,
            pause_at_s=a.pause_at,
            pause_s=a.pause,
        )
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    r = benchmark(
        folder=a.folder,
        n_channels=a.channels,
        duration_s=a.duration,
        speed=a.speed,
        warmup_s=a.warmup,
        n_units=a.units,
        fs=a.rate,
    )
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
