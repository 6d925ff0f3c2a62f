"""A self-contained demo: generate a ground-truth recording, sort it, score the result.

Nothing is downloaded: the probe is built locally and the recording is simulated by
``spikeinterface.generation``. ``spikesort demo`` prints what :func:`run_demo` returns.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from .errors import SpikesortError

log = logging.getLogger(__name__)

__all__ = ["make_demo_recording", "run_demo", "WELL_DETECTED_ACCURACY"]

WELL_DETECTED_ACCURACY = 0.8
# a sorted unit matching no ground-truth unit better than this counts as a false positive
FALSE_POSITIVE_SCORE = 0.2
DELTA_TIME_MS = 0.4
# long enough for every unit to fire a few hundred spikes
DEMO_DURATION_S = 60.0
# clear units for spikeinterface's generate_drifting_recording: at most 35 µm from the probe, with
# peaks of 250-500 µV at the soma (its defaults go down to 100 µV at 45 µm: the limit of detection)
CLEAR_UNIT_LOCATIONS = dict(
    margin_um=20.0,
    minimum_z=5.0,
    maximum_z=35.0,
    minimum_distance=18.0,
    max_iteration=100,
    distance_strict=False,
    distribution="uniform",
)
CLEAR_TEMPLATES = dict(
    ms_before=1.5,
    ms_after=3.0,
    mode="ellipsoid",
    unit_params=dict(
        alpha=(250.0, 500.0), spatial_decay=(10, 45), ellipse_shrink=(0.4, 1), ellipse_angle=(0, np.pi * 2)
    ),
)
# int16 storage step in µV (Intan-like): noise is 6-8 µV, spikes up to ~500 µV, far from clipping
STORAGE_GAIN_UV = 0.195
RECORDING_DIR = "demo_recording"
SORTING_DIR = "sorting"
SUMMARY_FILE = "demo_summary.json"


def _demo_probe(n_channels: int):
    from probeinterface import generate_multi_columns_probe

    # two staggered columns, like a common silicon probe; one column when the count is odd
    n_columns = 2 if n_channels % 2 == 0 else 1
    probe = generate_multi_columns_probe(
        num_columns=n_columns,
        num_contact_per_column=n_channels // n_columns,
        xpitch=22.0,
        ypitch=25.0,
        y_shift_per_column=[0.0, 12.5][:n_columns],
    )
    # the generator leaves the wiring to the caller when given a probe
    probe.set_device_channel_indices(np.arange(n_channels))
    return probe


def _static_displacement() -> dict:
    # one zero-amplitude displacement step: the static recording does not depend on it, and the
    # generator then builds one set of templates instead of one per drift position
    return dict(
        displacement_sampling_frequency=5.0,
        drift_start_um=[0.0, 0.0],
        drift_stop_um=[0.0, 0.0],
        drift_step_um=1.0,
        motion_list=[
            dict(drift_mode="zigzag", non_rigid_gradient=None, t_start_drift=0.0, t_end_drift=None, period_s=200)
        ],
    )


def make_demo_recording(*, duration_s: float = DEMO_DURATION_S, n_channels: int = 32, n_units: int = 12, seed: int = 0):
    """A simulated static recording (float32, µV, probe attached) and its ground-truth sorting.

    Both are lazy spikeinterface objects; the traces are computed when read. The units are clear
    ones (peak 250-500 µV at the soma, at most 35 µm from the probe, 3-8 Hz) over noise of 6-8 µV:
    a demo should show what a correct sorter finds, all of them, not the limits of detection.
    """
    if not 4 <= int(n_channels) <= 1024:
        raise SpikesortError(f"demo needs 4 to 1024 channels, got {n_channels}")
    if not 5.0 <= float(duration_s) <= 3600.0:
        raise SpikesortError(f"demo duration must be between 5 and 3600 s, got {duration_s}")
    if not 1 <= int(n_units) <= 500:
        raise SpikesortError(f"demo needs 1 to 500 units, got {n_units}")
    from spikeinterface.generation import generate_drifting_recording

    static, _drifting, gt_sorting = generate_drifting_recording(
        num_units=int(n_units),
        duration=float(duration_s),
        probe=_demo_probe(int(n_channels)),
        generate_displacement_vector_kwargs=_static_displacement(),
        generate_unit_locations_kwargs=CLEAR_UNIT_LOCATIONS,
        generate_templates_kwargs=CLEAR_TEMPLATES,
        generate_sorting_kwargs=dict(firing_rates=(3.0, 8.0), refractory_period_ms=4.0),
        seed=int(seed),
    )
    return static, gt_sorting


def _check_folder(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise SpikesortError(f"output folder {out} exists (use --overwrite to replace it)")
        if not out.is_dir():
            raise SpikesortError(f"output path {out} is a file, not a folder")
        # only ever delete what an earlier demo wrote, never an arbitrary folder
        if any(out.iterdir()) and not (out / RECORDING_DIR).is_dir() and not (out / SUMMARY_FILE).is_file():
            raise SpikesortError(
                f"{out} is not empty and does not look like a spikesort demo folder: choose another output folder"
            )


def _prepare_folder(out: Path, overwrite: bool) -> None:
    _check_folder(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _save_int16(recording, folder: Path):
    from spikeinterface.preprocessing import scale

    as_int16 = scale(recording, gain=1.0 / STORAGE_GAIN_UV, offset=0.0, dtype="int16")
    as_int16.set_channel_gains(STORAGE_GAIN_UV)
    as_int16.set_channel_offsets(0.0)
    with warnings.catch_warnings():
        # the simulated source is rebuilt from its seed, so its missing provenance does not matter
        warnings.filterwarnings("ignore", message=".*not serializable.*")
        # the generator's cost is per chunk: 5 s chunks on both cores write it 4x faster than 1 s on one
        # (the same bytes: its noise does not depend on the chunking)
        as_int16.save(
            folder=folder, format="binary", n_jobs=min(2, os.cpu_count() or 1), chunk_duration="5s", progress_bar=False
        )


def _score(gt_sorting, sorting) -> dict:
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    comp = compare_sorter_to_ground_truth(gt_sorting, sorting, exhaustive_gt=True, delta_time=DELTA_TIME_MS)
    perf = comp.get_performance(method="by_unit").astype(float)
    accuracy = perf["accuracy"].to_numpy()
    return dict(
        well_detected=len(comp.get_well_detected_units(WELL_DETECTED_ACCURACY)),
        false_positives=int(comp.count_false_positive_units(FALSE_POSITIVE_SCORE)),
        mean_accuracy=float(accuracy.mean()) if accuracy.size else 0.0,
    )


def run_demo(
    output_folder,
    *,
    duration_s: float = DEMO_DURATION_S,
    n_channels: int = 32,
    n_units: int = 12,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    on_folder_ready=None,
) -> dict:
    """Simulate, save, sort and score a recording in ``output_folder``; return the scores.

    Layout: ``demo_recording/`` (int16 binary that Phy reads for raw traces), ``sorting/``
    (the Phy folder) and ``demo_summary.json`` (the returned dict). ``on_folder_ready(path)`` is
    called once the (new, empty) output folder exists, e.g. to move a log file into it.
    """
    from .io.recordings import open_recording
    from .pipeline import sort

    t0 = time.perf_counter()
    out = Path(output_folder).expanduser()
    _check_folder(out, overwrite)  # before the simulation: a refusal should be quick
    recording, gt_sorting = make_demo_recording(
        duration_s=duration_s, n_channels=n_channels, n_units=n_units, seed=seed
    )
    _prepare_folder(out, overwrite)
    if on_folder_ready is not None:
        on_folder_ready(out)
    log.info(
        "writing a %.0f s, %d-channel simulated recording with %d units to %s",
        duration_s,
        n_channels,
        n_units,
        out / RECORDING_DIR,
    )
    _save_int16(recording, out / RECORDING_DIR)
    # sort the saved copy through the same reader users get, read-only
    saved = open_recording(out / RECORDING_DIR)
    t_sort = time.perf_counter()
    result = sort(saved, out / SORTING_DIR, seed=seed, progress=progress)
    sort_s = time.perf_counter() - t_sort
    scores = _score(gt_sorting, result.to_spikeinterface())
    phy_params = out / SORTING_DIR / "params.py"
    summary = dict(
        n_gt_units=int(gt_sorting.get_num_units()),
        n_units_found=int(result.n_units),
        **scores,
        duration_s=float(duration_s),
        n_channels=int(n_channels),
        seed=int(seed),
        sort_s=round(sort_s, 2),
        total_s=round(time.perf_counter() - t0, 2),
        recording_folder=str(out / RECORDING_DIR),
        phy_folder=str(out / SORTING_DIR),
        phy_params=str(phy_params) if phy_params.is_file() else None,
    )
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    log.info(
        "demo: %d of %d units well detected, %d false positives, mean accuracy %.2f",
        summary["well_detected"],
        summary["n_gt_units"],
        summary["false_positives"],
        summary["mean_accuracy"],
    )
    return summary
