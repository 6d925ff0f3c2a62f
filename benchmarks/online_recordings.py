"""The recordings the online benchmark replays, and the writer that replays one into a growing file.

- ``static64``: 64 channels, 30 units, 30 kHz, 300 s; the last unit fires only from 150 s on
  (after the warm-up: a new unit to find).
- ``zigzag64``: the same probe and units, the probe moving rigidly ±20 µm in a 30 s zigzag from
  the warm-up's end on.
- ``np384``: the speed benchmark's Neuropixels-1.0-like recording (384 channels, 150 units,
  white noise), 300 s generated once; longer replays loop over it (30 min: 6 times), so that the
  disk holds the 30-minute growing file but not a 30-minute source beside it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

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


def probe_json(folder: Path, probe) -> Path:
    from probeinterface import write_probeinterface

    path = folder / "probe.json"
    write_probeinterface(path, probe)
    return path


def _probe_json(folder: Path, n_channels: int) -> Path:
    from spikesort.demo import _demo_probe

    return probe_json(folder, _demo_probe(n_channels))


REPLAYS = ("static64", "zigzag64", "np384")
SOURCE_S = {"static64": 300.0, "zigzag64": 300.0, "np384": 300.0}


def prepare(name: str, *, cache_dir: Path, seed: int, n_jobs: int) -> dict:
    """The source of replay ``name`` (generated once into ``cache_dir``): path, channels, rate,
    ground truth (samples, labels), its length in samples, the probe file and the displacement."""
    if name not in REPLAYS:
        raise ValueError(f"unknown online replay {name!r}: one of {', '.join(REPLAYS)}")
    if name == "np384":
        from .scenarios import build_probe, ensure_speed_recording
        from .scoring import load_sorting_npz
        from .speed import binary_of

        folder = ensure_speed_recording(
            cache_dir=cache_dir, n_channels=384, duration_s=SOURCE_S[name], num_units=150, seed=seed, n_jobs=n_jobs
        )
        binary = binary_of(folder=folder)
        sv = load_sorting_npz(path=folder / "gt_sorting.npz").to_spike_vector()
        probe = folder / "probe.json"
        if not probe.is_file():
            probe_json(folder, build_probe(kind="np1_384"))
        return dict(
            path=Path(binary["path"]),
            n_channels=384,
            sampling_rate_hz=float(binary["sampling_rate_hz"]),
            samples=sv["sample_index"],
            labels=sv["unit_index"],
            n_samples=int(binary["n_samples"]),
            probe=probe,
            displacement=None,
        )
    folder = cache_dir / "online" / f"{name}_seed{seed}"
    spec = {"name": name, "seed": seed, "version": 1}
    spec_file = folder / "spec.json"
    if not (spec_file.is_file() and json.loads(spec_file.read_text()) == spec):
        kw = dict(duration_s=SOURCE_S[name], n_channels=64, n_units=30, sampling_rate_hz=30000.0, seed=seed)
        if name == "static64":
            make_recording(folder, late_unit_s=150.0, **kw)
        else:
            make_drifting_recording(folder, drift_um=20.0, period_s=30.0, start_s=120.0, **kw)
        _probe_json(folder, 64)
        spec_file.write_text(json.dumps(spec))
    gt = np.load(folder / "gt.npz")
    return dict(
        path=folder / "source.dat",
        n_channels=64,
        sampling_rate_hz=30000.0,
        samples=gt["samples"],
        labels=gt["labels"],
        n_samples=(folder / "source.dat").stat().st_size // 128,
        probe=folder / "probe.json",
        displacement=gt["displacement"] if "displacement" in gt.files else None,
    )


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
    duration_s: float | None = None,
) -> None:
    """Append ``src`` to ``dst`` in blocks at ``speed`` x real time (looping over ``src`` up to
    ``duration_s`` of recording when given); log (wall time after the block's flush, samples in
    ``dst``) of every block to ``log_path`` (.npy)."""
    frame = 2 * n_channels
    n_src = src.stat().st_size // frame
    total = n_src if duration_s is None else int(round(duration_s * sampling_rate_hz))
    block = max(1, int(block_s * sampling_rate_hz))
    marks = np.zeros((-(-total // block), 2))
    t0 = time.time()
    paused = False
    parent = os.getppid()
    with open(src, "rb") as fin, open(dst, "ab") as fh:
        for i, start in enumerate(range(0, total, block)):
            if os.getppid() != parent:  # the replay that started this writer is gone: so is its file
                return
            stop = min(total, start + block)
            due = t0 + stop / sampling_rate_hz / speed + (pause_s if paused else 0.0)
            if pause_at_s is not None and not paused and start / sampling_rate_hz >= pause_at_s:
                paused = True
                due += pause_s
            s = start % n_src
            fin.seek(s * frame)
            data = fin.read(min(stop - start, n_src - s) * frame)
            if len(data) < (stop - start) * frame:  # the block wraps round the end of the source
                fin.seek(0)
                data += fin.read((stop - start) * frame - len(data))
            time.sleep(max(0.0, due - time.time()))
            fh.write(data)
            fh.flush()
            marks[i] = time.time(), stop
    if log_path is not None:
        np.save(log_path, marks)
