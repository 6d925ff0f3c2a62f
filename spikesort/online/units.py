"""New units while the stream goes on, found on a background thread so that the stream never
waits for the clustering.

Every ``recluster_s`` of recording the pool of unexplained spikes is clustered
(:func:`.discover.discover`); the clusters that qualify become units with the next ids, announced
in a batch that holds their pooled spikes. A unit found this way starts from the median of a
few dozen pooled spikes (detections above threshold: biased large, and noisy), so during its
first ``REFINE_PERIODS`` periods its template is rebuilt from the spikes it has matched since
(at most the pool's reach back), which include its smaller ones. Its id never changes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from spikesort.stages.templates import build_templates

from . import model as files
from .discover import discover
from .emit import OnlineBatch

log = logging.getLogger(__name__)

# a unit found during the stream has its template rebuilt from its matched spikes this many times...
REFINE_PERIODS = 4
# ...each time it matched at least this many since it was found (within the pool's reach)
MIN_MATCHED = 10


@dataclass
class _Found:
    now: int
    shift_um: float
    new: object  # NewUnits
    refined: dict  # unit id -> its rebuilt template (whitened, at the probe position then)
    n_refined: dict  # unit id -> spikes it was rebuilt from
    seconds: float


def _shifts_since(history: list, oldest: int, now_um: float, *, step_um: float = 5.0) -> np.ndarray:
    """Probe shifts (µm) to compare pool clusters at: the range the tracker estimated from sample
    ``oldest`` on (the last estimate before it included), in steps of at most ``step_um``."""
    seen = [now_um, 0.0 if not history or history[0][0] >= oldest else None]
    seen += [est for done, est in history if done >= oldest]
    before = [est for done, est in history if done < oldest]
    if before:
        seen.append(before[-1])
    seen = [v for v in seen if v is not None]
    lo, hi = min(seen), max(seen)
    n = max(1, int(np.ceil((hi - lo) / step_um)))
    return np.unique(np.round(np.linspace(lo, hi, n + 1), 2))


class UnitFinder:
    def __init__(self, run, pool):
        self.run, self.pool = run, pool
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="spikesort-units")
        self.job = None
        self.recent: deque = deque()  # (samples, units) of the batches within the pool's reach
        self.refines: dict = {}  # unit id -> refinements left
        self.pooled: dict = {}  # unit id -> the pooled spikes it was found from
        self.matched: deque = deque()  # (samples, units) of every batch within the pool's reach

    def note_batch(self, batch: OnlineBatch) -> None:
        if len(batch):
            self.matched.append((batch.samples, batch.units))
        if self.refines and len(batch):
            young = np.isin(batch.units, list(self.refines))
            if young.any():
                self.recent.append((batch.samples[young], batch.units[young]))

    def start(self, now: int) -> bool:
        """Cluster the pool up to sample ``now`` in the background; False while the last one runs."""
        if self.job is not None:
            return False
        r, s = self.run, self.run.streamer
        snap = self.pool.take(now)
        oldest = now - self.pool.keep
        while self.recent and self.recent[0][0].max(initial=oldest) < oldest:
            self.recent.popleft()
        while self.matched and self.matched[0][0].max(initial=oldest) < oldest:
            self.matched.popleft()
        if self.matched:
            m_times = np.concatenate([t for t, _ in self.matched])
            m_units = np.concatenate([u for _, u in self.matched])
            order = np.argsort(m_times, kind="stable")
            known = (m_times[order], m_units[order])
        else:
            known = (np.zeros(0, np.int64), np.zeros(0, np.int32))
        refine = {}
        times = np.concatenate([t for t, _ in self.recent]) if self.recent else np.zeros(0, np.int64)
        units = np.concatenate([u for _, u in self.recent]) if self.recent else np.zeros(0, np.int32)
        for u in self.refines:
            matched = times[(units == u) & (times >= oldest)]
            if len(matched) >= MIN_MATCHED:
                # with the pooled spikes it was found from: never fewer spikes than it started with
                pooled = self.pooled[u][self.pooled[u] >= oldest]
                refine[u] = (np.union1d(pooled, matched), len(matched))
        if snap is None and not refine:
            return True
        seed = [r.params.seed, r.batch_index]
        existing = r.model.dense.copy()
        tracker = s.live.tracker
        if tracker is not None:
            # the pooled spikes were recorded wherever the probe was over the pool's reach: a unit
            # seen at any of those positions is not new (else a moving unit's spikes, pooled while the
            # tracker caught up, come back as a second unit)
            shifts = _shifts_since(tracker.history, oldest, s.live.shift_um)
            existing = np.concatenate([tracker.move(existing, sh) if sh else existing for sh in shifts])
        self.job = self.thread.submit(self._work, snap, refine, existing, known, s.live.shift_um, now, seed)
        return True

    def _work(self, snap, refine: dict, existing: np.ndarray, known, shift_um: float, now: int, seed) -> _Found:
        r, s = self.run, self.run.streamer
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        new = None
        if snap is not None:
            new = discover(
                snap,
                store=s.store,
                existing=existing,
                params=r.params,
                feature_neighbors=s.feat_nb,
                pre=s.pre,
                nt=s.nt,
                whitening_inv_uv=s.w_inv_uv,
                noise_uv=r.model.prep.noise_sd * s.info.gains_to_uv,
                min_spikes=r.o.min_new_unit_spikes,
                max_similar=r.o.new_unit_max_similarity,
                rng=rng,
                sign=r.model.sign,
                matched=known,
            )
        refined = {}
        if refine:
            ids = list(refine)
            labels = np.concatenate([np.full(len(refine[u][0]), i) for i, u in enumerate(ids)])
            tpl = build_templates(
                s.store,
                np.concatenate([refine[u][0] for u in ids]),
                labels,
                n_units=len(ids),
                pre=s.pre,
                nt=s.nt,
                seed=r.params.seed,
            )
            refined = dict(zip(ids, tpl.dense))
        n_refined = {u: refine[u][1] for u in refine}
        return _Found(
            now=now, shift_um=shift_um, new=new, refined=refined, n_refined=n_refined, seconds=time.perf_counter() - t0
        )

    def collect(self, index: int, *, wait: bool = False) -> OnlineBatch | None:
        """The batch announcing new units once the background search is done (None otherwise);
        refined templates replace the old ones."""
        if self.job is None or (not wait and not self.job.done()):
            return None
        found, self.job = self.job.result(), None
        log.debug("pool clustered in %.2f s", found.seconds)
        r, s = self.run, self.run.streamer
        tracker = s.live.tracker

        def at_reference(dense):
            # found where the probe was then: kept at the reference position, as the others
            return tracker.move(dense, -found.shift_um) if tracker is not None and found.shift_um else dense

        changed = False
        for u, t in found.refined.items():
            r.model.dense[u] = at_reference(t[None])[0]
            log.info("unit %d: template rebuilt with %d spikes it matched since", u, found.n_refined[u])
            self.refines[u] -= 1
            if self.refines[u] <= 0:
                del self.refines[u], self.pooled[u]
            changed = True
        batch = None
        if found.new is not None and len(found.new.dense):
            batch = self._add(found, at_reference(found.new.dense), index)
            changed = True
        if changed:
            s.templates_changed()
            files.save_templates(r.paths.state / files.TEMPLATES_FILE, r.model)
            r._write_units()
        return batch

    def _add(self, found: _Found, dense: np.ndarray, index: int) -> OnlineBatch:
        r, s = self.run, self.run.streamer
        ids = list(range(r.model.n_units, r.model.n_units + len(dense)))
        r.model.dense = np.concatenate([r.model.dense, dense])
        if s.tracking:
            depths = r._depths(dense)
            r.model.ref_depth_um = np.concatenate([r.model.ref_depth_um, depths])
            for lane in s.lanes():
                lane.tracker.add_units(depths)
        spikes = found.new.spikes
        for u, t in zip(ids, spikes):
            self.pool.drop(t)
            r.first_sample.append(int(t[0]))
            self.refines[u] = REFINE_PERIODS
            self.pooled[u] = t
        samples = np.concatenate(spikes)
        order = np.argsort(samples, kind="stable")
        log.info(
            "new unit%s %s: %s spikes in the pool (first at %.1f s)",
            "s" * (len(ids) > 1),
            ", ".join(map(str, ids)),
            ", ".join(str(len(t)) for t in spikes),
            min(int(t[0]) for t in spikes) / s.fs,
        )
        # the new units' pooled spikes: late, but theirs
        return OnlineBatch(
            index=index,
            chunk_start=found.now,
            chunk_stop=found.now,
            samples=samples[order].astype(np.int64),
            units=np.concatenate([np.full(len(t), u, np.int32) for u, t in zip(ids, spikes)])[order],
            amplitudes=np.ones(len(samples), np.float32),
            emitted_unix_s=time.time(),
            new_units=ids,
        )

    def close(self) -> None:
        self.thread.shutdown(wait=True)
