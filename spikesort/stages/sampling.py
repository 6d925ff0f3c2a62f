"""Which spikes a step looks at, when it cannot look at all of them.

Every draw is a fixed function of the spikes themselves (:func:`spike_keys`), not of a random
stream shared by the whole stage: a unit's template, or the snippets two units are compared on,
then depend on that unit's spikes alone. With one stream, a change to one cluster (a split
tried once more, one unit more) reshuffled the draws of every unit after it, and with them
merges elsewhere on the probe.
"""

from __future__ import annotations

import numpy as np


def spike_keys(times: np.ndarray, channels: np.ndarray, *, seed: int) -> np.ndarray:
    """(n,) uint64 pseudo-random keys, a fixed function of each spike's sample, peak channel and
    the seed: the k smallest keys of a channel are a uniform random choice of k of its spikes,
    whichever order or grouping the spikes arrive in."""
    z = np.asarray(times).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z ^= np.asarray(channels).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    z += np.uint64(int(seed) % 2**64)
    # splitmix64's finaliser: every input bit reaches every output bit
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def keyed_subset(times: np.ndarray, max_spikes: int, *, seed: int) -> np.ndarray:
    """Up to ``max_spikes`` of ``times``, sorted: those with the smallest keys. A uniform random
    choice that depends only on the spikes and the seed, and that keeps most of its spikes when a
    few are added or removed (a merge, a dropped residue)."""
    times = np.asarray(times)
    if len(times) <= max_spikes:
        return np.sort(times)
    keys = spike_keys(times, np.zeros(len(times), dtype=np.int64), seed=seed)
    return np.sort(times[np.argpartition(keys, max_spikes - 1)[:max_spikes]])
