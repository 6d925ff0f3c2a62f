"""Merges of the pieces of one neuron whose spikes change size (bursts).

A neuron whose spikes shrink and widen within a burst (to a third of their size on biophysical
simulations) comes out of the clustering as a full-size unit and one or more smaller ones. The
pieces' templates differ in size and a little in shape, and the refractory test of
:mod:`.refractory` fails on them: the matching fits a piece's template to what the full-size
template leaves of a stretched spike a few hundred µs away, and those coincidences count against
the merge. What does not change is where the neuron is: its amplitude scales on every channel
together, so the pieces' spatial footprints (peak-to-peak amplitude per channel, in µV) agree up to
a factor. Two neurons agreeing that closely over many channels are rare; on a tetrode every
neuron has nearly the same footprint, so the rule needs the footprint to span several channels.

Where a footprint spans fewer channels but most of the probe (a tetrode), the spike trains must
say it: a smaller piece joins a larger unit when, besides a footprint and shape alike, the two
never fire within the outer half of the refractory period of each other (every lag beyond the
double fits where that half expects too few pairs): closer, the matching fits a piece to what the
full-size template leaves of a changed spike, which no refractory gap forbids.

The trains can also say it with the burst itself: the shrunken spikes come late in a burst, so a
piece's spikes follow one of its unit's by a few to tens of ms far more often than chance, and
are followed by one far less often. Two neurons firing on their own do neither.
"""

from __future__ import annotations

import logging

import numpy as np

from .evidence import ABSORB_FRACTION, Trains, rarer_gap
from .pieces import COMPACT_REACH, LOOSE_COSINE, PHASE_TWICE_FRACTION, PieceRules
from .refractory import mostly_fitted_twice
from .templates import footprint_cosine, lagged_similarity, sliver_of

log = logging.getLogger(__name__)


def _sliver_of(t: int, piece: int, ok: np.ndarray, sizes: np.ndarray) -> bool:
    """Unit ``t`` joined ``piece``'s group as a sliver of it: linked to it, and few."""
    return bool(ok[piece, t]) and sizes[t] <= ABSORB_FRACTION * sizes[piece]


def footprint_merges(
    dense: np.ndarray,
    templates_uv: np.ndarray,
    sizes: np.ndarray,
    *,
    max_lag: int,
    phase_lag: int = 0,
    min_cosine: float = 0.99,
    min_similarity: float = 0.8,
    min_channels: int = 8,
    times: list[np.ndarray] | None = None,
    refractory: int = 0,
    duration: int = 0,
    double_fit: int | None = None,
    compact_cosine: float = 0.95,
    compact_similarity: float = 0.7,
    loose_footprint_similarity: float = 0.85,
    max_piece_size: float = 0.75,
    max_ratio: float = 0.4,
    min_expected: float = 3.0,
    independent=None,
    min_size_ratio: float = 1.5,
    burst_lags: tuple[int, int] | None = None,
    trough_lags: tuple[int, int] | None = None,
) -> list[list[tuple[int, int]]]:
    """Groups of units that are one neuron seen at several sizes, each as (unit, offset that
    aligns its spikes on the group's largest unit), like the other template merges.

    A pair needs footprints agreeing to ``min_cosine`` over at least ``min_channels`` channels
    and whitened templates of one shape (lag-aware cosine ``min_similarity``, within ``max_lag``
    samples; up to ``phase_lag`` samples when the spike ``times`` show one neuron: no pairs closer
    than the ``refractory`` period beyond ``double_fit`` samples, default its half). Groups are joined
    most similar first, and only when every cross pair agrees, so no chain links two neurons
    through a piece that looks like both. A smaller piece then joins one unit's group, never one
    that took pieces or is one, and only alone or with slivers of its own that it took in those
    pairs (each at most ``ABSORB_FRACTION`` of its spikes), which come aligned on it.

    Two neurons a few µm apart also have footprints that agree to 0.99 (on dense probes, and
    beyond the end of a shank). A pair of about one size (peak-to-peak within
    ``min_size_ratio``) is not a neuron at several sizes: it merges only when
    ``independent(i, j)`` (if given) does not say the two fire independently of each other. At
    two sizes that veto holds when the trains say it plainly (:func:`.two_sizes.trains_say`,
    beyond ``double_fit``), and otherwise unless they show a sign of one neuron: that banded
    count under ``max_ratio`` of chance with ``min_expected`` pairs expected, the burst's timing
    (below), or a trough at ``trough_lags`` (lo, hi samples: the relative refractory period
    beyond the absolute one).

    Footprints on fewer than ``min_channels`` channels that span most of the probe
    (``COMPACT_REACH``; on a long probe a narrow footprint still tells neurons apart, and the
    collisions the matching loses thin two neighbours' correlogram), given the units' spike
    ``times``, the ``refractory`` period and the recording's ``duration`` in samples: a unit whose peak-to-peak
    is at most ``max_piece_size`` of a larger unit's, with footprints agreeing to
    ``compact_cosine`` and shapes to ``compact_similarity`` (to ``loose_footprint_similarity``
    where the footprints agree to less than ``min_cosine``), joins that unit's group when their
    spike pairs in the refractory period's outer half are under ``max_ratio`` of chance, chance
    being at least ``min_expected`` pairs; tested again against the whole group. A piece with too
    few spikes for that test joins when it has at most ``ABSORB_FRACTION`` of the unit's spikes and
    agrees with it as closely as dense footprints must (``min_cosine``, ``min_similarity``). A
    piece whose shape agrees less joins only on the ample evidence asked of a narrow footprint,
    whatever its shape (or, footprints agreeing to ``min_cosine``, a gap as rare for two neurons
    as :func:`.evidence.ample_gap` asks): a burst can change a spike's shape that much. A piece
    alike in shape that fails the plain count is judged on that evidence too, in the banded count
    (where the unit and the piece fit one changed spike, pairs crowd at one lag). Pieces
    of one neuron need not look like each other (one shrinks, one widens), only like their unit.
    Two compact units alike as dense ones must be, but only at a lag beyond ``max_lag`` (one neuron
    aligned on two of its phases), join as a pair does on a dense probe when the trains show one neuron.
    On a dense probe, such a pair whose trains are too short for that joins when its footprints
    agree to ``STRICT_COSINE``, its shapes to ``PHASE_SIMILARITY``, and the refractory period
    beyond ``double_fit`` holds no pair where chance gives ``PHASE_EXPECTED``. A pair alike as that
    whose period holds no pair where chance gives fewer joins nothing itself, but does not keep
    the two apart when each joins a third (one neuron on three phases).
    Where the trains are too short to show one neuron, compact footprints agreeing to
    ``STRICT_COSINE`` with shapes alike to ``loose_footprint_similarity`` still join (a piece, or
    a pair on two phases), unless ``independent`` shows two neurons firing on their own; so does a
    smaller piece whose trains show no gap (a few stray fits) but too little to show two neurons.
    A compact piece too few for the test, with at most ``QUIET_FRACTION`` of a unit's spikes and
    shapes alike to ``min_similarity``, joins the larger unit it is most like.
    A narrow footprint on a long probe agreeing to ``LOOSE_COSINE``, a dense one agreeing to only
    ``compact_cosine``, or a dense one whose shape agrees to less than ``min_similarity``, joins as
    a piece does on a compact one, but only with the stricter evidence of ``NARROW_EXPECTED`` and
    ``NARROW_RATIO`` (counted by :func:`banded_refractory_ratio`), shapes alike to
    ``LOOSE_SIMILARITY`` (or, footprints agreeing to ``min_cosine``, whatever the shape, a gap
    :func:`.evidence.deep_gap` calls deep and rare, the piece aligned at its phase lag: a burst can
    stretch a piece past any shape floor), and no fallback for small pieces; footprints under
    ``LOOSE_COSINE``, or a stretched shape without that deep gap, join on that evidence whatever
    the shape, from a piece not too small to be caught beside its unit
    (:meth:`.pieces.PieceRules.wide_piece`). No rule
    joins a unit's echo, fits to its waveform tail (:meth:`.pieces.PieceRules.echo`). A dense unit with at most
    ``SLIVER_FRACTION`` of another's spikes, no larger, whose shape is the other's on another
    phase (``SLIVER_SIMILARITY``; :func:`.templates.sliver_of`), joins it with footprints agreeing
    to ``compact_cosine``.
    Wherever a piece is judged, ``burst_lags`` (lo, hi samples; None for none) let the burst speak
    instead: a piece no larger than ``max_piece_size`` of its unit, shaped alike to
    ``LOOSE_SIMILARITY``, whose spikes come late in the unit's bursts at those lags
    (:func:`.bursts.late_in_bursts`), joins it; tested again against the whole group. ``lo`` must
    pass the lags where a unit's echoes and residues sit (its template window). A piece that no
    other rule joined may still join on the burst's timing, on any probe, with footprints agreeing
    to ``compact_cosine`` and its shape alike at up to ``phase_lag``; on a dense probe, one with at
    most ``QUIET_FRACTION`` of the unit's spikes may join on a refractory period holding no pair;
    on a compact one, no larger than ``max_piece_size`` of its unit and its footprint agreeing to
    ``min_cosine``, whatever its shape, when no pair lies where ``NARROW_EXPECTED`` or more are
    expected once aligned at its phase lag. On a long probe, a piece with at most ``QUIET_FRACTION``
    of a unit's spikes and no larger, shaped alike to ``min_similarity``, whose trains are too short
    for any count, joins the unit it is most like unless the trains show two neurons
    (:meth:`.pieces.PieceRules.scarce_pair`; the rules themselves: :class:`.pieces.PieceRules`).
    A piece joins no unit while the trains leave it a rarer gap beside a unit of another group
    (:func:`.evidence.rarer_gap`; a much larger neighbour masks its spikes near its own).
    """
    k = dense.shape[0]
    if k == 0:
        return []
    ok = np.zeros((k, k), dtype=bool)
    # alike as one neuron on two phases, the trains too short to say but holding no pair: such a
    # pair joins nothing, and keeps nothing apart in a group (complete link)
    compatible = np.zeros((k, k), dtype=bool)
    lag = np.zeros((k, k), dtype=np.int64)
    pairs = []
    ptp = np.ptp(templates_uv, axis=1)  # (k, C)
    tr = Trains([] if times is None else times, refractory, duration, double_fit, min_expected, max_ratio, burst_lags)
    rules = PieceRules(
        dense=dense,
        ptp=ptp,
        times=times,
        independent=independent,
        trains=tr,
        max_lag=max_lag,
        phase_lag=phase_lag,
        min_cosine=min_cosine,
        min_similarity=min_similarity,
        min_channels=min_channels,
        compact_cosine=compact_cosine,
        compact_similarity=compact_similarity,
        loose_footprint_similarity=loose_footprint_similarity,
        max_piece_size=max_piece_size,
        trough_lags=trough_lags,
    )
    near = rules.near
    judged = rules.judged

    for i in range(k):
        for j in np.flatnonzero(near[i] & near[:, i]):
            if j <= i:
                continue
            cos, n_ch = footprint_cosine(ptp[i], ptp[j])
            if n_ch < min_channels:
                if not judged:
                    continue
                if n_ch < COMPACT_REACH * ptp.shape[1]:
                    # a burst blurs a piece's narrow footprint below a dense one's 0.99; the
                    # narrow evidence (a near-empty banded period on ample pairs) judges it then
                    if cos >= LOOSE_COSINE:
                        rules.piece_pair(i, j, cos, narrow=True)
                    continue
                n_attached = len(rules.attach)
                if cos >= compact_cosine:
                    rules.piece_pair(i, j, cos)
                # a pair best aligned a few samples apart is one neuron on two of its phases, not
                # a smaller piece: on a compact probe too, the spike trains can say it
                if len(rules.attach) > n_attached or cos < min_cosine or phase_lag <= max_lag:
                    continue
                s, shift = lagged_similarity(dense[i], dense[j], max_lag=phase_lag)
                if abs(shift) <= max_lag or s < min_similarity:
                    continue
                if not tr.one_train(i, j, tr.gap(i, j, shift)) and not rules.strict_pair(cos, s, i, j):
                    continue
            else:
                if cos < min_cosine:
                    if judged and cos >= compact_cosine:
                        rules.piece_pair(i, j, cos, narrow=True)
                    sliver = None
                    if judged and cos >= compact_cosine:
                        n = len(times[i]), len(times[j])
                        sliver = sliver_of(dense[i], dense[j], *n, max_lag=max_lag, phase_lag=phase_lag)
                    if sliver is None:
                        continue
                    s, shift = sliver
                else:
                    s, shift = lagged_similarity(dense[i], dense[j], max_lag=max_lag)
                if s < min_similarity and phase_lag > max_lag and times is not None:
                    s, shift = lagged_similarity(dense[i], dense[j], max_lag=phase_lag)
                    if s >= min_similarity:
                        gap = tr.gap(i, j, shift)  # once for the three tests of the trains
                        if not (tr.one_train(i, j, gap) or rules.two_phases(cos, s, i, j, gap)):
                            if tr.unproven(gap):
                                compatible[i, j] = compatible[j, i] = True
                                lag[i, j], lag[j, i] = shift, -shift
                            continue
                if s < min_similarity:
                    if judged:
                        rules.piece_pair(i, j, cos, narrow=True)
                    continue
            twice = 0.5 if abs(shift) <= max_lag else PHASE_TWICE_FRACTION
            if judged and mostly_fitted_twice(times[i], times[j] - shift, window=refractory // 2, fraction=twice):
                log.info("units %d and %d: footprints agree, but one is mostly the other's spikes fitted twice", i, j)
                continue
            one_size = max(ptp[i].max(), ptp[j].max()) < min_size_ratio * min(ptp[i].max(), ptp[j].max())
            if rules.veto(i, j, shift, one_size):
                log.info("units %d and %d: footprints agree, but they fire independently: kept apart", i, j)
                continue
            ok[i, j] = ok[j, i] = True
            lag[i, j], lag[j, i] = shift, -shift
            pairs.append((abs(shift) <= max_lag, cos, i, j))
    rules.left_apart(ok)
    group = list(range(k))
    members = {i: [i] for i in range(k)}
    via = {}  # piece -> (the unit it joined, its lag onto that unit)
    # pairs aligned within max_lag first: a piece on another phase must not keep a unit's own
    # pieces from its group (complete link)
    # two slivers of one group (each at most ABSORB_FRACTION of its largest unit's spikes) need
    # not agree with each other, only with its larger units: templates of a few dozen spikes are
    # mostly noise (mearec_sqmea seed 2: pieces of 25 and 30 spikes of a 1201-spike unit, each
    # alike with it to 0.90, to each other 0.76)
    for _near, _c, i, j in sorted(pairs, reverse=True):
        gi, gj = group[i], group[j]
        if gi == gj:
            continue
        floor = ABSORB_FRACTION * max(sizes[t] for t in members[gi] + members[gj])
        if not all(
            ok[a, b] or compatible[a, b] or max(sizes[a], sizes[b]) <= floor for a in members[gi] for b in members[gj]
        ):
            continue
        for b in members[gj]:
            group[b] = gi
        members[gi] += members.pop(gj)
    for _r, piece, big, shift in sorted(rules.attach):
        gp, gb = group[piece], group[big]
        # a piece joins once; a unit that took pieces, or is one, takes no other role. But a piece
        # that took only slivers of its own (linked to it, each at most ABSORB_FRACTION of its
        # spikes) is still a piece, and brings them (mearec_sqmea30 seed 2: a bursting neuron's
        # 843-spike piece had taken 82 spikes of itself first, and stayed a false unit)
        slivers = [t for t in members[gp] if t != piece]
        if gp == gb or big in via or piece in via or not all(_sliver_of(t, piece, ok, sizes) for t in slivers):
            continue
        # a piece whose trains leave a rarer gap beside a unit of another group joins neither
        rivals = [
            c
            for c in range(k)
            if group[c] not in (gb, gp)
            and rules.size_uv[c] > rules.size_uv[piece]
            and footprint_cosine(ptp[piece], ptp[c])[0] >= compact_cosine
        ]
        own = tr.outer(times[big], times[piece])
        counts = [(tr.outer(times[c], times[piece]), tr.outer(times[c], times[big])) for c in rivals]
        rival = rarer_gap(own, counts, min_expected=tr.min_expected)
        if rival is not None:
            msg = "unit %d: a piece of unit %d, or of unit %d whose trains leave a rarer gap: left apart"
            log.info(msg, piece, big, rivals[rival])
            continue
        if not rules.rejoins(piece, members[gb], shift):
            continue
        for t in members[gp]:
            group[t] = gb
        members[gb] += members.pop(gp)
        via[piece] = (big, shift)
        via.update({t: (piece, int(lag[piece, t])) for t in slivers})
    out = []
    for g in members.values():
        rep = max((t for t in g if t not in via), key=lambda t: sizes[t])
        offset = {t: 0 if t == rep else -int(lag[rep, t]) for t in g if t not in via}
        while len(offset) < len(g):  # a piece aligns on the unit it joined, its slivers on it
            ready = [t for t in g if t not in offset and via[t][0] in offset]
            if not ready:
                raise RuntimeError(f"footprint merges: pieces {sorted(set(g) - set(offset))} align on no unit")
            for t in ready:
                offset[t] = offset[via[t][0]] - int(via[t][1])
        out.append([(t, offset[t]) for t in g])
        if len(g) > 1:
            log.info("units %s: one neuron at several sizes (footprints agree): merged", sorted(g))
    return out
