"""The streaming loop: keep up with the writer, sort each new chunk as soon as it lands.

Each chunk (at most ``max_chunk_s`` of new samples, plus a margin each side for the zero-phase
filter and the template windows) is preprocessed with the warm-up's model, template-matched with
the offline kernels, and its spikes are emitted (CSV, ZeroMQ, the Python iterator). A chunk is
cut into one piece per thread, sorted side by side (the kernels release the GIL). The matching
residual's detections feed the pool of unexplained spikes (new units, :mod:`.discover`); matched
spikes' positions feed the rigid drift tracker (:mod:`.drift`).

Live first: the newest data go first. When more than ``catch_up_s`` wait (the warm-up's sort
took that long, the machine was busy), the live lane jumps to the newest chunk and the skipped
stretch is sorted behind it, in order, by a catch-up lane whenever the live lane has nothing
to do. So a delay costs latency only to the spikes recorded during it, not to every spike until
the sorter has caught up. Each lane follows the drift on its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from spikesort.stages.detect import Detections, detect_block, envelope_bank
from spikesort.stages.export import phy_whitening
from spikesort.stages.geometry import neighbor_table
from spikesort.stages.match import (
    MatchedSpikes,
    channel_candidates,
    faint_floors,
    match_block,
    match_thresholds,
    set_misfits_aside,
)
from spikesort.stages.templates import filtered_templates, sparsify

from .discover import strongest_per_event
from .emit import OnlineBatch
from .source import GrowingSource
from .store import Whitener
from .watch import WriterWatch

log = logging.getLogger(__name__)

# the templates follow the drift estimate in steps of this much (each move rebuilds the matching tables)
DRIFT_STEP_UM = 3.0
# a chunk is cut into pieces (one per thread) only when each piece gets at least this much
MIN_PIECE_S = 0.1


@dataclass(frozen=True)
class OnlineOptions:
    warmup_s: float = 120.0  # sorted offline first: whitening, templates, drift reference
    chunk_s: float = 0.5  # a batch is sorted once this much new data is there...
    max_chunk_s: float = 1.0  # ...and holds at most this much (a backlog is worked off in these)
    catch_up_s: float = 2.0  # more than this waiting: the newest data go first, the rest behind
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


@dataclass
class Tables:
    """The matching tables of the templates at one probe position."""

    templates: object
    cand: np.ndarray
    filtered: np.ndarray
    floors: np.ndarray  # faint candidates' least fit scale per template (faint_floors)
    thresholds: np.ndarray | None = None  # measured on the first block these tables match


class Lane:
    """A sequential pass with its own drift estimate: ``done`` is its first unsorted sample;
    ``stop`` None for the live lane (it follows the writer), the end of the stretch otherwise."""

    def __init__(self, name: str, *, done: int, stop: int | None = None, shift_um: float = 0.0, tracker=None):
        self.name, self.done, self.stop, self.shift_um, self.tracker = name, int(done), stop, float(shift_um), tracker

    def left(self) -> int:
        return 0 if self.stop is None else max(0, self.stop - self.done)


class Streamer:
    """The lanes, their shared matching state and the writer watch. ``model`` is an
    OnlineModel; ``store`` a RingStore (the warm-up's whitened traces, continued); ``done`` the
    first sample not yet sorted; ``new_tracker()`` makes a lane's drift tracker (None: off)."""

    def __init__(
        self,
        source: GrowingSource,
        *,
        model,
        info,
        params,
        options: OnlineOptions,
        store,
        done: int,
        pre: int,
        nt: int,
        margin: int,
        exclusion: int,
        pool,
    ):
        self.source, self.model, self.info, self.p, self.o = source, model, info, params, options
        self.store, self.pre, self.nt, self.margin, self.exclusion = store, pre, nt, margin, exclusion
        self.pool = pool
        fs = info.sampling_rate_hz
        self.fs = fs
        self.chunk = max(1, int(round(options.chunk_s * fs)))
        self.max_chunk = max(self.chunk, int(round(options.max_chunk_s * fs)))
        self.catch_up = max(self.max_chunk, int(round(options.catch_up_s * fs)))
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
        self.new_tracker = lambda: None
        self.live = Lane("live", done=done)
        self.gaps: deque = deque()  # [start, stop, shift_um] stretches the live lane skipped, oldest first
        self.behind_lane: Lane | None = None
        self._tables: dict = {}
        self.wh = Whitener(
            source,
            model=model.prep,
            margin=margin,
            n_jobs=params.n_jobs or os.cpu_count() or 1,
            min_piece=int(MIN_PIECE_S * fs),
        )
        self.watch = WriterWatch(source, options=options, sampling_rate_hz=fs)
        self.n_spikes = 0
        self.n_misfits = 0  # matched spikes set aside as no unit's (see _set_misfits_aside)

    # ------------------------------------------------------------------ state

    @property
    def done(self) -> int:
        """The live lane's first unsorted sample (everything before it is sorted but the gaps)."""
        return self.live.done

    @property
    def tracking(self) -> bool:
        return self.live.tracker is not None

    def start_tracking(self, new_tracker) -> None:
        self.new_tracker = new_tracker
        self.live.tracker = new_tracker()

    def lanes(self) -> list[Lane]:
        return [lane for lane in (self.live, self.behind_lane) if lane is not None]

    def waiting(self, n: int) -> int:
        """Samples in the file not sorted yet: the live lane's backlog and the gaps'."""
        gaps = sum(b - a for a, b, _ in self.gaps) - (
            self.behind_lane.done - self.gaps[0][0] if self.behind_lane else 0
        )
        return max(0, n - self.live.done) + gaps

    def backlog_s(self, n: int) -> float:
        return self.waiting(n) / self.fs

    def poll(self) -> int | None:
        return self.watch.poll(backlog_samples=self.waiting, sorted_s=self.live.done / self.fs, info=self._progress)

    def _progress(self) -> tuple[int, int]:
        return self.n_spikes, self.model.n_units

    @property
    def stalled(self) -> bool:
        return self.watch.stalled

    def close(self) -> None:
        self.wh.close()

    # ------------------------------------------------------------------ templates

    def tables(self, shift_um: float) -> Tables:
        """Matching tables for the current templates, moved by ``shift_um`` of drift (cached)."""
        t = self._tables.get(shift_um)
        if t is None:
            dense = self.model.dense
            if shift_um and self.live.tracker is not None:
                dense = self.live.tracker.move(dense, shift_um)
            templates = sparsify(dense, pre=self.pre)
            filtered = filtered_templates(templates, self.model.bases[0])
            floors = faint_floors(
                filtered,
                channels=templates.channels,
                inv_sd=(1.0 / self.model.filter_sd).astype(np.float32),
                sure_threshold=self.p.match_sure_threshold,
                faint_min_amplitude=self.p.match_faint_min_amplitude,
            )
            t = Tables(
                templates=templates,
                cand=channel_candidates(templates, n_channels=self.info.n_channels),
                filtered=filtered,
                floors=floors,
            )
            self._tables = {s: v for s, v in self._tables.items() if any(s == ln.shift_um for ln in self.lanes())}
            self._tables[shift_um] = t
        return t

    def templates_changed(self) -> None:
        self._tables.clear()

    # ------------------------------------------------------------------ what to sort next

    def next_work(self, n: int, *, final: bool = False) -> tuple[Lane, int] | None:
        """(lane, end of its next chunk) with ``n`` samples in the file, or None to wait.
        ``final``: the writer stopped, sort up to the file's end without a right margin."""
        avail = n if final else n - self.margin
        live = self.live
        if not final and avail - live.done > self.catch_up:
            new = avail - self.chunk
            # once per episode: a machine too slow for the stream jumps again and again
            say = log.debug if self.gaps else log.info
            self.gaps.append([live.done, new, live.shift_um])
            say(
                "%.1f s wait to be sorted: the newest data go first, %.1f-%.1f s is sorted behind them",
                (avail - live.done) / self.fs,
                live.done / self.fs,
                new / self.fs,
            )
            live.done = new
        if avail - live.done >= (1 if final else self.chunk):
            return live, min(avail, live.done + self.max_chunk)
        lane = self._behind()
        if lane is not None:
            return lane, min(lane.stop, lane.done + self.max_chunk)
        return None

    def _behind(self) -> Lane | None:
        """The lane sorting the oldest gap (made when a gap starts, dropped when it is done)."""
        lane = self.behind_lane
        if lane is not None and lane.done >= lane.stop:
            self.gaps.popleft()
            lane = self.behind_lane = None
        if lane is None and self.gaps:
            start, stop, shift = self.gaps[0]
            lane = self.behind_lane = Lane("behind", done=start, stop=stop, shift_um=shift, tracker=self.new_tracker())
        return lane

    # ------------------------------------------------------------------ sorting

    def _store(self, start: int, w: np.ndarray) -> None:
        # a stretch sorted behind the live lane may be older than the ring reaches: not kept
        oldest = self.live.done - self.store.capacity + self.max_chunk + self.margin
        if start + len(w) > oldest:
            skip = max(0, oldest - start)
            self.store.write(start + skip, w[skip:])

    def sort(self, lane: Lane, stop: int, n: int, index: int) -> OnlineBatch:
        start = lane.done
        tab = self.tables(lane.shift_um)
        p, m = self.p, self.model

        def one(a, b):
            w, rs = self.wh.whitened(a, b, n)
            ks, ke = a - rs, b - rs
            self._store(a, w[ks:ke])
            if tab.thresholds is None:
                tab.thresholds = match_thresholds(
                    [w],
                    templates=tab.templates,
                    match_threshold=p.match_threshold,
                    noise_sds=p.match_noise_sds,
                    rng=np.random.default_rng(p.seed),
                )
            spikes, resid = match_block(
                w,
                keep_start=ks,
                keep_stop=ke,
                offset=rs,
                templates=tab.templates,
                chan_templates=tab.cand,
                sign=m.sign,
                detect_threshold=p.match_detect_threshold,
                sure_threshold=p.match_sure_threshold,
                faint_min_amplitude=tab.floors,
                peak_neighbors=self.peak_nb,
                exclusion=self.exclusion,
                match_threshold=tab.thresholds,
                iterations=p.match_iterations,
                max_lag=2,
                amplitude_range=p.amplitude_range,
                bases=m.bases,
                filter_sd=m.filter_sd,
                filtered=tab.filtered,
            )
            if self.pool is not None and len(spikes.times):
                spikes, resid = self._set_misfits_aside(spikes, resid, tab.templates, rs)
            det = None
            if self.pool is not None or lane.tracker is not None:
                det = detect_block(
                    resid if lane.tracker is None else w,
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
            return spikes, det

        parts = self.wh.map(one, self.wh.pieces(start, stop))
        spikes = MatchedSpikes.concat([s for s, _ in parts])
        if parts[0][1] is not None:
            det = Detections.concat([d for _, d in parts])
            if lane.tracker is not None:
                explained = _near(det.times, spikes.times, self.exclusion)
                lane.tracker.observe(det.take(np.flatnonzero(explained)), spikes, now=stop)
                det = det.take(np.flatnonzero(~explained))
            if self.pool is not None:
                self.pool.add(strongest_per_event(det, window=self.nt, radius_um=self.p.detect_radius_um))
        lane.done = stop
        self.store.n_samples = max(self.store.n_samples, stop)
        self.n_spikes += len(spikes.times)
        if lane.tracker is not None:
            self._follow_drift(lane)
        return OnlineBatch(
            index=index,
            chunk_start=start,
            chunk_stop=stop,
            samples=spikes.times.astype(np.int64),
            units=spikes.templates.astype(np.int32),
            amplitudes=spikes.amplitudes.astype(np.float32),
            emitted_unix_s=time.time(),
            drift_um=lane.shift_um,
        )

    def _set_misfits_aside(self, spikes: MatchedSpikes, resid: np.ndarray, templates, rs: int):
        """Spikes of a neuron that no unit describes yet, fitted by the least bad template, are not
        that unit's: they leave the batch, their fits are undone in the residual, and their
        detections join the pool, where they can become a new unit (a neuron that starts firing
        beside a known one would otherwise be absorbed by it)."""
        kept = set_misfits_aside(spikes, resid, offset=rs, templates=templates)
        self.n_misfits += len(spikes.times) - len(kept.times)
        return kept, resid

    def _follow_drift(self, lane: Lane) -> None:
        est = lane.tracker.estimate()
        if est is None:
            return
        est = est if abs(est) >= DRIFT_STEP_UM else 0.0
        if abs(est - lane.shift_um) >= DRIFT_STEP_UM or (est == 0.0 and lane.shift_um != 0.0):
            log.debug("drift (%s): templates moved to %+.1f µm at %.1f s", lane.name, est, lane.done / self.fs)
            lane.shift_um = est
            lane.tracker.history.append((lane.done, est))

    def note_emitted(self, batch: OnlineBatch, emitted_monotonic: float) -> None:
        self.watch.note_emitted(batch.samples, emitted_monotonic)


def _near(times: np.ndarray, matched: np.ndarray, window: int) -> np.ndarray:
    """True for each of ``times`` within ``window`` samples of a matched spike."""
    if len(matched) == 0 or len(times) == 0:
        return np.zeros(len(times), bool)
    m = np.sort(matched)
    i = np.clip(np.searchsorted(m, times), 1, len(m) - 1) if len(m) > 1 else np.zeros(len(times), np.int64)
    d = np.minimum(np.abs(times - m[i]), np.abs(times - m[np.maximum(i - 1, 0)]))
    return d <= window
