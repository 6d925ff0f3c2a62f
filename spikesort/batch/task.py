"""Many recordings, many machines: sort a manifest of recordings on dask.distributed.

A manifest (TOML or CSV, see :func:`read_manifest`) lists recordings with their probe and
format flags. :func:`run_batch` sorts each one into ``OUTROOT/<name>/`` exactly as
``spikesort run`` would (same reader, same probe attachment, same ``sort``), with the
recording's log in ``OUTROOT/<name>/spikesort.log``, and writes ``OUTROOT/batch_summary.csv``.

Execution model:

- a dask task is one whole recording; the data never travels through dask (the worker reads
  the file itself), only a small job description and a small outcome do;
- a worker sorts one recording at a time (a dask resource, ``spikesort_recording = 1`` per
  worker) and gives it all its threads: ``Params.n_jobs`` = the worker's ``nthreads`` (unless
  the user set n_jobs), and the BLAS pool is raised to the same count for the task (dask's
  nanny starts workers with OPENBLAS/MKL/OMP_NUM_THREADS=1);
- the local cluster's workers leave out the dask defaults that slow a sort (glibc's malloc
  trim setting, the profiler, frequent event-loop callbacks: :func:`local_cluster_config`),
  and the driver never imports the sorter itself: a batch costs less than a loop of
  ``spikesort run``, which pays interpreter start, imports and teardown per recording;
- a failing recording becomes a ``failed`` row with its error line, the others go on;
- on a re-run, a recording whose folder is complete (``pipeline.is_complete``, same
  parameters) is skipped, an unfinished folder is resumed (``sort(..., resume=True)``).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import glob
import io
import logging
import math
import os
import shutil
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from spikesort.errors import SpikesortError
from spikesort.params import Params

log = logging.getLogger(__name__)

__all__ = ["BatchJob", "BatchResult", "RecordingOutcome", "cluster_layout", "read_manifest", "run_batch",
           "sort_recording_task", "usable_cores"]

# manifest keys of one recording; every key but name/path may also be a TOML top-level default
RECORDING_KEYS = ("name", "path", "probe", "format", "sampling_rate", "n_channels", "dtype", "offset")
DEFAULT_KEYS = RECORDING_KEYS[2:]
TOML_TOP_KEYS = DEFAULT_KEYS + ("glob", "recording")
from spikesort.layout import BATCH_LOG as BATCH_LOG_NAME, BATCH_SCRATCH_DIR as SCRATCH_DIR, BATCH_SUMMARY as SUMMARY_NAME, LOG_FILE as LOG_NAME, RUN_FILE  # noqa: E501
RESOURCE = "spikesort_recording"  # one unit per worker: a worker sorts one recording at a time
SUMMARY_COLUMNS = ("name", "status", "units", "good_units", "wall_s", "peak_rss_mb", "n_jobs", "worker", "pid",
                   "started", "error", "output", "log")
_GLOB_CHARS = frozenset("*?[")
_PROBE_SUFFIXES = (".json", ".prb", ".mat")
# a concurrent recording needs this much memory on a typical probe (README benchmark: 1.3 GB
# for 64 channels x 300 s); the default layout never plans more workers than memory / this
_MEMORY_PER_WORKER_B = 4 * 2**30
_MAX_THREADS_PER_WORKER = 4


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BatchJob:
    """One recording of a manifest, with everything ``spikesort run`` needs to open it."""

    name: str
    path: Path
    output: Path
    probe: str | None = None
    fmt: str | None = None
    sampling_rate_hz: float | None = None
    n_channels: int | None = None
    dtype: str | None = None
    offset_bytes: int = 0
    where: str = ""  # "manifest.csv, row 3": for messages


@dataclass
class RecordingOutcome:
    """What happened to one recording (one row of batch_summary.csv)."""

    name: str
    status: str  # "done" (sorted now), "skipped" (finished earlier), "failed", or "interrupted" (batch stopped)
    output: Path
    units: int | None = None
    good_units: int | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    n_jobs: int | None = None
    worker: str = ""
    pid: int | None = None
    started: float | None = None  # unix time the worker started it
    error: str = ""
    log: Path | None = None

    def row(self) -> dict:
        def num(v, fmt):
            return "" if v is None else format(v, fmt)

        return dict(name=self.name, status=self.status, units=num(self.units, "d"),
                    good_units=num(self.good_units, "d"), wall_s=num(self.wall_s, ".1f"),
                    peak_rss_mb=num(self.peak_rss_mb, ".0f"), n_jobs=num(self.n_jobs, "d"), worker=self.worker,
                    pid=num(self.pid, "d"), started=_iso(self.started), error=self.error, output=str(self.output),
                    log=str(self.log) if self.log else "")


def _iso(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def _from_iso(text: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S")) if text else None
    except (ValueError, OverflowError):
        return None


@dataclass
class BatchResult:
    outcomes: list[RecordingOutcome]
    summary_path: Path
    wall_s: float
    cluster: str  # what it ran on, e.g. "a local cluster of 1 worker x 2 threads"

    @property
    def failed(self) -> list[RecordingOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


# --------------------------------------------------------------------------- manifest


def read_manifest(path: str | Path, *, out_root: str | Path) -> list[BatchJob]:
    """Read a TOML or CSV manifest into jobs; SpikesortError (one line) for any mistake in it.

    Relative recording and probe paths are relative to the manifest's folder; every path in
    the jobs is absolute, so that workers on other machines (same shared file system) find it. A ``path`` with
    ``*``, ``?`` or ``[`` is a glob: every match is one recording, named after its file stem.
    TOML::

        probe = "linear-32"          # top-level keys: defaults for every recording
        sampling_rate = 30000
        n_channels = 32
        dtype = "int16"
        glob = "raw/*.bin"           # optional: every match is a recording

        [[recording]]                # and/or one table per recording
        name = "m2_day1"             # optional, default: the file stem
        path = "other/m2.dat"
        probe = "probes/m2.json"     # overrides the default

    CSV: a header with ``path`` and any of name, probe, format, sampling_rate, n_channels,
    dtype, offset; one row per recording (or glob); empty cells are unset; rows whose first
    cell starts with ``#`` are comments.
    """
    # absolute paths (symlinks kept): a worker on another machine has another working folder
    manifest = _absolute(path)
    if not manifest.exists():
        raise SpikesortError(f"manifest not found: {manifest}")
    if not manifest.is_file():
        raise SpikesortError(f"manifest {manifest} is not a file")
    suffix = manifest.suffix.lower()
    if suffix == ".toml":
        entries = _toml_entries(manifest)
    elif suffix == ".csv":
        entries = _csv_entries(manifest)
    else:
        raise SpikesortError(f"manifest {manifest} must be a .toml or .csv file")
    out_root = _absolute(out_root)
    jobs = []
    for where, values in entries:
        jobs.extend(_jobs_from_entry(values, where=where, base=manifest.parent, out_root=out_root))
    if not jobs:
        raise SpikesortError(f"manifest {manifest} lists no recordings")
    _check_names(jobs)
    _check_probes(jobs)
    _check_outputs(jobs, out_root)
    return jobs


def _absolute(path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _toml_entries(manifest: Path) -> list[tuple[str, dict]]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpikesortError(f"manifest {manifest} is not valid TOML: {exc}") from None
    for key in data:
        if key not in TOML_TOP_KEYS:
            hint = " (name and path belong in a [[recording]] table)" if key in ("name", "path") else \
                _suggest(key, TOML_TOP_KEYS)
            raise SpikesortError(f"manifest {manifest}: unknown key '{key}'{hint}; "
                                 f"top-level keys are {', '.join(TOML_TOP_KEYS)}")
    defaults = {k: data[k] for k in DEFAULT_KEYS if k in data}
    entries = []
    globs = data.get("glob", [])
    if isinstance(globs, str):
        globs = [globs]
    if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs):
        raise SpikesortError(f"manifest {manifest}: glob must be a string or a list of strings")
    for i, pattern in enumerate(globs):
        entries.append((f"manifest {manifest}, glob '{pattern}'", {**defaults, "path": pattern, "_glob": True}))
    tables = data.get("recording", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise SpikesortError(f"manifest {manifest}: write each recording as a [[recording]] table")
    for i, table in enumerate(tables, start=1):
        where = f"manifest {manifest}, recording {i}"
        for key in table:
            if key not in RECORDING_KEYS:
                raise SpikesortError(f"{where}: unknown key '{key}'{_suggest(key, RECORDING_KEYS)}; "
                                     f"keys are {', '.join(RECORDING_KEYS)}")
        if "path" not in table:
            raise SpikesortError(f"{where}: no path")
        entries.append((where, {**defaults, **table}))
    return entries


def _csv_entries(manifest: Path) -> list[tuple[str, dict]]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")  # a spreadsheet may write a BOM
    except UnicodeDecodeError:
        raise SpikesortError(f"manifest {manifest} is not a UTF-8 text file") from None
    rows = list(csv.reader(io.StringIO(text)))
    # the header is the first row that is neither empty nor a comment
    numbered = [(i, r) for i, r in enumerate(rows, start=1)
                if any(c.strip() for c in r) and not r[0].strip().startswith("#")]
    if not numbered:
        raise SpikesortError(f"manifest {manifest} is empty: its first line must be a header with a path column")
    header_line, header = numbered[0]
    columns = [c.strip().lower() for c in header]
    for c in columns:
        if c not in RECORDING_KEYS:
            what = "an empty column name" if not c else f"unknown column '{c}'{_suggest(c, RECORDING_KEYS)}"
            raise SpikesortError(f"manifest {manifest}, line {header_line}: {what}; "
                                 f"columns are {', '.join(RECORDING_KEYS)}")
    seen = set()
    for c in columns:
        if c in seen:
            raise SpikesortError(f"manifest {manifest}, line {header_line}: column '{c}' appears twice")
        seen.add(c)
    if "path" not in columns:
        raise SpikesortError(f"manifest {manifest}, line {header_line}: no 'path' column in the header")
    entries = []
    for line, row in numbered[1:]:
        where = f"manifest {manifest}, line {line}"
        if len(row) > len(columns) and any(c.strip() for c in row[len(columns):]):
            raise SpikesortError(f"{where}: {len(row)} cells but the header has {len(columns)} columns")
        values = {c: v.strip() for c, v in zip(columns, row) if v.strip()}
        if "path" not in values:
            raise SpikesortError(f"{where}: no path")
        entries.append((where, values))
    return entries


def _is_glob(text: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in text)


def _jobs_from_entry(values: dict, *, where: str, base: Path, out_root: Path) -> list[BatchJob]:
    raw_path = values["path"]
    if not isinstance(raw_path, str) or not raw_path.strip():
        raise SpikesortError(f"{where}: path must be a non-empty string")
    raw_path = raw_path.strip()
    flags = _recording_flags(values, where=where, base=base)
    if values.get("_glob") or _is_glob(raw_path):
        if "name" in values:
            raise SpikesortError(f"{where}: a glob path ({raw_path}) takes no name: each match is named after its file")
        pattern = Path(raw_path).expanduser()
        pattern = pattern if pattern.is_absolute() else base / pattern
        matches = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True))
        if not matches:
            raise SpikesortError(f"{where}: the glob {raw_path} matches no file (looked in {base})")
        return [BatchJob(name=_default_name(p), path=p, output=out_root / _default_name(p), where=where, **flags)
                for p in matches]
    path = Path(raw_path).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise SpikesortError(f"{where}: recording not found: {path}")
    name = values.get("name", _default_name(path))
    name = _check_name(name, where=where)
    return [BatchJob(name=name, path=path, output=out_root / name, where=where, **flags)]


def _default_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _check_name(name, *, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SpikesortError(f"{where}: name must be a non-empty string")
    name = name.strip()
    # the name becomes one folder under OUTROOT: no separators, no hidden or special names
    if "/" in name or "\\" in name or "\0" in name or name.startswith(".") or name.lower() == SUMMARY_NAME \
            or name.lower() == BATCH_LOG_NAME:
        raise SpikesortError(f"{where}: '{name}' cannot be a folder name under the output root "
                             f"(no '/', no leading '.', not {SUMMARY_NAME} or {BATCH_LOG_NAME})")
    return name


def _number(values: dict, key: str, *, where: str, kind: type, low: float, inclusive: bool = True):
    if key not in values:
        return None
    v = values[key]
    try:
        if isinstance(v, bool):
            raise ValueError
        f = float(v)
        if kind is int:
            if f != int(f):
                raise ValueError
            f = int(f)
    except (TypeError, ValueError):
        raise SpikesortError(f"{where}: {key} must be a {'whole number' if kind is int else 'number'}, "
                             f"got {v!r}") from None
    if not math.isfinite(f) or f < low or (not inclusive and f == low):
        raise SpikesortError(f"{where}: {key} must be {'>=' if inclusive else '>'} {low:g}, got {v!r}")
    return f


def _recording_flags(values: dict, *, where: str, base: Path) -> dict:
    # io.formats, not io.recordings: the driver never imports spikeinterface, which only the workers need
    from spikesort.io.formats import FORMATS as SUPPORTED_FORMATS

    fmt = values.get("format")
    if fmt is not None:
        if not isinstance(fmt, str) or fmt.strip().lower() not in SUPPORTED_FORMATS:
            raise SpikesortError(f"{where}: unknown format {fmt!r}: choose one of {', '.join(SUPPORTED_FORMATS)}")
        fmt = fmt.strip().lower()
    dtype = values.get("dtype")
    if dtype is not None:
        import numpy as np

        try:
            ok = np.dtype(str(dtype)).kind in "iuf" and np.dtype(str(dtype)).itemsize <= 8
        except TypeError:
            ok = False
        if not isinstance(dtype, str) or not ok:
            raise SpikesortError(f"{where}: dtype must be a numeric type such as int16 or float32, got {dtype!r}")
    probe = values.get("probe")
    if probe is not None:
        if not isinstance(probe, str) or not probe.strip():
            raise SpikesortError(f"{where}: probe must be a bundled probe name or a probe file path")
        probe = probe.strip()
        p = Path(probe).expanduser()
        # a path-like probe is relative to the manifest; a bare name is a bundled probe
        if not p.is_absolute() and (p.suffix.lower() in _PROBE_SUFFIXES or "/" in probe or "\\" in probe):
            probe = str(base / p)
    rate = _number(values, "sampling_rate", where=where, kind=float, low=0.0, inclusive=False)
    n_channels = _number(values, "n_channels", where=where, kind=int, low=1)
    offset = _number(values, "offset", where=where, kind=int, low=0)
    return dict(probe=probe, fmt=fmt, sampling_rate_hz=rate, n_channels=n_channels, dtype=dtype,
                offset_bytes=offset or 0)


def _check_names(jobs: list[BatchJob]) -> None:
    # case-insensitive: two names differing in case are one folder on macOS and Windows
    seen: dict[str, BatchJob] = {}
    for job in jobs:
        key = job.name.lower()
        if key in seen:
            first = seen[key]
            raise SpikesortError(f"two recordings are named '{job.name}' ({first.where}: {first.path}; "
                                 f"{job.where}: {job.path}): give them distinct names")
        seen[key] = job


def _check_probes(jobs: list[BatchJob]) -> None:
    from spikesort.io.probes import load_probe

    checked: set = set()
    for job in jobs:
        if job.probe is None or job.probe in checked:
            continue
        try:
            load_probe(job.probe)
        except SpikesortError as exc:
            raise SpikesortError(f"{job.where}: {exc}") from None
        checked.add(job.probe)


def _check_outputs(jobs: list[BatchJob], out_root: Path) -> None:
    if out_root.exists() and not out_root.is_dir():
        raise SpikesortError(f"output root {out_root} is a file, not a folder")
    inputs = [(j, Path(j.path).resolve()) for j in jobs]
    inputs += [(j, Path(j.probe).resolve()) for j in jobs if j.probe and Path(j.probe).is_file()]
    for job in jobs:
        target = job.output.resolve()
        for owner, p in inputs:
            # a resumed or overwritten folder must never hold an input
            if p == target or target in p.parents:
                raise SpikesortError(f"output folder {job.output} (recording '{job.name}') contains the input {p} "
                                     f"of {owner.where}: choose another output root")


# --------------------------------------------------------------------------- cluster layout


def usable_cores() -> int:
    """CPUs this process may run on (a SLURM allocation or taskset, not the whole node)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _total_memory_b() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def cluster_layout(*, cores: int, n_recordings: int, workers: int | None = None, threads: int | None = None,
                   memory_b: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) for a local cluster; workers x threads never exceeds cores.

    Default: one worker per 4 cores (one worker holding every core on machines of up to 5),
    never more workers than recordings or than memory / 4 GB. A recording sorted by one
    worker with T threads runs like ``spikesort run`` on a T-core machine; more workers only
    pay off when a recording's serial stages (clustering, merges) would leave cores idle.
    """
    if workers is not None and workers < 1:
        raise SpikesortError(f"--workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise SpikesortError(f"--threads must be >= 1, got {threads}")
    cores = max(1, int(cores))
    if workers is None and threads is None:
        workers = max(1, round(cores / _MAX_THREADS_PER_WORKER))
        if memory_b:
            workers = min(workers, max(1, memory_b // _MEMORY_PER_WORKER_B))
        workers = max(1, min(workers, n_recordings))
        return workers, max(1, cores // workers)
    if workers is None:
        return max(1, min(cores // threads, n_recordings)), threads
    if threads is None:
        return workers, max(1, cores // workers)
    return workers, threads


# --------------------------------------------------------------------------- the worker side


class _PeakRss:
    """Peak resident memory of this process while a task runs, without psutil.

    Linux: the kernel's high-water mark (VmHWM) is reset when the task starts (writing 5 to
    /proc/self/clear_refs) and read when it ends: exact, and free. Where that is refused, a
    thread samples the resident size every 50 ms (it can miss a peak shorter than that).
    ``resource.getrusage``'s ru_maxrss is not used: it is the maximum over the whole life of
    the worker process, so every recording after the largest would report the largest.
    """

    def __init__(self, *, sample: bool = False):
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread = None
        try:
            if sample:
                raise OSError("sampling asked for")
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.method = "hwm"
        except OSError:
            self.method = "sampled"
            self._thread = threading.Thread(target=self._sample, name="spikesort-rss", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while True:
            now = _rss_mb()
            if now is not None:
                self._peak = max(self._peak, now)
            if self._stop.wait(0.05):
                return

    def stop(self) -> float | None:
        if self.method == "hwm":
            return _proc_status_mb("VmHWM")
        self._stop.set()
        self._thread.join()
        return self._peak or None


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return None  # no /proc (macOS): no figure rather than a wrong one


class _LogFilter(logging.Filter):
    # spikesort's own records at every level; other libraries' (numba, spikeinterface,
    # distributed) only from WARNING, as in `spikesort run`'s log
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("spikesort") or record.levelno >= logging.WARNING


def _scratch_log(job: BatchJob) -> Path:
    return job.output.parent / SCRATCH_DIR / f"{job.name}.log"


def _append(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "ab") as fout:
        shutil.copyfileobj(fin, fout)
    src.unlink()


def _finish_log(job: BatchJob) -> Path | None:
    """Move the scratch log into OUT/<name>/spikesort.log (appended to an earlier attempt's)."""
    scratch = _scratch_log(job)
    if not scratch.exists():
        return job.output / LOG_NAME if (job.output / LOG_NAME).exists() else None
    job.output.mkdir(parents=True, exist_ok=True)
    target = job.output / LOG_NAME
    try:
        if target.exists():
            _append(scratch, target)
        else:
            shutil.move(str(scratch), str(target))
    except OSError:
        return scratch  # keep it where it is: a log in the scratch folder beats no log
    try:
        scratch.parent.rmdir()  # only when it is empty
    except OSError:
        pass
    return target


def _worker_identity() -> tuple[str, int]:
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.address), int(worker.state.nthreads)
    except (ImportError, ValueError):  # not inside a dask worker (e.g. called directly)
        return "", usable_cores()


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else "(no message)"


def _count_good(labels) -> int:
    import numpy as np

    return int(np.sum(np.asarray(labels if labels is not None else [], dtype=str) == "good"))


def _is_finished(folder: Path, params: Params) -> bool:
    """A finished run made with these parameters (sort would only read it back)."""
    # checkpoints, not pipeline: the driver never imports the sorter (scipy.signal, numba: 1.5 s)
    from spikesort.pipeline import checkpoints

    if not folder.is_dir() or not checkpoints.is_complete(folder):
        return False
    # other parameters: not skipped; the worker's sort(resume=True) then says what differs
    marker = checkpoints.read_marker(folder) or {}
    return not checkpoints.param_differences(marker.get("params", {}), checkpoints.param_values(params))


def sort_recording_task(job: BatchJob, *, params: Params, overwrite: bool = False) -> RecordingOutcome:
    """Sort one recording in this process (a dask worker): never raises for the recording's
    own failures, which come back as a ``failed`` outcome with the one error line.

    An existing unfinished folder is resumed (``overwrite`` sorts it from scratch instead)."""
    # the first task of a worker imports the readers and the pipeline: not part of its time
    import spikesort.pipeline as pipeline  # noqa: F401
    from spikesort.io import probes, recordings  # noqa: F401

    t0 = time.perf_counter()
    started = time.time()
    peak = _PeakRss()
    address, nthreads = _worker_identity()
    n_jobs = params.n_jobs or nthreads
    params = dataclasses.replace(params, n_jobs=n_jobs)
    outcome = RecordingOutcome(name=job.name, status="failed", output=job.output, n_jobs=n_jobs, worker=address,
                               pid=os.getpid(), started=started)
    scratch = _scratch_log(job)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(scratch, mode="a", encoding="utf8")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_LogFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, pkg = logging.getLogger(), logging.getLogger("spikesort")
    saved_level = pkg.level
    root.addHandler(handler)
    pkg.setLevel(logging.DEBUG)
    try:
        from spikesort import __version__

        log.info("spikesort %s batch: sorting %s (%s) into %s on worker %s, pid %d, %d threads", __version__,
                 job.name, job.path, job.output, address or "(none)", os.getpid(), n_jobs)
        result = _sort_job(job, params=params, overwrite=overwrite)
        outcome.status, outcome.units, outcome.good_units = "done", int(result.n_units), _count_good(result.labels)
        log.info("batch: %s done: %d units (%d good)", job.name, outcome.units, outcome.good_units)
    except SpikesortError as exc:
        outcome.error = f"error: {_one_line(str(exc))}"
        log.error("batch: %s failed: %s", job.name, outcome.error)
    except Exception as exc:  # a bug or an unreadable file: the traceback goes to this recording's log
        outcome.error = f"internal error: {type(exc).__name__}: {_one_line(str(exc))}"
        log.error("batch: %s failed: %s\n%s", job.name, outcome.error,
                  "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    finally:
        outcome.wall_s = time.perf_counter() - t0
        outcome.peak_rss_mb = peak.stop()
        log.info("batch: %s took %.1f s, peak RSS %s MB (%s)", job.name, outcome.wall_s,
                 "?" if outcome.peak_rss_mb is None else f"{outcome.peak_rss_mb:.0f}", peak.method)
        root.removeHandler(handler)
        handler.close()
        pkg.setLevel(saved_level)
        outcome.log = _finish_log(job)
    return outcome


def _sort_job(job: BatchJob, *, params: Params, overwrite: bool):
    from spikesort.io.probes import attach_probe, load_probe
    from spikesort.io.recordings import open_recording
    from spikesort.pipeline import sort

    recording = open_recording(job.path, fmt=job.fmt, sampling_rate_hz=job.sampling_rate_hz,
                               n_channels=job.n_channels, dtype=job.dtype, offset_bytes=job.offset_bytes)
    if job.probe is not None:
        recording = attach_probe(recording, load_probe(job.probe))
    elif not recording.has_probe():
        raise SpikesortError(f"the recording {job.path} has no probe geometry: give it a probe in the manifest")
    # resume: a missing folder is created, an unfinished one continued from its checkpoints
    resume = not overwrite
    if resume and job.output.exists():
        log.info("resuming the unfinished folder %s", job.output)
    # dask's nanny starts workers with one BLAS thread; the recording owns n_jobs cores
    try:
        from threadpoolctl import threadpool_limits

        blas = threadpool_limits(limits=params.n_jobs, user_api="blas")
    except ImportError:  # threadpoolctl comes with spikeinterface; without it BLAS keeps its count
        blas = contextlib.nullcontext()
    with blas:
        result = sort(recording, job.output, params=params, overwrite=overwrite, resume=resume, progress=False)
    try:  # as `spikesort run` does; the sorting is finished, so a figure problem does not fail it
        from spikesort.outputs.report import make_report

        make_report(job.output)
    except Exception as exc:
        log.warning("report not written (%s): rebuild it with `spikesort report %s`", exc, job.output)
    return result


# --------------------------------------------------------------------------- the driver


def _finished_outcome(job: BatchJob, previous: dict) -> RecordingOutcome:
    """A recording an earlier batch (or `spikesort run`) finished: units and good units from its folder."""
    import json

    units = good = None
    try:
        units = int(json.loads((job.output / RUN_FILE).read_text(encoding="utf8"))["n_units"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    labels = job.output / "cluster_KSLabel.tsv"
    if labels.is_file():
        try:
            rows = labels.read_text(encoding="utf8").splitlines()[1:]
            good = sum(1 for r in rows if r.split("\t")[-1].strip() == "good")
        except OSError:
            pass
    elif units == 0:
        good = 0
    before = previous.get(job.name, {})

    def old(key, kind):
        try:
            return kind(before[key]) if before.get(key) else None
        except ValueError:
            return None

    # wall time and memory are those of the sort that made the folder, when an earlier summary has them
    return RecordingOutcome(name=job.name, status="skipped", output=job.output, units=units, good_units=good,
                            wall_s=old("wall_s", float), peak_rss_mb=old("peak_rss_mb", float),
                            n_jobs=old("n_jobs", int), worker=before.get("worker", ""), pid=old("pid", int),
                            started=_from_iso(before.get("started")),
                            log=job.output / LOG_NAME if (job.output / LOG_NAME).exists() else None)


def _read_summary(path: Path) -> dict:
    try:
        with open(path, newline="", encoding="utf8") as fh:
            return {row.get("name", ""): row for row in csv.DictReader(fh)}
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}


def write_summary(outcomes: list[RecordingOutcome], path: Path) -> None:
    """batch_summary.csv, written to a temporary name and renamed (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for o in outcomes:
            writer.writerow(o.row())
    os.replace(tmp, path)


class _OneRecordingPerWorker(WorkerPlugin):
    """Worker plugin for a cluster we did not start: gives every worker, present or joining
    later, one ``spikesort_recording`` resource, so that it sorts one recording at a time."""

    name = "spikesort-one-recording-per-worker"

    async def setup(self, worker):
        if RESOURCE not in worker.state.total_resources:
            await worker.set_resources(**{RESOURCE: 1})


def local_cluster_config() -> dict:
    """dask settings for the local cluster, so that its workers sort a recording as fast as a
    ``spikesort run`` process does. Measured in a default worker, per recording of 32 channels
    x 60 s (about 15 s of sorting):

    - the nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` freezes glibc's mmap threshold at 128 kB: every
      chunk-sized numpy array is a fresh mmap whose pages fault in again (9x the page faults,
      4.2-4.7 s of system time instead of 1.1-2.1 s);
    - the statistical profiler samples every thread's stack every 10 ms, the event loop's
      tick runs every 20 ms and the system monitor every 0.5 s: 1-2.4 s of CPU (and GIL) on
      the worker's event loop per recording, 0.1 s without;
    - spilling and pausing (and the 100 ms memory monitor behind them) do nothing for a task
      that holds its own memory; the nanny still restarts a worker above 95% of its memory
      limit (that recording fails, the others go on).

    The nanny's one BLAS thread stays (``sort_recording_task`` raises it for the task). A
    ``MALLOC_TRIM_THRESHOLD_`` already in this process's environment (an earlier dask cluster
    in the same Python session puts dask's value there) still reaches the workers.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return {
        "distributed.nanny.pre-spawn-environ": environ,
        "distributed.worker.profile.enabled": False,
        "distributed.admin.tick.interval": "1s",
        "distributed.admin.system-monitor.interval": "2s",
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        # a worker that dies mid-sort (out of memory, a crash) would die again: no retries
        "distributed.scheduler.allowed-failures": 0,
    }


class _Cluster:
    """A dask client on a local cluster we start, or on the scheduler the user gave."""

    def __init__(self, *, scheduler: str | None, workers: int | None, threads: int | None, n_recordings: int):
        import dask
        from distributed import Client, LocalCluster

        self.cluster = None
        self.plugin_name = None
        if scheduler is None:
            n_workers, n_threads = cluster_layout(cores=usable_cores(), n_recordings=n_recordings, workers=workers,
                                                  threads=threads, memory_b=_total_memory_b())
            with dask.config.set(local_cluster_config()):
                # no dashboard, and its HTTP server on a free port: never a clash on a shared machine
                self.cluster = LocalCluster(n_workers=n_workers, threads_per_worker=n_threads, processes=True,
                                            resources={RESOURCE: 1}, dashboard_address=None,
                                            scheduler_kwargs={"dashboard_address": ":0"},
                                            silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
            self.description = (f"a local cluster of {n_workers} worker{'s' if n_workers > 1 else ''} x "
                                f"{n_threads} thread{'s' if n_threads > 1 else ''}")
            return
        if scheduler.lower().endswith(".json") and not Path(scheduler).expanduser().is_file():
            raise SpikesortError(f"scheduler file not found: {scheduler}")
        try:
            if Path(scheduler).expanduser().is_file():
                self.client = Client(scheduler_file=str(Path(scheduler).expanduser()))
            else:
                self.client = Client(scheduler)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SpikesortError(f"cannot connect to the dask scheduler at {scheduler}: {_one_line(str(exc))}") \
                from None
        try:
            plugin = _OneRecordingPerWorker()
            self.client.register_plugin(plugin, name=plugin.name)
            self.plugin_name = plugin.name
            ws = self._wait_for_a_slot(scheduler)
        except BaseException:
            self.close()
            raise
        threads_total = sum(int(w.get("nthreads", 0)) for w in ws.values())
        self.description = (f"the cluster at {self.client.scheduler.address} ({len(ws)} "
                            f"worker{'s' if len(ws) != 1 else ''}, {threads_total} threads when the batch started)")

    def _workers(self) -> dict:
        import inspect

        # newer dask lists only the first few workers unless asked for all
        takes_n = "n_workers" in inspect.signature(self.client.scheduler_info).parameters
        info = self.client.scheduler_info(n_workers=-1) if takes_n else self.client.scheduler_info()
        return info.get("workers", {})

    def _wait_for_a_slot(self, scheduler: str, *, warn_every_s: float = 60.0) -> dict:
        """Wait until a worker holds the resource: tasks submitted before that would wait forever
        (the scheduler does not look again at waiting tasks when a worker gains a resource)."""
        last_note = None
        while True:
            ws = self._workers()
            if any(RESOURCE in (w.get("resources") or {}) for w in ws.values()):
                return ws
            if last_note is None or time.monotonic() - last_note >= warn_every_s:
                hint = (f"{len(ws)} worker(s) joined but none took spikesort's setup: were they started from "
                        f"an environment with spikesort installed?") if ws else "no worker has joined yet"
                (log.info if last_note is None else log.warning)("waiting for a worker at %s: %s", scheduler, hint)
                last_note = time.monotonic()
            time.sleep(0.2)

    def close(self) -> None:
        try:
            if self.plugin_name is not None:
                self.client.unregister_worker_plugin(self.plugin_name)
        except Exception:  # the cluster may be gone already; nothing to undo then
            log.debug("could not unregister the worker plugin", exc_info=True)
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def run_batch(jobs: list[BatchJob], *, out_root: str | Path, params: Params | None = None,
              scheduler: str | None = None, workers: int | None = None, threads: int | None = None,
              overwrite: bool = False) -> BatchResult:
    """Sort every job on dask (a local cluster, or ``scheduler``: an address or a scheduler file).

    Finished folders are skipped (all of them are sorted again with ``overwrite``), unfinished
    ones resumed. ``workers``/``threads`` shape the local cluster (default: ``cluster_layout``).
    Returns one outcome per job, in manifest order; OUTROOT/batch_summary.csv holds the same
    and is rewritten after every finished recording.
    """
    t0 = time.perf_counter()
    params = params or Params()
    out_root = _absolute(out_root)
    if scheduler is not None and (workers is not None or threads is not None):
        raise SpikesortError("--workers and --threads shape the local cluster: with --scheduler, size the "
                             "workers where you start them")
    out_root.mkdir(parents=True, exist_ok=True)
    summary_path = out_root / SUMMARY_NAME
    handler = logging.FileHandler(out_root / BATCH_LOG_NAME, mode="a", encoding="utf8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    log.addHandler(handler)
    saved_level = log.level
    if log.getEffectiveLevel() > logging.INFO:  # batch.log keeps the progress lines even from Python
        log.setLevel(logging.INFO)
    try:
        return _run(jobs, out_root=out_root, summary_path=summary_path, params=params, scheduler=scheduler,
                    workers=workers, threads=threads, overwrite=overwrite, t0=t0)
    finally:
        log.removeHandler(handler)
        log.setLevel(saved_level)
        handler.close()


def _run(jobs, *, out_root, summary_path, params, scheduler, workers, threads, overwrite, t0) -> BatchResult:
    previous = _read_summary(summary_path)
    outcomes: dict[str, RecordingOutcome] = {}
    pending = []
    for job in jobs:
        if not overwrite and _is_finished(job.output, params):
            outcomes[job.name] = _finished_outcome(job, previous)
        else:
            pending.append(job)

    def ordered():
        return [outcomes[j.name] for j in jobs if j.name in outcomes]

    n_skipped = len(jobs) - len(pending)
    if n_skipped:
        log.info("batch: %d of %d recordings finished earlier: skipped", n_skipped, len(jobs))
    cluster = "none needed"
    if pending:
        # dask's own INFO lines (worker registered, stream closed...) would flood a console
        # handler on the root logger: its errors only, while the batch runs
        dask_log = logging.getLogger("distributed")
        saved_level = dask_log.level
        dask_log.setLevel(max(logging.ERROR, saved_level))
        try:
            c = _Cluster(scheduler=scheduler, workers=workers, threads=threads, n_recordings=len(pending))
            cluster = c.description
            try:
                log.info("batch: sorting %d recording%s on %s", len(pending), "s" if len(pending) > 1 else "",
                         cluster)
                _submit_and_collect(c.client, pending, params=params, overwrite=overwrite, outcomes=outcomes,
                                    on_update=lambda: write_summary(ordered(), summary_path), n_total=len(jobs))
            finally:
                c.close()
        finally:
            dask_log.setLevel(saved_level)
    result = BatchResult(outcomes=ordered(), summary_path=summary_path, wall_s=time.perf_counter() - t0,
                         cluster=cluster)
    write_summary(result.outcomes, summary_path)
    return result


def _submit_and_collect(client, pending, *, params, overwrite, outcomes, on_update, n_total) -> None:
    from distributed import as_completed

    futures = {}
    for job in pending:
        # pure=False: a re-run of the same job must run again, never reuse a cached result
        fut = client.submit(sort_recording_task, job, params=params, overwrite=overwrite, pure=False,
                            resources={RESOURCE: 1}, key=f"spikesort-{job.name}-{os.urandom(4).hex()}")
        futures[fut] = job
    try:
        for fut in as_completed(list(futures)):
            job = futures[fut]
            outcome = _collect(fut, job)
            outcomes[job.name] = outcome
            done = len(outcomes)
            if outcome.status == "done":
                log.info("[%d/%d] %s: %d units (%d good) in %.1f s", done, n_total, job.name, outcome.units,
                         outcome.good_units, outcome.wall_s)
            else:
                log.warning("[%d/%d] %s failed: %s (log: %s)", done, n_total, job.name, outcome.error, outcome.log)
            on_update()
    except BaseException:
        # Ctrl-C or SIGTERM: stop what is still queued; unfinished folders resume next time
        for job in futures.values():
            outcomes.setdefault(job.name, RecordingOutcome(name=job.name, status="interrupted", output=job.output,
                                                           error="the batch was stopped before it finished"))
        try:
            on_update()
        finally:
            client.cancel(list(futures))
        raise


def _collect(fut, job: BatchJob) -> RecordingOutcome:
    try:
        return fut.result()
    except Exception as exc:  # the task itself never raises: its worker died, or dask failed
        from distributed import KilledWorker

        if isinstance(exc, KilledWorker):
            error = "internal error: the worker sorting it died (out of memory? a crash?)"
        else:
            error = f"internal error: {type(exc).__name__}: {_one_line(str(exc))}"
        log.debug("batch: %s: %s", job.name, error, exc_info=True)
        return RecordingOutcome(name=job.name, status="failed", output=job.output, error=error,
                                log=_finish_log(job))
