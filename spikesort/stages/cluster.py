"""Clustering detected spikes into units: local recursive bimodal splits, then merges.

1. Spikes are grouped by peak channel; each group (a bounded subsample) is split
   recursively: local PCA, 2-means, and a split is kept only when the projection on the axis
   joining the two centroids is bimodal (a clear valley between two modes).
2. A unit whose spikes peak on several channels comes out as several clusters, so similar
   clusters are merged agglomeratively, with the same bimodality test as a veto: two
   clusters merge only when their spikes form one mode along the axis that separates them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from spikesort.kernels.cluster import two_means_labels

log = logging.getLogger(__name__)


@dataclass
class ClusterResult:
    spike_index: np.ndarray  # (n,) indices into the detections that were clustered
    labels: np.ndarray  # (n,) unit label of each, -1 for spikes left unassigned
    n_units: int


def bimodality(proj: np.ndarray, split_value: float, *, min_z: float = 2.0) -> float:
    """1 - valley / smaller peak of the density of ``proj`` around ``split_value`` (0 = one mode).

    The density is a histogram smoothed at Silverman's bandwidth, so sampling noise in a single
    mode does not look like a valley.
    """
    n = len(proj)
    if n < 4:
        return 0.0
    lo, hi = np.percentile(proj, [0.5, 99.5])
    if hi <= lo:
        return 0.0
    n_bins = 100
    hist, edges = np.histogram(proj, bins=n_bins, range=(lo, hi))
    sd = np.std(proj)
    iqr = np.subtract(*np.percentile(proj, [75, 25]))
    bw = 0.9 * min(sd, iqr / 1.34 if iqr > 0 else sd) * n ** -0.2
    h = gaussian_filter1d(hist.astype(float), max(bw / (edges[1] - edges[0]), 0.5))
    centers = 0.5 * (edges[1:] + edges[:-1])
    cut = int(np.clip(np.searchsorted(centers, split_value), 1, n_bins - 1))
    left, right = int(np.argmax(h[:cut])), cut + int(np.argmax(h[cut:]))
    peak = min(h[left], h[right])
    if peak <= 0:
        return 0.0
    v = left + int(np.argmin(h[left: right + 1]))
    valley = h[v]
    # a valley between few spikes may be sampling noise: the counts within a bandwidth of the
    # smaller peak and of the valley must differ by more than their Poisson spread
    small = left if h[left] <= h[right] else right
    n_peak = np.count_nonzero(np.abs(proj - centers[small]) <= bw)
    n_valley = np.count_nonzero(np.abs(proj - centers[v]) <= bw)
    if n_peak - n_valley < min_z * np.sqrt(n_peak + n_valley):
        return 0.0
    return float(1.0 - valley / peak)


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


def split_recursive(x: np.ndarray, *, min_size: int, max_depth: int, threshold: float,
                    rng: np.random.Generator, n_dims: int = 6, n_init: int = 5) -> np.ndarray:
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


def _neighbor_slots(neighbors: np.ndarray) -> np.ndarray:
    """(C, C) slot of channel ch in the neighbour list of c, or -1."""
    n_c = neighbors.shape[0]
    slots = np.full((n_c, n_c), -1, dtype=np.int64)
    for c in range(n_c):
        for j, ch in enumerate(neighbors[c]):
            if ch >= 0:
                slots[c, ch] = j
    return slots


class _Group:
    def __init__(self, members: np.ndarray, peak_channels: set):
        self.members = members
        self.peak_channels = peak_channels


def cluster_spikes(*, features: np.ndarray, channels: np.ndarray, neighbors: np.ndarray,
                   max_spikes_per_channel: int, min_cluster_size: int, split_depth: int,
                   bimodality_threshold: float, merge_similarity: float, seed: int) -> ClusterResult:
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
        lab = split_recursive(x, min_size=min_cluster_size, max_depth=split_depth,
                              threshold=bimodality_threshold, rng=rng)
        for k in np.unique(lab):
            members = idx[lab == k]
            if len(members) >= min_cluster_size:
                groups.append(_Group(members, {c}))
    spike_index = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    log.info("%d clusters before merging", len(groups))
    groups = merge_groups(groups, features=features, channels=channels, neighbors=neighbors,
                          similarity=merge_similarity, threshold=bimodality_threshold)
    labels = np.full(len(spike_index), -1, dtype=np.int64)
    pos = {s: i for i, s in enumerate(spike_index)}
    for u, g in enumerate(groups):
        labels[[pos[s] for s in g.members]] = u
    log.info("%d clusters after merging", len(groups))
    return ClusterResult(spike_index=spike_index, labels=labels, n_units=len(groups))


def _common_features(g: _Group, chans: np.ndarray, features, channels, slots) -> np.ndarray:
    """Features of a group's spikes on the channels ``chans`` that all of them observed."""
    sl = slots[channels[g.members]][:, chans]  # (n, len(chans))
    f = np.take_along_axis(features[g.members], sl[:, :, None], axis=1)
    return f.reshape(len(g.members), -1).astype(np.float64)


def _unit(v: np.ndarray) -> np.ndarray:
    flat = v.ravel()
    return flat / max(np.linalg.norm(flat), 1e-12)


def merge_groups(groups: list[_Group], *, features, channels, neighbors, similarity: float,
                 threshold: float, max_test: int = 1000) -> list[_Group]:
    slots = _neighbor_slots(neighbors)

    def common(a: _Group, b: _Group) -> np.ndarray:
        chans = None
        for c in a.peak_channels | b.peak_channels:
            nb = set(neighbors[c][neighbors[c] >= 0].tolist())
            chans = nb if chans is None else chans & nb
        return np.array(sorted(chans), dtype=np.int64)

    def mean_global(g: _Group) -> np.ndarray:
        out = np.zeros((neighbors.shape[0], features.shape[2]))
        cnt = np.zeros(neighbors.shape[0])
        for c in g.peak_channels:
            sel = g.members[channels[g.members] == c]
            nb = neighbors[c][neighbors[c] >= 0]
            out[nb] += features[sel, : len(nb)].sum(0)
            cnt[nb] += len(sel)
        return out / np.maximum(cnt, 1)[:, None]

    # cosine similarity of every pair of live groups, upper triangle only (a < b, so the first
    # maximum in row-major order is the pair the old pairwise scan picked); dead pairs are -inf
    n0 = len(groups)
    cap = 2 * n0 + 1
    unit = np.zeros((cap, neighbors.shape[0] * features.shape[2]))
    for i in range(n0):
        unit[i] = _unit(mean_global(groups[i]))
    sim = np.full((cap, cap), -np.inf)
    if n0:
        sim[:n0, :n0] = np.triu(unit[:n0] @ unit[:n0].T, k=1)
        sim[np.tril_indices(cap)] = -np.inf
    alive = list(range(n0))
    for _ in range(max_test):
        flat = int(np.argmax(sim))
        a, b = divmod(flat, cap)
        if not sim[a, b] > similarity:
            break
        chans = common(groups[a], groups[b])
        merge = False
        if len(chans):
            xa = _common_features(groups[a], chans, features, channels, slots)
            xb = _common_features(groups[b], chans, features, channels, slots)
            axis = xa.mean(0) - xb.mean(0)
            nrm = np.linalg.norm(axis)
            if nrm == 0:
                merge = True
            else:
                pa, pb = xa @ (axis / nrm), xb @ (axis / nrm)
                proj = np.concatenate([pa, pb])
                merge = bimodality(proj, 0.5 * (pa.mean() + pb.mean())) < threshold
        if not merge:
            sim[a, b] = -np.inf
            continue
        g = _Group(np.sort(np.concatenate([groups[a].members, groups[b].members])),
                   groups[a].peak_channels | groups[b].peak_channels)
        groups.append(g)
        new = len(groups) - 1
        alive = [i for i in alive if i not in (a, b)] + [new]
        sim[[a, b], :] = -np.inf
        sim[:, [a, b]] = -np.inf
        unit[new] = _unit(mean_global(g))
        others = np.asarray(alive[:-1], dtype=np.int64)
        sim[others, new] = unit[others] @ unit[new]
    return [groups[i] for i in alive]
