"""The automatic good / mua / noise label of each unit, from its metrics (``metrics.py``) and
from what its footprint shares with the other units'.

A unit is 'good' only when it can be vouched for as one whole neuron. Its metrics say whether
its train is clean and its spikes stand out of the noise; its footprint beside the other units'
says whether it may be a piece of a neuron (``possible_pieces``) or share one ray from the probe
with another unit (``same_ray_units``), where size alone tells the two apart.

Errors: a threshold a user can set raises SpikesortError.
"""

from __future__ import annotations

import numpy as np

from spikesort.errors import SpikesortError

from .metrics import UnitMetrics

LABELS = ("good", "mua", "noise")
# footprints agreeing this closely, one unit with a tenth of the other's spikes: possibly one
# neuron. A burst's stretched spikes agree less (mearec_nn32: 0.946-0.963; seed 80: 95 shrunken
# spikes at 0.3 of their unit's size, 0.928). On 40 benchmark recordings (2026-12-03) the rule
# caught 5 more false 'good' units at 0.95 than at 0.99, and no true one down to 0.9; on 74 more
# (2026-12-07, 1011 true 'good' units) 0.92 caught 2 false units more than 0.95, and no true one.
# Curation's last step joins such pieces at the same floor (merges/shrunken.py)
PIECE_COSINE = 0.92
# footprints agreeing this closely differ in size only: one neuron's spikes at two sizes, or two
# neurons on one ray from the probe. MEArec's wire tetrode puts neuron pairs at 0.999-1.000
# (sizes 0.7 apart); at 0.99 the benchmark's tetrodes held many pairs of distinct, well sorted
# neurons, at 0.995 several (so the sizes decide, below)
RAY_COSINE = 0.997
# two such units whose spike sizes overlap more than this (of the smaller) are not told apart by
# size: spikeinterface's steady neurons on one ray overlapped 0.002-0.03 (linear32_20k seed 0:
# 18 of 610 spikes), the pairs MEArec's bursts mixed 0.05-1.00
RAY_OVERLAP = 0.04
# ... and whose whitened waveforms agree this closely (best lag within RAY_MAX_LAG samples) differ
# in size only. MEArec's neurons of one size on one ray were told apart by their shapes (0.73-0.78),
# the pairs its bursts mixed agreed to 0.83-0.95. On 77 benchmark recordings (2026-12-06) the rule
# took the label from 7 false 'good' units and from 2 true ones (matched at 0.80 and 0.83)
RAY_SHAPE = 0.85
RAY_MAX_LAG = 3


def _footprints(templates_uv: np.ndarray):
    """Footprints (peak-to-peak per channel), their cosine for a pair, and which pairs see each
    other's largest channel (footprints that agree closely always do: a cheap first look)."""
    # imported here: the merges bring the numba kernels, which light readers of the metrics (the
    # batch driver's skip checks) must not import
    from spikesort.stages.merges.templates import footprint_cosine, seen_on_peaks

    ptp = np.ptp(templates_uv, axis=1)
    seen = seen_on_peaks(ptp)
    return ptp, (lambda u, v: footprint_cosine(ptp[u], ptp[v])[0]), seen & seen.T


def possible_pieces(
    *, templates_uv: np.ndarray, spike_counts: np.ndarray, max_fraction: float, min_cosine: float = PIECE_COSINE
) -> np.ndarray:
    """Units that may be a piece of a larger one: at most ``max_fraction`` of the spikes of a unit
    with a larger peak-to-peak whose footprint (peak-to-peak per channel) agrees to ``min_cosine``.
    A bursting neuron's late spikes, or its spikes aligned on another phase, come out as such
    units; their trains are too short for the merges' refractory test to say, so they are left
    for the curator as 'mua' (curation has joined those at under 0.8 of their unit's size,
    :mod:`spikesort.stages.merges.shrunken`). A unit with at most ``RARE_FRACTION`` of the
    other's spikes there needs no smaller peak-to-peak."""
    from spikesort.stages.merges.shrunken import piece_hosts  # here: see _footprints

    ptp = np.ptp(templates_uv, axis=1)
    return piece_hosts(ptp, spike_counts, max_fraction=max_fraction, min_cosine=min_cosine, max_size_ratio=1.0) >= 0


def size_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """How far two sets of spike sizes overlap: the fewest spikes on the wrong side of any one
    size threshold, as a fraction of the smaller set (0: a size separates them)."""
    if a.size == 0 or b.size == 0:
        return 0.0
    if np.median(a) < np.median(b):
        a, b = b, a
    values = np.concatenate([a, b])
    is_a = np.concatenate([np.ones(a.size, dtype=bool), np.zeros(b.size, dtype=bool)])
    order = np.argsort(values, kind="stable")
    # a threshold after the i-th smallest: the large set's spikes below it, the small set's above
    a_below = np.concatenate([[0], np.cumsum(is_a[order])])
    b_below = np.concatenate([[0], np.cumsum(~is_a[order])])
    wrong = a_below + (b.size - b_below)
    return float(wrong.min()) / min(a.size, b.size)


def same_ray_units(
    *,
    templates_uv: np.ndarray,
    templates_white: np.ndarray,
    spike_clusters: np.ndarray,
    amplitudes: np.ndarray,
    min_fraction: float,
    min_cosine: float = RAY_COSINE,
    min_shape: float = RAY_SHAPE,
    max_overlap: float = RAY_OVERLAP,
) -> np.ndarray:
    """Units that share their footprint (peak-to-peak per channel of ``templates_uv``, agreeing
    to ``min_cosine``) and their waveform (``templates_white`` alike to ``min_shape`` at the best
    lag) with another unit of at least ``min_fraction`` of their spikes (0: no unit), whose spike
    sizes (``amplitudes`` times the template's peak-to-peak) overlap theirs by more than
    ``max_overlap`` (``size_overlap``).

    Two such units differ in size only, and not by a clean gap. Either they are one neuron's
    spikes at two sizes (a bursting cell's shrunken spikes), and each holds part of it; or two
    neurons on one ray from the probe, and a neuron's shrunken spikes pass into the other's unit.
    Tetrode users know such clusters, strung along one line through the origin of the
    peak-amplitude scatter. Neither unit can be vouched for as one whole neuron, so both are
    left for the curator as 'mua'. Neurons of steady size on one ray keep a gap between their
    sizes, and neurons of one size on one ray differ in shape: both stay 'good'. A far smaller
    sibling (a few dozen spikes of a large unit's echo) says nothing about its large unit, hence
    the count."""
    k = templates_uv.shape[0]
    ray = np.zeros(k, dtype=bool)
    if min_fraction <= 0 or k < 2:
        return ray
    # imported here, as in _footprints
    from spikesort.stages.merges.templates import lagged_similarity

    clusters = np.asarray(spike_clusters, dtype=np.int64)
    counts = np.bincount(clusters, minlength=k)[:k].astype(np.float64)
    ptp, cosine, near = _footprints(templates_uv)
    sizes = np.asarray(amplitudes, dtype=np.float64) * ptp.max(axis=1)[clusters]
    order = np.argsort(clusters, kind="stable")
    by_unit = np.split(sizes[order], np.cumsum(counts.astype(np.int64))[:-1])  # each unit's sizes, once
    for u in range(k):
        if counts[u] == 0:
            continue
        for v in range(k):
            if v == u or not near[u, v] or counts[v] < min_fraction * counts[u] or cosine(u, v) < min_cosine:
                continue
            if lagged_similarity(templates_white[u], templates_white[v], max_lag=RAY_MAX_LAG)[0] < min_shape:
                continue
            if size_overlap(by_unit[u], by_unit[v]) > max_overlap:
                ray[u] = True
                break
    return ray


def label_units(
    metrics: UnitMetrics,
    *,
    good_max_contamination: float,
    good_min_snr: float,
    good_min_presence: float,
    noise_max_snr: float,
    good_min_spikes: int = 0,
    possible_piece: np.ndarray | None = None,
) -> np.ndarray:
    """'noise' when snr < noise_max_snr (or undefined); 'good' when contamination <
    good_max_contamination, snr >= good_min_snr, presence_ratio >= good_min_presence and at least
    ``good_min_spikes`` spikes (a train of a few dozen shows no refractory violation even when it
    is all noise: 31 spikes in 300 s expect 0.01 violations at full contamination), and the
    unit is not marked in ``possible_piece`` (``possible_pieces`` and ``same_ray_units``: units
    that may not be one whole neuron); 'mua' otherwise. An undefined contamination or presence
    (NaN) is never good."""
    if not 0.0 <= good_max_contamination <= 1.0:
        raise SpikesortError(f"good_max_contamination must be in [0, 1], got {good_max_contamination}")
    if not 0.0 <= good_min_presence <= 1.0:
        raise SpikesortError(f"good_min_presence must be in [0, 1], got {good_min_presence}")
    if good_min_snr < 0 or noise_max_snr < 0:
        raise SpikesortError(f"SNR thresholds must be >= 0, got {good_min_snr} and {noise_max_snr}")
    s = np.asarray(metrics.snr, dtype=np.float64)
    # comparisons with NaN are False, so undefined metrics fall through to mua / noise
    noise = ~(s >= noise_max_snr)
    good = (
        (np.asarray(metrics.contamination) < good_max_contamination)
        & (s >= good_min_snr)
        & (np.asarray(metrics.presence_ratio) >= good_min_presence)
        & (np.asarray(metrics.n_spikes) >= good_min_spikes)
    )
    if possible_piece is not None:
        good &= ~np.asarray(possible_piece, dtype=bool)
    return np.where(noise, "noise", np.where(good, "good", "mua"))
