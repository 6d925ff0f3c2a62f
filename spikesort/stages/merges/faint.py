"""Faint pieces, joined last: a neuron's smaller spikes, too few for any count of the trains.

A MEArec cell fires some of its spikes at a third to two thirds of its usual size, and they can
come out as a unit of their own: 100-200 spikes beside the neuron's 1100-1500, at random times in
its train (not late in bursts), too few for the refractory period to say anything (a pair or two
expected). The piece rules of :mod:`.pieces` leave them apart: their template, the median of so
few spikes, agrees with the neuron's footprint to only 0.94-0.99 and in shape to 0.48-0.84
(those spikes are not the full-size ones scaled: at the neuron's own spike times their mean
waveform agreed with its usual one to 0.57-0.92 for seven such pieces, and not at all for two
on MEArec's diamond tetrode), where those rules ask more of a piece the trains
cannot vouch for.

Here, once every other merge and every drop of curation is done (so leftovers, echoes and
mixtures of small spikes are gone, and only units that would be reported remain), such a piece
joins the unit it is most like among the larger units with at least 1 / ``FAINT_FRACTION`` of its
spikes (a neuron's faint pieces are more like one another than like its unit): no larger than
``max_piece_size`` of it, footprints agreeing to ``FAINT_COSINE``, shapes to ``min_similarity``
(at any lag within ``max_lag``: a few such pieces are caught on another phase, 0.5 ms early, and
join aligned on their unit), too few pairs expected for the banded refractory count or a count
under ``NARROW_RATIO`` of them (a near-empty period, :mod:`.evidence`), not more pairs there
than chance allows (``EXCESS_P``), not mostly within a template window of its spikes (an echo),
and trains that do not show two neurons firing on their own.

Measured on 82 recordings (2026-12-06): 58 tetrodes (54 of them MEArec), 9 MEArec
Neuronexus-32 and 15 of spikeinterface's generators on 32-64 channels, up to 120 units. The
pieces left apart that were one neuron's had 0.02-0.15 of its unit's spikes, footprints
0.94-0.999 and shapes 0.63-0.84 (0.64-0.76 at 15-28 samples for three caught on another phase).
Traced at this step on 64 of them (the MEArec and tetrode ones but the 20-minute tetrodes), 27
units had a likeliest unit whose trains expect under 3 pairs; of those alike to 0.5 or more, one
pair was of two neurons: a mixture, 0.58 alike (MEArec's wire tetrode, seed 4). Earlier, in the
footprint merges, distinct tetrode neurons alike to 0.7 whose units were pure fired at 0.19 of
the larger one's rate or more. On the dense generated recordings the rule joined nothing.
Then (2026-12-06, the same 82 and 9 more), the shape floor went from 0.6 to ``FAINT_SIMILARITY``
with the count of excess pairs beside it, and the likeliest unit was sought among units with many
more spikes: 5 pieces more joined (0.48-0.6 alike, or pieces of 30-86 spikes of one neuron alike
to each other to 0.98), nothing else changed. The one pair of two neurons alike over 0.45 left
in that trace (the wire tetrode's mixture, 0.58) had 6 pairs where chance gave 1.4.
Later that day (104 recordings, 10 of them held out), a piece whose trains expect 3 pairs or more
joins when they hold under ``NARROW_RATIO`` of them, and ``FAINT_FRACTION`` went from 0.16 to
0.18: 2 pieces more joined, both one neuron's (none of 4.7 pairs expected; 0.169 of a unit's
spikes), nothing else changed. Below 3 pairs the rule asks less: an empty period is then no
evidence at all (two neurons leave one e^-3 = 5 % of the time or more).
"""

from __future__ import annotations

import logging

import numpy as np

from . import poisson
from .evidence import NARROW_RATIO
from .refractory import banded_refractory_ratio, mostly_fitted_twice
from .templates import footprint_cosine, lagged_similarity, seen_on_peaks

log = logging.getLogger(__name__)

# a neuron's faint pieces held up to 0.17 of its unit's spikes (mearec_sqmea30 seed 1: 204 of
# 1210, shapes 0.89); distinct tetrode neurons that alike fired at 0.19 of the larger one's rate
FAINT_FRACTION = 0.18
# a piece's template is the median of a hundred-odd spikes at a third of its neuron's size: its
# footprint agreed to 0.94-0.95 on four recordings
FAINT_COSINE = 0.93
# at the neuron's spike times, pieces' spikes agreed with its usual waveform to 0.57-0.92
FAINT_SIMILARITY = 0.45
# one neuron leaves its refractory period empty; more pairs there than chance gives is two
EXCESS_P = 0.01


def faint_piece_merges(
    dense: np.ndarray,
    templates_uv: np.ndarray,
    times: list[np.ndarray],
    *,
    refractory: int,
    duration: int,
    echo_window: int,
    independent,
    max_lag: int,
    max_piece_size: float = 0.75,
    min_similarity: float = FAINT_SIMILARITY,
    min_expected: float = 3.0,
) -> list[list[tuple[int, int]]]:
    """Groups of units (each as (unit, offset aligning its spikes on the group's unit)): each
    faint piece (see the module) with the unit it is most like, of the larger units whose
    footprints agree with its own. Shapes are compared within ``max_lag`` samples;
    ``echo_window`` is a template window in samples; ``independent(i, j)`` tells two units firing
    on their own. A unit that takes pieces is no piece itself."""
    k = len(times)
    if k == 0:
        return []
    ptp = np.ptp(templates_uv, axis=1)  # (k, C)
    size = ptp.max(axis=1)
    counts = np.array([len(t) for t in times])
    # each unit seen on the other's largest channel: footprints that agree do (and it spares a
    # long probe's far pairs the cosine)
    seen = seen_on_peaks(ptp)
    seen &= seen.T
    attach = []
    banded = dict(refractory=refractory, inner=refractory // 2, duration=duration)
    for piece in range(k):
        # the unit it is most like among the larger ones, with many more spikes, whose footprints
        # agree with its own (a neuron's faint pieces are more like each other than like it)
        larger = [
            u
            for u in np.flatnonzero(seen[piece] & (size > size[piece]) & (counts * FAINT_FRACTION >= counts[piece]))
            if footprint_cosine(ptp[u], ptp[piece])[0] >= FAINT_COSINE
        ]
        if not larger:
            continue
        similar = [lagged_similarity(dense[u], dense[piece], max_lag=max_lag) for u in larger]
        best = int(np.argmax([s for s, _ in similar]))
        big, (s, shift) = int(larger[best]), similar[best]
        if s < min_similarity or size[piece] > max_piece_size * size[big]:
            continue
        ratio, expected = banded_refractory_ratio(times[big], times[piece], **banded)
        # enough pairs expected for the count, but fewer than the piece rules ask
        # (mearec_tetrode_colored seed 3: none of 4.7 beside a 4301-spike unit): a near-empty period
        # leans to one neuron, where two neurons' thinned collisions kept 0.26 of chance or more
        if expected >= min_expected and ratio >= NARROW_RATIO:
            continue  # the trains can say it, and do not lean to one neuron: the piece rules listened
        if poisson.sf(round(ratio * expected) - 1, expected) < EXCESS_P:
            continue  # more pairs in the refractory period than chance gives: not one neuron
        if mostly_fitted_twice(times[big], times[piece], window=echo_window) or independent(big, piece):
            continue
        attach.append((-s, piece, big, int(shift)))
    joined, took = {}, set()  # piece -> (its unit, lag of the piece onto it); units that took pieces
    for neg_s, piece, big, shift in sorted(attach):
        if big in joined or piece in took:
            continue  # a unit that took pieces is no piece, and a piece takes none
        joined[piece] = (big, shift)
        took.add(big)
        log.info(
            "unit %d (%d spikes): a faint piece of unit %d (%d spikes, shapes %.2f): merged",
            piece,
            counts[piece],
            big,
            counts[big],
            -neg_s,
        )
    takers = {}
    for piece, (big, shift) in joined.items():
        takers.setdefault(big, []).append((piece, -shift))
    return [[(u, 0)] + takers.get(u, []) for u in range(k) if u not in joined]
