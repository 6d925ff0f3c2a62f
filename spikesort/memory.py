"""Resident memory of this process: now, and the peak over a stretch of work."""

from __future__ import annotations

import os
import resource
import sys
import threading


def _statm_mb() -> float | None:
    """Resident set size now (MB) from /proc; None where /proc is missing (macOS)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def rss_mb() -> float:
    """Resident set size now (MB); the peak so far where /proc is missing."""
    now = _statm_mb()
    if now is not None:
        return now
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB elsewhere


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakRss:
    """The highest resident memory (MB) of this process while a stretch of work runs, without psutil.

    ``with PeakRss() as p: ...`` then ``p.peak_mb``: a thread samples the resident size every
    ``interval_s`` (file pages mapped by memmap count); a peak shorter than that can be missed.
    Measures may nest (the pipeline measures each stage).

    ``per_task=True`` measures a whole task in a long-lived process (a dask worker sorting one
    recording after another). On Linux the kernel's high-water mark (VmHWM) is reset when the task
    starts (writing 5 to /proc/self/clear_refs) and read when it ends: exact, and free. Where that
    is refused (or with ``sample``) it samples as above, and without /proc it gives None:
    ``ru_maxrss`` is the maximum over the whole life of the process, so every task after the
    largest would report the largest. Resetting the mark is process-wide: never nest two of these.
    """

    def __init__(self, interval_s: float = 0.1, *, per_task: bool = False, sample: bool = False):
        self.interval_s = interval_s
        self.per_task = per_task
        self.sample = sample
        self.peak_mb = 0.0
        self.method = "sampled"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _now(self) -> float | None:
        return _statm_mb() if self.per_task else rss_mb()

    def _sample(self) -> None:
        while True:
            now = self._now()
            if now is not None:
                self.peak_mb = max(self.peak_mb, now)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> PeakRss:
        if self.per_task and not self.sample and _reset_high_water_mark():
            self.method = "hwm"
        else:
            self._thread.start()
        return self

    def stop(self) -> float | None:
        """The peak (MB); None when this process cannot tell."""
        if self.method == "hwm":
            peak = _proc_status_mb("VmHWM")
            self.peak_mb = peak or 0.0
            return peak
        self._stop.set()
        self._thread.join()
        if not self.per_task:
            self.peak_mb = max(self.peak_mb, rss_mb())
        return self.peak_mb or None

    def __enter__(self) -> PeakRss:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_libc_trim = None


def release_free_heap() -> bool:
    """Give the free pages of the C heap back to the system (glibc's ``malloc_trim``); False where
    there is no such call (macOS, musl), True where there is (whether or not anything was freed).

    Arrays below glibc's mmap threshold (which rises to 32 MB as large blocks are freed) come from
    malloc's arenas, and what they free stays resident: after a stage's peak the process keeps
    that much for the rest of the run, so every later stage's RSS sits at the highest level an
    earlier one reached. Called between stages it costs milliseconds."""
    global _libc_trim
    if _libc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _libc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            _libc_trim.argtypes, _libc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            _libc_trim = False
    if not _libc_trim:
        return False
    _libc_trim(0)
    return True


def task_peak_rss(*, sample: bool = False) -> PeakRss:
    """Start measuring the peak memory of one task (see ``PeakRss(per_task=True)``); ``stop()`` gives it."""
    return PeakRss(0.05, per_task=True, sample=sample).start()
