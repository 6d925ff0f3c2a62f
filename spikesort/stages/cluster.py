"""Clustering detected spikes into units: local recursive bimodal splits, then merges.

1. Spikes are grouped by peak channel; each group (a bounded subsample) is split
   recursively: local PCA, 2-means, and a split is kept only when the projection on the axis
   joining the two centroids is bimodal (a clear valley between two modes).
2. A unit whose spikes peak on several channels comes out as several clusters, so similar
   clusters are merged agglomeratively, with the same bimodality test as a veto: two
   clusters merge only when their spikes form one mode along the axis that separates them
   (``spikesort.stages.merges.clusters``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spikesort.kernels.cluster import two_means_labels

from .bimodality import bimodality
from .merges.clusters import _Group, merge_groups

log = logging.getLogger(__name__)


@dataclass
class ClusterResult:
    spike_index: np.ndarray  # (n,) indices into the detections that were clustered
    labels: np.ndarray  # (n,) unit label of each, -1 for spikes left unassigned
    n_units: int


def two_means(x: np.ndarray, rng: np.random.Generator, n_iter: int = 30) -> np.ndarray:
    """Labels 0/1 of 2-means with k-means++ seeding (the loop is a numba kernel: it ran a few
    hundred times per sort, and numpy's small-array overhead made it the costliest step here)."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    first = int(rng.integers(len(x)))
    u = float(rng.random())
    return two_means_labels(np.ascontiguousarray(x, dtype=np.float64), first, u, n_iter)


def local_pca(x: np.ndarray, n_dims: int) -> np.ndarray:
    from scipy.linalg import eigh

    xc = x - x.mean(0)
    d = xc.shape[1]
    k = min(n_dims, d)
    # the top k eigenvectors of the (d x d) covariance only: far cheaper than an SVD of the data,
    # or a full eigendecomposition when d is 150 (30 channels x 5 components on a Neuropixels probe)
    _, evecs = eigh(xc.T @ xc, subset_by_index=[d - k, d - 1])
    return xc @ evecs[:, ::-1]


def split_recursive(
    x: np.ndarray,
    *,
    min_size: int,
    max_depth: int,
    threshold: float,
    rng: np.random.Generator,
    n_dims: int = 6,
    n_init: int = 5,
) -> np.ndarray:
    """Labels for rows of ``x`` (features), found by recursive bimodal 2-means splits."""
    labels = np.zeros(len(x), dtype=np.int64)
    stack = [(np.arange(len(x)), 0)]
    next_label = 1
    while stack:
        idx, depth = stack.pop()
        if depth >= max_depth or len(idx) < 2 * min_size:
            continue
        y = local_pca(x[idx], n_dims)
        # 2-means from a single k-means++ seed sometimes cuts one big cluster in two and leaves a
        # small one inside a half: no valley, and the whole branch would stop splitting. The best
        # valley over a few seeds finds the small cluster.
        best = None
        for _ in range(n_init):
            lab = two_means(y, rng)
            a, b = lab == 0, lab == 1
            if a.sum() < min_size or b.sum() < min_size:
                continue
            axis = y[a].mean(0) - y[b].mean(0)
            norm = np.linalg.norm(axis)
            if norm == 0:
                continue
            proj = y @ (axis / norm)
            score = bimodality(proj, 0.5 * (proj[a].mean() + proj[b].mean()))
            if best is None or score > best[0]:
                best = (score, a, b)
            if score >= threshold:
                break
        if best is None or best[0] < threshold:
            continue
        _, a, b = best
        labels[idx[b]] = next_label
        next_label += 1
        stack.append((idx[a], depth + 1))
        stack.append((idx[b], depth + 1))
    return labels


def cluster_spikes(
    *,
    features: np.ndarray,
    channels: np.ndarray,
    neighbors: np.ndarray,
    max_spikes_per_channel: int,
    min_cluster_size: int,
    split_depth: int,
    bimodality_threshold: float,
    merge_similarity: float,
    seed: int,
) -> ClusterResult:
    """Cluster spikes given their neighbourhood features (n, M, K) and peak channels (n,)."""
    rng = np.random.default_rng(seed)
    n_c = neighbors.shape[0]
    groups: list[_Group] = []
    chosen = []
    for c in range(n_c):
        idx = np.flatnonzero(channels == c)
        if len(idx) < min_cluster_size:
            continue
        if len(idx) > max_spikes_per_channel:
            idx = np.sort(rng.choice(idx, max_spikes_per_channel, replace=False))
        chosen.append(idx)
        m = int((neighbors[c] >= 0).sum())
        x = features[idx, :m, :].reshape(len(idx), -1).astype(np.float64)
        lab = split_recursive(
            x, min_size=min_cluster_size, max_depth=split_depth, threshold=bimodality_threshold, rng=rng
        )
        for k in np.unique(lab):
            members = idx[lab == k]
            if len(members) >= min_cluster_size:
                groups.append(_Group(members, {c}))
    spike_index = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    log.info("%d clusters before merging", len(groups))
    groups = merge_groups(
        groups,
        features=features,
        channels=channels,
        neighbors=neighbors,
        similarity=merge_similarity,
        threshold=bimodality_threshold,
    )
    labels = np.full(len(spike_index), -1, dtype=np.int64)
    pos = {s: i for i, s in enumerate(spike_index)}
    for u, g in enumerate(groups):
        labels[[pos[s] for s in g.members]] = u
    log.info("%d clusters after merging", len(groups))
    return ClusterResult(spike_index=spike_index, labels=labels, n_units=len(groups))
