"""Small pieces of a neuron that no count of the trains vouches for, joined on the footprint.

A bursting MEArec cell fires some of its spikes shrunken or in another shape, and the matching
catches some of them 1-2 ms before their time; they can come out as a unit of their own: a tenth
of its unit's spikes or fewer, at a fifth to three quarters of its size, with a footprint that
agrees with its unit's to 0.97-1.00 and a shape that does not (-0.0-0.9 alike). The other
merges ask the shape or the trains, and neither speaks for them: within 1.5 ms of their unit's
spikes they held 0.1-3.3 times chance's pairs (spikes of the same neuron fitted beside its own,
bursts' doublets), or too few pairs were expected to count. The label calls them possible
pieces ('mua'), but as units they stay false ones. Here, last of curation, each joins its unit,
aligned on it: at the lag where its spikes fitted twice beside its unit's gather, when they are
many (:func:`double_fit_lag`), else at its best shape within ``max_lag``.

Measured on the Phy folders of 116 benchmark recordings (2026-12-07): 10 units were possible
pieces (at most a fifth of the spikes of a larger unit on their footprint). 9 were false units
(4 on ``mearec_nn32_crowded``, 5 on MEArec's tetrodes), and joined in a re-sort the false units
of those recordings fell from 15 to 6 and one neuron more was well detected: 4 of their units'
neurons gained accuracy (0.71 -> 0.83 for one, its early-caught spikes aligned on it) and 4 lost
some (0.94 -> 0.91, and three under 0.8 before by 0.04-0.06: another neuron's spikes joined).
The tenth was a neuron (``mearec_tetrode_crowded`` seed 0: 868 spikes beside 4556, footprints
0.992 alike, at 0.87 of the size): a unit within a fifth of a larger one's size on its
footprint is as likely a second neuron on the same ray, and is left to the label
(``MAX_SIZE_RATIO``). A few dozen spikes join whatever their size (``RARE_FRACTION``). On the
generated recordings (spikeinterface's) no unit was a possible piece. The footprint floor, 0.95
then, is the label's (0.92 since 2026-12-07: a rare piece's few spikes blur its footprint; on 81
recordings the false units fell from 19 to 15, and one neuron's unit lost 0.02 of accuracy).
"""

from __future__ import annotations

import logging

import numpy as np

from .refractory import pair_lags
from .templates import footprint_cosine, lagged_similarity

log = logging.getLogger(__name__)

# a piece has at most this share of its unit's spikes (the label's default too); its footprint
# agrees with its unit's to the caller's min_cosine (the label's floor)
PIECE_FRACTION = 0.2
# ... and at most this fraction of its unit's size: closer in size, a second neuron on one ray
MAX_SIZE_RATIO = 0.8
# a unit with at most this share of another's spikes: its template, the median of a few dozen
# spikes, is too rough for its size to count (mearec_nn32_crowded seed 6: 30 spikes at 1.48 of
# their neuron's unit's size)
RARE_FRACTION = 0.05
# the piece's lag read from the trains: where the pairs within the refractory period gather, in a
# window this wide (samples), at least this many and this many times chance's
LAG_WINDOW = 5
MIN_DOUBLE_PAIRS = 10
MIN_DOUBLE_RATIO = 5.0
# ... and a tenth of the piece's spikes: fewer are as often its unit's own misfits beside them
# (mearec_tetrode seed 5: 14 pairs of 560 spikes at -8, where the piece sat 4 samples late)
MIN_DOUBLE_SHARE = 0.1


def double_fit_lag(piece: np.ndarray, unit: np.ndarray, *, refractory: int, n_samples: int) -> tuple[int, int] | None:
    """(lag, pairs): the lag from a piece's spikes to its unit's where their pairs within the
    refractory period gather (summed over ``LAG_WINDOW`` samples), when there are at least
    ``MIN_DOUBLE_PAIRS`` of them, ``MIN_DOUBLE_SHARE`` of the piece's spikes and
    ``MIN_DOUBLE_RATIO`` times chance's; else None. One neuron
    does not fire twice that fast: such pairs are one spike fitted twice, once on time by its
    unit and once by the piece at the lag the matching caught the piece's spikes (mearec_tetrode
    seed 70: 523 spikes caught 20-40 samples before their time, 67 pairs at 23-28 where 1.5 are
    expected; their shape, 0.40 alike, put them 1 sample off)."""
    if len(piece) == 0 or len(unit) == 0 or refractory < 1:
        return None
    hist = pair_lags(np.asarray(piece, np.int64), np.asarray(unit, np.int64), refractory=refractory).astype(np.int64)
    width = min(LAG_WINDOW, len(hist))
    windowed = np.convolve(hist, np.ones(width, dtype=np.int64), mode="same")
    best = int(np.argmax(windowed))
    expected = len(piece) * len(unit) / max(int(n_samples), 1) * width
    pairs = int(windowed[best])
    if pairs < max(MIN_DOUBLE_PAIRS, MIN_DOUBLE_SHARE * len(piece), MIN_DOUBLE_RATIO * expected):
        return None
    # the lag itself: the median pair within the window
    a, b = max(best - width // 2, 0), min(best + width // 2 + 1, len(hist))
    cum = np.cumsum(hist[a:b])
    return int(a + np.searchsorted(cum, (cum[-1] + 1) // 2) - refractory), pairs


def piece_hosts(
    ptp: np.ndarray,
    counts: np.ndarray,
    *,
    max_fraction: float,
    min_cosine: float,
    max_size_ratio: float,
    rare_fraction: float = RARE_FRACTION,
) -> np.ndarray:
    """For each unit, the unit it may be a piece of (-1: none). Candidates have at least
    1 / ``max_fraction`` times its spikes and a largest peak-to-peak over its own by 1 /
    ``max_size_ratio`` (any size when it has at most ``rare_fraction`` of their spikes); of
    those whose footprint (``ptp``, (k, C)) agrees with its own to ``min_cosine``, the most alike."""
    counts = np.asarray(counts, dtype=np.float64)
    size = ptp.max(axis=1, initial=0.0)
    host = np.full(len(counts), -1, dtype=np.int64)
    for u in np.flatnonzero(counts > 0):
        larger = (counts[u] <= max_fraction * counts) & (
            (size[u] < max_size_ratio * size) | (counts[u] <= rare_fraction * counts)
        )
        larger[u] = False
        best = min_cosine
        for v in np.flatnonzero(larger):
            c = footprint_cosine(ptp[u], ptp[v])[0]
            if c >= best:
                host[u], best = v, c
    return host


def shrunken_piece_merges(
    dense: np.ndarray,
    templates_uv: np.ndarray,
    counts: np.ndarray,
    *,
    max_lag: int,
    min_cosine: float,
    times: list[np.ndarray] | None = None,
    refractory: int = 0,
    n_samples: int = 0,
) -> list[list[tuple[int, int]]]:
    """Groups of units (each as (unit, offset aligning its spikes on the group's unit)): every
    unit with the piece hosts of :func:`piece_hosts` at this module's floors and footprints agreeing
    to ``min_cosine`` (the label's ``PIECE_COSINE``, which the caller passes). A piece is aligned
    at the lag its spikes fitted twice show (:func:`double_fit_lag`, given each unit's ``times``,
    the ``refractory`` period and the recording's ``n_samples``), else at its best shape within
    ``max_lag`` samples of ``dense`` (k, nt, C); ``templates_uv``, the same in µV, give the
    footprints."""
    k = len(counts)
    host = piece_hosts(
        np.ptp(templates_uv, axis=1),
        counts,
        max_fraction=PIECE_FRACTION,
        min_cosine=min_cosine,
        max_size_ratio=MAX_SIZE_RATIO,
    )
    takers: dict[int, list[tuple[int, int]]] = {}
    for piece in np.flatnonzero(host >= 0):
        unit = int(host[piece])
        while host[unit] >= 0:  # a host that is a piece itself: all go where it goes (counts grow 5x a step)
            unit = int(host[unit])
        similarity, shift = lagged_similarity(dense[unit], dense[piece], max_lag=max_lag)
        offset, how = -int(shift), "its shape"
        if times is not None:
            found = double_fit_lag(times[piece], times[unit], refractory=refractory, n_samples=n_samples)
            if found is not None:
                offset, how = found[0], f"{found[1]} spikes fitted twice"
        takers.setdefault(unit, []).append((int(piece), offset))
        log.info(
            "unit %d (%d spikes): a small piece of unit %d (%d spikes) on its footprint (shapes %.2f), "
            "%+d samples (%s): merged",
            piece,
            counts[piece],
            unit,
            counts[unit],
            similarity,
            offset,
            how,
        )
    return [[(u, 0)] + takers.get(u, []) for u in range(k) if host[u] < 0]
