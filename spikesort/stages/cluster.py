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
from .merges.pieces import COMPACT_REACH
from .sampling import spike_keys

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


# tries of one split, counting those that cut off a side too small to keep; on crowded64 seed 1
# all 5 tries of neurons 85 and 105's cluster cut off 2-17 spikes
MAX_TRIES = 20


def split_recursive(
    x: np.ndarray,
    *,
    min_size: int,
    max_depth: int,
    threshold: float,
    rng: np.random.Generator,
    n_dims: int = 6,
    n_init: int = 5,
    seed: int = 0,
    along_axes: bool = False,
) -> np.ndarray:
    """Labels for rows of ``x`` (features), found by recursive bimodal 2-means splits. Up to
    ``n_init`` tries per split draw from ``rng``; tries beyond those (after tries that cut off a
    side under ``min_size``) draw from a stream of ``seed`` and the split's own rows.
    ``along_axes``: where no try finds a valley, try each principal axis (``axis_split``)."""
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
        spare = None
        tries = valid = 0
        while valid < n_init and tries < MAX_TRIES:
            # a try that cuts off a side too small to keep (k-means++ seeded on a spike with
            # another's on top) says nothing about a valley: it is tried again, from a stream of
            # its own so that no other cluster's draws move
            if tries < n_init:
                lab = two_means(y, rng)
            else:
                if spare is None:
                    spare = np.random.default_rng([seed, len(idx), int(idx[0]), depth])
                lab = two_means(y, spare)
            tries += 1
            a, b = lab == 0, lab == 1
            if a.sum() < min_size or b.sum() < min_size:
                continue
            valid += 1
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
        if along_axes and (best is None or best[0] < threshold):
            best = axis_split(y, min_size=min_size, threshold=threshold) or best
        if best is None or best[0] < threshold:
            continue
        _, a, b = best
        labels[idx[b]] = next_label
        next_label += 1
        stack.append((idx[a], depth + 1))
        stack.append((idx[b], depth + 1))
    return labels


# a split along one axis must leave a fifth of the spikes on its smaller side: cut off a few dozen
# stray spikes, it made false units (on 73 recordings 14 -> 23), where the neighbours it is for
# were 29 % and 45 % of their cluster (MEArec's tetrode, seed 21 with independent noise, and the
# wire tetrode's seed 1). Only where a channel's neighbourhood spans COMPACT_REACH of the probe (a
# tetrode): there every neighbour shares the contacts and differs on smaller axes; on a longer
# probe a neighbour peaks on channels of its own, and the splits along one axis made 7 more false
# units on 37 dense recordings (bursting neurons' pieces) for 1 well-detected unit more (2026-12-06)
MIN_AXIS_SHARE = 0.2


def below_1d_two_means(p: np.ndarray, *, n_iter: int = 20) -> np.ndarray:
    """The values of ``p`` below the cut of a 1-D 2-means started from the quartiles: no draws,
    so no other cluster's random stream moves."""
    lo, hi = np.percentile(p, [25, 75])
    for _ in range(n_iter):
        a = p < 0.5 * (lo + hi)
        if a.all() or not a.any():
            break
        lo, hi = p[a].mean(), p[~a].mean()
    return p < 0.5 * (lo + hi)


def axis_split(y: np.ndarray, *, min_size: int, threshold: float, n_iter: int = 20):
    """(valley depth, side a, side b) of the best split along one principal axis of ``y`` with a
    valley of ``threshold`` or more and both sides of ``min_size`` and ``MIN_AXIS_SHARE`` of the
    spikes, or None. 2-means cuts along the largest spread: a bursting neuron's sizes stretch it,
    and a second neuron apart on a smaller axis stays hidden (MEArec's tetrode with independent
    noise, seed 21: two neurons at 57 % and 27 % of a contact's spikes, 2-means' best valley 0.22,
    the second axis alone 0.67)."""
    best = None
    for k in range(y.shape[1]):
        p = y[:, k]
        a = below_1d_two_means(p, n_iter=n_iter)
        if min(a.sum(), (~a).sum()) < max(min_size, MIN_AXIS_SHARE * len(p)):
            continue
        # judged as 2-means' splits are: along the line between the two sides' means
        axis = y[a].mean(0) - y[~a].mean(0)
        proj = y @ (axis / max(np.linalg.norm(axis), 1e-12))
        score = bimodality(proj, 0.5 * (proj[a].mean() + proj[~a].mean()))
        if score >= threshold and (best is None or score > best[0]):
            best = (score, a, ~a)
    return best


def sample_per_channel(keys: np.ndarray, channels: np.ndarray, *, per_channel: int) -> np.ndarray:
    """Sorted indices of the ``per_channel`` smallest keys of each peak channel (all of a
    channel's spikes when it has fewer)."""
    order = np.lexsort((keys, channels))
    ch = np.asarray(channels)[order]
    rank = np.arange(len(order)) - np.searchsorted(ch, ch, side="left")
    return np.sort(order[rank < per_channel])


class ClusterSample:
    """The spikes clustering will see, chosen while the detections stream in.

    Clustering reads at most ``per_channel`` spikes per peak channel (``sample_per_channel``
    on ``spike_keys``). Holding every detection's features until the end would make memory
    grow with the recording's length (0.5 kB a spike on 384 channels, over a gigabyte for an
    hour); pruning to the per-channel choice whenever a quarter more has arrived bounds it, and
    gives exactly the choice made on all the spikes at once.
    """

    def __init__(self, *, per_channel: int, n_channels: int, seed: int):
        self.per_channel = int(per_channel)
        self.seed = int(seed)
        self.parts: list = []
        self.held = 0
        self.n_seen = 0
        self._step = max(self.per_channel * int(n_channels) // 4, 50_000)
        self._prune_at = self._step

    def add(self, det) -> None:
        self.n_seen += len(det)
        self.parts.append(det)
        self.held += len(det)
        if self.held >= self._prune_at:
            self._prune()

    def gather(self, parts, *, each=None) -> None:
        """``add`` every item of ``parts``, after handing it to ``each`` when given."""
        for det in parts:
            if each is not None:
                each(det)
            self.add(det)

    def _prune(self) -> None:
        if not self.parts:
            return
        det = type(self.parts[0]).concat(self.parts) if len(self.parts) > 1 else self.parts[0]
        keys = spike_keys(det.times, det.channels, seed=self.seed)
        keep = sample_per_channel(keys, det.channels, per_channel=self.per_channel)
        det = det.take(keep) if len(keep) < len(det) else det
        self.parts, self.held = [det], len(det)
        self._prune_at = self.held + self._step

    def result(self):
        """The chosen detections in time order (None when nothing was added)."""
        self._prune()
        return self.parts[0] if self.parts else None


# on a compact probe (a tetrode), detections more than this many times the median size (feature
# norm) of their channel's, and fewer than EXTREME_MAX_SHARE of them, are no neuron's: movement
# artefacts of 0.5-3 mV seen on every contact, which no reference blanks there (15-20x the
# median on the dirty tetrode; at most 2.7x on the clean one). Kept, every 2-means try cut them
# off as a side too small to keep, the channel's group stopped splitting and two neurons stayed
# one (`dirty_tetrode` seed 1)
EXTREME_NORM = 6.0
EXTREME_MAX_SHARE = 0.02


def stray_extremes(x: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of ``x`` (one channel's features) whose norm is more than EXTREME_NORM times
    the median, when they are fewer than EXTREME_MAX_SHARE of the rows (more of them: a neuron)."""
    norm = np.linalg.norm(x, axis=1)
    far = norm > EXTREME_NORM * np.median(norm) if len(x) else np.zeros(0, bool)
    return far if far.sum() <= EXTREME_MAX_SHARE * len(x) else np.zeros(len(x), bool)


def cluster_spikes(
    *,
    times: np.ndarray,
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
    """Cluster spikes given their samples (n,), neighbourhood features (n, M, K) and peak
    channels (n,); at most ``max_spikes_per_channel`` per peak channel are clustered
    (``sample_per_channel``)."""
    rng = np.random.default_rng(seed)
    n_c = neighbors.shape[0]
    groups: list[_Group] = []
    chosen = []
    sampled = np.zeros(len(channels), bool)
    keys = spike_keys(times, channels, seed=seed)
    sampled[sample_per_channel(keys, channels, per_channel=max_spikes_per_channel)] = True
    for c in range(n_c):
        idx = np.flatnonzero((channels == c) & sampled)
        if len(idx) < min_cluster_size:
            continue
        m = int((neighbors[c] >= 0).sum())
        x = features[idx, :m, :].reshape(len(idx), -1).astype(np.float64)
        compact = m >= COMPACT_REACH * n_c
        # elsewhere a common reference is subtracted and artefacts seen on every channel blanked
        stray = stray_extremes(x) if compact else np.zeros(len(x), bool)
        if stray.any():
            log.info("channel %d: %d detections far larger than the rest left out of the clustering", c, stray.sum())
            idx, x = idx[~stray], x[~stray]
        chosen.append(idx)
        lab = split_recursive(
            x,
            min_size=min_cluster_size,
            max_depth=split_depth,
            threshold=bimodality_threshold,
            rng=rng,
            seed=seed,
            along_axes=compact,
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
