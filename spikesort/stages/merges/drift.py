"""After drift correction: units that are one neuron seen at two (or more) probe positions.

``drift_split_groups`` grows the groups (``_grow``) with position tests that compare where the
probe was when the units fired: ``_apart`` (the groups' spikes come from different positions),
``_disjoint`` (no two of their units share positions) and ``_fills`` (together they sample the
positions like one neuron firing all along).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikesort.stages.drift.estimate import Motion


@dataclass(frozen=True)
class _Positions:
    """Where the probe was, as bins of the displacement at a unit's depth (its main channel): at
    each spike, and at the times a neuron firing steadily would sample."""

    units: np.ndarray  # (n,) unit of each spike
    binned: np.ndarray  # (n,) displacement bin at each spike
    edges: np.ndarray  # displacement bin edges (µm)
    motion: Motion
    grid_s: np.ndarray  # a steady neuron's firing times: every quarter of a time bin
    unit_depths_um: np.ndarray  # (K,) depth of each unit's main channel
    unit_shanks: np.ndarray  # (K,) shank of each unit's main channel


def _separation(a: np.ndarray, b: np.ndarray, *, n_bins: int) -> float:
    """1 - overlap of two distributions of displacement bins."""
    pa = np.bincount(a, minlength=n_bins) / len(a)
    pb = np.bincount(b, minlength=n_bins) / len(b)
    return 1.0 - float(np.minimum(pa, pb).sum())


def _occupancy(u: int, *, pos: _Positions) -> np.ndarray:
    """Where the probe was, at unit ``u``'s depth: what a neuron firing steadily samples."""
    d = pos.motion.at(
        times_s=pos.grid_s,
        depths_um=np.full(len(pos.grid_s), pos.unit_depths_um[u]),
        shanks=np.full(len(pos.grid_s), pos.unit_shanks[u]),
    )
    return np.clip(np.searchsorted(pos.edges, d, side="right") - 1, 0, len(pos.edges) - 2)


def _apart(
    ga: list, gb: list, *, pos: _Positions, min_spikes: int, min_separation: float, rng: np.random.Generator
) -> bool:
    """The two groups' spikes come from clearly different probe positions."""
    n_bins = len(pos.edges) - 1
    a = pos.binned[np.isin(pos.units, ga)]
    b = pos.binned[np.isin(pos.units, gb)]
    sep = _separation(a, b, n_bins=n_bins)
    if len(a) < min_spikes or len(b) < min_spikes or sep < min_separation:
        return False
    pooled = np.concatenate([a, b])
    null = [_separation(*np.split(rng.permutation(pooled), [len(a)]), n_bins=n_bins) for _ in range(20)]
    return sep >= np.percentile(null, 95) + 0.15


def _disjoint(ga: list, gb: list, *, pos: _Positions, min_spikes: int, max_cover: float = 0.5) -> bool:
    """No unit of one group fires where a unit of the other fires: one neuron is at one position
    at a time, so its pieces never share positions, while two neurons on one spot, each cut in two
    by the same steps of the motion, do (``shanks4`` seed 95: two neurons at 588 and 306 µV at
    the end of a shank, 26 µm apart in depth, each in two units; the smaller neuron's two units
    formed a group that spanned both positions, and the larger neuron's units joined it). A unit
    covers another's positions when, weighted by where the other fires, it fires there at more than
    ``max_cover`` of its own mean rate per unit of the probe's occupancy: a look-alike firing all
    along covers every piece. Units under ``min_spikes`` are too few to say."""
    n_bins = len(pos.edges) - 1

    def rate(u: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(rate per bin relative to the unit's mean, share of its spikes per bin)."""
        x = pos.binned[pos.units == u]
        if len(x) < min_spikes:
            return None
        counts = np.bincount(x, minlength=n_bins)
        occ = np.bincount(_occupancy(u, pos=pos), minlength=n_bins).astype(np.float64)
        mean = len(x) / max(occ.sum(), 1.0)
        return counts / np.maximum(occ, 1.0) / max(mean, 1e-12), counts / len(x)

    rates = {u: rate(u) for u in [*ga, *gb]}
    for a in ga:
        for b in gb:
            if rates[a] is None or rates[b] is None:
                continue
            (ra, pa), (rb, pb) = rates[a], rates[b]
            if (pb * np.minimum(ra, 1.0)).sum() > max_cover or (pa * np.minimum(rb, 1.0)).sum() > max_cover:
                return False
    return True


def _fills(parts: list[list], *, pos: _Positions) -> bool:
    """Together the parts fire like one neuron that never stopped: their union follows the
    probe's occupancy clearly better than any part alone (a look-alike that fires all along,
    and a unit seen at one position only, do not)."""
    n_bins = len(pos.edges) - 1
    occ = _occupancy(parts[0][0], pos=pos)
    pooled = pos.binned[np.isin(pos.units, [u for g in parts for u in g])]
    best = min(_separation(pos.binned[np.isin(pos.units, g)], occ, n_bins=n_bins) for g in parts)
    # a part that already misses only a short stretch (a 30 s step) can improve by little
    return _separation(pooled, occ, n_bins=n_bins) <= best - min(0.1, 0.5 * best)


def _grow(
    initial: list[list[tuple[int, int]]],
    *,
    check_fill: bool,
    cos: np.ndarray,
    lag: np.ndarray,
    min_similarity: float,
    pos: _Positions,
    min_spikes: int,
    min_separation: float,
    rng: np.random.Generator,
    two_neurons=None,
) -> list[list[tuple[int, int]]]:
    """Join the groups of ``initial`` ((unit, offset onto the group's first unit) lists), most
    similar pair of units first, when their templates are similar on average, they pass the
    position tests (``_fills`` only with ``check_fill``) and ``two_neurons(a, b)`` (the groups'
    (unit, offset) lists, aligned on one unit) does not say their spike trains are two neurons'."""
    similar = cos >= min_similarity
    members = {g[0][0]: [u for u, _ in g] for g in initial}
    group = {u: g[0][0] for g in initial for u, _ in g}
    offset = {u: off for g in initial for u, off in g}
    sub = np.asarray([u for g in initial for u, _ in g])
    pairs = [(int(sub[i]), int(sub[j])) for i, j in zip(*np.nonzero(np.triu(similar[np.ix_(sub, sub)], 1)))]
    for i, j in sorted(pairs, key=lambda p: -cos[p]):
        ga, gb = group[i], group[j]
        # similar on average: pieces at the two ends of a neuron's travel can differ more
        # than either differs from the piece in the middle
        if ga == gb or cos[np.ix_(members[ga], members[gb])].mean() < min_similarity:
            continue
        # j's spikes align on i less its lag; gb's members move by the same amount
        delta = offset[i] - int(lag[i, j]) - offset[j]
        if (
            _apart(members[ga], members[gb], pos=pos, min_spikes=min_spikes, min_separation=min_separation, rng=rng)
            and _disjoint(members[ga], members[gb], pos=pos, min_spikes=min_spikes)
            and (not check_fill or _fills([members[ga], members[gb]], pos=pos))
            and (
                two_neurons is None
                or not two_neurons([(u, offset[u]) for u in members[ga]], [(u, offset[u] + delta) for u in members[gb]])
            )
        ):
            for u in members[gb]:
                offset[u] += delta
            members[ga] += members.pop(gb)
            for u in members[ga]:
                group[u] = ga
    return [[(u, offset[u]) for u in g] for g in members.values()]


# two groups whose spikes share the refractory period (beyond the double fits' lags) this often,
# relative to chance, where chance gives at least this many pairs, are two neurons. MEArec's
# moving Neuropixels-64 (seed 2): a neuron at the probe's end, seen all along (1230 spikes),
# looked like the two drift pieces of another (templates alike to 0.90-0.97, positions apart) and
# joined them, with 8 and 13 pairs where 4.1 and 5.7 were expected; one neuron's pieces, firing in
# different stretches, had none (0 of 0.5). But a neuron's pieces can share the period too, up to
# about chance: on seed 1 a cell's piece and its other two units, which it takes spikes from where
# it fires, had 0.83 of chance (5 where 6.0 were expected), and on bump64 seed 1 a neuron's two
# pieces had 4 pairs where 1.3 were expected (two of them double fits 16-17 samples apart). One
# neuron never fires more often than chance within its own refractory period
TWO_NEURONS_RATIO, TWO_NEURONS_EXPECTED = 1.5, 3.0


def _trains_test(
    times_s: np.ndarray, units: np.ndarray, *, fs: float, refractory_ms: float, double_fit_ms: float, rate_bin_s: float
):
    """``two_neurons(a, b)`` for two lists of (unit, offset in samples): their pooled trains, each
    unit's spikes moved by its offset (aligned on one unit: a piece aligned on another trough
    has its double fits at that lag), share the refractory period beyond the double fits' lags
    ``TWO_NEURONS_RATIO`` times as often as chance or more, chance giving at least
    ``TWO_NEURONS_EXPECTED`` pairs."""
    from .refractory import pairs_beyond_double_fits

    samples = np.round(times_s * fs).astype(np.int64)
    duration = int(samples.max()) + 1 if len(samples) else 1
    refractory = int(round(refractory_ms * fs / 1000))
    inner = int(round(double_fit_ms * fs / 1000))
    rate_bin = int(round(rate_bin_s * fs))

    order = np.argsort(units, kind="stable")
    ids, starts = np.unique(units[order], return_index=True)
    trains = dict(zip(ids.tolist(), np.split(samples[order], starts[1:])))  # each unit's, once

    def aligned(group: list) -> np.ndarray:
        return np.concatenate([trains[u] + off for u, off in group])

    def two_neurons(a: list, b: list) -> bool:
        observed, expected = pairs_beyond_double_fits(
            aligned(a), aligned(b), refractory=refractory, double_fit=inner, duration=duration, rate_bin=rate_bin
        )
        return expected >= TWO_NEURONS_EXPECTED and observed >= TWO_NEURONS_RATIO * expected

    return two_neurons


def lagged_cosines(templates: np.ndarray, *, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Best cosine of every pair of (K, nt, C) templates over shifts of -max_lag..max_lag samples,
    and that shift (``lag[i, j]``: j delayed by it matches i; the smallest shift wins ties)."""
    k, nt = templates.shape[:2]
    t = np.asarray(templates, dtype=np.float64)
    flat = t.reshape(k, -1)
    norm = np.maximum(np.linalg.norm(flat, axis=1), 1e-12)
    flat = flat / norm[:, None]
    best = np.full((k, k), -np.inf)
    lag = np.zeros((k, k), dtype=np.int64)
    for shift in sorted(range(-max_lag, max_lag + 1), key=abs):
        if abs(shift) >= nt:
            continue
        moved = np.zeros_like(t)
        if shift >= 0:
            moved[:, shift:] = t[:, : nt - shift]
        else:
            moved[:, :shift] = t[:, -shift:]
        c = flat @ (moved.reshape(k, -1) / norm[:, None]).T
        better = c > best
        best[better], lag[better] = c[better], shift
    return best, lag


def drift_split_groups(
    *,
    spike_times_s,
    spike_units,
    templates,
    main_channels,
    positions_um,
    channel_shanks,
    motion: Motion,
    min_similarity: float = 0.8,
    min_separation: float = 0.4,
    min_spikes: int = 30,
    bin_um: float = 4.0,
    max_lag: int = 0,
    seed: int = 0,
    sampling_rate_hz: float | None = None,
    refractory_ms: float = 1.5,
    double_fit_ms: float = 0.5,
    rate_bin_s: float = 10.0,
) -> list[list[tuple[int, int]]]:
    """Groups of units that are one neuron split by drift (singletons included), each unit with
    the offset (samples) that aligns its spikes on the group's first unit.

    Interpolated traces are not exact: a unit whose spikes come from two probe positions (a step
    in the motion) looks slightly different at each, and clustering may keep the two apart
    (their snippets are bimodal). Two units are the same neuron when their templates
    ``(K, nt, C)`` are similar (cosine >= ``min_similarity``) and their spikes come from
    different probe positions: the distributions of the displacement at their spikes (at their
    depth) differ, by at least ``min_separation`` (1 - overlap) and clearly more than two
    samples of one distribution would (the 95th percentile of 20 label shuffles, + 0.15), and
    together they sample the probe's positions like a neuron that fired all along. Different
    neurons fire whatever the probe position. Groups grow greedily from the most similar pair;
    two groups join when their templates are similar on average over every cross pair, and the
    position tests compare the two groups being joined, and every unit of one with every unit of
    the other (``_disjoint``). Templates are compared at their best
    shift within ``max_lag`` samples: where the waveform changes with the position, a piece can
    be aligned on a point of it a few samples from its neuron's. Given ``sampling_rate_hz``, two
    groups whose spikes fall within ``refractory_ms`` of each other (beyond ``double_fit_ms``,
    where one spike fitted by both templates lands) ``TWO_NEURONS_RATIO`` of chance's pairs, where
    chance gives at least ``TWO_NEURONS_EXPECTED`` pairs (from the rates in bins of
    ``rate_bin_s``), are two neurons and stay apart: one neuron never fires there more often than
    chance.
    """
    times = np.asarray(spike_times_s, dtype=np.float64)
    units = np.asarray(spike_units, dtype=np.int64)
    k = len(templates)
    if k < 2 or len(times) == 0:
        return [[(u, 0)] for u in range(k)]
    cos, lag = lagged_cosines(templates, max_lag=max_lag)
    main = np.asarray(main_channels, dtype=np.int64)
    depth = np.asarray(positions_um)[main, 1][units]
    disp = motion.at(times_s=times, depths_um=depth, shanks=np.asarray(channel_shanks)[main][units])
    edges = np.arange(np.floor(disp.min()) - bin_um, np.ceil(disp.max()) + 2 * bin_um, bin_um)
    binned = np.clip(np.searchsorted(edges, disp, side="right") - 1, 0, len(edges) - 2)
    rng = np.random.default_rng(seed)
    # where the probe was, at a unit's depth: what a neuron firing steadily samples
    bin_s = motion.time_bins_s[1] - motion.time_bins_s[0] if motion.n_time_bins > 1 else 2.0
    grid = np.arange(0.0, motion.time_bins_s[-1] + 0.5 * bin_s, 0.25 * bin_s)
    pos = _Positions(
        units=units,
        binned=binned,
        edges=edges,
        motion=motion,
        grid_s=grid,
        unit_depths_um=np.asarray(positions_um)[main, 1],
        unit_shanks=np.asarray(channel_shanks)[main],
    )
    kw = dict(
        cos=cos,
        lag=lag,
        min_similarity=min_similarity,
        pos=pos,
        min_spikes=min_spikes,
        min_separation=min_separation,
        rng=rng,
        two_neurons=None
        if sampling_rate_hz is None
        else _trains_test(
            times,
            units,
            fs=sampling_rate_hz,
            refractory_ms=refractory_ms,
            double_fit_ms=double_fit_ms,
            rate_bin_s=rate_bin_s,
        ),
    )
    # a neuron seen at three positions is three units, and any two of them miss the third
    # position: groups grow on the position tests alone, then a group must fill the occupancy as
    # a whole. The members of one that does not are free again, and every unit is grown once
    # more with the occupancy test on each join (a piece first grouped with a look-alike that
    # fires elsewhere can then find its own neuron)
    first = _grow([[(u, 0)] for u in range(k)], check_fill=False, **kw)
    whole = [len(g) == 1 or _fills([[u] for u, _ in g], pos=pos) for g in first]
    kept = [g for g, ok in zip(first, whole) if ok]
    freed = [[(u, 0)] for g, ok in zip(first, whole) if not ok for u, _ in g]
    out = []
    for g in _grow(kept + freed, check_fill=True, **kw):
        g = sorted(g)  # the first unit is the reference
        out.append([(u, off - g[0][1]) for u, off in g])
    return sorted(out)
