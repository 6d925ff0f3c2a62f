"""Two units at two sizes whose footprints agree: one neuron, or two neighbours?

A bursting neuron's spikes shrink late in its bursts and come out as a smaller unit beside the
full-size one; two neurons a few µm apart also have footprints that agree, at two sizes as often
as not. Where the shapes cannot tell them apart, the spike trains must (:func:`trains_say`): two
neurons beyond doubt, or one neuron despite firing "independently" by the refractory count (as
does a burst's timing, :mod:`.bursts`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .refractory import band_pair_ratio, banded_refractory_ratio

# two neurons at two sizes, whatever their footprints: on mearec_np2 seed 2 two cells at a probe's
# corner (122 and 77 µV, footprints 0.990, shapes 0.91) had 1.07 of chance in the refractory period
# with 51 pairs expected, and were merged; one neuron's pieces at other sizes reached 0.41-5.9 of
# chance only where fewer than 10 were expected, and at most 0.46 where 20 or more were
PLAIN_EXPECTED, PLAIN_RATIO = 20.0, 0.8
# On shanks4 (spikeinterface's generator, 2026-12-04) distinct neighbours at two sizes, footprints
# 0.99 alike and shapes 0.92, were merged with 0.67-1.57 of chance in the refractory period's
# bands (21.8 pairs expected) and 0.91-1.06 of chance at 2-10 ms; a bursting MEArec neuron's
# pieces (mearec_np2) that fired "independently" by the refractory count still held only 0.61-0.73
# of chance's pairs at 2-10 ms, the trough of one neuron's relative refractory period
TROUGH_RATIO, TROUGH_Z = 0.8, 2.0


def trains_say(
    ta: np.ndarray,
    tb: np.ndarray,
    *,
    refractory: int,
    inner: int,
    duration: int,
    max_ratio: float,
    min_expected: float,
    trough_lags: tuple[int, int] | None,
) -> Literal["two", "one", "nothing"]:
    """What two aligned trains that fire "independently" say, from one banded refractory count
    (the lags in (``inner``, ``refractory``] without the bands where one spike fitted twice
    crowds):

    - "two", beyond doubt: ``PLAIN_RATIO`` of chance's pairs or more, ``PLAIN_EXPECTED`` expected;
    - "one" after all: a gap (under ``max_ratio`` of chance, ``min_expected`` pairs expected), or
      a trough just beyond the refractory period (``trough_lags``, lo and hi in samples: at most
      ``TROUGH_RATIO`` of chance's pairs, ``TROUGH_Z`` sds below it), which a neuron's relative
      refractory period leaves and the collisions of two neurons do not;
    - "nothing" otherwise. (A burst's timing, the other sign of one neuron, is
      :func:`.bursts.late_in_bursts`.)"""
    ratio, expected = banded_refractory_ratio(ta, tb, refractory=refractory, inner=inner, duration=duration)
    if expected >= PLAIN_EXPECTED and ratio >= PLAIN_RATIO:
        return "two"
    if expected >= min_expected and ratio < max_ratio:
        return "one"
    if trough_lags is not None:
        ratio, z = band_pair_ratio(ta, tb, lo=trough_lags[0], hi=trough_lags[1], duration=duration)
        if ratio <= TROUGH_RATIO and z <= -TROUGH_Z:
            return "one"
    return "nothing"
