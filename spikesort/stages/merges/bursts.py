"""Is one unit the late spikes of another's bursts?

A neuron's spikes late in a burst shrink and widen, and can come out of the clustering as a unit
of their own. Its spikes then follow one of the full-size unit's by a few to tens of ms far more
often than chance, and are followed by one far less often; two neurons firing on their own do
neither, and neurons bursting together (a network burst) come as often before as after.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class BurstEvidence(NamedTuple):
    z: float  # how far above chance a piece's spikes come lo..hi samples after one of the unit's
    asymmetry: float  # the fraction that do, less the fraction followed by one within those lags
    echo: float  # the fraction with one of the unit's at most lo samples before: echoes, residues


def burst_follower(big: np.ndarray, piece: np.ndarray, *, lo: int, hi: int, duration: int) -> BurstEvidence:
    """Do the spikes of ``piece`` come late in ``big``'s bursts? The z-score is against
    independent firing at ``big``'s mean rate."""
    big, piece = np.sort(np.asarray(big)), np.asarray(piece)
    if len(big) == 0 or len(piece) == 0 or hi <= lo:
        return BurstEvidence(0.0, 0.0, 0.0)
    latest = np.searchsorted(big, piece, side="right") - 1
    echo = np.mean((latest >= 0) & (piece - big[np.clip(latest, 0, None)] <= lo))
    i = np.searchsorted(big, piece - lo, side="right") - 1
    before = np.mean((i >= 0) & (piece - big[np.clip(i, 0, None)] <= hi))
    j = np.searchsorted(big, piece + lo, side="left")
    after = np.mean((j < len(big)) & (big[np.clip(j, 0, len(big) - 1)] - piece <= hi))
    chance = 1.0 - np.exp(-len(big) / max(int(duration), 1) * (hi - lo))
    spread = np.sqrt(max(chance * (1.0 - chance), 1e-12) / len(piece))
    return BurstEvidence(float((before - chance) / spread), float(before - after), float(echo))
