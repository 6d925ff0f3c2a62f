"""The driver of ``spikesort batch``: sort a list of recordings on dask.distributed.

:func:`run_batch` sorts each job (:mod:`spikesort.batch.manifest`) into ``OUTROOT/<name>/`` with
:func:`spikesort.batch.task.sort_recording_task`, and writes ``OUTROOT/batch_summary.csv``.

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

import csv
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

from spikesort.atomic import write_atomic
from spikesort.errors import SpikesortError, one_line
from spikesort.layout import BATCH_LOG as BATCH_LOG_NAME
from spikesort.layout import BATCH_SUMMARY as SUMMARY_NAME
from spikesort.params import Params

from .manifest import BatchJob, _absolute
from .task import RecordingOutcome, _finish_log, _finished_outcome, _is_finished, sort_recording_task, usable_cores

log = logging.getLogger(__name__)
# batch.log gets the records of every batch module (the manifest's, the driver's)
_package_log = logging.getLogger("spikesort.batch")

RESOURCE = "spikesort_recording"  # one unit per worker: a worker sorts one recording at a time
SUMMARY_COLUMNS = (
    "name",
    "status",
    "units",
    "good_units",
    "wall_s",
    "peak_rss_mb",
    "n_jobs",
    "worker",
    "pid",
    "started",
    "error",
    "output",
    "log",
)
# a concurrent recording needs this much memory on a typical probe (README benchmark: 1.3 GB
# for 64 channels x 300 s); the default layout never plans more workers than memory / this
_MEMORY_PER_WORKER_B = 4 * 2**30
_MAX_THREADS_PER_WORKER = 4


@dataclass
class BatchResult:
    outcomes: list[RecordingOutcome]
    summary_path: Path
    wall_s: float
    cluster: str  # what it ran on, e.g. "a local cluster of 1 worker x 2 threads"

    @property
    def failed(self) -> list[RecordingOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


# --------------------------------------------------------------------------- cluster layout


def _total_memory_b() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def cluster_layout(
    *,
    cores: int,
    n_recordings: int,
    workers: int | None = None,
    threads: int | None = None,
    memory_b: int | None = None,
) -> tuple[int, int]:
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


# --------------------------------------------------------------------------- the driver


def _read_summary(path: Path) -> dict:
    try:
        with open(path, newline="", encoding="utf8") as fh:
            return {row.get("name", ""): row for row in csv.DictReader(fh)}
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}


def write_summary(outcomes: list[RecordingOutcome], path: Path) -> None:
    """batch_summary.csv, written to a temporary name and renamed (never half a file)."""

    def write(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf8", newline="")
        writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for o in outcomes:
            writer.writerow(o.row())
        text.flush()
        text.detach()  # the binary file stays open for write_atomic to sync and close

    write_atomic(path, write)


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
            n_workers, n_threads = cluster_layout(
                cores=usable_cores(),
                n_recordings=n_recordings,
                workers=workers,
                threads=threads,
                memory_b=_total_memory_b(),
            )
            with dask.config.set(local_cluster_config()):
                # no dashboard, and its HTTP server on a free port: never a clash on a shared machine
                self.cluster = LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=n_threads,
                    processes=True,
                    resources={RESOURCE: 1},
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard_address": ":0"},
                    silence_logs=logging.ERROR,
                )
            self.client = Client(self.cluster)
            self.description = (
                f"a local cluster of {n_workers} worker{'s' if n_workers > 1 else ''} x "
                f"{n_threads} thread{'s' if n_threads > 1 else ''}"
            )
            return
        if scheduler.lower().endswith(".json") and not Path(scheduler).expanduser().is_file():
            raise SpikesortError(f"scheduler file not found: {scheduler}")
        try:
            if Path(scheduler).expanduser().is_file():
                self.client = Client(scheduler_file=str(Path(scheduler).expanduser()))
            else:
                self.client = Client(scheduler)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SpikesortError(f"cannot connect to the dask scheduler at {scheduler}: {one_line(str(exc))}") from None
        try:
            plugin = _OneRecordingPerWorker()
            self.client.register_plugin(plugin, name=plugin.name)
            self.plugin_name = plugin.name
            ws = self._wait_for_a_slot(scheduler)
        except BaseException:
            self.close()
            raise
        threads_total = sum(int(w.get("nthreads", 0)) for w in ws.values())
        self.description = (
            f"the cluster at {self.client.scheduler.address} ({len(ws)} "
            f"worker{'s' if len(ws) != 1 else ''}, {threads_total} threads when the batch started)"
        )

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
                hint = (
                    (
                        f"{len(ws)} worker(s) joined but none took spikesort's setup: were they started from "
                        f"an environment with spikesort installed?"
                    )
                    if ws
                    else "no worker has joined yet"
                )
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


def run_batch(
    jobs: list[BatchJob],
    *,
    out_root: str | Path,
    params: Params | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    overwrite: bool = False,
) -> BatchResult:
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
        raise SpikesortError(
            "--workers and --threads shape the local cluster: with --scheduler, size the workers where you start them"
        )
    out_root.mkdir(parents=True, exist_ok=True)
    summary_path = out_root / SUMMARY_NAME
    handler = logging.FileHandler(out_root / BATCH_LOG_NAME, mode="a", encoding="utf8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    _package_log.addHandler(handler)
    saved_level = _package_log.level
    if _package_log.getEffectiveLevel() > logging.INFO:  # batch.log keeps the progress lines even from Python
        _package_log.setLevel(logging.INFO)
    try:
        return _run(
            jobs,
            out_root=out_root,
            summary_path=summary_path,
            params=params,
            scheduler=scheduler,
            workers=workers,
            threads=threads,
            overwrite=overwrite,
            t0=t0,
        )
    finally:
        _package_log.removeHandler(handler)
        _package_log.setLevel(saved_level)
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
                log.info("batch: sorting %d recording%s on %s", len(pending), "s" if len(pending) > 1 else "", cluster)
                _submit_and_collect(
                    c.client,
                    pending,
                    params=params,
                    overwrite=overwrite,
                    outcomes=outcomes,
                    on_update=lambda: write_summary(ordered(), summary_path),
                    n_total=len(jobs),
                )
            finally:
                c.close()
        finally:
            dask_log.setLevel(saved_level)
    result = BatchResult(
        outcomes=ordered(), summary_path=summary_path, wall_s=time.perf_counter() - t0, cluster=cluster
    )
    write_summary(result.outcomes, summary_path)
    return result


def _submit_and_collect(client, pending, *, params, overwrite, outcomes, on_update, n_total) -> None:
    from distributed import as_completed

    futures = {}
    for job in pending:
        # pure=False: a re-run of the same job must run again, never reuse a cached result
        fut = client.submit(
            sort_recording_task,
            job,
            params=params,
            overwrite=overwrite,
            pure=False,
            resources={RESOURCE: 1},
            key=f"spikesort-{job.name}-{os.urandom(4).hex()}",
        )
        futures[fut] = job
    try:
        for fut in as_completed(list(futures)):
            job = futures[fut]
            outcome = _collect(fut, job)
            outcomes[job.name] = outcome
            done = len(outcomes)
            if outcome.status == "done":
                log.info(
                    "[%d/%d] %s: %d units (%d good) in %.1f s",
                    done,
                    n_total,
                    job.name,
                    outcome.units,
                    outcome.good_units,
                    outcome.wall_s,
                )
            else:
                log.warning("[%d/%d] %s failed: %s (log: %s)", done, n_total, job.name, outcome.error, outcome.log)
            on_update()
    except BaseException:
        # Ctrl-C or SIGTERM: stop what is still queued; unfinished folders resume next time
        for job in futures.values():
            outcomes.setdefault(
                job.name,
                RecordingOutcome(
                    name=job.name,
                    status="interrupted",
                    output=job.output,
                    error="the batch was stopped before it finished",
                ),
            )
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
            error = f"internal error: {type(exc).__name__}: {one_line(str(exc))}"
        log.debug("batch: %s: %s", job.name, error, exc_info=True)
        return RecordingOutcome(name=job.name, status="failed", output=job.output, error=error, log=_finish_log(job))
