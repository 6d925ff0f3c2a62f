"""New units during the stream: spikes that no template explains (detections on the matching
residual) are pooled; every recluster_s the offline cluster step runs on the pool, and a cluster
becomes a new unit when it has enough spikes, a clear template, and resembles no existing unit.
Existing units are never changed, so their ids keep their meaning."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.stages.cluster import cluster_spikes
from spikesort.stages.detect import Detections
from spikesort.stages.templates import build_templates, realigned, template_snr

log = logging.getLogger(__name__)


@dataclass
class NewUnits:
    dense: np.ndarray  # (k, nt, C) whitened templates of the accepted clusters
    spikes: list  # per new unit, the (sorted) samples of its pooled spikes


class Pool:
    """The unexplained detections of the last ``keep_samples`` samples. With ``folder``, each
    batch's detections are also appended to a log file there (``pool-<generation>.bin``), so
    that ``--resume`` restores the pool as it was at the saved state (:meth:`state`,
    :meth:`restore`); the log is rewritten without the old detections now and then."""

    def __init__(self, *, keep_samples: int, max_spikes: int = 50_000, folder: Path | None = None, generation: int = 0):
        self.keep, self.max = keep_samples, max_spikes
        self.parts: list[Detections] = []
        self.folder, self.generation = folder, generation
        self.dtype: np.dtype | None = None
        self.logged = 0  # records in the log file

    def _log_path(self, generation: int) -> Path:
        return self.folder / f"pool-{generation}.bin"

    def _records(self, det: Detections) -> bytes:
        if self.dtype is None:
            self.dtype = _record_dtype(det.features.shape[1:])
        rec = np.empty(len(det), self.dtype)
        for f in _FIELDS:
            rec[f] = getattr(det, f)
        return rec.tobytes()

    def add(self, det: Detections) -> None:
        if not len(det):
            return
        self.parts.append(det)
        if self.folder is not None:
            with open(self._log_path(self.generation), "ab") as fh:
                fh.write(self._records(det))
            self.logged += len(det)

    def _all(self) -> Detections | None:
        if not self.parts:
            return None
        d = Detections.concat(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.parts = [d]
        return d

    def take(self, now: int) -> Detections | None:
        """The pool's detections since ``now - keep_samples`` (the newest ``max_spikes``), in time order."""
        d = self._all()
        if d is None:
            return None
        d = d.take(np.argsort(d.times, kind="stable"))
        d = d.take(np.flatnonzero(d.times >= now - self.keep)[-self.max :])
        self.parts = [d]
        if self.folder is not None and self.logged > 2 * len(d) + 10_000:
            self._rewrite(d)
        return d

    def drop(self, times: np.ndarray) -> None:
        """Forget the pooled spikes at these samples (they became a unit's)."""
        d = self._all()
        if d is not None:
            d = d.take(np.flatnonzero(~np.isin(d.times, times)))
            self.parts = [d]
            if self.folder is not None:
                self._rewrite(d)

    def _rewrite(self, d: Detections) -> None:
        """A new log file of what the pool holds; the old one goes once the state names the new."""
        self.generation += 1
        self._log_path(self.generation).write_bytes(self._records(d) if len(d) else b"")
        self.logged = len(d)

    def state(self) -> dict:
        """What --resume needs to restore the pool: the log's generation, its length, the record shape.
        Older logs are deleted (call it after the state naming this generation was saved)."""
        return {
            "pool_generation": self.generation,
            "pool_records": self.logged,
            "pool_shape": list(self.dtype["features"].shape) if self.dtype is not None else None,
        }

    def forget_older_logs(self) -> None:
        if self.folder is not None:
            for old in self.folder.glob("pool-*.bin"):
                if old != self._log_path(self.generation):
                    old.unlink(missing_ok=True)

    @classmethod
    def restore(cls, *, keep_samples: int, folder: Path, state: dict) -> Pool:
        """The pool as the saved ``state`` left it (records logged after it are cut off)."""
        pool = cls(keep_samples=keep_samples, folder=folder, generation=int(state.get("pool_generation", 0)))
        shape = state.get("pool_shape")
        path = pool._log_path(pool.generation)
        if shape is None or not path.is_file():
            return pool
        pool.dtype = _record_dtype(tuple(shape))
        n = int(state["pool_records"])
        with open(path, "r+b") as fh:
            fh.truncate(n * pool.dtype.itemsize)
        rec = np.fromfile(path, dtype=pool.dtype, count=n)
        pool.logged = len(rec)
        if len(rec):
            pool.parts = [Detections(*(np.ascontiguousarray(rec[f]) for f in _FIELDS))]
        return pool


_FIELDS = ("times", "channels", "amplitudes", "scores", "positions_um", "features")


def _record_dtype(features_shape) -> np.dtype:
    return np.dtype(
        [
            ("times", "<i8"),
            ("channels", "<i8"),
            ("amplitudes", "<f4"),
            ("scores", "<f4"),
            ("positions_um", "<f4", (2,)),
            ("features", "<f4", tuple(int(s) for s in features_shape)),
        ]
    )


def max_similarity(new: np.ndarray, existing: np.ndarray, *, max_lag: int = 3) -> float:
    """Largest cosine similarity of template ``new`` (nt, C) with any of ``existing`` (K, nt, C)
    over a few sample lags."""
    if len(existing) == 0:
        return 0.0
    a = new / max(float(np.linalg.norm(new)), 1e-12)
    e = existing.reshape(len(existing), -1)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    best = 0.0
    for lag in range(-max_lag, max_lag + 1):
        best = max(best, float((e @ np.roll(a, lag, axis=0).ravel()).max()))
    return best


# a pool cluster whose spikes mostly sit within a template window of one unit's is that unit's
# echo (its waveform's tail, or what its fits left while the probe moved), not a neuron: by chance
# a few percent of spikes fall that close to a unit firing at 5-10 Hz
MAX_LOCKED_SHARE = 0.5


def locked_to(times: np.ndarray, m_times: np.ndarray, m_units: np.ndarray, *, window: int) -> tuple[int, float]:
    """The unit whose matched spikes (``m_times`` sorted, ``m_units``) lie within ``window`` samples
    of most of ``times``, and that share."""
    if len(times) == 0 or len(m_times) == 0:
        return -1, 0.0
    lo = np.searchsorted(m_times, times - window, side="left")
    hi = np.searchsorted(m_times, times + window, side="right")
    counts: dict = {}
    for a, b in zip(lo, hi):
        for unit in set(m_units[a:b].tolist()):
            counts[unit] = counts.get(unit, 0) + 1
    if not counts:
        return -1, 0.0
    unit = max(counts, key=counts.get)
    return int(unit), counts[unit] / len(times)


def strongest_per_event(det: Detections, *, window: int, radius_um: float) -> Detections:
    """The pool's detections less those within ``window`` samples and ``radius_um`` of a larger one.

    A spike that no unit explains crosses threshold more than once: at its trough and at later
    phases of its waveform. Pooled, those later crossings would cluster into an echo of it."""
    if len(det) < 2:
        return det
    order = np.argsort(-det.amplitudes, kind="stable")
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            near = (np.abs(det.times[k] - det.times[i]) <= window) & (
                np.hypot(*(det.positions_um[k] - det.positions_um[i]).T) <= radius_um
            )
            if near.any():
                continue
        kept.append(int(i))
    return det.take(np.sort(np.asarray(kept)))


def discover(
    pool: Detections,
    *,
    store,
    existing: np.ndarray,
    params,
    feature_neighbors: np.ndarray,
    pre: int,
    nt: int,
    whitening_inv_uv: np.ndarray,
    noise_uv: np.ndarray,
    min_spikes: int,
    max_similar: float,
    rng: np.random.Generator,
    sign: int = -1,
    matched: tuple | None = None,
) -> NewUnits:
    """Cluster the pool; return the clusters that qualify as new units."""
    n_c = store.n_channels
    none = NewUnits(dense=np.zeros((0, nt, n_c), np.float32), spikes=[])
    if len(pool) < min_spikes:
        return none
    seed = int(rng.integers(2**31))
    cl = cluster_spikes(
        times=pool.times,
        features=pool.features,
        channels=pool.channels,
        neighbors=feature_neighbors,
        max_spikes_per_channel=params.max_spikes_per_channel,
        min_cluster_size=min_spikes,
        split_depth=params.split_depth,
        bimodality_threshold=params.bimodality_threshold,
        merge_similarity=params.merge_similarity,
        seed=seed,
    )
    if cl.n_units == 0:
        return none
    times, labels = pool.times[cl.spike_index], cl.labels
    tpl = build_templates(store, times, labels, n_units=cl.n_units, pre=pre, nt=nt, seed=seed)
    times = realigned(times, labels, dense=tpl.dense, pre=pre, sign=sign)
    tpl = build_templates(store, times, labels, n_units=cl.n_units, pre=pre, nt=nt, seed=seed)
    snr = template_snr(tpl.dense @ whitening_inv_uv.astype(np.float32), noise_uv)
    sizes = np.bincount(labels[labels >= 0], minlength=cl.n_units)
    accepted, spikes = [], []
    m_times, m_units = matched if matched is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    # the largest first: a neuron and its echo found together, the echo is then refused as locked to it
    for u in np.argsort(-tpl.norm2, kind="stable"):
        if (
            sizes[u] < min_spikes
            or np.sqrt(tpl.norm2[u]) < params.universal_threshold
            or snr[u] < params.min_template_snr
        ):
            continue
        others = np.concatenate([existing, np.asarray(accepted, np.float32).reshape(-1, nt, n_c)])
        # a duplicate may still sit a few samples off: compared over +-1/8 of the window
        sim = max_similarity(tpl.dense[u], others, max_lag=max(3, nt // 8))
        if sim >= max_similar:
            log.debug("pool cluster of %d spikes resembles a unit (%.2f): not new", sizes[u], sim)
            continue
        own = np.sort(times[labels == u])
        unit, share = locked_to(own, m_times, m_units, window=nt)
        if share >= MAX_LOCKED_SHARE:
            log.debug("pool cluster of %d spikes: %.0f%% near unit %d's spikes", sizes[u], 100 * share, unit)
            continue
        accepted.append(tpl.dense[u])
        spikes.append(own)
        # new units are numbered after the existing ones: -1, -2... stand for them until then
        order = np.argsort(np.concatenate([m_times, own]), kind="stable")
        m_times = np.concatenate([m_times, own])[order]
        m_units = np.concatenate([m_units, np.full(len(own), -len(accepted), m_units.dtype)])[order]
    if not accepted:
        return none
    return NewUnits(dense=np.asarray(accepted, np.float32), spikes=spikes)
