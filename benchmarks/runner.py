"""Running sorters: each in its own child process, so wall time and peak memory are its own.

The parent writes ``spec.json`` into the result folder and starts ``scripts/benchmark.py --_child
SPEC``; the child runs one sorter on one recording and writes ``sorting.npz`` and ``child.json``
(status, wall time of the sort call, ru_maxrss, CPU seconds) next to it, whatever happens. Peer
results are cached, keyed by the scenario spec hash, seed, sorter, version and parameters;
spikesort is always re-run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .catalog import SCENARIOS
from .scenarios import ensure_recording, ensure_true_displacement, load_recording, spec_hash
from .scoring import load_sorting_npz, motion_error_um, save_sorting_npz, score_labels, score_sorting

# the child runs the documented command: a script puts its own folder, not the cwd, on sys.path,
# so the child finds this package wherever it is started from
LAUNCHER = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"

PEER_NAMES = ("tridesclous2", "spykingcircus2", "lupin", "mountainsort5", "kilosort4", "herdingspikes")
ALL_SORTERS = ("spikesort",) + PEER_NAMES
# peer parameters on top of each sorter's defaults
PEER_PARAMS = {
    "tridesclous2": {},
    "spykingcircus2": {},  # default motion correction (dredge_fast) uses torch, installed here
    "lupin": {},
    "mountainsort5": {},
    "kilosort4": {"torch_device": "cpu"},
    "herdingspikes": {},  # HerdingSpikes2, a fast CPU detector and clusterer: the speed peer
}
# sorters that read channel positions from a "location" channel property of the recording their
# sorter process loads back from the folder (spikeinterface dumps the recording without its
# in-memory properties): they get a view of the folder that carries one
NEEDS_LOCATION_PROPERTY = ("herdingspikes",)
# on drifting scenarios, peers whose motion correction is off by default get it switched on:
# the comparison is of drift handling, not of defaults
PEER_DRIFT_PARAMS = {
    "tridesclous2": {"apply_motion_correction": True},
    "lupin": {"apply_motion_correction": True},
}


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


def with_location_property(*, recording_folder: Path, view: Path) -> Path:
    """A saved recording folder as ``view``: its metadata copied, its binary linked (not copied),
    plus ``properties/location.npy`` (the channel locations), so the recording loaded from
    ``view`` carries the "location" property. The cached folder itself is left as it is."""
    import spikeinterface as si

    source = Path(recording_folder) / "recording"
    if view.exists():
        shutil.rmtree(view)
    target = view / "recording"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.raw"))
    for raw in source.glob("*.raw"):
        (target / raw.name).symlink_to(raw.resolve())
    locations = si.load(source).get_channel_locations()
    (target / "properties").mkdir(exist_ok=True)
    np.save(target / "properties" / "location.npy", locations)
    return view


def child_main(*, spec_path: Path) -> int:
    """Run one sorter as described in ``spec_path`` (JSON); write results next to it."""
    import resource

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["result_folder"])
    report = {"status": "failed", "error": None}
    view = None
    try:
        from spikeinterface.core import set_global_job_kwargs

        set_global_job_kwargs(n_jobs=spec["n_jobs"], progress_bar=False, chunk_duration="1s")
        recording_folder = Path(spec["recording_folder"])
        if spec["sorter"] in NEEDS_LOCATION_PROPERTY:
            view = Path(spec["work_folder"]).with_name(f"{spec['sorter']}-recording")
            recording_folder = with_location_property(recording_folder=recording_folder, view=view)
        recording = load_recording(folder=recording_folder)
        if spec.get("frame_range"):
            # the speed mode's shorter case: the first part of the long recording's binary
            recording = recording.frame_slice(start_frame=spec["frame_range"][0], end_frame=spec["frame_range"][1])
        sorter = spec["sorter"]
        params = spec["params"]
        work = Path(spec["work_folder"])
        if sorter == "spikesort":
            if spec.get("dummy"):

                def sort_fn(rec, folder, **kw):
                    return dummy_sort(rec, folder, gt_path=Path(spec["recording_folder"]) / "gt_sorting.npz", **kw)

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
            for name in (
                "spikesort_run.json",
                "motion.npy",
                "motion_time_bins_s.npy",
                "motion_depth_bins_um.npy",
                "motion_shanks.npy",
            ):
                if (work / name).is_file():
                    shutil.copy(work / name, out / name)
        else:
            from spikeinterface.sorters import run_sorter

            t0 = time.perf_counter()
            sorting = run_sorter(sorter, recording, folder=work, remove_existing_folder=True, verbose=False, **params)
            wall = time.perf_counter() - t0
        save_sorting_npz(sorting=sorting, path=out / "sorting.npz")
        report.update(status="ok", wall_s=wall)
    except BaseException as exc:  # noqa: BLE001  the parent reports it; the child must always write its report
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
    if view is not None:
        shutil.rmtree(view, ignore_errors=True)
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    report["maxrss_self_mb"] = _own_peak_mb(own)
    report["maxrss_children_mb"] = kids.ru_maxrss / 1024
    # CPU seconds of the child and its workers: a check on wall times taken on a busy machine
    report["cpu_s"] = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    (out / "child.json").write_text(json.dumps(report, indent=1))
    return 0 if report["status"] == "ok" else 1


def _store_kind(result_folder: Path, *, label: str, log) -> dict:
    """``{"trace_store": kind}`` from a spikesort run's record (empty without one). A compressed
    copy on a recording the sorter would keep plain means the disk was short: the sort rounds the
    traces then and can differ a little from one on a roomier disk, so the run says it."""
    path = result_folder / "spikesort_run.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    kind = record.get("trace_store")
    if kind is None:
        return {}
    rec = record.get("recording", {})
    from spikesort.pipeline.traces import compressed_by_size

    if kind == "compressed" and not compressed_by_size(rec.get("n_samples", 0), rec.get("n_channels", 0)):
        log(f"{label} spikesort kept its traces compressed (the disk was short): its figures may differ a little")
    return {"trace_store": kind}


def _own_peak_mb(own) -> float:
    """This process's peak RSS in MB. Linux keeps ru_maxrss across exec, so a child started by a
    parent that had grown large (one that generated a MEArec recording in memory: 9 GB) would
    report the parent's peak; the high-water mark of /proc/self/status starts afresh at exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return own.ru_maxrss / 1024


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


@dataclasses.dataclass(frozen=True)
class Polled:
    returncode: int
    wall_s: float
    peak_mb: float  # largest RSS of the process tree seen while polling
    timed_out: bool
    # (elapsed s, MB) of the process tree every ``timeline_s`` when asked: the polls already read it
    timeline: tuple = ()


def run_polled(
    argv: list[str],
    *,
    log_path: Path,
    timeout_s: float | None,
    poll_s: float,
    env=None,
    timeline_s: float | None = None,
) -> Polled:
    """Run ``argv`` in its own session (stdout and stderr to ``log_path``), polling the memory of its
    process tree; kill the whole session at ``timeout_s`` or when the benchmark itself is interrupted.
    With ``timeline_s``, keep one of the polled values every ``timeline_s`` seconds as well."""
    import psutil

    if timeline_s is not None and timeline_s <= 0:
        raise ValueError(f"timeline_s must be positive, got {timeline_s}")
    peak_mb = 0.0
    timed_out = False
    timeline = []
    next_t = 0.0
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc = psutil.Process(child.pid)
        try:
            while child.poll() is None:
                now_mb = _tree_memory_mb(proc)
                peak_mb = max(peak_mb, now_mb)
                elapsed = time.perf_counter() - t0
                # a tree that exited since the poll reads 0 MB (a zombie has no memory), and one not
                # yet exec'd reads a few kB (a loaded machine showed 0.0 MB at 0 s): no sample
                if timeline_s is not None and elapsed >= next_t and now_mb >= 1.0:
                    timeline.append((round(elapsed, 1), round(now_mb, 1)))
                    next_t = elapsed + timeline_s
                if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                    timed_out = True
                    break
                time.sleep(poll_s)
        finally:
            if child.poll() is None:  # timeout, or the benchmark itself was interrupted
                os.killpg(child.pid, 9)
                child.wait()
    return Polled(
        returncode=child.returncode,
        wall_s=time.perf_counter() - t0,
        peak_mb=peak_mb,
        timed_out=timed_out,
        timeline=tuple(timeline),
    )


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
    rss_timeline_s: float | None = None,
) -> dict:
    """Run one sorter in a child python; return status, wall and peak memory (and, with
    ``rss_timeline_s``, ``rss_timeline``: [elapsed s, MB] of the process tree every that many s)."""
    result_folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "sorter": sorter,
        "recording_folder": str(recording_folder),
        "work_folder": str(work_folder),
        "result_folder": str(result_folder),
        "params": params,
        "n_jobs": n_jobs,
        "dummy": dummy,
        "frame_range": None if frame_range is None else [int(frame_range[0]), int(frame_range[1])],
    }
    spec_path = result_folder / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    log_path = result_folder / "child.log"
    load_before = os.getloadavg()[0]
    run = run_polled(
        [sys.executable, str(LAUNCHER), "--_child", str(spec_path)],
        log_path=log_path,
        timeout_s=timeout_s,
        poll_s=poll_s,
        timeline_s=rss_timeline_s,
    )
    child, peak_mb, timed_out, total = run, run.peak_mb, run.timed_out, run.wall_s
    report_path = result_folder / "child.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if timed_out:
        report.update(status="timeout", error=f"killed after {timeout_s:.0f} s")
    elif not report:
        report.update(status="failed", error=f"child exited with code {child.returncode}, see {log_path}")
    peak_mb = max(peak_mb, report.get("maxrss_self_mb", 0.0), report.get("maxrss_children_mb", 0.0))
    # 1-min load average before and after: other jobs on the machine inflate wall times
    report.update(process_wall_s=total, peak_rss_mb=peak_mb, load_before=load_before, load_after=os.getloadavg()[0])
    if rss_timeline_s is not None:
        report["rss_timeline"] = [list(point) for point in run.timeline]
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


def peer_cache_folder(
    *, cache_dir: Path, scenario_spec_hash: str, scenario: str, seed: int, sorter: str, version: str, params: dict
) -> Path:
    params_hash = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return cache_dir / "peers" / f"{scenario}_seed{seed}_{scenario_spec_hash}" / f"{sorter}-{version}-{params_hash}"


# ---------------------------------------------------------------------------------------------
# the accuracy benchmark


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
    """Rows of the accuracy table: every sorter on every scenario and seed, each scored against the
    ground truth; a peer is read from its cache when it can be, spikesort is always run."""
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
                row = {
                    "scenario": name,
                    "seed": seed,
                    "sorter": sorter,
                    "version": version,
                    "duration_s": scenario.duration_s,
                }
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
                        cache_dir=cache_dir,
                        scenario_spec_hash=shash,
                        scenario=name,
                        seed=seed,
                        sorter=sorter,
                        version=version,
                        params=params,
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
                    run_folder = (
                        result_folder if sorter == "spikesort" else result_folder.with_name(result_folder.name + ".run")
                    )
                    if run_folder.exists():
                        shutil.rmtree(run_folder)
                    work_folder = work_dir / f"{name}_seed{seed}" / sorter
                    log(f"[{name} seed {seed}] {sorter} {version}: running ...")
                    report = run_sorter_subprocess(
                        sorter=sorter,
                        recording_folder=folder,
                        work_folder=work_folder,
                        result_folder=run_folder,
                        params=params,
                        n_jobs=n_jobs,
                        timeout_s=timeout_s,
                        dummy=dummy and sorter == "spikesort",
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
                    log(
                        f"[{name} seed {seed}] {sorter}: {report['status']} in "
                        f"{report.get('wall_s', report['process_wall_s']):.1f} s"
                        + (f" ({report['error']})" if report.get("error") else "")
                    )
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
                    if sorter == "spikesort":
                        row.update(_store_kind(result_folder, label=f"[{name} seed {seed}]", log=log))
                    if sorter == "spikesort" and scenario.drift != "none" and not dummy:
                        truth = ensure_true_displacement(folder=folder, scenario=scenario, seed=seed)
                        row["motion_rms_um"] = motion_error_um(motion_folder=result_folder, truth_path=truth)
                    if sorter != "spikesort" and not cached:
                        keep = {k: v for k, v in report.items() if k != "traceback"}
                        keep.update({k: row[k] for k in ("well_detected", "num_gt", "mean_accuracy")})
                        (result_folder / "result.json").write_text(json.dumps(keep, indent=1))
                rows.append(row)
    return rows
