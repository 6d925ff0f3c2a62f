"""Probe motion between two sessions, from the units alone.

Rigid first: for every candidate shift, A's waveforms are moved and each A unit scores its best
look-alike in B (waveform similarity, damped by the distance left after the shift); the shift with
the highest total wins. Units present in only one session score low at every shift, so they do
not pull the estimate. Then matched pairs refine it: the median of their depth differences, and on
long shanks (span > ``NONRIGID_SPAN_UM``) a smooth depth-dependent shift from Gaussian-weighted
medians in depth blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compare import cosine_matrix, moved_waveforms

__all__ = ["Motion", "scan_rigid", "refine_motion", "NONRIGID_SPAN_UM"]

NONRIGID_SPAN_UM = 1000.0
BLOCK_UM = 300.0
SCORE_POWER = 8  # sharpens the score so that look-alikes count, not the mediocre rest
SCORE_SIGMA_UM = 15.0


@dataclass
class Motion:
    """Depth shift (µm) from session A to session B as a function of A's depth."""

    depths_um: np.ndarray  # (n,) increasing; one value = rigid
    shifts_um: np.ndarray  # (n,)

    def at(self, depth_um: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(depth_um, dtype=float), self.depths_um, self.shifts_um)

    @property
    def rigid(self) -> bool:
        return self.depths_um.size == 1

    @classmethod
    def constant(cls, shift_um: float, depth_um: float = 0.0) -> "Motion":
        return cls(np.array([float(depth_um)]), np.array([float(shift_um)]))


def _score(a, b, shift: float) -> float:
    moved = moved_waveforms(a.waveforms, a.channel_positions, b.channel_positions, np.full(a.n_units, shift))
    cos = np.clip(cosine_matrix(moved, b.waveforms), 0, 1)
    d = np.hypot(a.positions[:, None, 0] - b.positions[None, :, 0],
                 a.positions[:, None, 1] + shift - b.positions[None, :, 1])
    s = cos ** SCORE_POWER * np.exp(-0.5 * (d / SCORE_SIGMA_UM) ** 2)
    return float(s.max(axis=1).sum()) if s.size else 0.0


def scan_rigid(a, b, *, max_shift_um: float, step_um: float = 5.0) -> tuple[float, float]:
    """Best rigid shift A -> B in ±max_shift_um, and its score (coarse grid, then 1 µm)."""
    if a.n_units == 0 or b.n_units == 0:
        return 0.0, 0.0
    grid = np.arange(-max_shift_um, max_shift_um + step_um / 2, step_um)
    scores = np.array([_score(a, b, s) for s in grid])
    best = float(grid[int(np.argmax(scores))])
    fine = np.arange(best - step_um, best + step_um + 0.5, 1.0)
    fine_scores = np.array([_score(a, b, s) for s in fine])
    i = int(np.argmax(fine_scores))
    return float(fine[i]), float(fine_scores[i])


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cw, cw[-1] / 2)])


def refine_motion(depth_a: np.ndarray, dy: np.ndarray, *, span_um: tuple[float, float], prior: float,
                  nonrigid: bool | None = None) -> Motion:
    """Motion from matched pairs: A's depths and their depth differences B - A."""
    lo, hi = span_um
    centre = (lo + hi) / 2
    if dy.size == 0:
        return Motion.constant(prior, centre)
    rigid = float(np.median(dy))
    if nonrigid is None:
        nonrigid = hi - lo > NONRIGID_SPAN_UM
    if not nonrigid or dy.size < 6:
        return Motion.constant(rigid, centre)
    n_blocks = max(int(np.ceil((hi - lo) / BLOCK_UM)), 2)
    centres = np.linspace(lo, hi, n_blocks)
    shifts = np.empty(n_blocks)
    for k, c in enumerate(centres):
        w = np.exp(-0.5 * ((depth_a - c) / BLOCK_UM) ** 2)
        # few pairs near a block: lean on the rigid value (a pseudo-pair of weight 1)
        shifts[k] = _weighted_median(np.append(dy, rigid), np.append(w, 1.0))
    return Motion(centres, shifts)
