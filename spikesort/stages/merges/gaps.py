"""Units of one neuron on a compact probe that the piece rules left apart, joined on their trains.

On a tetrode every neuron has nearly the same footprint, so :mod:`.footprint` asks the spike
trains; its piece rules judge a smaller unit against a larger one, and a group joins whole only
when every pair of it agrees (complete link). A bursting neuron can come out as three or more units
of unlike shapes, none of them a piece of another by those rules, while their trains never meet
within the refractory period (`mearec_tetrode_diamond` seed 0: one neuron as units of 2738, 1600
and 883 spikes; the last none of 9.4 and 16.1 pairs expected against the other two). Here the
whole trains decide: two groups join when their footprints agree and their spikes together leave
the refractory period's outer half near empty (under ``NARROW_RATIO`` of chance) where
``NARROW_EXPECTED`` pairs or more are expected. Distinct MEArec silicon-tetrode neurons kept 0.47 of
chance's pairs or more there (:mod:`.evidence`). A pair stays apart when the smaller unit's
trains leave a rarer gap beside a third unit (:func:`.evidence.rarer_gap`): a much larger
neighbour hides a small unit's spikes near its own, an empty period that says nothing of one neuron.
"""

from __future__ import annotations

import logging

import numpy as np

from .evidence import NARROW_EXPECTED, near_empty_on_plenty, rarer_gap
from .pieces import COMPACT_REACH, LOOSE_COSINE
from .refractory import banded_refractory_ratio
from .templates import SIGNAL_FRACTION, complete_link, footprint_cosine, lagged_similarity

log = logging.getLogger(__name__)


def empty_period_merges(
    dense: np.ndarray,
    templates_uv: np.ndarray,
    times: list[np.ndarray],
    *,
    refractory: int,
    duration: int,
    max_lag: int,
    min_cosine: float = LOOSE_COSINE,
) -> list[list[tuple[int, int]]]:
    """Groups of units (each as (unit, offset aligning its spikes on the group's unit with the
    most spikes)) whose footprints span most of a compact probe, agree to ``min_cosine`` pair by
    pair, and whose whole spike trains leave a near-empty refractory period on ample evidence.
    Pairs with the emptiest period join first; two groups join only if their trains, all spikes
    together, pass again."""
    k = len(times)
    if k == 0:
        return []
    ptp = np.ptp(templates_uv, axis=1)  # (k, C)
    reach = COMPACT_REACH * ptp.shape[1]
    # a pair's footprint spans at most the channels of both: on a long probe no pair reaches
    span = (ptp >= SIGNAL_FRACTION * ptp.max(axis=1, keepdims=True)).sum(axis=1)
    alike = np.zeros((k, k), dtype=bool)
    candidates = []
    for i in range(k):
        for j in np.flatnonzero(span[i] + span[i + 1 :] >= reach) + i + 1:
            cos, n_ch = footprint_cosine(ptp[i], ptp[j])
            if n_ch < reach or cos < min_cosine:
                continue
            alike[i, j] = alike[j, i] = True
            ratio, expected = _banded(times[i], times[j], refractory=refractory, duration=duration)
            if near_empty_on_plenty(ratio, expected):
                candidates.append((ratio, -expected, i, j))
    size = ptp.max(axis=1)

    def rival(i: int, j: int) -> int | None:
        """A unit that the smaller of the pair, not the larger, has a rarer gap with (the larger
        then left its gap by masking the smaller's spikes: :func:`.evidence.rarer_gap`)."""
        small, other = (i, j) if size[i] < size[j] else (j, i)
        rivals = [
            c
            for c in range(k)
            if c not in (i, j) and size[c] > size[small] and footprint_cosine(ptp[small], ptp[c])[0] >= min_cosine
        ]
        kw = dict(refractory=refractory, duration=duration)
        counts = [(_banded(times[c], times[small], **kw), _banded(times[c], times[other], **kw)) for c in rivals]
        own = _banded(times[other], times[small], **kw)
        found = rarer_gap(own, counts, min_expected=NARROW_EXPECTED)
        return None if found is None else rivals[found]

    kept = []
    for r, e, i, j in candidates:
        c = rival(i, j)
        if c is None:
            kept.append((r, e, i, j))
        else:
            msg = "units %d and %d: trains that never meet, but one leaves a rarer gap beside unit %d: kept apart"
            log.info(msg, i, j, c)
    candidates = kept
    lag = np.zeros((k, k), dtype=np.int64)
    for i, j in zip(*np.nonzero(np.triu(alike))):
        shift = lagged_similarity(dense[i], dense[j], max_lag=max_lag)[1]
        lag[i, j], lag[j, i] = shift, -shift

    def whole_trains_leave_gap(a: list[int], b: list[int]) -> bool:
        ta, tb = (np.concatenate([times[t] for t in g]) for g in (a, b))
        return near_empty_on_plenty(*_banded(ta, tb, refractory=refractory, duration=duration))

    order = [(i, j) for _r, _e, i, j in sorted(candidates)]
    sizes = [len(t) for t in times]
    out = complete_link(
        order, k=k, linked=lambda a, b: alike[a, b], lag=lag, sizes=sizes, accept_groups=whole_trains_leave_gap
    )
    for g in out:
        if len(g) > 1:
            log.info(
                "units %s: footprints alike and trains that never meet within the refractory period: merged",
                sorted(t for t, _ in g),
            )
    return out


def _banded(ta: np.ndarray, tb: np.ndarray, *, refractory: int, duration: int) -> tuple[float, float]:
    return banded_refractory_ratio(ta, tb, refractory=refractory, inner=refractory // 2, duration=duration)
