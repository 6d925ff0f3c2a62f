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
    elif kind == "np1_64":
        from probeinterface.neuropixels_tools import build_neuropixels_probe

        # first 64 contacts of a Neuropixels 1.0: x = 16/48, 0/32 staggered rows, 20 µm pitch
        probe = build_neuropixels_probe("NP1000").get_slice(np.arange(64))
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
    from spikeinterface.preprocessing import scale

    folder = recording_folder(cache_dir=cache_dir, scenario=scenario.name, seed=seed)
    spec = scenario_spec(scenario=scenario, seed=seed)
    spec_file = folder / "scenario.json"
    if spec_file.exists() and json.loads(spec_file.read_text()) == spec:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        probe = build_probe(kind=scenario.probe)
        static, drifting, gt = generate_drifting_recording(
            num_units=scenario.num_units,
            duration=scenario.duration_s,
            probe=probe,
            generate_displacement_vector_kwargs=displacement_kwargs(drift=scenario.drift),
            seed=seed,
        )
        source = static if scenario.drift == "none" else drifting
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
    from spikesort.motion import Motion

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
    good_matched = sum(1 for u in good if match[u] != -1 and comp.agreement_scores.at[match[u], u] >= WELL_DETECTED_SCORE)
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
            # the motion estimate, for the motion-error column
            for name in ("motion.npy", "motion_time_bins_s.npy", "motion_depth_bins_um.npy", "motion_shanks.npy"):
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


def write_outputs(*, rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints one markdown table.",
        epilog="scenarios:\n" + "\n".join(f"  {s.name:9s} {s.description}" for s in SCENARIOS.values()) + "\n\n"
        "columns: well detected = GT units matched with accuracy >= 0.8 (delta 0.4 ms); FP units =\n"
        "unmatched sorted units with best agreement < 0.2; mean accuracy over all GT units (0 when\n"
        "missed); wall s = the sort call alone (imports and scoring excluded); CPU s = user+system\n"
        "of the sorter process and its workers; peak RSS = max of the polled memory (PSS) of the\n"
        "process tree and of ru_maxrss. On a shared machine check load_before/load_after in --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenarios", nargs="+", default=["static32", "static64"], choices=sorted(SCENARIOS),
                   metavar="NAME", help="scenarios to run (default: static32 static64)")
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
    cache_dir = args.cache.expanduser().resolve()
    work_dir = (args.workdir or cache_dir / "runs").expanduser().resolve()

    def log(msg):
        if not args.quiet:
            print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    rows = run_benchmark(
        scenarios=args.scenarios, seeds=args.seeds, sorters=args.sorters, cache_dir=cache_dir,
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


if __name__ == "__main__":
    sys.exit(main())
