"""Merges after matching: units that are one neuron never fire within each other's refractory period.

A neuron split into two units shows two similar templates whose spike trains never fire
within the refractory period of each other; two neurons with similar templates fire
independently, so their cross-correlogram has no such gap. The merge needs both. ``relabel``
and ``apply_groups`` apply the groups of any template merge to the spikes.
``outer_refractory_ratio`` and ``banded_refractory_ratio`` count that gap for the footprint
merges, leaving out the lags where one spike fitted twice lands; ``fire_independently`` (and
``independence_test`` over a merge's units) says when two trains plainly show two neurons;
``drop_refractory_doubles`` removes such double fits from the units a merge made.
"""

from __future__ import annotations

import logging

import numpy as np

from spikesort.stages.match import MatchedSpikes

from . import poisson
from .templates import lagged_similarity

log = logging.getLogger(__name__)


def cross_refractory_ratio(
    ta: np.ndarray, tb: np.ndarray, *, refractory: int, duration: int, rate_bin: int | None = None
) -> tuple[float, float]:
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
    expected = chance_per_lag(ta, tb, duration=duration, rate_bin=rate_bin) * (2 * refractory + 1)
    return observed / max(expected, 1e-12), expected


def chance_per_lag(ta: np.ndarray, tb: np.ndarray, *, duration: int, rate_bin: int | None = None) -> float:
    """(a, b) spike pairs independent firing puts at one lag, from the rates in bins of
    ``rate_bin`` samples (the whole recording when None)."""
    duration = max(int(duration), 1)
    width = duration if not rate_bin else max(1, min(int(rate_bin), duration))
    edges = np.append(np.arange(0, duration, width), duration)
    na = np.histogram(ta, bins=edges)[0].astype(np.float64)
    nb = np.histogram(tb, bins=edges)[0].astype(np.float64)
    return float((na * nb / np.diff(edges)).sum())


# a refractory gap that independent neurons leave less often than this is one neuron's, whatever
# else the trains say; a weaker one (2 pairs where 8 are expected: 1.4 %) is checked further
STRONG_GAP_P = 1e-3
# a unit fires in stretches when its counts in rate bins vary this many times more than a steady
# (Poisson) train's would
STRETCH_DISPERSION = 3.0
# a weaker gap joins only templates alike to this: on a crowded probe some 30 pairs of neighbours
# alike to 0.7-0.8 are tested per recording, and the matching thins their correlograms (the
# thinnest on crowded64's three seeds kept 0.54, 0.44 and 0.25 of chance's pairs), so a gap of 1 %
# comes by chance (crowded64 seed 2: two neurons alike to 0.72, 2 pairs where 8.1 were expected,
# p = 1.2 %); the pieces of one neuron that joined on such gaps were alike to 0.84 and more
WEAK_GAP_SIMILARITY = 0.8


def _one_mode(same_unit, i: int, j: int, lag: int) -> bool:
    if same_unit(i, j, lag):
        return True
    log.info("units %d and %d: a weak refractory gap, but their spikes form two modes: kept apart", i, j)
    return False


def gap_probability(ratio: float, expected: float) -> float:
    """How often two neurons firing independently leave at most the observed pairs (``ratio`` of
    ``expected``) in the refractory period: the Poisson probability of a gap that deep."""
    return poisson.cdf(round(ratio * expected), expected)


def makes_way(ta: np.ndarray, tb: np.ndarray, *, duration: int, rate_bin: int | None) -> bool:
    """False when the smaller of two trains fires in stretches and the larger fires as much there
    as elsewhere: the smaller is then not a piece of the larger's neuron, since a neuron does not
    fire more only where a piece of it turns up. Pieces cut off by drift (a neuron at the end of
    the probe, seen differently where the probe moves) or by a change in a neuron's waveform take
    the spikes their unit loses in those stretches. True when the smaller fires steadily (bursts'
    shrunken spikes, a neuron's spikes caught on another phase): the test says nothing there.

    Measured: a MEArec cell beyond the last row of a moving Neuropixels-64, seen apart only where
    the probe was up (675 spikes, counts 34 times as dispersed as a steady train's), beside a
    neighbour 35 µm away that kept its rate there (39.1 against 37.3 spikes per 10 s): 2 pairs in
    the refractory period where 8.1 were expected. The pieces of bursting neurons that shared such
    gaps (0 of 5.5, 1 of 5.3) fired steadily (dispersion 0.1-0.2)."""
    if not rate_bin:
        return True
    small, big = (ta, tb) if len(ta) <= len(tb) else (tb, ta)
    edges = np.append(np.arange(0, duration, rate_bin), duration).astype(np.float64)
    if len(edges) < 4:
        return True
    full = np.diff(edges) == rate_bin  # the short last bin would read as a change of rate
    ns = np.histogram(small, bins=edges)[0][full].astype(np.float64)
    nb = np.histogram(big, bins=edges)[0][full].astype(np.float64)
    if len(ns) < 3 or ns.mean() <= 0 or ns.var() <= STRETCH_DISPERSION * ns.mean():
        return True
    high = ns > np.median(ns)
    if high.all() or not high.any():
        return True
    gained = ns[high].mean() - ns[~high].mean()
    lost = nb[~high].mean() - nb[high].mean()
    return lost >= 0.5 * gained


def refractory_merges(
    spikes: MatchedSpikes,
    dense: np.ndarray,
    *,
    positions_um: np.ndarray,
    duration: int,
    refractory: int,
    similarity: float,
    max_ratio: float = 0.25,
    min_expected: float = 5.0,
    strict_similarity: float = 0.9,
    max_lag: int = 3,
    max_distance_um: float = 100.0,
    absorb_similarity: float = 0.97,
    absorb_fraction: float = 0.1,
    rate_bin: int | None = None,
    same_unit=None,
    same_shape=None,
    strong_gap_p: float = STRONG_GAP_P,
    weak_gap_similarity: float = WEAK_GAP_SIMILARITY,
) -> list[list[tuple[int, int]]]:
    """Groups of templates to merge, each as (template, lag onto the group's first template).

    Pairs need lag-aware template similarity above ``similarity`` and a refractory gap in their
    cross-correlogram (observed/expected < ``max_ratio``, the expectation from the rates in bins
    of ``rate_bin`` samples); a gap that independent neurons would leave with probability over
    ``strong_gap_p`` also needs templates alike to ``weak_gap_similarity`` and the larger unit to
    make way for the smaller (``makes_way``) and, when ``same_shape`` is given, their spikes to
    form one mode once each is divided by its size (``same_shape(i, j, lag)``). Where the two
    fire too little at the same time for the correlogram to say anything (expected pairs <
    ``min_expected``), only near-identical templates (``strict_similarity``) whose spikes form one
    mode (``same_unit(i, j, lag)``) merge.
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
            ratio, expected = cross_refractory_ratio(
                times[i], times[j] - lag, refractory=refractory, duration=duration, rate_bin=rate_bin
            )
            if expected >= min_expected:
                ok = ratio < max_ratio and (
                    gap_probability(ratio, expected) < strong_gap_p
                    or (
                        s >= weak_gap_similarity
                        and makes_way(times[i], times[j], duration=duration, rate_bin=rate_bin)
                        and (same_shape is None or _one_mode(same_shape, i, j, lag))
                    )
                )
            elif s >= absorb_similarity and min(len(times[i]), len(times[j])) <= absorb_fraction * max(
                len(times[i]), len(times[j])
            ):
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
            ratio, expected = cross_refractory_ratio(
                group_times(ri, 0),
                group_times(rj, li - lag - lj),
                refractory=refractory,
                duration=duration,
                rate_bin=rate_bin,
            )
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


def relabel(
    times: np.ndarray, labels: np.ndarray, groups: list[list[tuple[int, int]]]
) -> tuple[np.ndarray, np.ndarray]:
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


def outer_refractory_ratio(
    ta: np.ndarray, tb: np.ndarray, *, refractory: int, duration: int, inner: int | None = None
) -> tuple[float, float]:
    """Observed / expected number of (a, b) spike pairs whose distance lies in (inner, refractory]
    (by default the outer half of the refractory period), and the expected count under
    independent firing at the units' mean rates."""
    tb = np.sort(tb)
    inner = refractory // 2 if inner is None else int(inner)
    count = 0
    for lo, hi in ((inner + 1, refractory), (-refractory, -inner - 1)):
        count += int((np.searchsorted(tb, ta + hi, side="right") - np.searchsorted(tb, ta + lo, side="left")).sum())
    expected = len(ta) * len(tb) / max(int(duration), 1) * 2 * (refractory - inner)
    return count / max(expected, 1e-12), expected


def outer_gap(
    ta: np.ndarray, tb: np.ndarray, *, refractory: int, duration: int, double_fit: int | None, min_expected: float
) -> tuple[float, float]:
    """``outer_refractory_ratio`` over the refractory period's outer half; where that expects
    fewer than ``min_expected`` pairs, over every lag beyond ``double_fit`` (mearec_tetrode seed 1:
    a 298-spike piece of a neuron, no pair where the outer half expects 2.8, and 3.7 beyond)."""
    gap = outer_refractory_ratio(ta, tb, refractory=refractory, duration=duration)
    if gap[1] >= min_expected or double_fit is None:
        return gap
    return outer_refractory_ratio(ta, tb, refractory=refractory, duration=duration, inner=double_fit)


def banded_refractory_ratio(
    ta: np.ndarray,
    tb: np.ndarray,
    *,
    refractory: int,
    inner: int,
    duration: int,
    halfwidth: int = 3,
    p_value: float = 1e-3,
) -> tuple[float, float]:
    """``outer_refractory_ratio`` (lags in (inner, refractory], both signs) without the bands of
    lags where pairs crowd: one spike fitted twice, by a piece's template at a fixed offset from
    the unit's, lands at one lag (± ``halfwidth`` samples) again and again, where spikes firing on
    their own would spread evenly. A window of lags holding more pairs than even spreading gives
    with probability ``p_value`` (Poisson) is left out, from the count and from the expectation.
    Crowds are sought over the inner half's lags too, so that one astride the inner bound is left
    out whole (mearec_nn32 seed 2: a neuron's half-size unit fitted 19-29 samples after 19 of its
    large unit's spikes, 11 pairs counted where 32 were expected, 9 of them at the crowd's outer
    lags 25-29)."""
    lags = np.r_[-refractory:-inner, inner + 1 : refractory + 1]
    if len(ta) == 0 or len(tb) == 0 or len(lags) == 0:
        return 0.0, 0.0
    counts = pair_lags(ta, tb, refractory=refractory)
    rate = len(ta) * len(tb) / max(int(duration), 1)  # pairs expected per lag
    crowded = crowded_lags(counts, rate=rate, halfwidth=halfwidth, p_value=p_value)
    keep = np.zeros(2 * refractory + 1, dtype=bool)
    keep[lags + refractory] = True
    keep &= ~crowded
    expected = rate * keep.sum()
    return float(counts[keep].sum()) / max(expected, 1e-12), expected


def band_pair_ratio(ta: np.ndarray, tb: np.ndarray, *, lo: int, hi: int, duration: int) -> tuple[float, float]:
    """Observed / expected number of (a, b) spike pairs at distances in [lo, hi] samples (both
    signs) under independent firing at the units' mean rates, and how many Poisson sds the count
    lies from that expectation (negative: fewer pairs than chance)."""
    ta, tb = np.asarray(ta), np.sort(np.asarray(tb))
    if len(ta) == 0 or len(tb) == 0 or hi < lo:
        return 1.0, 0.0
    count = 0
    for a, b in ((lo, hi), (-hi, -lo)):
        count += int((np.searchsorted(tb, ta + b, side="right") - np.searchsorted(tb, ta + a, side="left")).sum())
    expected = len(ta) * len(tb) / max(int(duration), 1) * 2 * (hi - lo + 1)
    return count / max(expected, 1e-12), (count - expected) / max(np.sqrt(expected), 1e-12)


def drop_refractory_doubles(spikes: MatchedSpikes, *, units: np.ndarray, refractory: int) -> MatchedSpikes:
    """In the given (merged) units, drop the smaller of two spikes closer than ``refractory``
    samples: one neuron does not fire twice that fast, so the pair is one spike fitted twice
    (once by each piece's template)."""
    sel = np.isin(spikes.templates, units)
    if not sel.any() or refractory <= 0:
        return spikes
    idx = np.flatnonzero(sel)
    order = idx[np.lexsort((spikes.times[idx], spikes.templates[idx]))]
    t, k, g = spikes.times[order], spikes.templates[order], spikes.gains[order]
    drop = np.zeros(len(order), dtype=bool)
    last = 0  # the kept spike the next one is compared with
    for i in range(1, len(order)):
        if k[i] != k[last] or t[i] - t[last] > refractory:
            last = i
            continue
        if g[i] > g[last]:
            drop[last] = True
            last = i
        else:
            drop[i] = True
    if not drop.any():
        return spikes
    log.info("%d spikes fitted twice by pieces of one neuron dropped", int(drop.sum()))
    keep = np.ones(len(spikes.times), dtype=bool)
    keep[order[drop]] = False
    return spikes.take(np.flatnonzero(keep))


def fire_independently(
    ta: np.ndarray,
    tb: np.ndarray,
    *,
    refractory: int,
    double_fit: int,
    duration: int,
    rate_bin: int | None = None,
    min_expected: float = 5.0,
    min_ratio: float = 0.5,
) -> bool:
    """Two spike trains fire independently: at lags between ``double_fit`` and ``refractory``
    samples there are at least ``min_ratio`` of the pairs independent firing would give, and
    that expectation is at least ``min_expected`` (enough evidence). One neuron leaves a gap
    there; lags up to ``double_fit`` are left out, where one spike fitted by two pieces'
    templates lands, and so are lags beyond where pairs crowd (:func:`crowded_lags`: one spike
    fitted again at a fixed offset, mearec_tetrode_quiet seed 0)."""
    observed, expected = pairs_beyond_double_fits(
        ta, tb, refractory=refractory, double_fit=double_fit, duration=duration, rate_bin=rate_bin
    )
    return expected >= min_expected and observed >= min_ratio * expected


def pairs_beyond_double_fits(
    ta: np.ndarray, tb: np.ndarray, *, refractory: int, double_fit: int, duration: int, rate_bin: int | None = None
) -> tuple[float, float]:
    """(observed, expected) (a, b) spike pairs at lags between ``double_fit`` and ``refractory``
    samples, chance from the rates in bins of ``rate_bin`` samples (``cross_refractory_ratio``),
    the lags where pairs crowd left out of both (the crowds sought at the mean rates)."""
    per_lag = chance_per_lag(ta, tb, duration=duration, rate_bin=rate_bin)
    counts = pair_lags(ta, tb, refractory=refractory)
    band = np.abs(np.arange(-refractory, refractory + 1)) > double_fit
    kept = band & ~crowded_lags(counts, rate=len(ta) * len(tb) / max(int(duration), 1))
    return float(counts[kept].sum()), per_lag * kept.sum()


def pair_lags(ta: np.ndarray, tb: np.ndarray, *, refractory: int) -> np.ndarray:
    """How many (a, b) spike pairs lie at each lag tb - ta in [-refractory, refractory]."""
    tb = np.sort(np.asarray(tb))
    ta = np.asarray(ta)
    if len(ta) == 0 or len(tb) == 0:
        return np.zeros(2 * refractory + 1)
    lo = np.searchsorted(tb, ta - refractory, side="left")
    hi = np.searchsorted(tb, ta + refractory, side="right")
    n = hi - lo
    within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    d = tb[np.repeat(lo, n) + within] - np.repeat(ta, n)
    return np.bincount(d + refractory, minlength=2 * refractory + 1).astype(np.float64)


def crowded_lags(counts: np.ndarray, *, rate: float, halfwidth: int = 3, p_value: float = 1e-3) -> np.ndarray:
    """Lags (of ``pair_lags``' counts) where pairs crowd: windows of 2 * ``halfwidth`` + 1 lags
    holding more pairs than even spreading at ``rate`` pairs per lag gives with probability
    ``p_value`` (Poisson), and at least 4; sought again and again until none is left."""
    crowded = np.zeros(len(counts), dtype=bool)
    width = 2 * halfwidth + 1
    limit = max(poisson.isf(p_value, rate * width), 4.0)
    while True:
        box = np.convolve(np.where(crowded, 0.0, counts), np.ones(width), mode="same")
        peak = int(np.argmax(box))
        if box[peak] <= limit:
            return crowded
        crowded[max(peak - halfwidth, 0) : peak + halfwidth + 1] = True


def independence_test(spikes: MatchedSpikes, **kw):
    """``independent(i, j)`` for units i and j of ``spikes`` (``fire_independently``, keywords passed on)."""
    order = np.argsort(spikes.times, kind="stable")
    t, k = spikes.times[order], spikes.templates[order]

    def independent(i: int, j: int) -> bool:
        return fire_independently(t[k == i], t[k == j], **kw)

    return independent


def mostly_fitted_twice(a: np.ndarray, b: np.ndarray, *, window: int, fraction: float = 0.5) -> bool:
    """More than ``fraction`` of the spikes of the train with fewer lie within ``window`` samples
    of the other's: one spike fitted twice, the second time to what the first fit left. Such a unit
    is made of residues (its template looks like the other's, at a lag), not a piece of a neuron,
    whose spikes are events of their own; its other spikes may be another neuron's."""
    few, many = (a, b) if len(a) <= len(b) else (b, a)
    if len(few) == 0 or len(many) == 0:
        return False
    many = np.sort(many)
    at = np.clip(np.searchsorted(many, few), 1, max(len(many) - 1, 1))
    gap = np.minimum(np.abs(few - many[at - 1]), np.abs(few - many[np.minimum(at, len(many) - 1)]))
    return float(np.mean(gap <= window)) > fraction
