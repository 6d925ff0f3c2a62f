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

from .evidence import ABSORB_FRACTION, NARROW_EXPECTED, NARROW_RATIO, Trains, ample_gap, deep_gap
from .refractory import mostly_fitted_twice
from .templates import SIGNAL_FRACTION, footprint_cosine, lagged_similarity, sliver_of
from .two_sizes import trains_say

log = logging.getLogger(__name__)

# a probe so compact that a footprint spans this much of it (a tetrode): every neuron there has
# about the same footprint, and the spike trains decide
COMPACT_REACH = 0.75
# shapes alike only at a lag beyond max_lag (one spike aligned on another of its phases) need a
# refractory gap too: distinct neighbours on a generated probe reached a footprint cosine of 0.994
# and shapes of 0.98 at 0.28 ms; a piece too small for the test joins on ABSORB_FRACTION
# on ample evidence of one neuron (a near-empty refractory period once the double fits' lags are
# left out) a piece may look less like its unit: mearec_nn32's bursting neurons left pieces at a
# third of their size with footprints agreeing to 0.988 and shapes to 0.64-0.79
LOOSE_COSINE, LOOSE_SIMILARITY = 0.98, 0.6
# on a compact probe, footprints this alike are one neuron unless the trains show two: a neuron's
# pieces on MEArec tetrodes agreed to 0.9973-0.9999, distinct neurons to at most 0.9931; too few
# spikes for the refractory test to show one neuron is then no reason to keep them apart
STRICT_COSINE = 0.995
# at one size on a compact probe a neuron's two units (a 408-spike unit beside its 4616-spike one on
# mearec_tetrode seed 5: footprints 0.9997, shapes 0.85) had 0-0.11 of chance's pairs in the
# refractory period's outer half where 4.4-12.5 were expected; distinct neurons with footprints
# agreeing to 0.995-0.998 had 0.42-1.6 of chance (17 tetrode recordings, 2026-12-03)
ONE_SIZE_EXPECTED = 4.0
# one neuron on two of its phases on a dense probe, its trains too short for the refractory test
# (mearec_np2: a biphasic neuron's units of 841 and 451 spikes, aligned on its peak and on its
# trough 9 samples apart, footprints 0.998, shapes 0.96; no pair where chance gave 2.5): no
# pair at all where chance gives PHASE_EXPECTED, with shapes alike to PHASE_SIMILARITY. Over 42
# benchmark recordings no two distinct neurons were alike that closely at a lag
PHASE_SIMILARITY, PHASE_EXPECTED = 0.95, 2.0
# a neuron on another of its phases has spikes of its own: its two units' spikes meet within the
# refractory period's inner half only as double fits. A unit alike to another only at a phase lag
# with this share of its spikes there is the other's spikes fitted twice, beside some other
# neuron's (static64 seed 3: 929 of 1885, 8-11 samples after a 309 uV neuron's; at one
# alignment, more than half of a unit's spikes fitted twice make it residue, as before)
PHASE_TWICE_FRACTION = 0.25
# a neuron's rarer spikes (MEArec cells: 8-15 % of their spikes at 0.25-0.6 of the usual size; or a
# few dozen fitted on another phase) come out as a piece too few for the refractory test, its
# footprint agreeing to only 0.96-0.99. On 48 benchmark recordings (2026-12-03) such pieces had at
# most 0.16 of their unit's spikes; every distinct neighbour, no larger, alike to 0.95 fired at
# least 0.28 as often. A piece of 0.23 (224 spikes beside 987, mearec_np2 seed 0) came out once
# each unit's template was drawn from its own spikes (2026-12-04); at 0.25 it joins, and nothing
# else changed on 51 recordings. So a piece with at most QUIET_FRACTION of a unit's spikes joins
# it, alike to ``compact_cosine`` and ``LOOSE_SIMILARITY``, with not one pair in the refractory
# period beyond the double fits once aligned (two neurons firing on their own leave it empty e^-E
# of the time)
QUIET_FRACTION = 0.25


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
    through a piece that looks like both.

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
    A narrow footprint on a long probe agreeing to ``min_cosine``, a dense one agreeing to only
    ``LOOSE_COSINE``, or a dense one whose shape agrees to less than ``min_similarity``, joins as
    a piece does on a compact one, but only with the stricter evidence of ``NARROW_EXPECTED`` and
    ``NARROW_RATIO`` (counted by :func:`banded_refractory_ratio`), shapes alike to
    ``LOOSE_SIMILARITY`` (or, a burst having stretched a dense piece past that, footprints agreeing
    to ``min_cosine`` and a gap :func:`.evidence.deep_gap` calls deep and rare, the piece aligned at
    its phase lag), and no fallback for small pieces. A dense unit with at most
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
    most ``QUIET_FRACTION`` of the unit's spikes may join on a refractory period holding no pair.
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
    peak = ptp.argmax(axis=1)
    # a footprint that agrees has signal on the other unit's largest channel at least
    near = ptp[:, peak].T >= SIGNAL_FRACTION * ptp.max(axis=1)[None, :]  # near[i, j]: j seen on i's peak
    size_uv = ptp.max(axis=1)
    attach = []  # (ratio, piece, unit, lag of the piece onto the unit)
    strict = set()  # pieces attached on their footprint, the trains too short to say
    ample = set()  # pieces attached on ample refractory evidence, their footprint or shape looser
    compact_ample = set()  # those of them on a compact probe
    stretched = set()  # dense pieces a burst stretched past their unit's shape, on a deep gap
    bursts = set()  # pieces attached as the late spikes of their unit's bursts
    quiet = set()  # rare pieces, no larger than their unit, attached on an empty refractory period
    alike = set()  # units of one size attached on a near-empty refractory period
    faint = set()  # compact pieces few and small, too few for the trains to say, shaped as their unit

    tr = Trains([] if times is None else times, refractory, duration, double_fit, min_expected, max_ratio, burst_lags)

    def _veto(i: int, j: int, shift: int, one_size: bool) -> bool:
        """Footprints agree, but the trains show two neurons firing independently: at one size,
        or at two when they say it plainly or show no sign of one neuron (no refractory gap in
        the bands, no burst's timing, no trough just beyond the period). Without the trains
        there is nothing to judge, and the footprint decides."""
        if one_size and times is not None and refractory > 1:
            # neighbours whose collisions the matching thins: crowded64 seed 1's neurons 49 and
            # 113 (footprints 0.993, shapes 0.87) kept 0.39 of chance's pairs (25.7 expected),
            # too many for one neuron, too few for the independence test. One neuron's two units
            # leave a near-empty period; on less evidence a stray pair weighs too much
            # (mearec_nn32 seed 0: a bursting neuron's two units, 1 pair where 4.5 were expected)
            ratio, expected = tr.gap(i, j, shift)
            if expected >= NARROW_EXPECTED and ratio >= NARROW_RATIO:
                return True
        if independent is None or not independent(i, j):
            return False
        if one_size:
            return True
        if times is None or refractory <= 1:
            return False
        inner = refractory // 2 if double_fit is None else double_fit
        kw = dict(max_ratio=max_ratio, min_expected=min_expected, trough_lags=trough_lags)
        said = trains_say(times[i], times[j] - shift, refractory=refractory, inner=inner, duration=duration, **kw)
        if said != "nothing":
            return said == "two"
        big, piece = (i, j) if size_uv[i] >= size_uv[j] else (j, i)
        return not tr.bursting(times[big], times[piece])

    def _absorbed(cos: float, s: float, piece: np.ndarray, whole: np.ndarray) -> bool:
        """Too few spikes for the refractory test, too few to matter, and alike as one neuron."""
        return cos >= min_cosine and s >= min_similarity and len(piece) <= ABSORB_FRACTION * len(whole)

    def _piece_pair(i: int, j: int, cos: float, *, narrow: bool = False) -> None:
        """The smaller unit as a piece of the larger, judged by the gap the trains leave in the
        refractory period's outer half. A narrow footprint on a long probe, or a dense one agreeing
        to only ``LOOSE_COSINE``, needs more: neighbours can agree there, and the collisions the
        matching loses thin their correlogram, so only a near-empty period on ample evidence
        (NARROW_EXPECTED pairs, under NARROW_RATIO of them, the double fits' lags left out) shows
        one neuron, with shapes alike to ``LOOSE_SIMILARITY`` and no fallback for small pieces. A
        compact piece whose shape agrees less than a piece's must is judged on that same evidence,
        with no floor on the shape."""
        big, piece = (i, j) if size_uv[i] >= size_uv[j] else (j, i)
        s, shift = lagged_similarity(dense[big], dense[piece], max_lag=max_lag)
        small = size_uv[piece] <= max_piece_size * size_uv[big]
        if small and s >= LOOSE_SIMILARITY and tr.bursting(times[big], times[piece]):
            attach.append((0.0, piece, big, shift))
            bursts.add(piece)
            return
        # a piece scales on every channel together; only a small one's footprint, blurred by the
        # noise, agrees less, and then its shape must agree closely (distinct neurons on tetrodes
        # reached a footprint cosine of 0.97, and 0.95 with shapes of 0.76) ...
        unlike = s < compact_similarity or (cos < min_cosine and s < loose_footprint_similarity)
        if narrow or unlike:
            # ... unless the evidence is ample: a burst changed a tetrode neuron's shape to 0.40 of
            # its unit's, and distinct tetrode neurons kept at least 0.47 of chance's pairs
            if size_uv[piece] > max_piece_size * size_uv[big]:
                return
            ratio, expected = tr.banded(times[big], times[piece])
            if narrow and s < LOOSE_SIMILARITY:
                # a burst stretched the piece past its unit's shape (it aligns on another phase):
                # a footprint as close as a dense one's, and a gap deep and rare
                if cos >= min_cosine and deep_gap(ratio, expected):
                    shift = lagged_similarity(dense[big], dense[piece], max_lag=max(max_lag, phase_lag))[1]
                    attach.append((ratio, piece, big, shift))
                    stretched.add(piece)
                return
            _ample(piece, big, shift, cos, ratio, expected, narrow=narrow)
            return
        ratio, expected = tr.outer(times[big], times[piece])
        if expected >= min_expected:
            if ratio < max_ratio and size_uv[piece] <= max_piece_size * size_uv[big]:
                attach.append((ratio, piece, big, shift))
            elif cos >= STRICT_COSINE and ratio < NARROW_RATIO and expected >= ONE_SIZE_EXPECTED:
                # one size: only a near-empty refractory period tells one neuron from two
                attach.append((ratio, piece, big, shift))
                alike.add(piece)
            elif small and _strict(cos, s, big, piece):
                attach.append((1.0, piece, big, shift))
                strict.add(piece)
            elif small:
                # pairs crowding at one lag of the outer half are its changed spikes fitted twice
                # (mearec_tetrode_cells1 seed 0: 23 pairs at 1.0-1.2 ms, none of 29 expected elsewhere)
                _ample(piece, big, shift, cos, *tr.banded(times[big], times[piece]), narrow=False)
        elif _absorbed(cos, s, times[piece], times[big]):
            attach.append((1.0, piece, big, shift))  # after every piece the trains vouch for
        elif _strict(cos, s, big, piece):
            attach.append((1.0, piece, big, shift))
            strict.add(piece)
        # a neuron's shrunken spikes (MEArec tetrodes: 178-273 at 0.37-0.52 of units of 1098-1517,
        # footprints 0.993-0.998, shapes 0.81-0.86), too few to show an empty period; no distinct
        # tetrode neuron alike to 0.8 had under 0.35 of a larger one's spikes (37 recordings)
        elif small and len(times[piece]) <= QUIET_FRACTION * len(times[big]) and s >= min_similarity:
            if independent is not None and _likeliest(piece, big, s) and not independent(big, piece):
                attach.append((2.0 - s, piece, big, shift))  # after the rest, the likeliest unit first
                faint.add(piece)

    def _likeliest(piece: int, big: int, s: float) -> bool:
        """No other unit larger than the piece has a shape more like the piece's than ``big``."""
        others = (u for u in range(k) if u not in (piece, big) and size_uv[u] > size_uv[piece])
        return all(lagged_similarity(dense[u], dense[piece], max_lag=max_lag)[0] <= s for u in others)

    def _ample(piece: int, big: int, shift: int, cos: float, ratio: float, expected: float, *, narrow: bool) -> None:
        """Attach the piece on ample evidence (a rare gap, for footprints alike to ``min_cosine``)."""
        compact = not narrow and cos >= min_cosine
        if ample_gap(ratio, expected, compact=compact):
            attach.append((ratio, piece, big, shift))
            ample.add(piece)
            if compact:
                compact_ample.add(piece)

    def _strict(cos: float, s: float, i: int, j: int) -> bool:
        """Footprints alike as only one neuron's are on a compact probe, shapes alike as a piece's
        to its unit, and spike trains that do not show two neurons firing independently."""
        if cos < STRICT_COSINE or s < loose_footprint_similarity or independent is None:
            return False
        return not independent(i, j)

    def _two_phases(cos: float, s: float, i: int, j: int, gap: tuple[float, float]) -> bool:
        """Footprints and shapes (at a phase lag) alike as only one neuron's are, not one pair of
        spikes in the refractory period beyond ``double_fit`` where chance gives ``PHASE_EXPECTED``,
        and trains that do not show two neurons firing on their own."""
        if cos < STRICT_COSINE or s < PHASE_SIMILARITY:
            return False
        ratio, expected = gap
        return ratio == 0 and expected >= PHASE_EXPECTED and (independent is None or not independent(i, j))

    def _pieces_left_apart() -> None:
        """Pieces the rules above left apart, judged on their trains, footprints agreeing to
        ``compact_cosine``. First, on any probe, a burst's late spikes stretched so far that they
        align on another phase: shapes alike to ``LOOSE_SIMILARITY`` within ``phase_lag`` and the
        burst's timing (mearec_nn32_bursts seed 1: 65 spikes at 0.38 of their unit's size, aligned
        26 samples early, footprint 0.976, shape 0.66; 80 % of them 3.5-50 ms after one of the
        unit's, z = 13). Then, where footprints span ``min_channels`` (narrower on a long probe: a
        sliver alike as dense units must be), a neuron's rarer spikes (``QUIET_FRACTION``): shapes
        alike within ``phase_lag``, an empty refractory period once aligned."""
        if times is None:
            return
        attached = {piece for _r, piece, _b, _s in attach}
        for rare in (False, True):
            if (burst_lags is None or phase_lag <= max_lag) if not rare else refractory <= 1:
                continue
            for i in range(k):
                for j in np.flatnonzero(near[i] & near[:, i]):
                    if j <= i or ok[i, j]:
                        continue
                    if rare:  # the piece has fewer spikes and is no larger
                        big, piece = (i, j) if len(times[i]) >= len(times[j]) else (j, i)
                        if len(times[piece]) > QUIET_FRACTION * len(times[big]) or size_uv[piece] > size_uv[big]:
                            continue
                    else:
                        big, piece = (i, j) if size_uv[i] >= size_uv[j] else (j, i)
                        if size_uv[piece] > max_piece_size * size_uv[big]:
                            continue
                    if piece in attached:
                        continue
                    cos, n_ch = footprint_cosine(ptp[i], ptp[j])
                    narrow = rare and n_ch < min_channels  # on a long probe: only a sliver alike as dense units
                    if cos < compact_cosine or (narrow and n_ch >= COMPACT_REACH * ptp.shape[1]):
                        continue
                    s, shift = lagged_similarity(dense[big], dense[piece], max_lag=max(max_lag, phase_lag))
                    if s < LOOSE_SIMILARITY or (narrow and not _absorbed(cos, s, times[piece], times[big])):
                        continue
                    tb, tp = times[big], times[piece]
                    if tr.empty_period(tb, tp - shift) if rare else tr.bursting(tb, tp):
                        attach.append((1.0 if rare else 0.0, piece, big, shift))
                        (quiet if rare else bursts).add(piece)
                        attached.add(piece)

    for i in range(k):
        for j in np.flatnonzero(near[i] & near[:, i]):
            if j <= i:
                continue
            cos, n_ch = footprint_cosine(ptp[i], ptp[j])
            if n_ch < min_channels:
                if times is None or refractory <= 1:
                    continue
                if n_ch < COMPACT_REACH * ptp.shape[1]:
                    if cos >= min_cosine:
                        _piece_pair(i, j, cos, narrow=True)
                    continue
                n_attached = len(attach)
                if cos >= compact_cosine:
                    _piece_pair(i, j, cos)
                # a pair best aligned a few samples apart is one neuron on two of its phases, not
                # a smaller piece: on a compact probe too, the spike trains can say it
                if len(attach) > n_attached or cos < min_cosine or phase_lag <= max_lag:
                    continue
                s, shift = lagged_similarity(dense[i], dense[j], max_lag=phase_lag)
                if abs(shift) <= max_lag or s < min_similarity:
                    continue
                if not tr.one_train(i, j, tr.gap(i, j, shift)) and not _strict(cos, s, i, j):
                    continue
            else:
                ample_evidence = times is not None and refractory > 1
                if cos < min_cosine:
                    if ample_evidence and cos >= LOOSE_COSINE:
                        _piece_pair(i, j, cos, narrow=True)
                    sliver = None
                    if ample_evidence and cos >= compact_cosine:
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
                        if not (tr.one_train(i, j, gap) or _two_phases(cos, s, i, j, gap)):
                            if tr.unproven(gap):
                                compatible[i, j] = compatible[j, i] = True
                                lag[i, j], lag[j, i] = shift, -shift
                            continue
                if s < min_similarity:
                    if ample_evidence:
                        _piece_pair(i, j, cos, narrow=True)
                    continue
            twice = 0.5 if abs(shift) <= max_lag else PHASE_TWICE_FRACTION
            if (
                times is not None
                and refractory > 1
                and mostly_fitted_twice(times[i], times[j] - shift, window=refractory // 2, fraction=twice)
            ):
                log.info("units %d and %d: footprints agree, but one is mostly the other's spikes fitted twice", i, j)
                continue
            one_size = max(ptp[i].max(), ptp[j].max()) < min_size_ratio * min(ptp[i].max(), ptp[j].max())
            if _veto(i, j, shift, one_size):
                log.info("units %d and %d: footprints agree, but they fire independently: kept apart", i, j)
                continue
            ok[i, j] = ok[j, i] = True
            lag[i, j], lag[j, i] = shift, -shift
            pairs.append((abs(shift) <= max_lag, cos, i, j))
    _pieces_left_apart()
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
    for _r, piece, big, shift in sorted(attach):
        gp, gb = group[piece], group[big]
        if gp == gb or len(members[gp]) > 1 or big in via:
            continue  # a piece joins once; a unit that took pieces, or is one, takes no other role
        whole = np.concatenate([times[t] for t in members[gb]])
        if piece in strict:
            if any(independent(m, piece) for m in members[gb]):
                continue
        elif piece in bursts:
            if not tr.bursting(whole, times[piece]):
                continue
        elif piece in stretched:
            if not deep_gap(*tr.banded(whole, times[piece])):
                continue
        elif piece in ample:
            if not ample_gap(*tr.banded(whole, times[piece]), compact=piece in compact_ample):
                continue
        elif piece in quiet:
            if len(times[piece]) > QUIET_FRACTION * len(whole) or not tr.empty_period(whole, times[piece] - shift):
                continue
        else:  # the plain count of the outer half, which a piece of one size must pass nearly empty
            ratio, expected = tr.outer(whole, times[piece])
            share = QUIET_FRACTION if piece in faint else ABSORB_FRACTION  # when pairs are too few
            if piece in alike:
                if expected < ONE_SIZE_EXPECTED or ratio >= NARROW_RATIO:
                    continue
            elif ratio >= max_ratio if expected >= min_expected else len(times[piece]) > share * len(whole):
                continue
        group[piece] = gb
        members[gb] += members.pop(gp)
        via[piece] = (big, shift)
    out = []
    for g in members.values():
        rep = max((t for t in g if t not in via), key=lambda t: sizes[t])
        offset = {t: 0 if t == rep else -int(lag[rep, t]) for t in g if t not in via}
        for t in g:
            if t not in offset:  # a piece aligns on the unit it joined
                big, shift = via[t]
                offset[t] = offset[big] - int(shift)
        out.append([(t, offset[t]) for t in g])
        if len(g) > 1:
            log.info("units %s: one neuron at several sizes (footprints agree): merged", sorted(g))
    return out
