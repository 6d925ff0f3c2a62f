#!/usr/bin/env python
"""Ground-truth benchmark: spikesort against peer sorters on generated recordings.

Each scenario is generated once with ``spikeinterface.generation`` (no download: the probe is
built locally), saved as an int16 binary folder with its ground-truth sorting into a cache
folder, then every sorter runs on that folder in its own subprocess (so wall time and peak
memory are its own) and is scored with ``compare_sorter_to_ground_truth``.

Peer results (tridesclous2, spykingcircus2, lupin, kilosort4) are cached, keyed by scenario
definition, seed, sorter name, sorter version and parameters; spikesort is always re-run.

Examples::

    nice -n 19 python scripts/benchmark.py --scenarios static32 static64 --seeds 0
    nice -n 19 python scripts/benchmark.py --scenarios static64 --seeds 0 1 --sorters spikesort
    nice -n 19 python scripts/benchmark.py --scenarios static64 --sorters tridesclous2 --rerun-peers
    python scripts/benchmark.py --scenarios static32 static64 --seeds 0 1 --sorters tridesclous2 \
        spykingcircus2 lupin kilosort4 --cached-peers-only      # the peer table, nothing is run

The table is printed as markdown; ``--out results.json`` also writes JSON and CSV.

``--speed`` measures speed and memory instead (see ``--help`` and scripts/speed_scenarios.py):
spikesort's per-stage wall time and peak RSS on a ground-truth scenario (static64, with the
peers) and on a 384-channel Neuropixels-1.0-like recording of 5 and 10 minutes, each beside a
floor pass (read the int16 binary and high-pass filter it)::

    python scripts/benchmark.py --speed --cached-peers-only --out speed.json   # on an idle machine
    python scripts/benchmark.py --speed --scenarios static32 --speed-channels 32 \
        --speed-minutes 0.2 0.4 --sorters spikesort       # a quick check of the whole path
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

# the speed mode's own module sits next to this script (not on the path when loaded by a test)
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed_scenarios  # noqa: E402

# bump when the way recordings are generated or stored changes: old caches are then rebuilt
GENERATOR_VERSION = 1
# int16 storage gain, µV per bit (Intan-like); noise is 6-8 µV, spikes up to ~500 µV
STORAGE_GAIN_UV = 0.195

PEER_NAMES = ("tridesclous2", "spykingcircus2", "lupin", "mountainsort5", "kilosort4")
ALL_SORTERS = ("spikesort",) + PEER_NAMES
# peer parameters on top of each sorter's defaults
PEER_PARAMS = {
    "tridesclous2": {},
    "spykingcircus2": {},  # default motion correction (dredge_fast) uses torch, installed here
    "lupin": {},
    "mountainsort5": {},
    "kilosort4": {"torch_device": "cpu"},
}
# on drifting scenarios, peers whose motion correction is off by default get it switched on:
# the comparison is of drift handling, not of defaults
PEER_DRIFT_PARAMS = {
    "tridesclous2": {"apply_motion_correction": True},
    "lupin": {"apply_motion_correction": True},
}

WELL_DETECTED_SCORE = 0.8
REDUNDANT_SCORE = 0.2
OVERMERGED_SCORE = 0.2
DELTA_TIME_MS = 0.4


# ---------------------------------------------------------------------------------------------
# scenarios


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    probe: str  # key of PROBES
    num_units: int
    duration_s: float
    drift: str  # "none", "zigzag", "bump"
    description: str


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("static32", "multi32", 20, 60.0, "none", "32 ch staggered 2-column probe, 20 units, 60 s, static"),
        Scenario("static64", "np1_64", 50, 300.0, "none", "64 ch NP1-like slice, 50 units, 300 s, static"),
        Scenario("zigzag64", "np1_64", 50, 300.0, "zigzag", "as static64, rigid zigzag drift ±20 µm (period 200 s, from 60 s)"),
        Scenario("bump64", "np1_64", 50, 300.0, "bump", "as static64, rigid 30 µm steps every 30-90 s (from 60 s)"),
    )
}


def build_probe(*, kind: str):
    """Build the probe of a scenario locally (never downloads)."""
    if kind == "multi32":
        from probeinterface import generate_multi_columns_probe

        probe = generate_multi_columns_probe(
            num_columns=2, num_contact_per_column=16, xpitch=22.0, ypitch=25.0, y_shift_per_column=[0.0, 12.5]
        )
    elif kind.startswith("np1_") and kind[4:].isdigit() and 1 <= int(kind[4:]) <= 384:
        from probeinterface.neuropixels_tools import build_neuropixels_probe

        # first N contacts (bank 0) of a Neuropixels 1.0: x = 16/48, 0/32 staggered rows, 20 µm pitch
        probe = build_neuropixels_probe("NP1000").get_slice(np.arange(int(kind[4:])))
    else:
        raise ValueError(f"unknown probe kind {kind!r}")
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return probe


def displacement_kwargs(*, drift: str) -> dict:
    """``generate_displacement_vector_kwargs`` for a drift kind."""
    if drift == "none":
        # zero-amplitude motion: one displacement step only, so no wasted template copies; the
        # static recording does not depend on it
        return dict(
            displacement_sampling_frequency=5.0,
            drift_start_um=[0.0, 0.0],
            drift_stop_um=[0.0, 0.0],
            drift_step_um=1.0,
            motion_list=[dict(drift_mode="zigzag", non_rigid_gradient=None, t_start_drift=0.0, t_end_drift=None, period_s=200)],
        )
    if drift == "zigzag":
        return dict(
            displacement_sampling_frequency=5.0,
            drift_start_um=[0.0, 20.0],
            drift_stop_um=[0.0, -20.0],
            drift_step_um=1.0,
            motion_list=[dict(drift_mode="zigzag", non_rigid_gradient=None, t_start_drift=60.0, t_end_drift=None, period_s=200)],
        )
    if drift == "bump":
        # the bump shape alternates between +0.5 and -0.5 of the span: 30 µm steps
        return dict(
            displacement_sampling_frequency=5.0,
            drift_start_um=[0.0, 15.0],
            drift_stop_um=[0.0, -15.0],
            drift_step_um=1.0,
            motion_list=[
                dict(drift_mode="bump", non_rigid_gradient=None, t_start_drift=60.0, t_end_drift=None, bump_interval_s=(30.0, 90.0))
            ],
        )
    raise ValueError(f"unknown drift {drift!r}")


def scenario_spec(*, scenario: Scenario, seed: int) -> dict:
    """What the generated data depends on; a change regenerates it and re-runs the peers."""
    import spikeinterface

    fields = dataclasses.asdict(scenario)
    del fields["description"]  # text only
    return dict(
        generator_version=GENERATOR_VERSION,
        spikeinterface=spikeinterface.__version__,
        storage_gain_uv=STORAGE_GAIN_UV,
        seed=int(seed),
        **fields,
    )


def spec_hash(spec: dict) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def recording_folder(*, cache_dir: Path, scenario: str, seed: int) -> Path:
    return cache_dir / "recordings" / f"{scenario}_seed{seed}"


def ensure_recording(*, cache_dir: Path, scenario: Scenario, seed: int, n_jobs: int) -> Path:
    """Generate and save a scenario once; return its folder (``recording/``, ``gt_sorting.npz``)."""
    from spikeinterface.generation import generate_drifting_recording

    def generate():
        static, drifting, gt = generate_drifting_recording(
            num_units=scenario.num_units,
            duration=scenario.duration_s,
            probe=build_probe(kind=scenario.probe),
            generate_displacement_vector_kwargs=displacement_kwargs(drift=scenario.drift),
            seed=seed,
        )
        return (static if scenario.drift == "none" else drifting), gt

    return save_generated(folder=recording_folder(cache_dir=cache_dir, scenario=scenario.name, seed=seed),
                          spec=scenario_spec(scenario=scenario, seed=seed), generate=generate, n_jobs=n_jobs)


# the speed mode's long recording: about 150 units on 384 channels, fewer on fewer channels
SPEED_UNITS_PER_CHANNEL = 150 / 384


def speed_recording_spec(*, n_channels: int, duration_s: float, num_units: int, seed: int) -> dict:
    import spikeinterface

    return dict(generator_version=GENERATOR_VERSION, spikeinterface=spikeinterface.__version__,
                storage_gain_uv=STORAGE_GAIN_UV, seed=int(seed), name=f"np1_{n_channels}ch", probe=f"np1_{n_channels}",
                num_units=int(num_units), duration_s=float(duration_s), drift="none", noise="white 6-8 uV")


def ensure_speed_recording(*, cache_dir: Path, n_channels: int, duration_s: float, num_units: int, seed: int,
                           n_jobs: int) -> Path:
    """The speed mode's Neuropixels-1.0-like recording (the first ``n_channels`` contacts of bank
    0), static, generated lazily and saved once in 1 s chunks on ``n_jobs`` processes.

    The noise is white (independent channels, 6-8 µV): the scenarios' spatially correlated noise
    draws a multivariate normal per block and makes 384 channels about 10× slower to generate,
    and a sorter's cost does not depend on it."""
    from spikeinterface.generation import generate_drifting_recording

    def generate():
        static, _, gt = generate_drifting_recording(
            num_units=num_units, duration=duration_s, probe=build_probe(kind=f"np1_{n_channels}"),
            generate_displacement_vector_kwargs=displacement_kwargs(drift="none"),
            generate_noise_kwargs=dict(noise_levels=(6.0, 8.0), spatial_decay=None), seed=seed)
        return static, gt

    folder = cache_dir / "recordings" / f"np1_{n_channels}ch_{duration_s:g}s_seed{seed}"
    spec = speed_recording_spec(n_channels=n_channels, duration_s=duration_s, num_units=num_units, seed=seed)
    return save_generated(folder=folder, spec=spec, generate=generate, n_jobs=n_jobs)


def save_generated(*, folder: Path, spec: dict, generate, n_jobs: int) -> Path:
    """Save ``generate()`` -> (recording in µV, ground-truth sorting) as an int16 binary folder
    with its ground truth, once: a folder whose ``scenario.json`` equals ``spec`` is reused. The
    folder appears complete or not at all (built under a temporary name, then renamed)."""
    from spikeinterface.preprocessing import scale

    spec_file = folder / "scenario.json"
    if spec_file.exists() and json.loads(spec_file.read_text()) == spec:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        source, gt = generate()
        # the generated recording is rebuilt from its seed, not from a provenance file
        warnings.filterwarnings("ignore", message="The extractor is not serializable")
        as_int16 = scale(source, gain=1.0 / STORAGE_GAIN_UV, offset=0.0, dtype="int16")
        as_int16.set_channel_gains(STORAGE_GAIN_UV)
        as_int16.set_channel_offsets(0.0)
        as_int16.save(
            folder=tmp / "recording", format="binary", n_jobs=n_jobs, chunk_duration="1s", progress_bar=False
        )
        save_sorting_npz(sorting=gt, path=tmp / "gt_sorting.npz")
        locations = np.asarray(gt.get_property("gt_unit_locations"))
        np.save(tmp / "gt_unit_locations.npy", locations)
        (tmp / "scenario.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        tmp.chmod(0o755)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_recording(*, folder: Path):
    import spikeinterface as si

    return si.load(folder / "recording")


TRUE_DISPLACEMENT = "true_displacement.npz"


def ensure_true_displacement(*, folder: Path, scenario: Scenario, seed: int) -> Path | None:
    """The generator's true displacement of a drifting scenario, in its own file next to the
    recording (written when missing, so recordings cached before it existed are kept): times_s
    (T,), displacement_um (T, units) = how far each unit moved towards larger depth (y),
    unit_depth_um (units,). The generator is deterministic in its seed, so calling it again
    gives the displacement of the saved recording without rebuilding the traces."""
    if scenario.drift == "none":
        return None
    path = folder / TRUE_DISPLACEMENT
    if path.is_file():
        return path
    from spikeinterface.generation import generate_drifting_recording

    *_, extra = generate_drifting_recording(
        num_units=scenario.num_units, duration=scenario.duration_s, probe=build_probe(kind=scenario.probe),
        generate_displacement_vector_kwargs=displacement_kwargs(drift=scenario.drift), seed=seed,
        extra_outputs=True)
    disp = np.asarray(extra["unit_displacements"])[:, :, 1]
    times = np.arange(disp.shape[0]) / float(extra["displacement_sampling_frequency"])
    tmp = folder / f".{TRUE_DISPLACEMENT}.tmp.npz"
    np.savez(tmp, times_s=times, displacement_um=disp, unit_depth_um=np.asarray(extra["unit_locations"])[:, 1])
    tmp.rename(path)
    return path


def motion_error_um(*, motion_folder: Path, truth_path: Path) -> float | None:
    """RMS (µm) of spikesort's motion estimate minus the true displacement, over the truth's
    time samples and every ground-truth unit, each evaluated at the unit's depth. Both say how far
    the tissue moved towards larger y; each unit's mean difference is removed first (the
    estimate's reference position is the median one, the truth's the start). None without an
    estimate (drift not corrected)."""
    from spikesort.stages.drift.stage import Motion

    if not Motion.exists(motion_folder):
        return None
    motion = Motion.load(motion_folder)
    with np.load(truth_path) as truth:
        times, disp, depths = truth["times_s"], truth["displacement_um"], truth["unit_depth_um"]
    errors = []
    for u, depth in enumerate(depths):
        est = motion.at(times_s=times, depths_um=np.full(len(times), depth))
        d = est - disp[:, u]
        errors.append(d - d.mean())
    return float(np.sqrt(np.mean(np.square(errors))))


# ---------------------------------------------------------------------------------------------
# sortings on disk (a small npz that does not depend on any sorter's output format)


def save_sorting_npz(*, sorting, path: Path) -> None:
    spikes = sorting.to_spike_vector()
    unit_ids = np.asarray(sorting.unit_ids)
    np.savez(
        path,
        sample_index=spikes["sample_index"].astype(np.int64),
        unit_index=spikes["unit_index"].astype(np.int64),
        segment_index=spikes["segment_index"].astype(np.int64),
        unit_ids=unit_ids.astype(str) if unit_ids.dtype == object else unit_ids,
        sampling_frequency=np.float64(sorting.sampling_frequency),
    )


def load_sorting_npz(*, path: Path):
    from spikeinterface.core import NumpySorting
    from spikeinterface.core.base import minimum_spike_dtype

    with np.load(path) as data:
        spikes = np.zeros(data["sample_index"].size, dtype=minimum_spike_dtype)
        spikes["sample_index"] = data["sample_index"]
        spikes["unit_index"] = data["unit_index"]
        spikes["segment_index"] = data["segment_index"]
        return NumpySorting(spikes, float(data["sampling_frequency"]), data["unit_ids"])


# ---------------------------------------------------------------------------------------------
# scoring


def score_sorting(*, gt, tested) -> dict:
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    comp = compare_sorter_to_ground_truth(
        gt,
        tested,
        exhaustive_gt=True,
        delta_time=DELTA_TIME_MS,
        well_detected_score=WELL_DETECTED_SCORE,
        redundant_score=REDUNDANT_SCORE,
        overmerged_score=OVERMERGED_SCORE,
    )
    perf = comp.get_performance(method="by_unit").astype(float)
    return dict(
        num_gt=int(gt.get_num_units()),
        num_units=int(tested.get_num_units()),
        well_detected=len(comp.get_well_detected_units(WELL_DETECTED_SCORE)),
        false_positive=int(comp.count_false_positive_units(REDUNDANT_SCORE)),
        redundant=int(comp.count_redundant_units(REDUNDANT_SCORE)),
        overmerged=int(comp.count_overmerged_units(OVERMERGED_SCORE)),
        mean_accuracy=float(perf["accuracy"].mean()),
        mean_recall=float(perf["recall"].mean()),
        mean_precision=float(perf["precision"].mean()),
    )


def score_labels(*, gt, tested, labels_tsv: Path) -> dict:
    """How the automatic labels (cluster_KSLabel.tsv) agree with the ground truth: of the units
    labelled good, how many match a GT unit with accuracy >= WELL_DETECTED_SCORE; of the
    false-positive units, how many are labelled mua or noise."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    labels = {}
    for line in Path(labels_tsv).read_text().splitlines()[1:]:
        cid, _, value = line.partition("\t")
        if cid.strip():
            labels[int(cid)] = value.strip()
    comp = compare_sorter_to_ground_truth(gt, tested, exhaustive_gt=True, delta_time=DELTA_TIME_MS)
    match = comp.hungarian_match_21
    good = [u for u in tested.unit_ids if labels.get(int(u)) == "good"]
    # an unmatched unit maps to -1, or to "" when the ground-truth ids are strings
    good_matched = sum(1 for u in good if match[u] in comp.agreement_scores.index
                       and comp.agreement_scores.at[match[u], u] >= WELL_DETECTED_SCORE)
    fp = list(comp.get_false_positive_units(REDUNDANT_SCORE))
    return dict(n_good=len(good), good_matched=good_matched, n_fp_labelled=len(fp),
                fp_not_good=sum(1 for u in fp if labels.get(int(u)) in ("mua", "noise")))


# ---------------------------------------------------------------------------------------------
# the child process: runs one sorter on one recording, writes sorting.npz and child.json


class _DummyResult:
    def __init__(self, sorting):
        self._sorting = sorting

    def to_spikeinterface(self):
        return self._sorting


def dummy_sort(recording, output_folder, *, gt_path: Path, seed: int = 0, **params):
    """Stand-in for ``spikesort.sort``: the ground truth, degraded in known ways.

    Jitters every spike by up to ±3 samples and drops 5%; unit 0 loses 60% of its spikes (not
    well detected), units 1 and 2 are merged (one overmerged unit), unit 3 is split in two
    halves alternately (one redundant unit) and one unit of random spikes is added (a false
    positive). It also holds ~200 MB for a second so the memory column shows something.
    """
    from spikeinterface.core import NumpySorting

    rng = np.random.default_rng(seed)
    gt = load_sorting_npz(path=gt_path)
    n = recording.get_num_samples()
    ballast = np.ones(25_000_000)  # ~200 MB
    time.sleep(1.0)
    units = {}
    ids = list(gt.unit_ids)
    for k, uid in enumerate(ids):
        st = gt.get_unit_spike_train(uid).astype(np.int64)
        keep = rng.random(st.size) > (0.6 if k == 0 else 0.05)
        st = np.clip(st[keep] + rng.integers(-3, 4, keep.sum()), 0, n - 1)
        units[f"u{k}"] = np.sort(st)
    if len(ids) >= 4:
        units["u1"] = np.sort(np.concatenate([units["u1"], units.pop("u2")]))
        st3 = units.pop("u3")
        units["u3a"], units["u3b"] = st3[0::2], st3[1::2]
    units["noise"] = np.sort(rng.integers(0, n, 2000))
    del ballast
    (Path(output_folder)).mkdir(parents=True, exist_ok=True)
    sorting = NumpySorting.from_unit_dict([units], sampling_frequency=recording.sampling_frequency)
    return _DummyResult(sorting)


def child_main(*, spec_path: Path) -> int:
    """Run one sorter as described in ``spec_path`` (JSON); write results next to it."""
    import resource

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["result_folder"])
    report = dict(status="failed", error=None)
    try:
        from spikeinterface.core import set_global_job_kwargs

        set_global_job_kwargs(n_jobs=spec["n_jobs"], progress_bar=False, chunk_duration="1s")
        recording = load_recording(folder=Path(spec["recording_folder"]))
        if spec.get("frame_range"):
            # the speed mode's shorter case: the first part of the long recording's binary
            recording = recording.frame_slice(start_frame=spec["frame_range"][0], end_frame=spec["frame_range"][1])
        sorter = spec["sorter"]
        params = spec["params"]
        work = Path(spec["work_folder"])
        if sorter == "spikesort":
            if spec.get("dummy"):
                sort_fn = lambda rec, folder, **kw: dummy_sort(  # noqa: E731
                    rec, folder, gt_path=Path(spec["recording_folder"]) / "gt_sorting.npz", **kw
                )
            else:
                import spikesort

                sort_fn = spikesort.sort
            t0 = time.perf_counter()
            result = sort_fn(recording, work, overwrite=True, **params)
            sorting = result.to_spikeinterface()
            wall = time.perf_counter() - t0
            # the automatic labels, for the label columns (the work folder may be deleted)
            if (work / "cluster_KSLabel.tsv").is_file():
                shutil.copy(work / "cluster_KSLabel.tsv", out / "cluster_KSLabel.tsv")
            # the motion estimate, for the motion-error column; the run record, for the stage costs
            for name in ("spikesort_run.json", "motion.npy", "motion_time_bins_s.npy", "motion_depth_bins_um.npy", "motion_shanks.npy"):
                if (work / name).is_file():
                    shutil.copy(work / name, out / name)
        else:
            from spikeinterface.sorters import run_sorter

            t0 = time.perf_counter()
            sorting = run_sorter(sorter, recording, folder=work, remove_existing_folder=True, verbose=False, **params)
            wall = time.perf_counter() - t0
        save_sorting_npz(sorting=sorting, path=out / "sorting.npz")
        report.update(status="ok", wall_s=wall)
    except BaseException as exc:  # the parent reports it; the child must always write its report
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    report["maxrss_self_mb"] = own.ru_maxrss / 1024
    report["maxrss_children_mb"] = kids.ru_maxrss / 1024
    # CPU seconds of the child and its workers: a check on wall times taken on a busy machine
    report["cpu_s"] = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    (out / "child.json").write_text(json.dumps(report, indent=1))
    return 0 if report["status"] == "ok" else 1


def _tree_memory_mb(proc) -> float:
    """Memory of a process and its descendants, in MB.

    RSS for a lone process; summed PSS (shared pages split between sharers, so forked workers
    are not counted twice) once it has workers. PSS reads /proc/PID/smaps, which costs CPU on
    big processes, so it is only read when needed.
    """
    import psutil

    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            if len(procs) == 1:
                total += p.memory_info().rss
            else:
                try:
                    total += p.memory_full_info().pss
                except (psutil.AccessDenied, AttributeError):
                    total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run_sorter_subprocess(
    *,
    sorter: str,
    recording_folder: Path,
    work_folder: Path,
    result_folder: Path,
    params: dict,
    n_jobs: int,
    timeout_s: float | None,
    dummy: bool = False,
    poll_s: float = 1.0,
    frame_range: tuple[int, int] | None = None,
) -> dict:
    """Run one sorter in a child python; return status, wall and peak memory."""
    import psutil

    result_folder.mkdir(parents=True, exist_ok=True)
    spec = dict(
        sorter=sorter,
        recording_folder=str(recording_folder),
        work_folder=str(work_folder),
        result_folder=str(result_folder),
        params=params,
        n_jobs=n_jobs,
        dummy=dummy,
        frame_range=None if frame_range is None else [int(frame_range[0]), int(frame_range[1])],
    )
    spec_path = result_folder / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    log_path = result_folder / "child.log"
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    peak_mb = 0.0
    timed_out = False
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_child", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = psutil.Process(child.pid)
        try:
            while child.poll() is None:
                peak_mb = max(peak_mb, _tree_memory_mb(proc))
                if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                    timed_out = True
                    break
                time.sleep(poll_s)
        finally:
            if child.poll() is None:  # timeout, or the benchmark itself was interrupted
                os.killpg(child.pid, 9)
                child.wait()
    total = time.perf_counter() - t0
    report_path = result_folder / "child.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if timed_out:
        report.update(status="timeout", error=f"killed after {timeout_s:.0f} s")
    elif not report:
        report.update(status="failed", error=f"child exited with code {child.returncode}, see {log_path}")
    peak_mb = max(peak_mb, report.get("maxrss_self_mb", 0.0), report.get("maxrss_children_mb", 0.0))
    # 1-min load average before and after: other jobs on the machine inflate wall times
    report.update(process_wall_s=total, peak_rss_mb=peak_mb, load_before=load_before, load_after=os.getloadavg()[0])
    return report


# ---------------------------------------------------------------------------------------------
# peers


def sorter_version(*, sorter: str) -> str | None:
    """Version string of an installed sorter, None when it is not installed."""
    if sorter == "spikesort":
        try:
            import spikesort

            return spikesort.__version__
        except ImportError:
            return None
    from spikeinterface.sorters import sorter_dict

    cls = sorter_dict.get(sorter)
    if cls is None or not cls.is_installed():
        return None
    return str(cls.get_sorter_version())


def peer_cache_folder(*, cache_dir: Path, scenario_spec_hash: str, scenario: str, seed: int, sorter: str, version: str, params: dict) -> Path:
    params_hash = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return cache_dir / "peers" / f"{scenario}_seed{seed}_{scenario_spec_hash}" / f"{sorter}-{version}-{params_hash}"


# ---------------------------------------------------------------------------------------------
# table


COLUMNS = (
    ("scenario", "scenario"),
    ("seed", "seed"),
    ("sorter", "sorter"),
    ("well detected", "well"),
    ("units found", "num_units"),
    ("FP units", "false_positive"),
    ("redundant", "redundant"),
    ("overmerged", "overmerged"),
    ("mean accuracy", "mean_accuracy"),
    ("motion RMS µm", "motion_rms_um"),
    ("good = GT ≥ 0.8", "good_precision"),
    ("FP not good", "fp_labels"),
    ("wall s", "wall_s"),
    ("CPU s", "cpu_s"),
    ("× real time", "x_realtime"),
    ("peak RSS MB", "peak_rss_mb"),
    ("source", "source"),
)


def _fmt(row: dict, key: str) -> str:
    if row.get("status") != "ok" and key in ("well", "num_units", "false_positive", "redundant", "overmerged", "mean_accuracy"):
        return row.get("status", "failed") if key == "well" else "–"
    if key == "well":
        return f"{row['well_detected']}/{row['num_gt']}"
    if key in ("good_precision", "fp_labels"):
        n, of = (row.get("good_matched"), row.get("n_good")) if key == "good_precision" else (
            row.get("fp_not_good"), row.get("n_fp_labelled"))
        return "–" if of is None else f"{n}/{of}"
    v = row.get(key)
    if v is None:
        return "–"
    if key == "mean_accuracy":
        return f"{v:.3f}"
    if key == "motion_rms_um":
        return f"{v:.1f}"
    if key in ("wall_s", "cpu_s"):
        return f"{v:.1f}"
    if key == "x_realtime":
        return f"{v:.2f}"
    if key == "peak_rss_mb":
        return f"{v:.0f}"
    return str(v)


def markdown_table(*, rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row, k) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def write_outputs(*, rows: list[dict], out: Path, extra: dict | None = None) -> None:
    """OUT.json (the rows; with ``extra``, an object {"rows": rows, **extra}) and OUT.csv."""
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = rows if extra is None else {"rows": rows, **extra}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys and k != "traceback"]
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------
# main


def _parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run_benchmark(
    *,
    scenarios: list[str],
    seeds: list[int],
    sorters: list[str],
    cache_dir: Path,
    work_dir: Path,
    rerun_peers: bool,
    cached_peers_only: bool = False,
    spikesort_params: dict,
    n_jobs: int,
    timeout_s: float | None,
    keep_outputs: bool,
    dummy: bool,
    log=lambda msg: None,
) -> list[dict]:
    rows = []
    versions = {s: sorter_version(sorter=s) for s in sorters}
    if dummy:
        versions["spikesort"] = "dummy"
    for name in scenarios:
        scenario = SCENARIOS[name]
        for seed in seeds:
            t0 = time.perf_counter()
            folder = ensure_recording(cache_dir=cache_dir, scenario=scenario, seed=seed, n_jobs=n_jobs)
            log(f"[{name} seed {seed}] recording ready in {time.perf_counter() - t0:.1f} s: {folder}")
            spec = json.loads((folder / "scenario.json").read_text())
            shash = spec_hash(spec)
            gt = load_sorting_npz(path=folder / "gt_sorting.npz")
            for sorter in sorters:
                version = versions[sorter]
                row = dict(scenario=name, seed=seed, sorter=sorter, version=version, duration_s=scenario.duration_s)
                if version is None:
                    log(f"[{name} seed {seed}] {sorter}: not installed, skipped")
                    continue
                params = dict(spikesort_params) if sorter == "spikesort" else dict(PEER_PARAMS[sorter])
                if sorter != "spikesort" and scenario.drift != "none":
                    params.update(PEER_DRIFT_PARAMS.get(sorter, {}))
                row["params"] = params
                if sorter == "spikesort":
                    result_folder = work_dir / f"{name}_seed{seed}" / "spikesort-result"
                    if result_folder.exists():
                        shutil.rmtree(result_folder)
                    cached = False
                else:
                    result_folder = peer_cache_folder(
                        cache_dir=cache_dir, scenario_spec_hash=shash, scenario=name, seed=seed,
                        sorter=sorter, version=version, params=params,
                    )
                    result_file = result_folder / "result.json"
                    cached = result_file.exists() and (result_folder / "sorting.npz").exists() and not rerun_peers
                if not cached and cached_peers_only and sorter != "spikesort":
                    log(f"[{name} seed {seed}] {sorter} {version}: no cached result, skipped")
                    continue
                if cached:
                    report = json.loads(result_file.read_text())
                    row["source"] = f"cache {report.get('date', '')}".strip()
                    log(f"[{name} seed {seed}] {sorter} {version}: from cache {result_folder}")
                else:
                    # a peer runs beside its cached result, which is replaced only on success
                    run_folder = result_folder if sorter == "spikesort" else result_folder.with_name(result_folder.name + ".run")
                    if run_folder.exists():
                        shutil.rmtree(run_folder)
                    work_folder = work_dir / f"{name}_seed{seed}" / sorter
                    log(f"[{name} seed {seed}] {sorter} {version}: running ...")
                    report = run_sorter_subprocess(
                        sorter=sorter, recording_folder=folder, work_folder=work_folder,
                        result_folder=run_folder, params=params, n_jobs=n_jobs,
                        timeout_s=timeout_s, dummy=dummy and sorter == "spikesort",
                    )
                    report["date"] = _dt.date.today().isoformat()
                    if run_folder != result_folder and report["status"] == "ok":
                        if result_folder.exists():
                            shutil.rmtree(result_folder)
                        run_folder.rename(result_folder)
                    elif run_folder != result_folder:
                        log(f"[{name} seed {seed}] {sorter}: failed run kept in {run_folder}")
                    row["source"] = "run"
                    if not keep_outputs and work_folder.exists():
                        shutil.rmtree(work_folder, ignore_errors=True)
                    log(f"[{name} seed {seed}] {sorter}: {report['status']} in {report.get('wall_s', report['process_wall_s']):.1f} s"
                        + (f" ({report['error']})" if report.get("error") else ""))
                row.update(
                    result_folder=str(result_folder),
                    status=report["status"],
                    error=report.get("error"),
                    wall_s=report.get("wall_s"),
                    process_wall_s=report.get("process_wall_s"),
                    cpu_s=report.get("cpu_s"),
                    load_before=report.get("load_before"),
                    load_after=report.get("load_after"),
                    peak_rss_mb=report.get("peak_rss_mb"),
                )
                if row["wall_s"]:
                    row["x_realtime"] = scenario.duration_s / row["wall_s"]
                if report["status"] == "ok":
                    tested = load_sorting_npz(path=result_folder / "sorting.npz")
                    row.update(score_sorting(gt=gt, tested=tested))
                    if (result_folder / "cluster_KSLabel.tsv").is_file():
                        row.update(score_labels(gt=gt, tested=tested, labels_tsv=result_folder / "cluster_KSLabel.tsv"))
                    if sorter == "spikesort" and scenario.drift != "none" and not dummy:
                        truth = ensure_true_displacement(folder=folder, scenario=scenario, seed=seed)
                        row["motion_rms_um"] = motion_error_um(motion_folder=result_folder, truth_path=truth)
                    if sorter != "spikesort" and not cached:
                        keep = {k: v for k, v in report.items() if k != "traceback"}
                        keep.update({k: row[k] for k in ("well_detected", "num_gt", "mean_accuracy")})
                        (result_folder / "result.json").write_text(json.dumps(keep, indent=1))
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# speed mode


def binary_of(*, folder: Path) -> dict:
    """The int16 binary behind a saved recording folder: its path, channels, rate and frames."""
    rec = load_recording(folder=folder)
    path = folder / "recording" / "traces_cached_seg0.raw"
    if rec.get_num_segments() != 1 or not path.is_file():
        raise ValueError(f"{folder / 'recording'} is not a one-segment binary folder")
    return dict(path=path, n_channels=int(rec.get_num_channels()), sampling_rate_hz=float(rec.get_sampling_frequency()),
                n_samples=int(rec.get_num_samples(0)), dtype=str(rec.get_dtype()))


def _duration_label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _add_floor(row: dict, floor) -> None:
    row.update(floor_s=floor.wall_s, floor_threads=floor.threads, floor_mean_square=floor.mean_square)
    if row.get("status") == "ok" and row.get("wall_s"):
        row["sort_floor"] = row["wall_s"] / floor.wall_s


def run_speed(
    *,
    scenarios: list[str],
    seed: int,
    sorters: list[str],
    cache_dir: Path,
    work_dir: Path,
    rerun_peers: bool,
    cached_peers_only: bool,
    spikesort_params: dict,
    n_jobs: int,
    timeout_s: float | None,
    keep_outputs: bool,
    channels: int,
    minutes: list[float],
    num_units: int | None,
    floor_threads: int,
    log=lambda msg: None,
) -> list[dict]:
    """Rows of the speed table: (a) every sorter on the ground-truth ``scenarios`` (peers from
    their cache as in the accuracy benchmark); (b) spikesort on the first ``minutes`` of one
    NP1-like recording of ``channels`` channels and max(minutes) minutes; each row with the floor
    pass on the same frames of the same binary (run after the sorts) and, for spikesort, the
    per-stage costs its run recorded."""
    rows = []
    a_rows = run_benchmark(
        scenarios=scenarios, seeds=[seed], sorters=sorters, cache_dir=cache_dir, work_dir=work_dir,
        rerun_peers=rerun_peers, cached_peers_only=cached_peers_only, spikesort_params=spikesort_params,
        n_jobs=n_jobs, timeout_s=timeout_s, keep_outputs=keep_outputs, dummy=False, log=log)
    for name in scenarios:
        mine = [r for r in a_rows if r["scenario"] == name]
        if not mine:
            continue
        binary = binary_of(folder=recording_folder(cache_dir=cache_dir, scenario=name, seed=seed))
        floor = speed_scenarios.floor_pass(path=binary["path"], n_channels=binary["n_channels"], dtype=binary["dtype"],
                                           sampling_rate_hz=binary["sampling_rate_hz"], threads=floor_threads)
        log(f"[{name}] floor pass: {floor.wall_s:.1f} s ({floor.x_realtime:.1f}× real time)")
        for row in mine:
            row.update(case=name, kind="a", channels=binary["n_channels"], minutes=row["duration_s"] / 60,
                       recording=f"{binary['n_channels']} ch × {_duration_label(row['duration_s'])}")
            if row["sorter"] == "spikesort" and row.get("status") == "ok":
                row.update(speed_scenarios.stage_costs(run_json=Path(row["result_folder"]) / "spikesort_run.json"))
            _add_floor(row, floor)
            rows.append(row)

    version = sorter_version(sorter="spikesort")
    if not minutes or "spikesort" not in sorters or version is None:
        log("the NP1-like runs are skipped: they run spikesort only")
        return rows
    units = num_units or max(3, int(round(SPEED_UNITS_PER_CHANNEL * channels)))
    t0 = time.perf_counter()
    folder = ensure_speed_recording(cache_dir=cache_dir, n_channels=channels, duration_s=60.0 * max(minutes),
                                    num_units=units, seed=seed, n_jobs=n_jobs)
    log(f"[np1 {channels} ch] recording of {max(minutes):g} min ready in {time.perf_counter() - t0:.1f} s: {folder}")
    binary = binary_of(folder=folder)
    fs = binary["sampling_rate_hz"]
    gt = load_sorting_npz(path=folder / "gt_sorting.npz")
    for m in sorted(set(minutes)):
        n = min(binary["n_samples"], int(round(m * 60.0 * fs)))
        case = f"np1_{channels}ch_{m:g}min"
        result_folder = work_dir / f"{case}_seed{seed}" / "spikesort-result"
        work_folder = work_dir / f"{case}_seed{seed}" / "spikesort"
        if result_folder.exists():
            shutil.rmtree(result_folder)
        log(f"[{case}] spikesort {version}: running ...")
        report = run_sorter_subprocess(
            sorter="spikesort", recording_folder=folder, work_folder=work_folder, result_folder=result_folder,
            params=dict(spikesort_params), n_jobs=n_jobs, timeout_s=timeout_s, frame_range=(0, n))
        if not keep_outputs and work_folder.exists():
            shutil.rmtree(work_folder, ignore_errors=True)
        log(f"[{case}] spikesort: {report['status']} in {report.get('wall_s', report['process_wall_s']):.1f} s"
            + (f" ({report['error']})" if report.get("error") else ""))
        row = dict(case=case, kind="b", scenario=case, seed=seed, sorter="spikesort", version=version,
                   params=dict(spikesort_params), duration_s=n / fs, minutes=m, channels=channels,
                   recording=f"{channels} ch × {_duration_label(n / fs)}", source="run", result_folder=str(result_folder),
                   status=report["status"], error=report.get("error"), wall_s=report.get("wall_s"),
                   process_wall_s=report.get("process_wall_s"), cpu_s=report.get("cpu_s"),
                   load_before=report.get("load_before"), load_after=report.get("load_after"),
                   peak_rss_mb=report.get("peak_rss_mb"))
        if row["wall_s"]:
            row["x_realtime"] = row["duration_s"] / row["wall_s"]
        if report["status"] == "ok":
            row.update(speed_scenarios.stage_costs(run_json=result_folder / "spikesort_run.json"))
            row.update(score_sorting(gt=gt.frame_slice(start_frame=0, end_frame=n),
                                     tested=load_sorting_npz(path=result_folder / "sorting.npz")))
        floor = speed_scenarios.floor_pass(path=binary["path"], n_channels=binary["n_channels"], dtype=binary["dtype"],
                                           sampling_rate_hz=fs, n_samples=n, threads=floor_threads)
        log(f"[{case}] floor pass: {floor.wall_s:.1f} s ({floor.x_realtime:.1f}× real time)")
        _add_floor(row, floor)
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints one markdown table.",
        epilog="scenarios:\n" + "\n".join(f"  {s.name:9s} {s.description}" for s in SCENARIOS.values()) + "\n\n"
        "columns: well detected = GT units matched with accuracy >= 0.8 (delta 0.4 ms); FP units =\n"
        "unmatched sorted units with best agreement < 0.2; mean accuracy over all GT units (0 when\n"
        "missed); wall s = the sort call alone (imports and scoring excluded); CPU s = user+system\n"
        "of the sorter process and its workers; peak RSS = max of the polled memory (PSS) of the\n"
        "process tree and of ru_maxrss. On a shared machine check load_before/load_after in --out.\n\n"
        "--speed: one run measures (a) every sorter on --scenarios (default static64; peers from\n"
        "their cache as above), (b) spikesort on the first --speed-minutes of one Neuropixels-1.0-like\n"
        "recording of --speed-channels channels (generated once, saved as int16 and cached, so its\n"
        "generation is never timed), and beside each (c) the floor pass: read that int16 binary in\n"
        "2 s chunks and high-pass it (300 Hz, 3rd-order Butterworth, zero phase, float32) on\n"
        "--floor-threads threads. The table adds floor pass s, sort ÷ floor and per-stage\n"
        "'seconds / peak RSS MB' from spikesort_run.json, and ratio lines under it: × real time,\n"
        "sort ÷ floor, peak RSS and RSS(longest) ÷ RSS(shortest), each beside the issue's target.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenarios", nargs="+", default=None, choices=sorted(SCENARIOS),
                   metavar="NAME", help="scenarios to run (default: static32 static64; with --speed: static64)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="generation seeds (default: 0)")
    p.add_argument("--sorters", nargs="+", default=list(ALL_SORTERS), choices=ALL_SORTERS,
                   metavar="NAME", help="sorters to run: " + ", ".join(ALL_SORTERS) + "; peers that are not installed are skipped (default: all)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("SPIKESORT_BENCH_CACHE", "~/.cache/spikesort-bench")),
                   help="folder for generated recordings and cached peer results "
                        "(default: $SPIKESORT_BENCH_CACHE or ~/.cache/spikesort-bench)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for sorter output folders (default: CACHE/runs)")
    p.add_argument("--keep-outputs", action="store_true", help="keep the sorters' output folders")
    p.add_argument("--rerun-peers", action="store_true", help="re-run peers even when a cached result exists")
    p.add_argument("--cached-peers-only", action="store_true",
                   help="show peers only where a cached result exists, never run them")
    p.add_argument("--param", dest="params", action="append", type=_parse_param, default=[], metavar="KEY=VALUE",
                   help="extra spikesort.sort() parameter (VALUE parsed as JSON when it can be); repeatable")
    p.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1,
                   help="spikeinterface n_jobs for generation and peers (default: all cores)")
    p.add_argument("--timeout", type=float, default=None, help="kill a sorter after this many seconds")
    p.add_argument("--out", type=Path, default=None, help="also write the rows to OUT.json and OUT.csv")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    speed = p.add_argument_group("speed mode")
    speed.add_argument("--speed", action="store_true",
                       help="measure speed and memory (per stage, beside a floor pass) instead of accuracy; one seed")
    speed.add_argument("--speed-channels", type=int, default=384, metavar="N",
                       help="channels of the NP1-like recording: its first N contacts (default: 384)")
    speed.add_argument("--speed-minutes", nargs="*", type=float, default=[5.0, 10.0], metavar="MIN",
                       help="durations sorted from the start of one recording of the longest; none: skip (b) "
                            "(default: 5 10)")
    speed.add_argument("--speed-units", type=int, default=None, metavar="N",
                       help="ground-truth units of the NP1-like recording (default: 150 per 384 channels)")
    speed.add_argument("--floor-threads", type=int, default=2, metavar="N",
                       help="threads of the floor pass (default: 2)")
    # hidden: a stand-in for spikesort.sort (ground truth degraded in known ways), to test this script
    p.add_argument("--dummy", action="store_true", help=argparse.SUPPRESS)
    # hidden: run one sorter (internal, used by the subprocess)
    p.add_argument("--_child", type=Path, default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rerun_peers and args.cached_peers_only:
        parser.error("--rerun-peers and --cached-peers-only contradict each other")
    if args._child is not None:
        return child_main(spec_path=args._child)
    if args.speed:
        if len(args.seeds) != 1:
            parser.error("--speed runs one seed")
        if args.dummy:
            parser.error("--speed measures spikesort itself: --dummy does not apply")
        if not 8 <= args.speed_channels <= 384:
            parser.error("--speed-channels must be between 8 and 384 (the contacts of one NP1 bank)")
        if any(not 0 < m <= 600 for m in args.speed_minutes):
            parser.error("--speed-minutes must be above 0 and at most 600")
        if args.floor_threads < 1 or (args.speed_units is not None and args.speed_units < 1):
            parser.error("--floor-threads and --speed-units must be at least 1")
    scenarios = args.scenarios or (["static64"] if args.speed else ["static32", "static64"])
    cache_dir = args.cache.expanduser().resolve()
    work_dir = (args.workdir or cache_dir / "runs").expanduser().resolve()

    def log(msg):
        if not args.quiet:
            print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    if args.speed:
        return speed_main(args=args, scenarios=scenarios, cache_dir=cache_dir, work_dir=work_dir, log=log)
    rows = run_benchmark(
        scenarios=scenarios, seeds=args.seeds, sorters=args.sorters, cache_dir=cache_dir,
        work_dir=work_dir, rerun_peers=args.rerun_peers, cached_peers_only=args.cached_peers_only, spikesort_params=dict(args.params),
        n_jobs=args.n_jobs, timeout_s=args.timeout, keep_outputs=args.keep_outputs, dummy=args.dummy, log=log,
    )
    for row in rows:
        if row["sorter"] != "spikesort":
            row["sorter"] = f"{row['sorter']} {row['version']}"
        elif args.dummy:
            row["sorter"] = "spikesort (dummy)"
    print(markdown_table(rows=rows))
    if args.out is not None:
        write_outputs(rows=rows, out=args.out)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"{r['scenario']} seed {r['seed']} {r['sorter']}: {r['status']}: {r.get('error')}", file=sys.stderr)
    return 0


def speed_main(*, args, scenarios: list[str], cache_dir: Path, work_dir: Path, log) -> int:
    rows = run_speed(
        scenarios=scenarios, seed=args.seeds[0], sorters=args.sorters, cache_dir=cache_dir, work_dir=work_dir,
        rerun_peers=args.rerun_peers, cached_peers_only=args.cached_peers_only, spikesort_params=dict(args.params),
        n_jobs=args.n_jobs, timeout_s=args.timeout, keep_outputs=args.keep_outputs, channels=args.speed_channels,
        minutes=args.speed_minutes, num_units=args.speed_units, floor_threads=args.floor_threads, log=log)
    for row in rows:
        if row["sorter"] != "spikesort":
            row["sorter"] = f"{row['sorter']} {row['version']}"
    summary = speed_scenarios.speed_summary(rows=rows)
    print(speed_scenarios.speed_table(rows=rows))
    print()
    print("\n".join(summary.lines))
    if args.out is not None:
        write_outputs(rows=rows, out=args.out, extra={"ratios": summary.ratios})
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['case']} {r['sorter']}: {r['status']}: {r.get('error')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
