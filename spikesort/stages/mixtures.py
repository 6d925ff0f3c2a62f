"""Units that hold two neurons: their own train says so, their spikes' shapes split them.

Two neighbours with the same footprint at sizes a fifth apart (a tetrode's wire sees many) can
come out of the clustering as one unit: no valley between them along any axis. One neuron never
fires twice within its refractory period; two fire independently, so a unit holding both has
chance's share of pairs there (2·n_a·n_b / n², about half the pairs of a train of its rate),
where one neuron has none but its few foreign spikes' (``mearec_tetrode_wire`` seed 5: two
neurons of 1796 and 1085 spikes, shapes 0.99 alike, in one unit with 0.48 of chance's pairs).

Such a unit is cut in two by its spikes' waveforms (2-means on their principal components), and
the cut is kept only when the trains agree: most of the unit's refractory pairs lie between the
halves, which meet there as often as independent neurons do, and each half is left nearly
empty. A bursting neuron whose late spikes shrink is one neuron: its halves hold no pairs between
them, and it is never cut.

This runs on the matched spikes, before any merge: a merge drops the doubles a merged unit holds
within the refractory period (one spike fitted twice), which would erase the evidence.
"""

from __future__ import annotations

import logging

import numpy as np

from .cluster import below_1d_two_means, two_means
from .merges.refractory import crowded_lags, pair_lags
from .sampling import keyed_subset

log = logging.getLogger(__name__)

# a unit is looked at when its train expects this many pairs in the refractory period (beyond
# double fits) at its rate, and holds this share of them; two independent neurons give 0.5 at
# equal counts, 0.32 at 1:4. One neuron's unit held under 0.3 (1122 units of 104 recordings with
# 5 or more expected: median 0, 99th percentile 0.42 after merges, which add a piece's strays)
MIN_EXPECTED = 10.0
MIN_RATIO = 0.3
MIN_PAIRS = 5
# a cut is kept when its halves meet in the refractory period as often as this share of chance
# (two neurons: 1, less the collisions the matching missed; mearec_tetrode_wire seed 5 0.77, while
# one neuron of mearec_nn32_crowded seed 3, at two sizes with 8 stray pairs, was cut at 0.52),
# this share of the unit's pairs lies between them, and the two keep at most this share of
# chance within themselves, beyond a few strays
MIN_CROSS_RATIO = 0.6
MIN_CROSS_SHARE = 0.6
MAX_HALF_RATIO = 0.2
MAX_HALF_STRAYS = 3
# and when the halves lie further apart than a cut through one cloud puts its halves (d' 2.7 for a
# Gaussian): on mearec_nn32_crowded seed 1 two neurons cut at d' 2.6 each kept 15 % of the other
# (a false unit more), on mearec_tetrode_wire seed 5 two cut at d' 3.8 were each 95 % pure
MIN_SEPARATION = 3.0
MIN_HALF_FRACTION = 0.1  # of the unit's spikes: a smaller half is a few strays, not a neuron
N_TRIES = 5
N_CHANNELS = 8  # the template's largest channels: where two neighbours' sizes differ
N_DIMS = 4
BASIS_SPIKES = 5000  # the principal axes, from isolated spikes
CHUNK = 20000  # spikes read at a time


def refractory_pairs(ta: np.ndarray, tb: np.ndarray | None = None, *, lo: int, hi: int, duration: int):
    """(observed, expected) pairs at lags in (``lo``, ``hi``] between two trains, or within one
    (``tb`` None: each pair once), chance from the mean rates. Lags where pairs crowd are left out
    of both: one spike fitted twice, or a spike and its echo, sit at one lag from each other, not
    at every lag as two independent neurons' spikes do."""
    counts = pair_lags(ta, ta if tb is None else tb, refractory=hi)
    band = np.abs(np.arange(-hi, hi + 1)) > lo
    n_b = len(ta) if tb is None else len(tb)
    kept = band & ~crowded_lags(counts, rate=len(ta) * n_b / max(int(duration), 1))
    observed, expected = float(counts[kept].sum()), len(ta) * n_b / max(int(duration), 1) * kept.sum()
    return (observed / 2, expected / 2) if tb is None else (observed, expected)


def _features(
    store, times: np.ndarray, *, isolated: np.ndarray, pre: int, nt: int, channels, seed: int, scale_free: bool = False
) -> np.ndarray:
    """(n, ``N_DIMS``) every spike's snippet on the top principal axes of up to ``BASIS_SPIKES``
    of the ``isolated`` ones, read ``CHUNK`` spikes at a time (an hour's unit holds tens of
    thousands); ``scale_free``: each snippet divided by its norm first, so that only shapes count."""

    def read(t):
        x = store.snippets(t, pre=pre, nt=nt, channels=channels).reshape(len(t), -1).astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) if scale_free else x

    ref = read(keyed_subset(times[isolated], BASIS_SPIKES, seed=seed))
    mean = ref.mean(0)
    ref -= mean
    _, vecs = np.linalg.eigh(ref.T @ ref)
    basis = vecs[:, ::-1][:, :N_DIMS]
    out = np.empty((len(times), basis.shape[1]))
    for s in range(0, len(times), CHUNK):
        out[s : s + CHUNK] = (read(times[s : s + CHUNK]) - mean) @ basis
    return out


def _separation(features: np.ndarray, side: np.ndarray) -> float:
    """d' of the two sides along the line between their centres."""
    axis = features[side].mean(0) - features[~side].mean(0)
    p = features @ (axis / max(np.linalg.norm(axis), 1e-12))
    return float((p[side].mean() - p[~side].mean()) / np.sqrt(0.5 * (p[side].var() + p[~side].var()) + 1e-12))


def _candidate_cuts(features: np.ndarray, rng: np.random.Generator):
    """Cuts to judge: ``N_TRIES`` 2-means tries, then a 1-D 2-means along each principal axis
    (2-means' k-means++ seeds can cut off a few large collisions and nothing else)."""
    for _ in range(N_TRIES):
        yield two_means(features, rng).astype(bool)
    for k in range(features.shape[1]):
        yield ~below_1d_two_means(features[:, k])


def two_neuron_cut(
    times: np.ndarray,
    features: np.ndarray,
    *,
    isolated: np.ndarray,
    lo: int,
    hi: int,
    duration: int,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """A boolean mask cutting one unit's spikes (``times``, sorted, with their ``features``) into
    two neurons, or None when no candidate cut satisfies the trains.

    The cuts are drawn on the ``isolated`` spikes only, and every spike then goes to the nearer
    half's centre: two spikes closer than a window each carry the other's waveform, and a cut
    drawn on them can part every such pair (before from after) without parting two neurons
    (``mearec_tetrode`` seed 14: 59 of a unit's 68 pairs between halves that each held both of its
    neurons)."""
    n = len(times)
    alone = features[isolated]
    best = None
    for cut in _candidate_cuts(alone, rng):
        if cut.all() or not cut.any():
            continue
        centres = np.stack([alone[~cut].mean(0), alone[cut].mean(0)])
        side = ((features[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1).astype(bool)
        n_b = int(side.sum())
        if min(n_b, n - n_b) < MIN_HALF_FRACTION * n:
            continue
        separation = _separation(features, side)
        if separation < MIN_SEPARATION:
            continue
        ta, tb = times[~side], times[side]
        cross, chance = refractory_pairs(ta, tb, lo=lo, hi=hi, duration=duration)
        within = [refractory_pairs(t, lo=lo, hi=hi, duration=duration) for t in (ta, tb)]
        inner = sum(o for o, _ in within)
        log.debug(
            "cut %d / %d, d' %.1f: %d pairs between (%.1f expected), %d within (%s expected)",
            n - n_b,
            n_b,
            separation,
            cross,
            chance,
            inner,
            " + ".join(f"{e:.1f}" for _, e in within),
        )
        # the share between is of the pairs the halves hold, each count without its crowded lags
        # (two neurons' collisions can crowd a lag between the halves and not the unit's own
        # correlogram, whose chance is higher)
        if chance < MIN_EXPECTED or cross < MIN_CROSS_SHARE * (cross + inner) or cross < MIN_CROSS_RATIO * chance:
            continue
        # the halves left nearly empty: a few pairs are strays (other neurons' spikes) they keep.
        # Judged together: a half of a thousand spikes expects 4 pairs, and 4 strays say nothing
        if inner > MAX_HALF_RATIO * sum(e for _, e in within) + MAX_HALF_STRAYS:
            continue
        if best is None or cross > best[0]:
            best = (cross, side)
    return None if best is None else best[1]


def split_two_neuron_units(
    store,
    spikes,
    dense: np.ndarray,
    *,
    pre: int,
    nt: int,
    refractory: int,
    double_fit: int,
    duration: int,
    seed: int,
):
    """``spikes`` with every unit that holds two neurons cut in two: the second half gets a new
    unit id after the last (``dense.shape[0]``, ...). Returns (spikes, number of units)."""
    k = dense.shape[0]
    lo, hi = double_fit, refractory
    if hi <= lo or len(spikes.times) == 0:
        return spikes, k
    templates = spikes.templates.copy()
    norm = np.sqrt((dense.astype(np.float64) ** 2).sum(axis=1))  # (k, C)
    counts = np.bincount(templates, minlength=k)
    # each unit's spikes in time order, grouped once (not a pass over every spike per unit)
    order = np.lexsort((spikes.times, templates))
    starts = np.r_[0, np.cumsum(counts)]
    n_units, by_shape = k, 0
    for u in range(k):
        n = int(counts[u])
        if n * n * (hi - lo) / duration < MIN_EXPECTED:  # too few pairs expected even at every lag
            continue
        idx = order[starts[u] : starts[u + 1]]
        t = spikes.times[idx]
        own, expected = refractory_pairs(t, lo=lo, hi=hi, duration=duration)
        if expected < MIN_EXPECTED or own < max(MIN_PAIRS, MIN_RATIO * expected):
            continue
        chans = np.argsort(norm[u])[::-1][:N_CHANNELS]
        chans = np.sort(chans[norm[u, chans] > 0])
        gap = np.diff(t)
        isolated = np.r_[True, gap > nt] & np.r_[gap > nt, True]  # no spike of the unit within a window
        if isolated.sum() < MIN_HALF_FRACTION * n:  # a train of bursts or artefacts, not two neurons' spikes
            continue
        # by shape and size first; then by shape alone: bursting neurons' sizes spread so far that
        # two of one footprint overlap on every axis that sizes stretch (mearec_nn32_crowded seed
        # 80: neurons of 2110 and 1828 spikes in one unit, shapes 0.89 alike, sizes' CV 0.4-0.5)
        for scale_free in (False, True):
            kw = dict(isolated=isolated, pre=pre, nt=nt, channels=chans, seed=seed, scale_free=scale_free)
            features = _features(store, t, **kw)
            # collisions with other units' spikes lie far out on every axis: clipped, they cannot
            # draw a cut to themselves
            features = np.clip(features, *np.percentile(features[isolated], [2, 98], axis=0))
            rng = np.random.default_rng([seed, u, n])
            side = two_neuron_cut(t, features, isolated=isolated, lo=lo, hi=hi, duration=duration, rng=rng)
            if side is not None:
                by_shape += scale_free
                break
        log.debug(
            "unit %d: %d spikes, %d pairs in the refractory period (%.1f expected at its rate)%s",
            u,
            n,
            own,
            expected,
            "" if side is None else f": cut {int((~side).sum())} / {int(side.sum())}",
        )
        if side is None:
            continue
        templates[idx[side]] = n_units
        n_units += 1
    if n_units > k:
        log.info("%d units held two neurons by their trains: cut in two (%d by shape alone)", n_units - k, by_shape)
    return type(spikes)(spikes.times, templates, spikes.amplitudes, spikes.gains), n_units
