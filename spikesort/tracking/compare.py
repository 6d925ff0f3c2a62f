"""Unit-to-unit features between two sessions of one probe, after a depth shift.

A shift ``s`` means: a neuron at depth y in session A is seen at depth y + s in session B. A's
waveforms are moved by ``s`` with linear interpolation along depth within each contact column
(nearest contacts by distance on probes without columns), then compared with B's on B's contacts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairFeatures", "shift_matrix", "moved_waveforms", "pair_features", "cosine_matrix"]

COLUMN_TOL_UM = 1.0


def shift_matrix(src: np.ndarray, dst: np.ndarray, shift_um: float) -> np.ndarray:
    """(C_dst, C_src) weights: field at dst contact q = field of the source at q - (0, shift)."""
    m = np.zeros((dst.shape[0], src.shape[0]))
    for i, q in enumerate(dst):
        tx, ty = q[0], q[1] - shift_um
        col = np.flatnonzero(np.abs(src[:, 0] - tx) < COLUMN_TOL_UM)
        if col.size >= 2:
            ys = src[col, 1]
            order = np.argsort(ys)
            col, ys = col[order], ys[order]
            if ty < ys[0] or ty > ys[-1]:
                continue  # outside the probe: unknown, counted as no signal
            j = int(np.clip(np.searchsorted(ys, ty), 1, ys.size - 1))
            f = (ty - ys[j - 1]) / max(ys[j] - ys[j - 1], 1e-9)
            m[i, col[j - 1]] += 1 - f
            m[i, col[j]] += f
        else:
            d = np.hypot(src[:, 0] - tx, src[:, 1] - ty)
            near = np.argsort(d)[:3]
            if d[near[0]] > 40.0:
                continue
            w = 1.0 / np.maximum(d[near], 1.0)
            m[i, near] = w / w.sum()
    return m


def moved_waveforms(
    waveforms: np.ndarray, src: np.ndarray, dst: np.ndarray, shifts_um: np.ndarray, *, step_um: float = 1.0
) -> np.ndarray:
    """Each waveform (U, T, C_src) moved by its own shift (U,) onto the dst contacts: (U, T, C_dst)."""
    out = np.zeros((waveforms.shape[0], waveforms.shape[1], dst.shape[0]), dtype=np.float64)
    keys = np.round(np.asarray(shifts_um, dtype=float) / step_um).astype(np.int64)
    for key in np.unique(keys):
        sel = keys == key
        out[sel] = waveforms[sel] @ shift_matrix(src, dst, key * step_um).T
    return out


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(U_A, U_B) cosine similarity of flattened waveforms."""
    # one dtype, contiguous: numpy's mixed float32/float64 product takes a path 100x slower
    fa = np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=np.float64)
    fb = np.ascontiguousarray(b.reshape(b.shape[0], -1), dtype=np.float64)
    na = np.linalg.norm(fa, axis=1)
    nb = np.linalg.norm(fb, axis=1)
    return (fa @ fb.T) / np.maximum(np.outer(na, nb), 1e-12)


@dataclass
class PairFeatures:
    """Features of every (unit of A, unit of B) pair: (U_A, U_B) each."""

    cosine: np.ndarray  # waveform similarity after the shift
    distance_um: np.ndarray  # distance between B's position and A's shifted position
    log_amp_ratio: np.ndarray  # |log(ptp_A / ptp_B)|

    def stacked(self) -> np.ndarray:
        """(U_A * U_B, 3) rows for the probability model."""
        z = np.arctanh(np.clip(self.cosine, -0.999, 0.999))
        return np.column_stack([z.ravel(), np.sqrt(self.distance_um.ravel()), self.log_amp_ratio.ravel()])


def pair_features(
    wave_a: np.ndarray,
    pos_a: np.ndarray,
    chan_a: np.ndarray,
    wave_b: np.ndarray,
    pos_b: np.ndarray,
    chan_b: np.ndarray,
    shifts_um: np.ndarray,
) -> PairFeatures:
    """Features between A's units moved by ``shifts_um`` (U_A,) and B's units."""
    moved = moved_waveforms(wave_a, chan_a, chan_b, shifts_um)
    cos = cosine_matrix(moved, wave_b)
    shifted = pos_a + np.column_stack([np.zeros(len(pos_a)), shifts_um])
    dist = np.hypot(shifted[:, None, 0] - pos_b[None, :, 0], shifted[:, None, 1] - pos_b[None, :, 1])
    amp_a = np.ptp(wave_a, axis=1).max(axis=1)
    amp_b = np.ptp(wave_b, axis=1).max(axis=1)
    ratio = np.abs(np.log(np.maximum(amp_a[:, None], 1e-9) / np.maximum(amp_b[None, :], 1e-9)))
    return PairFeatures(cosine=cos, distance_um=dist, log_amp_ratio=ratio)
