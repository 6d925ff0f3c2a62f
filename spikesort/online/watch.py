"""The writer watch: how fast the file grows, when it stalls, shrinks or is replaced, how far the
sorter is behind, and the progress line. Each trouble is one log line (and one when it is over)."""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from .source import GrowingSource, WriterRestarted

log = logging.getLogger(__name__)


class WriterWatch:
    def __init__(self, source: GrowingSource, *, options, sampling_rate_hz: float):
        self.source, self.o, self.fs = source, options, sampling_rate_hz
        now = time.monotonic()
        self.n_seen = source.n_samples
        self.last_growth = now
        self.arrivals: deque = deque(maxlen=20000)  # (wall time, samples in the file) when it grew
        self.stalled = self.behind = self.writer_slow = False
        self.last_progress = now
        self.latencies: deque = deque(maxlen=20000)

    def poll(self, *, backlog_samples, sorted_s: float, info) -> int | None:
        """Samples available now; None when the run must stop (the file shrank or was replaced, or
        no new data came for idle_stop_s). ``backlog_samples(n)``: samples waiting to be sorted;
        ``info()``: (spikes, units) for the progress line."""
        now = time.monotonic()
        try:
            n = self.source.poll()
        except WriterRestarted as exc:
            log.error("%s: stopping, the Phy folder holds what was sorted before", exc)
            return None
        if n > self.n_seen:
            if self.stalled:
                log.info("the writer resumed after %.1f s without new data", now - self.last_growth)
                self.stalled = False
            self.n_seen, self.last_growth = n, now
            self.arrivals.append((now, n))
            self._writer_rate(now)
        else:
            idle = now - self.last_growth
            if idle >= self.o.stall_s and not self.stalled:
                log.warning(
                    "the writer has stalled: no new data for %.0f s (the file ends at %.1f s of recording)",
                    idle,
                    n / self.fs,
                )
                self.stalled = True
            if self.o.idle_stop_s is not None and idle >= self.o.idle_stop_s:
                log.info("no new data for %.0f s: stopping", idle)
                return None
        backlog = backlog_samples(n) / self.fs
        if backlog > self.o.behind_s and not self.behind:
            log.warning("the sorter is behind the writer: %.1f s of data wait to be sorted", backlog)
            self.behind = True
        elif self.behind and backlog < 1.0:
            log.info("the sorter caught up with the writer (backlog %.2f s)", backlog)
            self.behind = False
        if now - self.last_progress >= self.o.progress_s:
            self.last_progress = now
            lat = np.asarray(self.latencies)
            p95 = f"{np.percentile(lat, 95):.2f} s" if len(lat) else "-"
            n_spikes, n_units = info()
            log.info(
                "online: %.1f s sorted, backlog %.2f s, %d spikes, %d units, latency p95 %s",
                sorted_s,
                backlog,
                n_spikes,
                n_units,
                p95,
            )
        return n

    def _writer_rate(self, now: float) -> None:
        """Warn once when the file grew slower than real time over the last 10 s (the writer is behind)."""
        old = [a for a in self.arrivals if now - a[0] >= 10.0]
        if not old:
            return
        t0, n0 = old[-1]
        rate = (self.n_seen - n0) / self.fs / (now - t0)
        if rate < 0.9 and not self.writer_slow:
            log.warning(
                "the writer is behind real time: the file grew %.2f s per second over the last %.0f s", rate, now - t0
            )
            self.writer_slow = True
        elif rate >= 0.98 and self.writer_slow:
            log.info("the writer is back at real time")
            self.writer_slow = False

    def arrival_time(self, samples: np.ndarray) -> np.ndarray:
        """Wall (monotonic) time at which each sample was first seen in the file (NaN: before the watch)."""
        if not self.arrivals:
            return np.full(len(samples), np.nan)
        t, n = np.asarray(self.arrivals).T
        i = np.searchsorted(n, samples, side="right")
        out = np.full(len(samples), np.nan)
        ok = i < len(n)
        out[ok] = t[i[ok]]
        return out

    def note_emitted(self, samples: np.ndarray, emitted_monotonic: float) -> None:
        if len(samples):
            lat = emitted_monotonic - self.arrival_time(samples)
            self.latencies.extend(lat[np.isfinite(lat)].tolist())
