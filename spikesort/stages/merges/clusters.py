"""The merges of clustering: clusters of one unit seen on several peak channels become one.

A unit whose spikes peak on several channels comes out of the per-channel splits as several
clusters; similar clusters are merged agglomeratively, with the bimodality test as a veto: two
clusters merge only when their spikes form one mode along the axis that separates them.
"""

from __future__ import annotations

import numpy as np

from spikesort.stages.bimodality import bimodality


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


def _common_features(g: _Group, chans: np.ndarray, features, channels, slots) -> np.ndarray:
    """Features of a group's spikes on the channels ``chans`` that all of them observed."""
    sl = slots[channels[g.members]][:, chans]  # (n, len(chans))
    f = np.take_along_axis(features[g.members], sl[:, :, None], axis=1)
    return f.reshape(len(g.members), -1).astype(np.float64)


def _unit(v: np.ndarray) -> np.ndarray:
    flat = v.ravel()
    return flat / max(np.linalg.norm(flat), 1e-12)


def merge_groups(
    groups: list[_Group], *, features, channels, neighbors, similarity: float, threshold: float, max_test: int = 1000
) -> list[_Group]:
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
        g = _Group(
            np.sort(np.concatenate([groups[a].members, groups[b].members])),
            groups[a].peak_channels | groups[b].peak_channels,
        )
        groups.append(g)
        new = len(groups) - 1
        alive = [i for i in alive if i not in (a, b)] + [new]
        sim[[a, b], :] = -np.inf
        sim[:, [a, b]] = -np.inf
        unit[new] = _unit(mean_global(g))
        others = np.asarray(alive[:-1], dtype=np.int64)
        sim[others, new] = unit[others] @ unit[new]
    return [groups[i] for i in alive]
