"""One recording of a batch, on a dask worker: :func:`sort_recording_task` sorts it exactly as
``spikesort run`` would (:func:`spikesort.job.sort_and_report`), with its own log in
``OUTROOT/<name>/spikesort.log``, and comes back as a small :class:`RecordingOutcome` (one row of
batch_summary.csv); a recording's own failure never raises. The driver side
(:mod:`spikesort.batch.cluster`) also finds here whether a folder is finished, and the outcome of
one that an earlier batch finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from spikesort.errors import SpikesortError, one_line
from spikesort.layout import AUTO_LABELS
from spikesort.layout import BATCH_SCRATCH_DIR as SCRATCH_DIR
from spikesort.layout import LOG_FILE as LOG_NAME
from spikesort.memory import task_peak_rss
from spikesort.params import Params

from .manifest import BatchJob

log = logging.getLogger(__name__)


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

        return dict(
            name=self.name,
            status=self.status,
            units=num(self.units, "d"),
            good_units=num(self.good_units, "d"),
            wall_s=num(self.wall_s, ".1f"),
            peak_rss_mb=num(self.peak_rss_mb, ".0f"),
            n_jobs=num(self.n_jobs, "d"),
            worker=self.worker,
            pid=num(self.pid, "d"),
            started=_iso(self.started),
            error=self.error,
            output=str(self.output),
            log=str(self.log) if self.log else "",
        )


def _iso(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def _from_iso(text: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S")) if text else None
    except (ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------- the worker side


def usable_cores() -> int:
    """CPUs this process may run on (a SLURM allocation or taskset, not the whole node)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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


def _open_scratch(scratch: Path, *, tries: int = 20) -> logging.FileHandler:
    """A log handler on ``scratch``. The scratch folder is shared by the batch's workers, and a
    worker that moves its own log out removes the folder when it is left empty: between this
    worker's ``mkdir`` and its ``open`` the folder can vanish, so it is made again and retried."""
    while True:
        scratch.parent.mkdir(parents=True, exist_ok=True)
        try:
            return logging.FileHandler(scratch, mode="a", encoding="utf8")
        except FileNotFoundError:
            tries -= 1
            if tries <= 0:
                raise


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


def _count_good(labels) -> int:
    import numpy as np

    return int(np.sum(np.asarray(labels if labels is not None else [], dtype=str) == "good"))


def _is_finished(folder: Path, params: Params) -> bool:
    """A finished run made with these parameters (sort would only read it back)."""
    # checkpoints, not pipeline: the driver never imports the sorter (scipy, numba: about 1 s)
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
    peak = task_peak_rss()
    address, nthreads = _worker_identity()
    n_jobs = params.n_jobs or nthreads
    params = dataclasses.replace(params, n_jobs=n_jobs)
    outcome = RecordingOutcome(
        name=job.name,
        status="failed",
        output=job.output,
        n_jobs=n_jobs,
        worker=address,
        pid=os.getpid(),
        started=started,
    )
    handler = _open_scratch(_scratch_log(job))
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_LogFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, pkg = logging.getLogger(), logging.getLogger("spikesort")
    saved_level = pkg.level
    root.addHandler(handler)
    pkg.setLevel(logging.DEBUG)
    try:
        from spikesort import __version__

        log.info(
            "spikesort %s batch: sorting %s (%s) into %s on worker %s, pid %d, %d threads",
            __version__,
            job.name,
            job.path,
            job.output,
            address or "(none)",
            os.getpid(),
            n_jobs,
        )
        result = _sort_job(job, params=params, overwrite=overwrite)
        outcome.status, outcome.units, outcome.good_units = "done", int(result.n_units), _count_good(result.labels)
        log.info("batch: %s done: %d units (%d good)", job.name, outcome.units, outcome.good_units)
    except SpikesortError as exc:
        outcome.error = f"error: {one_line(str(exc))}"
        log.error("batch: %s failed: %s", job.name, outcome.error)
    except Exception as exc:  # a bug or an unreadable file: the traceback goes to this recording's log
        outcome.error = f"internal error: {type(exc).__name__}: {one_line(str(exc))}"
        log.error(
            "batch: %s failed: %s\n%s",
            job.name,
            outcome.error,
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
    finally:
        outcome.wall_s = time.perf_counter() - t0
        outcome.peak_rss_mb = peak.stop()
        log.info(
            "batch: %s took %.1f s, peak RSS %s MB (%s)",
            job.name,
            outcome.wall_s,
            "?" if outcome.peak_rss_mb is None else f"{outcome.peak_rss_mb:.0f}",
            peak.method,
        )
        root.removeHandler(handler)
        handler.close()
        pkg.setLevel(saved_level)
        outcome.log = _finish_log(job)
    return outcome


def _sort_job(job: BatchJob, *, params: Params, overwrite: bool):
    from spikesort.job import RecordingSource, sort_and_report

    # resume: a missing folder is created, an unfinished one continued from its checkpoints
    resume = not overwrite

    @contextlib.contextmanager
    def with_its_threads(recording):
        if resume and job.output.exists():
            log.info("resuming the unfinished folder %s", job.output)
        # dask's nanny starts workers with one BLAS thread; the recording owns n_jobs cores
        try:
            from threadpoolctl import threadpool_limits

            blas = threadpool_limits(limits=params.n_jobs, user_api="blas")
        except ImportError:  # threadpoolctl comes with spikeinterface; without it BLAS keeps its count
            blas = contextlib.nullcontext()
        with blas:
            yield

    source = RecordingSource(
        path=job.path,
        probe=job.probe,
        fmt=job.fmt,
        sampling_rate_hz=job.sampling_rate_hz,
        n_channels=job.n_channels,
        dtype=job.dtype,
        offset_bytes=job.offset_bytes,
    )
    # as `spikesort run` does, the report too; the sorting is finished, so a figure problem does not fail it
    return sort_and_report(
        source,
        job.output,
        params=params,
        log=log,
        resume=resume,
        overwrite=overwrite,
        missing_probe=f"the recording {job.path} has no probe geometry: give it a probe in the manifest",
        around_sort=with_its_threads,
    ).result


# --------------------------------------------------------------------------- finished earlier


def _finished_outcome(job: BatchJob, previous: dict) -> RecordingOutcome:
    """A recording an earlier batch (or `spikesort run`) finished: units and good units from its folder."""
    from spikesort.outputs.folder import read_folder

    files = read_folder(job.output)
    units = files.n_units()
    good = None
    if files.has(AUTO_LABELS):  # the sorter's labels: what the sort found, whatever a curator did since
        try:
            good = sum(1 for label in files.table("KSLabel").values() if label == "good")
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
    return RecordingOutcome(
        name=job.name,
        status="skipped",
        output=job.output,
        units=units,
        good_units=good,
        wall_s=old("wall_s", float),
        peak_rss_mb=old("peak_rss_mb", float),
        n_jobs=old("n_jobs", int),
        worker=before.get("worker", ""),
        pid=old("pid", int),
        started=_from_iso(before.get("started")),
        log=job.output / LOG_NAME if (job.output / LOG_NAME).exists() else None,
    )
