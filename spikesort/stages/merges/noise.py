"""Merges of units that differ from each other by no more than their spikes' noise.

On a dense probe (a 10 x 10 MEA at 15 µm, Neuropixels 2) a neuron can leave pieces of a few dozen
to a few hundred spikes: its spikes split by the clustering into two or three units of one size,
or a few of its spikes that changed shape. Their footprints agree to 0.98-0.99 over 30-90
channels, yet their whitened templates, the medians of so few spikes, agree in shape only to
0.77-0.87; and their trains are too short for the refractory test of :mod:`.refractory` to say
anything. The spikes themselves can: two units that are one population have mean waveforms
whose squared distance is what the spikes' own scatter gives for their counts (the sum over
samples and channels of each unit's variance over its count), whatever the shape similarity.
Two neurons differ by more, and the more the more spikes they have.
"""

from __future__ import annotations

import logging

import numpy as np

from spikesort.stages.sampling import keyed_subset

from .refractory import outer_refractory_ratio
from .templates import complete_link, footprint_cosine, lagged_similarity

log = logging.getLogger(__name__)

# the excess distance below which two units are one population. A neuron's pieces are not quite
# one population (the clustering split them along some feature, which biases each piece's mean):
# on MEArec's dense probes (SqMEA-10-15, Neuropixels2-64, Neuronexus-32) they came at 2.2-6.3,
# distinct neurons with footprints as alike (0.97-0.99 on 9-36 channels; 2026-12-03) at 14.7 and
# more, a neuron beside a 21-spike false unit at 8.5 (docs/benchmarks.md, ninth pass)
MAX_EXCESS = 8.0
# the footprint gate before the snippets are read. A piece of 21-45 spikes has a template, the
# median of so few spikes, whose footprint agreed with its neuron's to 0.93-0.96 only (excess
# 1.1-4.1; static32 seed 1, MEArec SqMEA seeds 1 and 3, 2026-12-04). There, distinct neurons
# alike above 0.9 and in size (``min_size_ratio``) had an excess of 20 or more
MIN_FOOTPRINT_COSINE = 0.9


def excess_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Squared distance between the mean waveforms of two sets of (n, nt, C) snippets over its
    expectation when both are draws of one population (the sum of each set's per-entry variance
    over its count): about 1 for one population, larger for two."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 snippets in each set, got {len(a)} and {len(b)}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    d2 = float(((a.mean(axis=0) - b.mean(axis=0)) ** 2).sum())
    noise = float(a.var(axis=0, ddof=1).sum()) / len(a) + float(b.var(axis=0, ddof=1).sum()) / len(b)
    return d2 / max(noise, 1e-12)


def noise_merges(
    store,
    dense: np.ndarray,
    templates_uv: np.ndarray,
    times: list[np.ndarray],
    *,
    pre: int,
    nt: int,
    refractory: int,
    double_fit: int,
    duration: int,
    seed: int,
    max_lag: int = 3,
    min_cosine: float = MIN_FOOTPRINT_COSINE,
    min_channels: int = 8,
    min_size_ratio: float = 0.75,
    min_expected: float = 3.0,
    max_excess: float = MAX_EXCESS,
    min_spikes: int = 20,
    max_spikes: int = 300,
) -> list[list[tuple[int, int]]]:
    """Groups of units that are one population of spikes, each as (unit, offset that aligns its
    spikes on the group's largest unit), like the other template merges.

    A pair needs footprints (``templates_uv``' peak-to-peak per channel) agreeing to
    ``min_cosine`` over at least ``min_channels`` channels (on a tetrode every neuron's footprint
    agrees), peak-to-peak sizes within ``min_size_ratio``, trains too short for the refractory
    test (fewer than ``min_expected`` pairs expected in the period beyond ``double_fit`` samples)
    holding no pair there, and an :func:`excess_distance` under ``max_excess`` between up to
    ``max_spikes`` whitened snippets of each, aligned at the templates' best lag, on the channels
    either template holds. Groups join lowest excess first, and only when every cross pair
    qualifies (complete link), so no chain links two neurons through a piece.
    """
    k = dense.shape[0]
    if k == 0:
        return []
    ptp = np.ptp(templates_uv, axis=1)
    size = ptp.max(axis=1)
    counts = np.array([len(t) for t in times])
    held = np.abs(dense).sum(axis=1) > 0  # (k, C) the channels each sparse template holds
    ok = np.zeros((k, k), dtype=bool)
    lag = np.zeros((k, k), dtype=np.int64)
    pairs = []

    def snippets(unit: int, shift: int, chans: np.ndarray) -> np.ndarray:
        t = keyed_subset(times[unit], max_spikes, seed=seed)
        return store.snippets(t - shift, pre=pre, nt=nt, channels=chans)

    for i in range(k):
        for j in range(i + 1, k):
            if min(counts[i], counts[j]) < min_spikes or min(size[i], size[j]) < min_size_ratio * max(size[i], size[j]):
                continue
            cos, n_channels = footprint_cosine(ptp[i], ptp[j])
            if cos < min_cosine or n_channels < min_channels:
                continue
            _, shift = lagged_similarity(dense[i], dense[j], max_lag=max_lag)
            ratio, expected = outer_refractory_ratio(
                times[i], times[j] - shift, refractory=refractory, duration=duration, inner=double_fit
            )
            if expected >= min_expected or ratio > 0:
                continue
            chans = np.flatnonzero(held[i] | held[j])
            excess = excess_distance(snippets(i, 0, chans), snippets(j, shift, chans))
            log.debug(
                "units %d, %d: footprints %.4f on %d channels, excess distance %.2f", i, j, cos, n_channels, excess
            )
            if excess < max_excess:
                ok[i, j] = ok[j, i] = True
                lag[i, j], lag[j, i] = shift, -shift
                pairs.append((excess, i, j))
    order = [(i, j) for _e, i, j in sorted(pairs)]
    return complete_link(order, k=k, linked=lambda a, b: ok[a, b], lag=lag, sizes=counts)
