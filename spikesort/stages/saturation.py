"""Saturated (clipped) stretches of a raw recording: samples where the converter sat at its rail.

Filtering turns a clipped stretch into a large ringing transient that detection would take for
spikes, so preprocessing zeroes the whitened traces over each stretch and a few ms around it
(the high-pass filter rings for about that long). Only integer recordings can be checked, at the
limits of their type, or one step inside them (int16: -32768 or -32767, 32766 or 32767: many
systems clip symmetrically at ±32767); a converter whose rail lies further inside the type's
range (a 10-bit ADC stored as int16) is not recognised.
"""

from __future__ import annotations

import numpy as np

# how far on each side of a clipped sample the traces are left out: a rail-to-rail step through
# the 300 Hz high-pass still rings above one noise sd ~6 ms later, above 5 sd within ~3 ms
PAD_MS = 5.0


def rails(dtype) -> tuple[float, float] | None:
    """The values at or beyond which a recording of this type has clipped; None for float data."""
    dt = np.dtype(dtype)
    if dt.kind not in "iu":
        return None
    info = np.iinfo(dt)
    return float(info.min + 1), float(info.max - 1)


def saturated_mask(raw: np.ndarray, *, rails: tuple[float, float], channels: np.ndarray, pad: int) -> np.ndarray:
    """(n,) bool: samples within ``pad`` samples of one where any of ``channels`` is at a rail."""
    lo, hi = rails
    if len(raw) and raw.min() > lo and raw.max() < hi:  # the common case, without a (n, C) copy
        return np.zeros(len(raw), dtype=bool)
    x = raw[:, channels]
    hit = ((x <= lo) | (x >= hi)).any(axis=1)
    if pad <= 0 or not hit.any():
        return hit
    n = len(hit)
    counts = np.concatenate([[0], np.cumsum(hit)])
    i = np.arange(n)
    return counts[np.minimum(i + pad + 1, n)] - counts[np.maximum(i - pad, 0)] > 0


def runs(mask: np.ndarray, *, offset: int = 0) -> np.ndarray:
    """(k, 2) int64 [start, stop) of the runs of True in ``mask``, shifted by ``offset``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return np.column_stack([starts, stops]).astype(np.int64) + int(offset)


def merge_runs(parts) -> np.ndarray:
    """Concatenate (k, 2) run arrays in time order and join runs that touch (chunk boundaries)."""
    r = (
        np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1, 2) for p in parts])
        if len(parts)
        else np.zeros((0, 2), np.int64)
    )
    if len(r) < 2:
        return r
    out = [list(r[0])]
    for start, stop in r[1:]:
        if start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return np.asarray(out, dtype=np.int64)
