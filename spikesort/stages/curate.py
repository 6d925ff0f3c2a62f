"""After matching: duplicate spikes and residues of imperfect subtractions are removed.

The merges of units that are one neuron (the refractory test, and units split by drift) are
with the other merge rules in :mod:`spikesort.stages.merges`.
"""

from __future__ import annotations

import logging

import numpy as np

from .match import MatchedSpikes
from .merges.pieces import COMPACT_REACH
from .merges.refractory import apply_groups
from .merges.templates import SIGNAL_FRACTION, lagged_dots
from .sampling import keyed_subset
from .templates import trough_offsets

log = logging.getLogger(__name__)


def within_recording(spikes: MatchedSpikes, *, n_samples: int) -> MatchedSpikes:
    """The spikes whose times lie in [0, ``n_samples``). A merge moves a piece's spikes by its lag
    onto its unit's alignment (up to the window's lead), so a spike in the first or last samples
    of the recording can leave it; Phy's files cannot hold it."""
    inside = (spikes.times >= 0) & (spikes.times < n_samples)
    return spikes if inside.all() else spikes.take(np.flatnonzero(inside))


def on_recorded_troughs(
    spikes: MatchedSpikes,
    templates_uv: np.ndarray,
    *,
    pre: int,
    sign: int,
    n_samples: int,
    min_offset: int,
    edges: bool = False,
) -> tuple[MatchedSpikes, bool]:
    """Each unit's spikes moved to its trough as recorded (``templates_uv``, (K, nt, C) in µV:
    the largest deflection of the detection ``sign`` on the channel where it is largest) when
    that lies ``min_offset`` samples or more from where they are, and whether any moved.
    Matching aligns a spike on its whitened template, and whitening can put the largest
    deflection on a neighbour's channel at another moment: a MEArec cell whose positive lobe
    dominates its largest channel was reported 13 samples (0.4 ms) before its trough, where
    neither ground truth nor Phy's users put a spike. Closer than a trough's own width, the
    whitened alignment is as good a time (MEArec's spike times sat at it for a unit 8 samples
    from its trough). A unit whose trough is under half its largest deflection (a spike of the
    other sign, its trough a dip) keeps its alignment. With ``edges``, a trough on the window's
    edge moves the spikes there (see :func:`.templates.trough_offsets`; called again, they reach it)."""
    offsets = trough_offsets(templates_uv, pre=pre, sign=sign, min_offset=min_offset, dominant=False, edges=edges)
    k, nt, c = templates_uv.shape
    flat = templates_uv.reshape(k, nt * c)  # no unit left: (0, nt * c)
    offsets[(sign * flat).max(axis=1, initial=0.0) < 0.5 * np.abs(flat).max(axis=1, initial=0.0)] = 0
    shift = offsets[spikes.templates]
    if not shift.any():
        return spikes, False
    for u in np.flatnonzero(offsets):
        log.info("unit %d: spikes moved %+d samples, onto its trough as recorded", u, offsets[u])
    moved = apply_groups(spikes, [[(u, int(offsets[u]))] for u in range(k)])  # each unit on its own, shifted
    return within_recording(moved, n_samples=n_samples), True


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
        locked = []  # (b, its spikes' near mask): larger units a's spikes follow beyond chance
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
            if near_rest >= max(min_count, echo_over_chance * chance_near):
                if near_rest > echo_fraction * rest.sum():
                    echo_of = [b]
                    residue[:] = True
                    break
                locked.append((b, near))
        if echo_of is None and len(locked) > 1:
            # an echo of two large neurons' long waveforms at once: each holds under half of the
            # unit's spikes, together more (mearec_tetrode seed 90: 32 % and 32 %, 62 % together)
            rest = ~residue
            near_any = int((np.logical_or.reduce([near for _, near in locked]) & rest).sum())
            chance_any = rest.sum() * sum(len(times[b]) for b, _ in locked) / span * (2 * window + 1)
            if near_any > echo_fraction * rest.sum() and near_any >= echo_over_chance * chance_any:
                echo_of = [b for b, _ in locked]
                residue[:] = True
        if not residue.any():
            continue
        frac = residue.mean()
        if echo_of is not None:
            drop[members[a]] = True
            whole += 1
            of = ", ".join(map(str, echo_of))
            log.info("unit %d: its spikes come within the window of unit %s's: an echo, dropped", a, of)
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


def _best_gain(y: np.ndarray, x: np.ndarray) -> float:
    xx = float((x**2).sum())
    return float((x * y).sum()) / xx if xx > 0 else 0.0


def _best_lag(y: np.ndarray, x: np.ndarray, *, max_lag: int) -> int:
    """The delay of ``x`` that explains most of ``y`` (a positive gain)."""
    dots, sq = lagged_dots(y, x, max_lag=max_lag)
    explained = np.where((sq > 0) & (dots > 0), dots**2 / np.where(sq > 0, sq, 1.0), 0.0)
    return int(np.argmax(explained)) - max_lag


def _delayed(x: np.ndarray, lag: int) -> np.ndarray:
    out = np.zeros_like(x)
    if lag >= 0:
        out[lag:] = x[: len(x) - lag]
    else:
        out[:lag] = x[-lag:]
    return out


def _smallest_fits(spikes: MatchedSpikes, dense: np.ndarray, *, lo: float) -> np.ndarray:
    """(k,) per unit, ``lo`` or the 1st percentile of its spikes' sizes on its template, if
    smaller: a spike's fit explains ``gains`` = (scale x template norm)^2 of the residual's energy,
    so merged pieces' spikes keep the size they were fitted at."""
    k = dense.shape[0]
    norms = np.sqrt((dense.astype(np.float64) ** 2).sum(axis=(1, 2)))
    scale = np.sqrt(np.maximum(spikes.gains.astype(np.float64), 0.0)) / np.maximum(norms[spikes.templates], 1e-12)
    floor = np.full(k, float(lo))
    order = np.argsort(spikes.templates, kind="stable")
    bounds = np.searchsorted(spikes.templates[order], np.arange(k + 1))
    for i in range(k):
        if bounds[i + 1] > bounds[i]:
            floor[i] = min(float(lo), float(np.quantile(scale[order[bounds[i] : bounds[i + 1]]], 0.01)))
    return floor


def composite_units(
    spikes: MatchedSpikes,
    dense: np.ndarray,
    *,
    max_lag: int,
    positions_um: np.ndarray,
    refractory: int,
    amplitude_range: tuple[float, float],
    duration: int,
    max_residual: float = 0.15,
    max_share: float = 0.1,
    max_distance_um: float = 100.0,
    n_candidates: int = 12,
) -> MatchedSpikes:
    """Small units whose template is one or two larger units' templates: their spikes go back.

    Two things make such a unit. A larger unit's spikes taken on another alignment (a duplicate:
    its template is the larger one delayed). And two neurons that often fire together (the
    synchronous spikes of biophysical simulations): the summed waveform forms a cluster, whose
    template then wins those events from both neurons' own. A unit with at most ``max_share`` of
    a nearby larger unit's spikes (peak channels within ``max_distance_um``) whose template one
    delayed template, or the least-squares sum of two, leaves under ``max_residual`` of its
    energy, with each gain within ``amplitude_range``, is dissolved: each spike goes to each
    template that explains it, at its delay, unless that unit already has a spike within the
    inner half of the ``refractory`` period there (the same event fitted twice) or the delay
    takes it outside the recording (``duration`` samples). In a sum of two, a unit that holds
    its neuron's smaller spikes too (pieces merged at several sizes) may take a gain down to the
    size of its own smallest spikes (:func:`_smallest_fits`): mearec_nn32_white seed 2, 66
    collisions of two neurons, one of them at 0.475 of a unit that had taken its neuron's burst
    spikes, drawn at 0.44 of its size.
    """
    k = dense.shape[0]
    if k < 2 or len(spikes.times) == 0:
        return spikes
    sizes = np.bincount(spikes.templates, minlength=k)
    main = np.sqrt((dense**2).sum(axis=1)).argmax(axis=1)
    lo, hi = amplitude_range
    floor = _smallest_fits(spikes, dense, lo=lo)
    moved: dict[int, list[tuple[int, int, float]]] = {}  # unit -> [(target unit, lag, gain)]
    targets: set[int] = set()
    for u in np.argsort(sizes, kind="stable"):
        y = dense[u].astype(np.float64)
        yy = float((y**2).sum())
        if sizes[u] == 0 or yy == 0 or u in targets:
            continue  # a unit that takes another's spikes stays (no chains)
        near = [
            i
            for i in range(k)
            if i != u
            and i not in moved
            and sizes[u] <= max_share * sizes[i]
            and np.linalg.norm(positions_um[main[u]] - positions_um[main[i]]) <= max_distance_um
        ]
        if not near:
            continue
        singles = []  # (residual, unit, lag, gain)
        for i in near:
            dots, sq = lagged_dots(y, dense[i].astype(np.float64), max_lag=max_lag)
            ok = sq > 0
            gain = np.where(ok, dots / np.where(ok, sq, 1.0), 0.0)
            res = np.where(ok, 1.0 - dots * gain / yy, 1.0)
            n = int(np.argmin(np.where((gain >= lo) & (gain <= hi), res, np.inf)))
            if lo <= gain[n] <= hi:
                singles.append((float(res[n]), i, n - max_lag, float(gain[n])))
        if not singles:
            continue
        singles.sort()
        best = [singles[0][1:]] if singles[0][0] <= max_residual else None
        if best is None:
            # pairs among the best single fits; each lag refitted on what the other leaves
            top = singles[:n_candidates]
            pair_res = max_residual
            for a in range(len(top)):
                for b in range(a + 1, len(top)):
                    (_, i, li, gi), (_, j, _, _) = top[a], top[b]
                    xi, xj = dense[i].astype(np.float64), dense[j].astype(np.float64)
                    for _ in range(2):
                        lj = _best_lag(y - gi * _delayed(xi, li), xj, max_lag=max_lag)
                        li = _best_lag(y - _best_gain(y, _delayed(xj, lj)) * _delayed(xj, lj), xi, max_lag=max_lag)
                        gi = _best_gain(y, _delayed(xi, li))
                    x = np.stack([_delayed(xi, li).ravel(), _delayed(xj, lj).ravel()], axis=1)
                    coef = np.linalg.lstsq(x, y.ravel(), rcond=None)[0]
                    r = y.ravel() - x @ coef
                    res = float(r @ r) / yy
                    if res <= pair_res and floor[i] <= coef[0] <= hi and floor[j] <= coef[1] <= hi:
                        pair_res, best = res, [(i, li, float(coef[0])), (j, lj, float(coef[1]))]
        if best is not None:
            moved[int(u)] = best
            targets.update(t for t, _, _ in best)
    if not moved:
        return spikes
    keep = ~np.isin(spikes.templates, list(moved))
    parts = [spikes.take(np.flatnonzero(keep))]
    inner = max(refractory // 2, 1)
    for u, fits in moved.items():
        own = spikes.take(np.flatnonzero(spikes.templates == u))
        for target, lag, gain in fits:
            t = own.times + lag
            have = np.sort(spikes.times[spikes.templates == target])
            at = np.clip(np.searchsorted(have, t), 1, max(len(have) - 1, 1))
            gap = np.minimum(np.abs(t - have[at - 1]), np.abs(t - have[np.minimum(at, len(have) - 1)]))
            new = (gap > inner) & (t >= 0) & (t < duration)
            parts.append(
                MatchedSpikes(
                    t[new],
                    np.full(int(new.sum()), target, dtype=spikes.templates.dtype),
                    (own.amplitudes[new] * gain).astype(spikes.amplitudes.dtype),
                    (own.gains[new] * gain * gain).astype(spikes.gains.dtype),
                )
            )
        log.info(
            "unit %d (%d spikes): its template is %s: its spikes go to %s",
            u,
            len(own.times),
            "another unit's, delayed" if len(fits) == 1 else "the sum of two units'",
            " and ".join(f"unit {t} ({lag:+d} samples)" for t, lag, _ in fits),
        )
    merged = MatchedSpikes.concat(parts)
    return merged.take(np.argsort(merged.times, kind="stable"))


def _best_residuals(snippets: np.ndarray, template: np.ndarray, lags) -> np.ndarray:
    """(n,) energy each snippet keeps after the best positive multiple of ``template`` at any of
    ``lags`` is taken away."""
    energy = (snippets**2).sum(axis=(1, 2))
    best = energy.copy()
    for lag in lags:
        x = _delayed(template, lag)
        xx = float((x**2).sum())
        if xx > 0:
            dots = np.einsum("ntc,tc->n", snippets, x)
            best = np.minimum(best, energy - np.maximum(dots, 0.0) ** 2 / xx)
    return best


def shadowed_units(
    store,
    spikes: MatchedSpikes,
    dense: np.ndarray,
    *,
    pre: int,
    nt: int,
    seed: int,
    max_fraction: float,
    independent,
    larger: float = 1.5,
    min_overlap: float = 0.5,
    fine_lag: int = 3,
    max_spikes: int = 300,
) -> np.ndarray:
    """Units spread over the probe (a tetrode's) whose spikes a larger unit's template fits better
    than their own, more than ``max_fraction`` of the time: the units to drop.

    A neuron's own template fits its spikes better than any other unit's does, save when the two
    templates are nearly one (then each spike goes either way by chance, and the trains tell the
    neurons apart). A unit made of other neurons' spikes, shrunken in their bursts and mixed,
    has a template between theirs, and many of its spikes sit closer to one of theirs. On 57
    benchmark tetrode recordings (2026-12-05) 10 of 16 false units had more than a tenth, and two
    true units, whose trains showed a neuron apart. So such a unit is dropped unless it fires
    independently (``independent``) of each larger unit that fits half that fraction of its spikes
    better (of the one that fits most, when none does). Only
    units whose footprint spans ``COMPACT_REACH`` of the probe's channels are judged (every unit of
    a tetrode; on a long probe, one spread over all of it): on long generated probes true units
    reached 0.41 (a neighbour of nearly the same template, drifting), and there a footprint tells
    neurons apart where a tetrode's cannot.

    Each unit's spikes (up to ``max_spikes``, :func:`.sampling.keyed_subset` with ``seed``) are
    fitted on the channels of its own footprint, its own template within ``fine_lag`` samples and
    each unit with ``larger`` times its spikes whose footprint overlaps (cosine of channel norms
    ``min_overlap``) within ``fine_lag`` of its best template lag, each with its best gain."""
    k = dense.shape[0]
    sizes = np.bincount(spikes.templates, minlength=k)
    norms = np.sqrt((dense.astype(np.float64) ** 2).sum(axis=1))  # (K, C)
    unit_norms = np.maximum(np.linalg.norm(norms, axis=1), 1e-12)
    overlap = (norms @ norms.T) / np.outer(unit_norms, unit_norms)
    drop = []
    for u in range(k):
        parents = np.flatnonzero((sizes >= larger * sizes[u]) & (overlap[u] >= min_overlap))
        parents = parents[parents != u]
        chans = np.flatnonzero(norms[u] >= SIGNAL_FRACTION * norms[u].max())
        if sizes[u] == 0 or len(parents) == 0 or len(chans) < COMPACT_REACH * dense.shape[2]:
            continue
        chosen = keyed_subset(spikes.times[spikes.templates == u], max_spikes, seed=seed)
        snips = store.snippets(chosen, pre=pre, nt=nt, channels=chans).astype(np.float64)
        own_t = dense[u][:, chans].astype(np.float64)
        own = _best_residuals(snips, own_t, range(-fine_lag, fine_lag + 1))
        closer = np.zeros(len(chosen), dtype=bool)
        wins = []
        for p in parents:
            x = dense[p][:, chans].astype(np.float64)
            lag = _best_lag(own_t, x, max_lag=nt // 2)
            better = _best_residuals(snips, x, range(lag - fine_lag, lag + fine_lag + 1)) < own
            closer |= better
            wins.append(int(better.sum()))
        fraction = float(closer.mean())
        if fraction <= max_fraction:
            continue
        # each larger unit that claims a share of its spikes (half the fraction) may be where they
        # come from; the one that claims most, when none claims that much
        wins = np.asarray(wins)
        claims = parents[wins >= 0.5 * max_fraction * len(chosen)]
        claims = claims if len(claims) else parents[[int(np.argmax(wins))]]
        if all(independent(u, int(p)) for p in claims):
            continue
        log.info(
            "unit %d (%d spikes) dropped: %.0f %% of its spikes fit larger units' templates better than its own, "
            "and its train does not show a neuron apart from units %s",
            u,
            sizes[u],
            100 * fraction,
            ", ".join(str(int(p)) for p in claims),
        )
        drop.append(u)
    return np.asarray(drop, dtype=np.int64)
