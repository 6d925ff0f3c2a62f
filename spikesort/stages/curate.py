"""After matching: duplicate spikes and residues of imperfect subtractions are removed.

The merges of units that are one neuron (the refractory test, and units split by drift) are
with the other merge rules in :mod:`spikesort.stages.merges`.
"""

from __future__ import annotations

import logging

import numpy as np

from .match import MatchedSpikes

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


def residue_spikes(
    spikes: MatchedSpikes,
    dense: np.ndarray,
    *,
    window: int,
    positions_um: np.ndarray,
    max_distance_um: float = 200.0,
    lag_halfwidth: int = 3,
    min_count: int = 10,
    drop_fraction: float = 0.8,
    echo_fraction: float = 0.5,
    echo_over_chance: float = 4.0,
) -> np.ndarray:
    """Spikes that are what is left of a larger unit's spike after an imperfect subtraction.

    Such a leftover is matched to a smaller template nearby at one fixed lag after (or before)
    the larger spike. For each smaller unit and each larger unit near it, the lags to the larger
    unit's spikes are histogrammed; when one lag (± ``lag_halfwidth`` samples) holds far more
    spikes than chance would put there, those spikes are residue. A unit made mostly of residue
    (more than ``drop_fraction``) is dropped whole; otherwise only its residue spikes are, so a
    small unit next to a big one keeps its own spikes.

    An echo is the looser form: a unit of which more than ``echo_fraction`` of the spikes come
    within ``window`` of a larger unit's spikes, ``echo_over_chance`` times more often than
    independent firing would, but at lags that wander by more than the box. Waveforms longer
    than the template window leave such units, locked to a large neuron 2-2.5 ms before or after
    its spikes; such a unit is dropped whole. Returns a mask of spikes to drop.
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
        echo_of = None
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
            in_box = near & (np.abs(lag + window - peak) <= lag_halfwidth)
            if box[peak] >= max(min_count, 5 * chance):
                residue |= in_box
            else:
                in_box[:] = False
            # the echo test is on the spikes the box left: a unit's own spikes come near b's only by chance
            rest = ~in_box
            chance_near = rest.sum() * len(tb) / span * (2 * window + 1)
            near_rest = int((near & rest).sum())
            if near_rest > echo_fraction * rest.sum() and near_rest >= max(min_count, echo_over_chance * chance_near):
                echo_of = b
                residue[:] = True
                break
        if not residue.any():
            continue
        frac = residue.mean()
        if echo_of is not None:
            drop[members[a]] = True
            whole += 1
            log.info(
                "unit %d: %.0f%% of its spikes come within the window of unit %d's: an echo, dropped",
                a,
                100 * near.mean(),
                echo_of,
            )
        elif frac > drop_fraction:
            drop[members[a]] = True
            whole += 1
            log.info("unit %d: %.0f%% of its spikes are residues of larger units' spikes: dropped", a, 100 * frac)
        else:
            drop[members[a][residue]] = True
            log.info(
                "unit %d: %d of its %d spikes are residues of larger units' spikes: those dropped",
                a,
                int(residue.sum()),
                len(ta),
            )
    log.info("subtraction residues: %d spikes dropped, %d units whole", int(drop.sum()), whole)
    return drop


def collision_units(
    spikes: MatchedSpikes,
    dense: np.ndarray,
    *,
    window: int,
    positions_um: np.ndarray,
    max_distance_um: float = 200.0,
    max_alone: float = 1 / 3,
    min_expected_alone: float = 10.0,
) -> np.ndarray:
    """Units made of what colliding spikes of larger units leave: a mask of spikes to drop.

    Where two large spikes overlap, the fit of each leaves a little behind, and those leftovers
    gather into a small unit locked to several larger units at once, at lags that wander (each
    pair alone passes the echo test of :func:`residue_spikes`). A unit's own spikes come within
    ``window`` of a larger neighbour's (within ``max_distance_um``) only by chance, so a real
    unit has about as many spikes away from all of them as the neighbours' summed rate predicts.
    A unit with under ``max_alone`` of that prediction is dropped whole, when the prediction is
    at least ``min_expected_alone`` spikes (where neighbours fire so densely that few spikes
    could be alone, nothing is judged).
    """
    k = dense.shape[0]
    drop = np.zeros(len(spikes.times), dtype=bool)
    if k == 0 or len(spikes.times) == 0:
        return drop
    norms = np.linalg.norm(dense.reshape(k, -1), axis=1)
    main = np.sqrt((dense**2).sum(axis=1)).argmax(axis=1)
    span = max(int(spikes.times.max() - spikes.times.min()) + 1, 1)
    members = [np.flatnonzero(spikes.templates == i) for i in range(k)]
    for a in range(k):
        if len(members[a]) == 0:
            continue
        larger = [
            b
            for b in range(k)
            if norms[b] > norms[a] and np.linalg.norm(positions_um[main[a]] - positions_um[main[b]]) <= max_distance_um
        ]
        if not larger:
            continue
        tb = np.sort(np.concatenate([spikes.times[members[b]] for b in larger]))
        ta = spikes.times[members[a]]
        near = np.searchsorted(tb, ta + window, side="right") > np.searchsorted(tb, ta - window, side="left")
        expected = len(ta) * np.exp(-len(tb) / span * (2 * window + 1))
        alone = int((~near).sum())
        if expected >= min_expected_alone and alone < max_alone * expected:
            drop[members[a]] = True
            log.info(
                "unit %d: %d of its %d spikes away from larger units' (%.0f by chance): collision leftovers, dropped",
                a,
                alone,
                len(ta),
                expected,
            )
    return drop
