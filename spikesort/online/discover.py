"""New units during the stream: spikes that no template explains (detections on the matching
residual) are pooled; every recluster_s the offline cluster step runs on the pool, and a cluster
becomes a new unit when it has enough spikes, a clear template, and resembles no existing unit.
Existing units are never changed, so their ids keep their meaning."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spikesort.stages.cluster import cluster_spikes
from spikesort.stages.detect import Detections
from spikesort.stages.templates import build_templates, template_snr

log = logging.getLogger(__name__)


@dataclass
class NewUnits:
    dense: np.ndarray  # (k, nt, C) whitened templates of the accepted clusters
    spikes: list  # per new unit, the (sorted) samples of its pooled spikes


class Pool:
    """The unexplained detections of the last ``keep_samples`` samples."""

    def __init__(self, *, keep_samples: int, max_spikes: int = 50_000):
        self.keep, self.max = keep_samples, max_spikes
        self.parts: list[Detections] = []

    def add(self, det: Detections) -> None:
        if len(det):
            self.parts.append(det)

    def take(self, now: int) -> Detections | None:
        if not self.parts:
            return None
        d = Detections.concat(self.parts)
        d = d.take(np.flatnonzero(d.times >= now - self.keep)[-self.max :])
        self.parts = [d]
        return d

    def drop(self, times: np.ndarray) -> None:
        """Forget the pooled spikes at these samples (they became a unit's)."""
        if self.parts:
            d = Detections.concat(self.parts)
            self.parts = [d.take(np.flatnonzero(~np.isin(d.times, times)))]


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
) -> NewUnits:
    """Cluster the pool; return the clusters that qualify as new units."""
    n_c = store.n_channels
    none = NewUnits(dense=np.zeros((0, nt, n_c), np.float32), spikes=[])
    if len(pool) < min_spikes:
        return none
    cl = cluster_spikes(
        features=pool.features,
        channels=pool.channels,
        neighbors=feature_neighbors,
        max_spikes_per_channel=params.max_spikes_per_channel,
        min_cluster_size=min_spikes,
        split_depth=params.split_depth,
        bimodality_threshold=params.bimodality_threshold,
        merge_similarity=params.merge_similarity,
        seed=int(rng.integers(2**31)),
    )
    if cl.n_units == 0:
        return none
    times, labels = pool.times[cl.spike_index], cl.labels
    tpl = build_templates(store, times, labels, n_units=cl.n_units, pre=pre, nt=nt, rng=rng)
    snr = template_snr(tpl.dense @ whitening_inv_uv.astype(np.float32), noise_uv)
    sizes = np.bincount(labels[labels >= 0], minlength=cl.n_units)
    accepted, spikes = [], []
    for u in np.argsort(-sizes, kind="stable"):
        if (
            sizes[u] < min_spikes
            or np.sqrt(tpl.norm2[u]) < params.universal_threshold
            or snr[u] < params.min_template_snr
        ):
            continue
        others = np.concatenate([existing, np.asarray(accepted, np.float32).reshape(-1, nt, n_c)])
        sim = max_similarity(tpl.dense[u], others)
        if sim >= max_similar:
            log.debug("pool cluster of %d spikes resembles a unit (%.2f): not new", sizes[u], sim)
            continue
        accepted.append(tpl.dense[u])
        spikes.append(np.sort(times[labels == u]))
    if not accepted:
        return none
    return NewUnits(dense=np.asarray(accepted, np.float32), spikes=spikes)
