"""What two units' spike trains say about being one neuron, as the footprint merges ask it.

The counts of :mod:`.refractory` (pairs in the refractory period against chance, the lags where
one spike fitted twice lands left out) and the burst's timing of :mod:`.bursts`, bound to one
merge call's trains and lags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bursts import late_in_bursts
from .refractory import (
    STRONG_GAP_P,
    banded_refractory_ratio,
    gap_probability,
    mostly_fitted_twice,
    outer_gap,
    outer_refractory_ratio,
)

# a piece too small for the refractory test joins when it has at most ABSORB_FRACTION of the
# spikes of its unit (as in refractory_merges: a wrong merge costs little)
ABSORB_FRACTION = 0.1
# a narrow footprint on a long probe (mearec_nn32 seed 2: a bursting neuron's two sizes over 5
# channels, 3 pairs where 31.6 were expected) joins only on this much evidence of one neuron
NARROW_EXPECTED, NARROW_RATIO = 10.0, 0.2
# on a compact probe, a near-empty refractory period (under NARROW_RATIO of chance) between
# footprints agreeing to min_cosine: over every unit pair of 57 tetrode recordings (2026-12-05) no
# two distinct neurons left one that two neurons firing on their own leave less often than 1 in
# 20, where a neuron's pieces left no pair of 5.6 expected (p = 0.004, mearec_tetrode_cells2
# seed 3). So such a gap needs only CLOSE_GAP_P there. Not on a dense probe: a neuron's phase
# piece there left 0.14 of chance beside a distinct neuron (mearec_np64_cells1 seed 0)
CLOSE_GAP_P = 1e-2
# a unit whose gap with a piece two neurons leave less often than this is its rival owner
RIVAL_GAP_P = 1e-2


def ample_gap(ratio: float, expected: float, *, compact: bool) -> bool:
    """Ample evidence of one neuron: a near-empty refractory period on ``NARROW_EXPECTED`` pairs
    or more. On a compact probe also any gap that two neurons firing on their own leave less
    often than ``STRONG_GAP_P`` (``CLOSE_GAP_P`` under ``NARROW_RATIO`` of chance): there every
    pair of neurons shares the contacts, and the collisions the matching loses thinned distinct
    MEArec silicon-tetrode neurons' pairs to 0.47 of chance at most, where a burst's stretched
    piece (mearec_tetrode_bursts seed 4: 582 spikes, shapes 0.46) left none of 8.2 (p = 3e-4; the
    distinct pairs of 7 tetrode recordings, 0.05 or more). On MEArec's microwire tetrode, whose
    neighbours have nearly proportional footprints, distinct neurons kept only 0.26-0.40 and some
    joined on this test (2026-12-05, the thirtieth pass of docs/benchmarks.md)."""
    if near_empty_on_plenty(ratio, expected):
        return True
    return compact and gap_probability(ratio, expected) < (CLOSE_GAP_P if ratio < NARROW_RATIO else STRONG_GAP_P)


def rarer_gap(
    own: tuple[float, float], rivals: list[tuple[tuple[float, float], tuple[float, float]]], *, min_expected: float
) -> int | None:
    """The first of ``rivals`` whose gap with a piece two neurons leave less often than
    ``RIVAL_GAP_P`` and than ``own`` (the piece's (ratio, expected) beside the unit it would join);
    None if none. A rival is given as its count beside the piece and its count beside that unit,
    and only one whose trains leave no such gap beside that unit counts (another piece of the
    same neuron does). Two neurons cannot both own a piece: a piece's gap beside a much larger
    neighbour is the collisions the matching lost there (mearec_tetrode_crowded seed 70: a
    neuron's piece at 0.12 of a neighbour's size left 1 pair of 10.5 expected with it, and 5 of
    25 with its own neuron's unit). Counts on fewer than ``min_expected`` pairs say nothing."""

    def p(ratio: float, expected: float) -> float:
        return gap_probability(ratio, expected) if expected >= min_expected else 1.0

    p_own = p(*own)
    for i, (with_piece, with_unit) in enumerate(rivals):
        q = p(*with_piece)
        if q < RIVAL_GAP_P and q < p_own and p(*with_unit) >= RIVAL_GAP_P:
            return i
    return None


def strong_gap(ratio: float, expected: float) -> bool:
    """Ample evidence without ``CLOSE_GAP_P``'s allowance: a piece on this joins before those on less."""
    return near_empty_on_plenty(ratio, expected) or gap_probability(ratio, expected) < STRONG_GAP_P


def near_empty_on_plenty(ratio: float, expected: float, *, below: float = NARROW_RATIO) -> bool:
    """Under ``below`` of chance's pairs where ``NARROW_EXPECTED`` or more are expected."""
    return expected >= NARROW_EXPECTED and ratio < below


def deep_gap(ratio: float, expected: float) -> bool:
    """A refractory period near empty (under ``NARROW_RATIO`` of chance) where two neurons firing
    on their own leave so deep a gap less often than ``STRONG_GAP_P``: the collisions the matching
    loses thin two neighbours' pairs on a dense probe to 0.25 of chance and more, so the gap must
    be deep as well as rare there (mearec_np2 seed 3: a burst's stretched piece, 611 spikes at a
    third of its unit's size, 1 pair where 9.3 were expected, p = 9e-4)."""
    return ratio < NARROW_RATIO and gap_probability(ratio, expected) < STRONG_GAP_P


def centred_gap(ratio: float, expected: float, *, searched: float) -> bool:
    """A near-empty period on ample evidence (``NARROW_RATIO``, ``NARROW_EXPECTED``) that two
    neurons firing on their own leave less often than ``STRONG_GAP_P`` shared among the
    ``searched`` lags a search for it tried (:meth:`Trains.centred`), each counted as a chance of
    its own: on a few pairs a search finds a lag with one (two neighbours whose collisions the
    matching thinned to a quarter: 1 pair where 11 were expected, three lags from 3)."""
    return near_empty_on_plenty(ratio, expected) and gap_probability(ratio, expected) < STRONG_GAP_P / searched


@dataclass(frozen=True)
class Trains:
    """The units' spike ``times`` of one merge call, the ``refractory`` period and the lags up to
    ``double_fit`` left out of its counts (None: its inner half), in samples of a recording of
    ``duration``; a gap needs ``min_expected`` pairs of evidence and under ``max_ratio`` of them.
    ``burst_lags`` (lo, hi samples; None for none): where a burst's late spikes follow its first."""

    times: list[np.ndarray]
    refractory: int
    duration: int
    double_fit: int | None
    min_expected: float
    max_ratio: float
    burst_lags: tuple[int, int] | None = None

    def outer(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        """Observed / expected pairs in the refractory period's outer half (:func:`.outer_gap`)."""
        kw = dict(refractory=self.refractory, duration=self.duration, double_fit=self.double_fit)
        return outer_gap(a, b, **kw, min_expected=self.min_expected)

    def banded(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        """The outer half's count without the lags where pairs crowd (:func:`.banded_refractory_ratio`)."""
        kw = dict(refractory=self.refractory, inner=self.refractory // 2, duration=self.duration)
        return banded_refractory_ratio(a, b, **kw)

    def centred(self, a: np.ndarray, b: np.ndarray, *, lag: int, reach: int) -> tuple[float, float]:
        """The banded count (:meth:`banded`) with ``b`` shifted by the lag within ``reach`` samples
        of ``lag`` that leaves the fewest pairs. A burst's stretched spikes align on their unit
        only roughly by shape, so the gap they leave beside it may sit a few samples off where
        the shapes put it (mearec_tetrode_20k seed 90: a 999-spike piece at a third of its unit's
        size, shapes 0.53, 7 pairs where 19 were expected at lag 0 and 6 at the shapes' lag,
        3 two samples on)."""
        counts = [self.banded(a, b - s) for s in range(lag - reach, lag + reach + 1)]
        return min(counts, key=lambda c: c[0] if c[1] > 0 else np.inf)

    def stretched(self, whole: np.ndarray, piece: np.ndarray, shift: int, *, banded=None) -> bool:
        """A deep, rare gap (:func:`deep_gap`) between ``whole`` and a stretched ``piece``: in the
        refractory period's outer half as counted (``banded``, when the caller has it), or, once
        the piece is aligned at its phase lag ``shift``, in the whole period beyond the double
        fits. A piece on another phase shifts the period by its lag (mearec_nn32 seed 22: a burst's
        504-spike piece 10 samples off, no pair where 6.6 were expected in the outer half,
        p = 0.0014; aligned, none of 8.8)."""
        if deep_gap(*(banded or self.banded(whole, piece))):
            return True
        return deep_gap(*self.beyond_double_fits(whole, piece - shift))

    def beyond_double_fits(self, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        """Observed / expected pairs in the refractory period beyond ``double_fit``."""
        return outer_refractory_ratio(a, b, refractory=self.refractory, duration=self.duration, inner=self.double_fit)

    def gap(self, i: int, j: int, shift: int) -> tuple[float, float]:
        """Units i and j's count beyond ``double_fit`` once aligned by the phase lag (a spike fitted
        by both templates lands within the alignment's jitter)."""
        return self.beyond_double_fits(self.times[i], self.times[j] - shift)

    def one_train(self, i: int, j: int, gap: tuple[float, float]) -> bool:
        """Spike trains of one neuron: a ``gap`` in the refractory period, or too few spikes to
        tell and to matter."""
        ratio, expected = gap
        if expected >= self.min_expected:
            return ratio < self.max_ratio
        n_i, n_j = len(self.times[i]), len(self.times[j])
        return min(n_i, n_j) <= ABSORB_FRACTION * max(n_i, n_j)

    def unproven(self, gap: tuple[float, float]) -> bool:
        """No pair in the refractory period beyond ``double_fit``, where chance gives too few for
        the test (sqmea: one neuron on three alignments, 6 and 8 samples either side of its
        largest unit; its two smaller units, 14 samples apart, expected 1.9 pairs)."""
        ratio, expected = gap
        return ratio == 0 and expected < self.min_expected

    def empty_period(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Not one pair in the refractory period beyond ``double_fit``."""
        return self.beyond_double_fits(a, b)[0] == 0

    def echoing(self, big: np.ndarray, piece: np.ndarray) -> bool:
        """Most of the piece's spikes lie within a template window (the burst lags' ``lo``) of
        ``big``'s: its echoes or residues, at lags beyond the refractory period, which a refractory
        count never sees (mearec_np64_cells1 seed 0: a large neuron's waveform tail fitted 2.4 ms
        after 960 of its spikes, footprints 0.96, none in the period of 40 expected)."""
        lags = self.burst_lags
        return lags is not None and mostly_fitted_twice(big, piece, window=lags[0])

    def bursting(self, big: np.ndarray, piece: np.ndarray) -> bool:
        """The piece's spikes come late in ``big``'s bursts (:func:`.bursts.late_in_bursts`)."""
        lags = self.burst_lags
        return lags is not None and late_in_bursts(big, piece, lags=lags, duration=self.duration)
