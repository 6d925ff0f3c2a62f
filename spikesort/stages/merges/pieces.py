"""The piece rules of the footprint merges: is a smaller unit a piece of a larger one?

:func:`.footprint.footprint_merges` finds the unit pairs whose footprints agree and groups them;
which rule judges a pair, and on what evidence, is here. :class:`PieceRules` holds one merge
call's units and limits, and collects the pieces it attaches (each with the rule that attached
it, so that the piece is judged again, by that rule, against the whole group it joins).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .evidence import (
    ABSORB_FRACTION,
    NARROW_EXPECTED,
    NARROW_RATIO,
    Trains,
    ample_gap,
    centred_gap,
    near_empty_on_plenty,
    strong_gap,
)
from .templates import footprint_cosine, lagged_dots, lagged_similarity, seen_on_peaks
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
# on a dense probe, footprints this alike are one neuron's: two neurons agreed to 0.994 at most on
# generated probes, and to 0.986 where 10 or more pairs were expected in the piece judgements of
# 21 dense MEArec recordings (2026-12-05), where a bursting neuron's piece of shrunken spikes
# agreed to 1.000 (mearec_nn32_long seed 1: 2009 spikes at 0.63 of its unit's size, shapes 0.90).
# Such a piece joins on a gap under DENSE_ALIKE_RATIO of chance with NARROW_EXPECTED pairs or
# more: its stray fits beside the unit's spikes kept 0.32 of 28 (neighbours on a dense probe keep
# 0.25 and more, but none this alike)
DENSE_ALIKE_COSINE, DENSE_ALIKE_RATIO = 0.999, 0.4
# a dense piece whose footprint agrees to only compact_cosine (or whose shape a burst stretched
# past LOOSE_SIMILARITY) joins on a near-empty refractory period with NARROW_EXPECTED pairs or
# more: of 40 dense recordings' unit pairs that alike (2026-12-05), pairs of two neurons kept 0.49
# of chance's pairs or more, a neuron's pieces 0-0.17 (mearec_nn32_cells2 seed 2: one neuron's
# three units, footprints 0.968-0.989, shapes 0.36-0.65, none of 12-17 expected). But a unit far
# smaller than its neighbour loses to the matching every spike that comes near the neighbour's,
# and its period is empty whatever the truth (shanks4 seed 1: a neuron at 0.07 of a larger one's
# size, footprints 0.957, none of 10.6 expected); burst pieces kept 0.29-0.58 of their unit's size
WIDE_PIECE_SIZE = 0.2
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


@dataclass
class PieceRules:
    """One footprint-merge call's units (whitened ``dense`` templates, ``ptp`` footprints in µV,
    spike ``times`` or None, the ``independent(i, j)`` test or None, their ``trains``) and its
    limits (see :func:`.footprint.footprint_merges`). ``attach`` collects (order, piece, unit,
    lag of the piece onto the unit); the sets say which rule attached each piece."""

    dense: np.ndarray
    ptp: np.ndarray
    times: list[np.ndarray] | None
    independent: object
    trains: Trains
    max_lag: int
    phase_lag: int
    min_cosine: float
    min_similarity: float
    min_channels: int
    compact_cosine: float
    compact_similarity: float
    loose_footprint_similarity: float
    max_piece_size: float
    trough_lags: tuple[int, int] | None
    attach: list = field(default_factory=list)
    strict: set = field(default_factory=set)  # on their footprint, the trains too short to say
    ample: set = field(default_factory=set)  # on ample refractory evidence, footprint or shape looser
    compact_ample: set = field(default_factory=set)  # those of them on a compact probe
    stretched: set = field(default_factory=set)  # on a dense footprint and a deep, rare gap, stretched or not
    bursts: set = field(default_factory=set)  # the late spikes of their unit's bursts
    quiet: set = field(default_factory=set)  # rare pieces, no larger than their unit, on an empty period
    alike: set = field(default_factory=set)  # units of one size on a near-empty refractory period
    faint: set = field(default_factory=set)  # compact pieces few and small, shaped as their unit
    phased: set = field(default_factory=set)  # compact rare pieces on another phase, on ample evidence
    scarce: set = field(default_factory=set)  # rare pieces shaped as their unit, the trains too short
    twins: set = field(default_factory=set)  # dense pieces whose footprint is their unit's, on a thinned gap
    centred: set = field(default_factory=set)  # compact stretched pieces, on a deep gap off centre
    off_centre: list = field(default_factory=list)  # their candidates, (ratio, piece, unit, lag)

    def __post_init__(self):
        self.k = self.dense.shape[0]
        self.size_uv = self.ptp.max(axis=1)
        # a footprint that agrees has signal on the other unit's largest channel at least
        self.near = seen_on_peaks(self.ptp)  # near[i, j]: j seen on i's peak

    @property
    def reach(self) -> int:
        """How far from the shapes' lag a stretched piece's gap is sought: a quarter of the period."""
        return self.trains.refractory // 4

    @property
    def judged(self) -> bool:
        """Whether there are spike trains to judge (times given, a refractory period)."""
        return self.times is not None and self.trains.refractory > 1

    def veto(self, i: int, j: int, shift: int, one_size: bool) -> bool:
        """Footprints agree, but the trains show two neurons firing independently: at one size,
        or at two when they say it plainly or show no sign of one neuron (no refractory gap in
        the bands, no burst's timing, no trough just beyond the period). Without the trains
        there is nothing to judge, and the footprint decides."""
        tr, times = self.trains, self.times
        if one_size and self.judged:
            # neighbours whose collisions the matching thins: crowded64 seed 1's neurons 49 and
            # 113 (footprints 0.993, shapes 0.87) kept 0.39 of chance's pairs (25.7 expected),
            # too many for one neuron, too few for the independence test. One neuron's two units
            # leave a near-empty period; on less evidence a stray pair weighs too much
            # (mearec_nn32 seed 0: a bursting neuron's two units, 1 pair where 4.5 were expected)
            ratio, expected = tr.gap(i, j, shift)
            if expected >= NARROW_EXPECTED and ratio >= NARROW_RATIO:
                return True
        if self.independent is None or not self.independent(i, j):
            return False
        if one_size:
            return True
        if not self.judged:
            return False
        inner = tr.refractory // 2 if tr.double_fit is None else tr.double_fit
        kw = dict(max_ratio=tr.max_ratio, min_expected=tr.min_expected, trough_lags=self.trough_lags)
        said = trains_say(times[i], times[j] - shift, refractory=tr.refractory, inner=inner, duration=tr.duration, **kw)
        if said != "nothing":
            return said == "two"
        big, piece = (i, j) if self.size_uv[i] >= self.size_uv[j] else (j, i)
        return not tr.bursting(times[big], times[piece])

    def absorbed(self, cos: float, s: float, piece: np.ndarray, whole: np.ndarray) -> bool:
        """Too few spikes for the refractory test, too few to matter, and alike as one neuron."""
        return cos >= self.min_cosine and s >= self.min_similarity and len(piece) <= ABSORB_FRACTION * len(whole)

    def piece_pair(self, i: int, j: int, cos: float, *, narrow: bool = False) -> None:
        """The smaller unit as a piece of the larger, judged by the gap the trains leave in the
        refractory period's outer half. A narrow footprint on a long probe, or a dense one agreeing
        to only ``compact_cosine``, needs more: neighbours can agree there, and the collisions the
        matching loses thin their correlogram, so only a near-empty period on ample evidence
        (NARROW_EXPECTED pairs, under NARROW_RATIO of them, the double fits' lags left out) shows
        one neuron, with shapes alike to ``LOOSE_SIMILARITY`` and no fallback for small pieces. A
        compact piece whose shape agrees less than a piece's must is judged on that same evidence,
        with no floor on the shape. A unit's echo (:meth:`echo`) joins by none of them."""
        tr, times, size_uv, dense = self.trains, self.times, self.size_uv, self.dense
        big, piece = (i, j) if size_uv[i] >= size_uv[j] else (j, i)
        if self.echo(piece, big):
            return
        s, shift = lagged_similarity(dense[big], dense[piece], max_lag=self.max_lag)
        small = size_uv[piece] <= self.max_piece_size * size_uv[big]
        if small and s >= LOOSE_SIMILARITY and tr.bursting(times[big], times[piece]):
            self.attach.append((0.0, piece, big, shift))
            self.bursts.add(piece)
            return
        # a piece scales on every channel together; only a small one's footprint, blurred by the
        # noise, agrees less, and then its shape must agree closely (distinct neurons on tetrodes
        # reached a footprint cosine of 0.97, and 0.95 with shapes of 0.76) ...
        unlike = s < self.compact_similarity or (cos < self.min_cosine and s < self.loose_footprint_similarity)
        if narrow or unlike:
            # ... unless the evidence is ample: a burst changed a tetrode neuron's shape to 0.40 of
            # its unit's, and distinct silicon-tetrode neurons kept at least 0.47 of chance's pairs
            if not small:
                return
            ratio, expected = tr.banded(times[big], times[piece])
            lags = max(self.max_lag, self.phase_lag)
            if narrow and cos >= self.min_cosine:
                # a footprint as close as a dense one's, and a gap deep and rare: enough for a piece
                # a burst stretched past its unit's shape (it aligns on another phase), so enough
                # for one more alike (mearec_sqmea30 seed 0: 412 spikes at half their unit's size,
                # footprints 0.9905 over 7 of 25 channels, shapes 0.70, no pair of 8.5 expected)
                phase = lagged_similarity(dense[big], dense[piece], max_lag=lags)[1]
                if tr.stretched(times[big], times[piece], phase, banded=(ratio, expected)):
                    self.attach.append((ratio, piece, big, phase))
                    self.stretched.add(piece)
                    return
            if narrow and cos >= DENSE_ALIKE_COSINE and s >= LOOSE_SIMILARITY:
                if near_empty_on_plenty(ratio, expected, below=DENSE_ALIKE_RATIO):
                    self.attach.append((ratio, piece, big, shift))
                    self.twins.add(piece)
                    return
            if narrow and (cos < LOOSE_COSINE or s < LOOSE_SIMILARITY):
                # footprint or shape looser still (a burst stretched a piece and blurred its
                # footprint): a near-empty period on ample evidence, whatever the shape, from a
                # piece not too small to be caught beside its unit
                if not self.wide_piece(piece, big):
                    return
                if s < LOOSE_SIMILARITY:
                    if self.phase_lag <= self.max_lag:
                        return  # a stretched piece aligns on another phase, which the caller rules out
                    shift = lagged_similarity(dense[big], dense[piece], max_lag=lags)[1]
                self.ample_pair(piece, big, shift, cos, ratio, expected, narrow=True)
                return
            if not narrow and cos >= self.min_cosine and not ample_gap(ratio, expected, compact=True):
                # a compact footprint as close as a dense one's: the gap may sit off centre
                lag = lagged_similarity(dense[big], dense[piece], max_lag=max(self.max_lag, self.phase_lag))[1]
                ratio, expected = tr.centred(times[big], times[piece], lag=lag, reach=self.reach)
                if centred_gap(ratio, expected, searched=2 * self.reach + 1):
                    self.off_centre.append((ratio, piece, big, lag))  # if no other rule joins it
                return
            self.ample_pair(piece, big, shift, cos, ratio, expected, narrow=narrow)
            return
        ratio, expected = tr.outer(times[big], times[piece])
        if expected >= tr.min_expected:
            if ratio < tr.max_ratio and small:
                self.attach.append((ratio, piece, big, shift))
            elif cos >= STRICT_COSINE and ratio < NARROW_RATIO and expected >= ONE_SIZE_EXPECTED:
                # one size: only a near-empty refractory period tells one neuron from two
                self.attach.append((ratio, piece, big, shift))
                self.alike.add(piece)
            elif small and self.strict_pair(cos, s, big, piece):
                self.attach.append((1.0, piece, big, shift))
                self.strict.add(piece)
            elif small:
                # pairs crowding at one lag of the outer half are its changed spikes fitted twice
                # (mearec_tetrode_cells1 seed 0: 23 pairs at 1.0-1.2 ms, none of 29 expected elsewhere);
                # with them left out, too few may be left to count (mearec_tetrode seed 92: 330 of a
                # neuron's spikes at a third of its size, 2.2 pairs expected): a faint piece, below
                banded = tr.banded(times[big], times[piece])
                if banded[1] >= tr.min_expected:
                    self.ample_pair(piece, big, shift, cos, *banded, narrow=False)
                else:
                    self.faint_pair(piece, big, s, shift)
        elif self.absorbed(cos, s, times[piece], times[big]):
            self.attach.append((1.0, piece, big, shift))  # after every piece the trains vouch for
        elif self.strict_pair(cos, s, big, piece):
            self.attach.append((1.0, piece, big, shift))
            self.strict.add(piece)
        # a neuron's shrunken spikes (MEArec tetrodes: 178-273 at 0.37-0.52 of units of 1098-1517,
        # footprints 0.993-0.998, shapes 0.81-0.86), too few to show an empty period; no distinct
        # tetrode neuron alike to 0.8 had under 0.35 of a larger one's spikes (37 recordings)
        elif small:
            self.faint_pair(piece, big, s, shift)

    def faint_pair(self, piece: int, big: int, s: float, shift: int) -> None:
        """Attach a piece too few for the count, with at most ``QUIET_FRACTION`` of its unit's spikes,
        to the unit it is likeliest to be (:meth:`its_likeliest`), after the rest."""
        if len(self.times[piece]) <= QUIET_FRACTION * len(self.times[big]) and self.its_likeliest(piece, big, s):
            self.attach.append((2.0 - s, piece, big, shift))
            self.faint.add(piece)

    def its_likeliest(self, piece: int, big: int, s: float) -> bool:
        """A rare piece too few for the refractory count, shaped as ``big`` (``min_similarity``),
        joins the unit it is most like unless the trains show two neurons firing on their own."""
        if s < self.min_similarity or self.independent is None:
            return False
        return self.likeliest(piece, big, s) and not self.independent(big, piece)

    def no_larger(self, piece: int, big: int) -> bool:
        """The piece is no larger than ``big``: by peak-to-peak, or by its template's projection
        on ``big``'s, which the noise of a few dozen spikes leaves unbiased where it inflates their
        peak-to-peak (mearec_np64_cells1 seed 1: 73 spikes of a 5018-spike neuron, 1.15 of its
        size peak to peak)."""
        if self.size_uv[piece] <= self.size_uv[big]:
            return True
        dots, energy = lagged_dots(self.dense[piece], self.dense[big], max_lag=max(self.max_lag, self.phase_lag))
        best = int(np.argmax(dots))
        return dots[best] <= energy[best]

    def wide_piece(self, piece: int, big: int) -> bool:
        """A piece whose refractory gap can speak for it: at least ``WIDE_PIECE_SIZE`` of its
        unit's size (a smaller one is too easily missed beside its unit's spikes)."""
        return self.size_uv[piece] >= WIDE_PIECE_SIZE * self.size_uv[big]

    def echo(self, piece: int, big: int | np.ndarray) -> bool:
        """The piece is mostly fits to the waveform tail of ``big`` (a unit, or a group's spike
        times; :meth:`.evidence.Trains.echoing`): no spikes of its neuron, whatever gap their
        lag, just past the refractory period, leaves in the count (mearec_tetrode_quiet seed 2:
        1107 fits, 93 % of them 1.2-2.8 ms after one of a neuron's 1458 spikes, joined it on no
        pair where 6.9 were expected)."""
        whole = self.times[big] if np.ndim(big) == 0 else big
        return self.trains.echoing(whole, self.times[piece])

    def likeliest(self, piece: int, big: int, s: float) -> bool:
        """No other unit larger than the piece has a shape more like the piece's than ``big``."""
        others = (u for u in range(self.k) if u not in (piece, big) and self.size_uv[u] > self.size_uv[piece])
        dense = self.dense
        return all(lagged_similarity(dense[u], dense[piece], max_lag=self.max_lag)[0] <= s for u in others)

    def ample_pair(
        self, piece: int, big: int, shift: int, cos: float, ratio: float, expected: float, *, narrow: bool
    ) -> None:
        """Attach the piece on ample evidence (a rare gap, for footprints alike to ``min_cosine``)."""
        compact = not narrow and cos >= self.min_cosine
        if ample_gap(ratio, expected, compact=compact):
            # on a gap only CLOSE_GAP_P allows, after the pieces the trains vouch for more strongly
            # (a weaker piece joined first keeps a stronger one out when the two clash)
            self.attach.append((ratio if strong_gap(ratio, expected) else 1.0, piece, big, shift))
            self.ample.add(piece)
            if compact:
                self.compact_ample.add(piece)

    def strict_pair(self, cos: float, s: float, i: int, j: int) -> bool:
        """Footprints alike as only one neuron's are on a compact probe, shapes alike as a piece's
        to its unit, and spike trains that do not show two neurons firing independently."""
        if cos < STRICT_COSINE or s < self.loose_footprint_similarity or self.independent is None:
            return False
        return not self.independent(i, j)

    def two_phases(self, cos: float, s: float, i: int, j: int, gap: tuple[float, float]) -> bool:
        """Footprints and shapes (at a phase lag) alike as only one neuron's are, not one pair of
        spikes in the refractory period beyond ``double_fit`` where chance gives ``PHASE_EXPECTED``,
        and trains that do not show two neurons firing on their own."""
        if cos < STRICT_COSINE or s < PHASE_SIMILARITY:
            return False
        ratio, expected = gap
        independent = self.independent
        return ratio == 0 and expected >= PHASE_EXPECTED and (independent is None or not independent(i, j))

    def left_apart(self, ok: np.ndarray) -> None:
        """Pieces the rules above left apart (no pair in ``ok`` agreed), judged on their trains,
        footprints agreeing to ``compact_cosine``. First, on any probe, a burst's late spikes
        stretched so far that they align on another phase: shapes alike to ``LOOSE_SIMILARITY``
        within ``phase_lag`` and the burst's timing (mearec_nn32_bursts seed 1: 65 spikes at 0.38
        of their unit's size, aligned 26 samples early, footprint 0.976, shape 0.66; 80 % of them
        3.5-50 ms after one of the unit's, z = 13); on a compact probe, footprints agreeing to
        ``min_cosine``, a wide piece (:meth:`wide_piece`) joins on that timing whatever its
        shape. Then, where footprints span ``min_channels``
        (narrower on a long probe: a sliver alike as dense units must be), a neuron's rarer spikes
        (``QUIET_FRACTION``): shapes alike within ``phase_lag``, an empty refractory period once
        aligned. Last, a compact stretched piece on a deep gap off centre (:meth:`.Trains.centred`)."""
        times, tr, size_uv, ptp = self.times, self.trains, self.size_uv, self.ptp
        if times is None:
            return
        attached = {piece for _r, piece, _b, _s in self.attach}
        lags = max(self.max_lag, self.phase_lag)
        for rare in (False, True):
            if (tr.burst_lags is None or self.phase_lag <= self.max_lag) if not rare else tr.refractory <= 1:
                continue
            for i in range(self.k):
                for j in np.flatnonzero(self.near[i] & self.near[:, i]):
                    if j <= i or ok[i, j]:
                        continue
                    if rare:  # the piece has fewer spikes and is no larger
                        big, piece = (i, j) if len(times[i]) >= len(times[j]) else (j, i)
                        if len(times[piece]) > QUIET_FRACTION * len(times[big]) or not self.no_larger(piece, big):
                            continue
                    else:
                        big, piece = (i, j) if size_uv[i] >= size_uv[j] else (j, i)
                        if size_uv[piece] > self.max_piece_size * size_uv[big]:
                            continue
                    if piece in attached:
                        continue
                    # larger peak to peak only by its few spikes' noise: it joins only shaped as its
                    # unit (a collision of two neurons, larger than either, fitted a few dozen times
                    # beside a third neuron's unit, was alike to it to 0.66: mearec_nn32_cells1 seed 0)
                    inflated = rare and size_uv[piece] > size_uv[big]
                    cos, n_ch = footprint_cosine(ptp[i], ptp[j])
                    narrow = rare and n_ch < self.min_channels  # on a long probe: only a sliver alike as dense units
                    spans = n_ch >= COMPACT_REACH * ptp.shape[1]  # the footprint covers a compact probe
                    compact = narrow and spans
                    if compact and (inflated or size_uv[piece] > self.max_piece_size * size_uv[big]):
                        continue  # at one size a footprint must agree as only one neuron's do
                    if cos < (self.min_cosine if compact else self.compact_cosine):
                        continue
                    s, shift = lagged_similarity(self.dense[big], self.dense[piece], max_lag=lags)
                    tb, tp = times[big], times[piece]
                    burst_only = False
                    if not rare and s < LOOSE_SIMILARITY:
                        # on a compact probe a burst can change its late spikes past every shape
                        # floor (mearec_tetrode_bursts_cells2 seed 3: 562 spikes at 0.4 of a 4464-spike
                        # neuron's size, shapes 0.08, 0.40 at a 22-sample lag, footprints 0.995,
                        # stray fits filling the refractory period); the burst's timing, which
                        # an independent neuron does not follow, then speaks for a wide piece alone
                        burst_only = spans and cos >= self.min_cosine
                        if not burst_only or not self.wide_piece(piece, big):
                            continue
                    if compact:
                        # a neuron's rare spikes a burst shrank and changed past its unit's shape, caught on
                        # another phase (mearec_tetrode_cells2 seed 3: 663 spikes 26 samples early,
                        # footprints 0.993, shapes 0.29): whatever the shape, an empty period once
                        # aligned on ample evidence (no pair where 14.1 were expected; distinct
                        # tetrode neurons that alike kept 0.34 of chance's pairs or more)
                        ratio, expected = tr.beyond_double_fits(tb, tp - shift)
                        if ratio > 0 or expected < NARROW_EXPECTED:
                            continue
                    elif s < LOOSE_SIMILARITY and not burst_only:
                        continue
                    if self.echo(piece, big):  # last: the cheaper tests above rule out most pairs
                        continue
                    # a compact piece's period was counted above, and held no pair
                    if inflated or (narrow and not compact and not self.absorbed(cos, s, tp, tb)):
                        joins = False
                    else:
                        joins = compact or (tr.empty_period(tb, tp - shift) if rare else tr.bursting(tb, tp))
                    if joins:
                        self.attach.append((1.0 if rare else 0.0, piece, big, shift))
                        (self.phased if compact else self.quiet if rare else self.bursts).add(piece)
                        attached.add(piece)
                    elif rare and not compact and self.scarce_pair(piece, big, cos, s, narrow=narrow):
                        self.attach.append((2.0 - s, piece, big, shift))  # after the rest, the likeliest unit first
                        self.scarce.add(piece)
                        attached.add(piece)
        # last, compact stretched pieces whose gap beside their unit sits off centre
        for ratio, piece, big, lag in sorted(self.off_centre):
            if piece not in attached:
                self.attach.append((ratio, piece, big, lag))
                self.centred.add(piece)
                attached.add(piece)
                log.info("unit %d: a piece of unit %d at %+d samples, its refractory gap a little off", piece, big, lag)

    def scarce_pair(self, piece: int, big: int, cos: float, s: float, *, narrow: bool) -> bool:
        """A rare piece (``QUIET_FRACTION``, no larger) shaped as its unit (``min_similarity``),
        its footprint agreeing to ``compact_cosine`` (``LOOSE_COSINE`` when narrow), the unit the
        likeliest, trains too short for the refractory test (under ``min_expected`` pairs in the
        banded count) and not showing two neurons firing on their own. MEArec neurons' rarer,
        smaller spikes on dense probes came out as such pieces (75-300 spikes, footprints
        0.967-1.0, shapes 0.81-0.94, at most 2.2 pairs expected; some had one or two pairs, the
        spike fitted twice at one lag). Of every unit pair of 40 dense recordings that alike and
        that rare, one was two neurons (``shanks4`` seed 1: 328 spikes beside 1979, footprints
        0.977, shapes 0.89), and its trains were long enough to say so: 1.2 of chance where 3.3
        pairs were expected."""
        if cos < (LOOSE_COSINE if narrow else self.compact_cosine):
            return False
        if self.trains.banded(self.times[big], self.times[piece])[1] >= self.trains.min_expected:
            return False  # the trains can say it: the other rules listen to them
        return self.its_likeliest(piece, big, s)

    def rejoins(self, piece: int, group: list[int], shift: int) -> bool:
        """The piece judged again, by the rule that attached it, against the whole ``group`` it is
        to join (its units' spikes together), aligned by ``shift``."""
        tr, times = self.trains, self.times
        whole = np.concatenate([times[t] for t in group])
        if self.echo(piece, whole):
            return False
        if piece in self.strict:
            return not any(self.independent(m, piece) for m in group)
        if piece in self.bursts:
            return tr.bursting(whole, times[piece])
        if piece in self.stretched:
            return tr.stretched(whole, times[piece], shift)
        if piece in self.ample:
            return ample_gap(*tr.banded(whole, times[piece]), compact=piece in self.compact_ample)
        if piece in self.centred:
            return near_empty_on_plenty(*tr.centred(whole, times[piece], lag=shift, reach=self.reach))
        if piece in self.twins:
            return near_empty_on_plenty(*tr.banded(whole, times[piece]), below=DENSE_ALIKE_RATIO)
        if piece in self.phased:
            # the group's other pieces may have been fitted twice with this one at some lag: the
            # ample evidence's near-empty period, not an empty one
            ratio, expected = tr.beyond_double_fits(whole, times[piece] - shift)
            return near_empty_on_plenty(ratio, expected)
        if piece in self.scarce:
            short = tr.banded(whole, times[piece])[1] < tr.min_expected
            return short and len(times[piece]) <= QUIET_FRACTION * len(whole)
        if piece in self.quiet:
            return len(times[piece]) <= QUIET_FRACTION * len(whole) and tr.empty_period(whole, times[piece] - shift)
        # the plain count of the outer half, which a piece of one size must pass nearly empty (a
        # faint piece's without the crowds of its double fits, as it was judged)
        ratio, expected = (tr.banded if piece in self.faint else tr.outer)(whole, times[piece])
        share = QUIET_FRACTION if piece in self.faint else ABSORB_FRACTION  # when pairs are too few
        if piece in self.alike:
            return expected >= ONE_SIZE_EXPECTED and ratio < NARROW_RATIO
        if expected >= tr.min_expected:
            return ratio < tr.max_ratio
        return len(times[piece]) <= share * len(whole)
