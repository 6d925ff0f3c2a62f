"""The streaming loop: keep up with the writer, sort each new chunk as soon as it lands.

Each chunk (at most ``max_chunk_s`` of new samples, plus a margin each side for the zero-phase
filter and the template windows) is preprocessed with the warm-up's model, template-matched with
the offline kernels, and its spikes are emitted (CSV, ZeroMQ, the Python iterator). The matching
residual's detections feed the pool of unexplained spikes (new units, :mod:`.discover`); matched
spikes' positions feed the rigid drift tracker (:mod:`.drift`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from spikesort.pipeline.traces import TraceStore
from spikesort.stages.detect import detect_block, envelope_bank
from spikesort.stages.export import phy_whitening
from spikesort.stages.geometry import neighbor_table
from spikesort.stages.match import channel_candidates, match_block
from spikesort.stages.preprocess import preprocess_chunk
from spikesort.stages.templates import filtered_templates

from .emit import OnlineBatch
from .source import GrowingSource, WriterRestarted

log = logging.getLogger(__name__)

# the templates follow the drift estimate in steps of this much (each move rebuilds the matching tables)
DRIFT_STEP_UM = 3.0


@dataclass(frozen=True)
class OnlineOptions:
    warmup_s: float = 120.0  # sorted offline first: whitening, templates, drift reference
    chunk_s: float = 0.5  # a batch is sorted once this much new data is there...
    max_chunk_s: float = 1.0  # ...and holds at most this much (a backlog is worked off in these)
    recluster_s: float = 30.0  # how often the pool of unexplained spikes is clustered
    pool_s: float = 120.0  # how far back the pool reaches
    min_new_unit_spikes: int = 30
    new_unit_max_similarity: float = 0.8  # a pool cluster this similar to a unit is not new
    idle_stop_s: float | None = 60.0  # stop after this long without new data (None: never)
    stall_s: float = 3.0  # no new data for this long: the writer stalled (one log line)
    behind_s: float = 3.0  # backlog beyond this: the sorter is behind (one log line)
    progress_s: float = 10.0  # a progress line this often
    poll_s: float = 0.02
    track_drift: bool = True


class Streamer:
    """The per-chunk sorter and the writer watch. ``model`` is an OnlineModel; ``store`` the
    whitened-trace file (the warm-up's, extended); ``done`` the first sample not yet sorted."""

    def __init__(
        self,
        source: GrowingSource,
        *,
        model,
        info,
        params,
        options: OnlineOptions,
        store: TraceStore,
        done: int,
        pre: int,
        nt: int,
        margin: int,
        exclusion: int,
        pool,
        tracker=None,
    ):
        self.source, self.model, self.info, self.p, self.o = source, model, info, params, options
        self.store, self.done, self.pre, self.nt, self.margin, self.exclusion = store, done, pre, nt, margin, exclusion
        self.pool, self.tracker = pool, tracker
        fs = info.sampling_rate_hz
        self.fs = fs
        self.chunk = max(1, int(round(options.chunk_s * fs)))
        self.max_chunk = max(self.chunk, int(round(options.max_chunk_s * fs)))
        good = model.prep.good_channels
        self.peak_nb = neighbor_table(
            positions_um=info.positions_um,
            radius_um=params.detect_radius_um,
            good_channels=good,
            shank_ids=info.shank_ids,
        )
        self.feat_nb = neighbor_table(
            positions_um=info.positions_um,
            radius_um=params.feature_radius_um,
            good_channels=good,
            shank_ids=info.shank_ids,
            min_neighbors=min(4, int(good.sum())),
        )
        self.bank = envelope_bank(
            positions_um=info.positions_um,
            neighbors=self.feat_nb,
            sigmas_um=params.envelope_sigmas_um,
            center_radius_um=params.detect_radius_um,
        )
        _, self.w_inv_uv = phy_whitening(model.prep.whitening, info.gains_to_uv)
        self.shift_um = 0.0
        self.set_templates()
        # the writer watch
        now = time.monotonic()
        self.n_seen = source.n_samples
        self.last_growth = now
        self.arrivals: deque = deque(maxlen=4000)  # (wall time, samples in the file) when it grew
        self.stalled = self.behind = self.writer_slow = False
        self.last_progress = now
        self.latencies: deque = deque(maxlen=20000)
        self.n_spikes = 0

    # ------------------------------------------------------------------ templates

    def set_templates(self) -> None:
        """Matching tables for the current templates, moved by the tracked drift."""
        dense = self.model.dense
        if self.tracker is not None and abs(self.shift_um) > 0:
            dense = self.tracker.move(dense, self.shift_um)
        from spikesort.stages.templates import sparsify

        self.templates = sparsify(dense, pre=self.pre)
        self.cand = channel_candidates(self.templates, n_channels=self.info.n_channels)
        self.filtered = filtered_templates(self.templates, self.model.bases[0])

    # ------------------------------------------------------------------ the writer watch

    def poll(self) -> int | None:
        """Samples available now; None when the run must stop (the file shrank or was replaced, or
        no new data came for idle_stop_s). Logs the writer's and the sorter's troubles, once each."""
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
        backlog = (n - self.done) / self.fs
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
            log.info(
                "online: %.1f s sorted, backlog %.2f s, %d spikes, %d units, latency p95 %s",
                self.done / self.fs,
                backlog,
                self.n_spikes,
                self.model.n_units,
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

    def backlog_s(self, n: int) -> float:
        return (n - self.done) / self.fs

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

    # ------------------------------------------------------------------ sorting

    def ready(self, n: int, *, final: bool = False) -> int | None:
        """End of the next chunk to sort with ``n`` samples in the file, or None to wait."""
        avail = n if final else n - self.margin
        if avail - self.done >= (1 if final else self.chunk):
            return min(avail, self.done + self.max_chunk)
        return None

    def sort_chunk(self, stop: int, n: int, index: int) -> OnlineBatch:
        start = self.done
        rs, re = max(0, start - self.margin), min(n, stop + self.margin)
        raw = self.source.read(rs, re)
        w = preprocess_chunk(raw, model=self.model.prep)
        ks, ke = start - rs, stop - rs
        self.store.write(start, w[ks:ke])
        self.store.n_samples = stop
        p, m = self.p, self.model
        spikes, resid = match_block(
            w,
            keep_start=ks,
            keep_stop=ke,
            offset=rs,
            templates=self.templates,
            chan_templates=self.cand,
            sign=m.sign,
            detect_threshold=p.match_detect_threshold,
            peak_neighbors=self.peak_nb,
            exclusion=self.exclusion,
            match_threshold=p.match_threshold,
            iterations=p.match_iterations,
            max_lag=2,
            amplitude_range=p.amplitude_range,
            bases=m.bases,
            filter_sd=m.filter_sd,
            filtered=self.filtered,
        )
        if self.pool is not None or self.tracker is not None:
            det = detect_block(
                resid if self.tracker is None else w,
                keep_start=ks,
                keep_stop=ke,
                offset=rs,
                sign=m.sign,
                threshold=p.detect_threshold,
                universal_threshold=p.universal_threshold,
                peak_neighbors=self.peak_nb,
                feature_neighbors=self.feat_nb,
                bank=self.bank,
                bases=m.bases,
                pre=self.pre,
                exclusion=self.exclusion,
                positions_um=self.info.positions_um,
                filter_sd=m.filter_sd,
            )
            if self.tracker is not None:
                explained = _near(det.times, spikes.times, self.exclusion)
                self.tracker.observe(det.take(np.flatnonzero(explained)), spikes, now=stop)
                det = det.take(np.flatnonzero(~explained))
            if self.pool is not None:
                self.pool.add(det)
        self.done = stop
        self.n_spikes += len(spikes.times)
        if self.tracker is not None:
            self._follow_drift()
        return OnlineBatch(
            index=index,
            chunk_start=start,
            chunk_stop=stop,
            samples=spikes.times.astype(np.int64),
            units=spikes.templates.astype(np.int32),
            amplitudes=spikes.amplitudes.astype(np.float32),
            emitted_unix_s=time.time(),
        )

    def _follow_drift(self) -> None:
        est = self.tracker.estimate()
        if est is None:
            return
        est = est if abs(est) >= DRIFT_STEP_UM else 0.0
        if abs(est - self.shift_um) >= DRIFT_STEP_UM or (est == 0.0 and self.shift_um != 0.0):
            log.debug("drift: templates moved to %+.1f µm at %.1f s", est, self.done / self.fs)
            self.shift_um = est
            self.tracker.history.append((self.done, est))
            self.set_templates()

    def note_emitted(self, batch: OnlineBatch, emitted_monotonic: float) -> None:
        if len(batch):
            lat = emitted_monotonic - self.arrival_time(batch.samples)
            self.latencies.extend(lat[np.isfinite(lat)].tolist())


def _near(times: np.ndarray, matched: np.ndarray, window: int) -> np.ndarray:
    """True for each of ``times`` within ``window`` samples of a matched spike."""
    if len(matched) == 0 or len(times) == 0:
        return np.zeros(len(times), bool)
    m = np.sort(matched)
    i = np.clip(np.searchsorted(m, times), 1, len(m) - 1) if len(m) > 1 else np.zeros(len(times), np.int64)
    d = np.minimum(np.abs(times - m[i]), np.abs(times - m[np.maximum(i - 1, 0)]))
    return d <= window
