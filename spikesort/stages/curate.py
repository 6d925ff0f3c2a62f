"""After matching: duplicate removal and merges of units that are one neuron.

A neuron split into two units shows two similar templates whose spike trains never fire
within the refractory period of each other; two neurons with similar templates fire
independently, so their cross-correlogram has no such gap. The merge needs both.
"""
from __future__ import annotations

import logging

import numpy as np

from .match import MatchedSpikes, lagged_similarity

log = logging.getLogger(__name__)


def remove_duplicates(spikes: MatchedSpikes, *, window: int) -> MatchedSpikes:
    """Drop the smaller of two spikes of one template closer than ``window`` samples."""
    if len(spikes.times) == 0 or window <= 0:
        return spikes
    order = np.lexsort((spikes.times, spikes.templates))
    t, k, g = spikes.times[order], spikes.templates[order], spikes.gains[order]
    drop = np.zeros(len(t), dtype=bool)
    close = np.flatnonzero((np.diff(t) <= window) & (k[1:] == k[:-1]))
    for i in close:
        if drop[i]:
            continue
        if g[i] >= g[i + 1]:
            drop[i + 1] = True
        else:
            drop[i] = True
    return spikes.take(np.sort(order[~drop]))


def cross_refractory_ratio(ta: np.ndarray, tb: np.ndarray, *, refractory: int, duration: int,
                           rate_bin: int | None = None) -> tuple[float, float]:
    """Observed / expected number of (a, b) spike pairs closer than ``refractory`` samples, and the
    expected count under independent firing (the evidence available).

    The expectation uses each unit's rate in bins of ``rate_bin`` samples (the whole recording
    when None): two units that fire in different stretches of the recording (the pieces of two
    neurons split by a drift step) expect no pairs, so an empty correlogram says nothing there.
    """
    ta, tb = np.sort(ta), np.sort(tb)
    lo = np.searchsorted(tb, ta - refractory, side="left")
    hi = np.searchsorted(tb, ta + refractory, side="right")
    observed = float((hi - lo).sum())
    duration = max(int(duration), 1)
    width = duration if not rate_bin else max(1, min(int(rate_bin), duration))
    edges = np.append(np.arange(0, duration, width), duration)
    na = np.histogram(ta, bins=edges)[0].astype(np.float64)
    nb = np.histogram(tb, bins=edges)[0].astype(np.float64)
    expected = float((na * nb / np.diff(edges)).sum()) * (2 * refractory + 1)
    return observed / max(expected, 1e-12), expected


def refractory_merges(spikes: MatchedSpikes, dense: np.ndarray, *, positions_um: np.ndarray, duration: int,
                      refractory: int, similarity: float, max_ratio: float = 0.25, min_expected: float = 5.0,
                      strict_similarity: float = 0.9, max_lag: int = 3, max_distance_um: float = 100.0,
                      absorb_similarity: float = 0.97, absorb_fraction: float = 0.1, rate_bin: int | None = None,
                      same_unit=None) -> list[list[tuple[int, int]]]:
    """Groups of templates to merge, each as (template, lag onto the group's first template).

    Pairs need lag-aware template similarity above ``similarity`` and a refractory gap in their
    cross-correlogram (observed/expected < ``max_ratio``, the expectation from the rates in bins
    of ``rate_bin`` samples); where the two fire too little at the same time for the correlogram
    to say anything (expected pairs < ``min_expected``), only near-identical templates
    (``strict_similarity``) whose spikes form one mode (``same_unit(i, j, lag)``) merge.
    A unit with under ``absorb_fraction`` of the spikes of a unit whose template it repeats
    (``absorb_similarity``) joins it without the mode test: it is a slice of that unit's spikes
    (sub-sample jitter, collisions) the test would call separable, and a wrong merge of so few
    spikes costs the large unit little.
    Groups are joined most similar pair first, and two groups' whole spike trains must pass the
    refractory test again: pairs alone would chain two neurons through a small unit that looks
    like both, or through their pieces (a drift step splits each neuron, and pieces that fire in
    different stretches never violate each other's refractory period).
    """
    k = dense.shape[0]
    if k == 0:
        return []
    main = np.sqrt((dense**2).sum(axis=1)).argmax(axis=1)
    times = [spikes.times[spikes.templates == i] for i in range(k)]
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            if np.linalg.norm(positions_um[main[i]] - positions_um[main[j]]) > max_distance_um:
                continue
            s, lag = lagged_similarity(dense[i], dense[j], max_lag=max_lag)
            if s < similarity:
                continue
            ratio, expected = cross_refractory_ratio(times[i], times[j] - lag, refractory=refractory,
                                                     duration=duration, rate_bin=rate_bin)
            if expected >= min_expected:
                ok = ratio < max_ratio
            elif s >= absorb_similarity and min(len(times[i]), len(times[j])) <= absorb_fraction * max(
                    len(times[i]), len(times[j])):
                ok = True
            else:
                ok = s >= strict_similarity and (same_unit is None or same_unit(i, j, lag))
            if ok:
                pairs.append((s, i, j, lag))
    parent = {i: (i, 0) for i in range(k)}  # template -> (root, lag onto root)
    size = {i: 1 for i in range(k)}  # root -> members

    def find(i):
        lag = 0
        while parent[i][0] != i:
            lag += parent[i][1]
            i = parent[i][0]
        return i, lag

    def group_times(root: int, shift: int) -> np.ndarray:
        """The spike times of root's group, aligned on root, plus ``shift``."""
        parts = []
        for m in range(k):
            r, lag = find(m)
            if r == root:
                parts.append(times[m] + lag + shift)
        return np.concatenate(parts)

    for s, i, j, lag in sorted(pairs, reverse=True):
        ri, li = find(i)
        rj, lj = find(j)
        if ri == rj:
            continue
        if size[ri] > 1 or size[rj] > 1:  # a lone pair was tested above
            ratio, expected = cross_refractory_ratio(group_times(ri, 0), group_times(rj, li - lag - lj),
                                                     refractory=refractory, duration=duration, rate_bin=rate_bin)
            if expected >= min_expected and ratio >= max_ratio:
                log.debug("units %d and %d not merged: their groups fire independently", i, j)
                continue
        # j's spikes align on i with -lag; on ri that is li - lag; rj moves by the same offset
        parent[rj] = (ri, li - lag - lj)
        size[ri] += size.pop(rj)
        log.debug("merge units %d and %d (similarity %.2f)", i, j, s)
    groups: dict[int, list] = {}
    for i in range(k):
        r, lag = find(i)
        groups.setdefault(r, []).append((i, lag))
    return list(groups.values())


def relabel(times: np.ndarray, labels: np.ndarray, groups: list[list[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Group index as the new label of each spike (-1 outside every group), and its time plus
    its member's offset, so merged spikes align on one template."""
    new_t = times.copy()
    new_k = np.full(len(labels), -1, dtype=np.int64)
    for g, members in enumerate(groups):
        for k, offset in members:
            sel = labels == k
            new_k[sel] = g
            new_t[sel] = times[sel] + offset
    return new_t, new_k


def apply_groups(spikes: MatchedSpikes, groups: list[list[tuple[int, int]]]) -> MatchedSpikes:
    t, k = relabel(spikes.times, spikes.templates, groups)
    out = MatchedSpikes(t, k, spikes.amplitudes, spikes.gains)
    return out.take(np.lexsort((out.templates, out.times)))


def residue_spikes(spikes: MatchedSpikes, dense: np.ndarray, *, window: int, positions_um: np.ndarray,
                   max_distance_um: float = 200.0, lag_halfwidth: int = 3, min_count: int = 10,
                   drop_fraction: float = 0.8) -> np.ndarray:
    """Spikes that are what is left of a larger unit's spike after an imperfect subtraction.

    Such a leftover is matched to a smaller template nearby at one fixed lag after (or before)
    the larger spike. For each smaller unit and each larger unit near it, the lags to the larger
    unit's spikes are histogrammed; when one lag (± ``lag_halfwidth`` samples) holds far more
    spikes than chance would put there, those spikes are residue. A unit made mostly of residue
    (more than ``drop_fraction``) is dropped whole; otherwise only its residue spikes are, so a
    small unit next to a big one keeps its own spikes. Returns a mask of spikes to drop.
    """
    k = dense.shape[0]
    drop = np.zeros(len(spikes.times), dtype=bool)
    if k == 0 or len(spikes.times) == 0:
        return drop
    norms = np.linalg.norm(dense.reshape(k, -1), axis=1)
    main = np.sqrt((dense**2).sum(axis=1)).argmax(axis=1)
    members = [np.flatnonzero(spikes.templates == i) for i in range(k)]
    times = [np.sort(spikes.times[m]) for m in members]
    span = max(int(spikes.times.max() - spikes.times.min()) + 1, 1)
    whole = 0
    for a in range(k):
        ta = spikes.times[members[a]]
        if len(ta) == 0:
            continue
        residue = np.zeros(len(ta), dtype=bool)
        for b in range(k):
            if b == a or norms[b] <= norms[a] or len(times[b]) == 0:
                continue
            if np.linalg.norm(positions_um[main[a]] - positions_um[main[b]]) > max_distance_um:
                continue
            tb = times[b]
            i = np.clip(np.searchsorted(tb, ta), 1, max(len(tb) - 1, 1))
            prev, nxt = tb[i - 1], tb[np.minimum(i, len(tb) - 1)]
            lag = np.where(np.abs(ta - prev) <= np.abs(ta - nxt), ta - prev, ta - nxt)
            near = np.abs(lag) <= window
            if near.sum() < min_count:
                continue
            counts = np.bincount(lag[near] + window, minlength=2 * window + 1)
            box = np.convolve(counts, np.ones(2 * lag_halfwidth + 1, dtype=np.int64), mode="same")
            peak = int(np.argmax(box))
            # spikes of an unrelated unit land at any lag: len(ta) x (b's rate per sample) x box width
            chance = len(ta) * len(tb) / span * (2 * lag_halfwidth + 1)
            if box[peak] < max(min_count, 5 * chance):
                continue
            residue |= near & (np.abs(lag + window - peak) <= lag_halfwidth)
        if not residue.any():
            continue
        frac = residue.mean()
        if frac > drop_fraction:
            drop[members[a]] = True
            whole += 1
            log.info("unit %d: %.0f%% of its spikes are residues of larger units' spikes: dropped", a, 100 * frac)
        else:
            drop[members[a][residue]] = True
            log.info("unit %d: %d of its %d spikes are residues of larger units' spikes: those dropped", a,
                     int(residue.sum()), len(ta))
    log.info("subtraction residues: %d spikes dropped, %d units whole", int(drop.sum()), whole)
    return drop
