"""Probe motion between two sessions, from the units alone.

For every candidate shift, A's waveforms are moved and each A unit scores its best look-alike in
B (waveform similarity, damped by the distance left after the shift); the shift with the highest
total wins. Units present in only one session score low at every shift, so they do not pull the
estimate. On long shanks (span > ``NONRIGID_SPAN_UM``) each depth block runs that scan with its own
units (``scan_blocks``). Then matched pairs refine it: the median of their depth differences
(rigid), or per block the median of their residuals to the scanned motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compare import cosine_matrix, moved_waveforms

__all__ = ["Motion", "scan_rigid", "scan_blocks", "refine_motion", "depth_blocks", "is_nonrigid", "NONRIGID_SPAN_UM"]

NONRIGID_SPAN_UM = 1000.0
MIN_NONRIGID_SPAN_UM = 200.0
BLOCK_SCAN_UM = 400.0  # depth blocks of the non-rigid scan (50 % overlap)
NEIGHBOUR_WEIGHT = 0.25  # an adjacent block's units count this much in a block's score curve
RIGID_PSEUDO_UNITS = 1.0  # the mean unit's rigid curve added to every block: a block without units follows it
REFINE_SIGMA_UM = 150.0  # Gaussian weights of pairs around a block's depth in the refinement
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
    def constant(cls, shift_um: float, depth_um: float = 0.0) -> Motion:
        return cls(np.array([float(depth_um)]), np.array([float(shift_um)]))


def _best_scores(a, b, shift: float) -> np.ndarray:
    """(U_A,) each A unit's best look-alike score in B after moving A by ``shift``."""
    moved = moved_waveforms(a.waveforms, a.channel_positions, b.channel_positions, np.full(a.n_units, shift))
    cos = np.clip(cosine_matrix(moved, b.waveforms), 0, 1)
    d = np.hypot(
        a.positions[:, None, 0] - b.positions[None, :, 0], a.positions[:, None, 1] + shift - b.positions[None, :, 1]
    )
    s = cos**SCORE_POWER * np.exp(-0.5 * (d / SCORE_SIGMA_UM) ** 2)
    return s.max(axis=1)


def _score(a, b, shift: float) -> float:
    return float(_best_scores(a, b, shift).sum())


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


def is_nonrigid(span_um: tuple[float, float], nonrigid: bool | None) -> bool:
    """Depth-dependent motion: asked for, or (None) on shanks longer than NONRIGID_SPAN_UM; never on
    contacts spanning less than MIN_NONRIGID_SPAN_UM (no room for two blocks)."""
    span = span_um[1] - span_um[0]
    if span < MIN_NONRIGID_SPAN_UM:
        return False
    return bool(span > NONRIGID_SPAN_UM) if nonrigid is None else bool(nonrigid)


def depth_blocks(span_um: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of ~BLOCK_SCAN_UM blocks with 50 % overlap covering the span (at least 2)."""
    lo, hi = span_um
    size = min(BLOCK_SCAN_UM, (hi - lo) / 2)
    n = max(int(round((hi - lo - size) / (size / 2))) + 1, 2)
    starts = np.linspace(lo, hi - size, n)
    return starts, starts + size


class _Scores:
    """Per-unit best scores (U_A,) by shift, each shift computed once."""

    def __init__(self, a, b):
        self.a, self.b, self.cache = a, b, {}

    def __call__(self, shifts: np.ndarray) -> np.ndarray:
        out = []
        for s in shifts:
            key = round(float(s), 3)
            if key not in self.cache:
                self.cache[key] = _best_scores(self.a, self.b, key)
            out.append(self.cache[key])
        return np.array(out)  # (G, U_A)


def scan_blocks(a, b, *, max_shift_um: float, span_um: tuple[float, float], step_um: float = 5.0) -> Motion:
    """Depth-dependent shift A -> B: each depth block scans its own shift over ±max_shift_um.

    A block's score curve is the sum of its A units' best-look-alike scores at each shift (as the
    rigid scan, restricted to the block). Blocks borrow confidence in score space: a block's curve
    is added to its neighbours' at NEIGHBOUR_WEIGHT and to the mean unit's rigid curve (one
    pseudo-unit), so a block with few or ambiguous units follows its neighbours and the rigid
    estimate, while a block with many units that agree keeps its own peak. Coarse grid, then 1 µm
    around each block's peak. The shift is placed at the mean depth of the block's units.
    """
    starts, ends = depth_blocks(span_um)
    centres = (starts + ends) / 2
    if a.n_units == 0 or b.n_units == 0:
        return Motion(centres, np.zeros(centres.size))
    y = a.positions[:, 1]
    member = (y[None, :] >= starts[:, None]) & (y[None, :] < ends[:, None])  # (K, U_A)
    member[0] |= y < starts[0]
    member[-1] |= y >= ends[-1]
    # the neighbour matrix: own block 1, adjacent blocks NEIGHBOUR_WEIGHT
    k = np.arange(centres.size)
    mix = np.where(k[:, None] == k[None, :], 1.0, np.where(np.abs(k[:, None] - k[None, :]) == 1, NEIGHBOUR_WEIGHT, 0.0))
    weights = mix @ member.astype(float) + RIGID_PSEUDO_UNITS / a.n_units  # (K, U_A) unit weights per block
    scores = _Scores(a, b)

    def curves(grid: np.ndarray) -> np.ndarray:
        return weights @ scores(grid).T  # (K, G)

    grid = np.arange(-max_shift_um, max_shift_um + step_um / 2, step_um)
    coarse = grid[np.argmax(curves(grid), axis=1)]
    shifts = np.empty(centres.size)
    depths = centres.copy()
    for j, c in enumerate(coarse):
        fine = np.arange(c - step_um, c + step_um + 0.5, 1.0)
        best = scores(fine)  # (G, U_A)
        g = int(np.argmax(weights[j] @ best.T))
        shifts[j] = fine[g]
        w = member[j] * best[g]  # units that found a look-alike at that shift locate the block
        if w.sum() > 0:
            depths[j] = float(np.sum(w * y) / w.sum())
    order = np.argsort(depths, kind="stable")
    return _extend_to_span(depths[order], shifts[order], span_um)


def _extend_to_span(depths: np.ndarray, shifts: np.ndarray, span_um: tuple[float, float]) -> Motion:
    """Nodes at the span's ends, on the line through each end node and the first node half a block
    inward: the end blocks' values sit at their units' mean depth, a few hundred µm in from the
    deepest and shallowest units, and a constant beyond them would miss a depth gradient there."""
    lo, hi = span_um
    ends_d, ends_s = [], []
    for end, idx in ((lo, range(1, depths.size)), (hi, range(depths.size - 2, -1, -1))):
        e = 0 if end == lo else depths.size - 1
        far = next((i for i in idx if abs(depths[i] - depths[e]) >= BLOCK_SCAN_UM / 2), None)
        if far is None or abs(end - depths[e]) < 1.0:
            continue
        slope = (shifts[far] - shifts[e]) / (depths[far] - depths[e])
        ends_d.append(end)
        ends_s.append(shifts[e] + slope * (end - depths[e]))
    d = np.concatenate([depths, ends_d])
    order = np.argsort(d, kind="stable")
    return Motion(d[order], np.concatenate([shifts, ends_s])[order])


def refine_motion(depth_a: np.ndarray, dy: np.ndarray, *, prior: Motion) -> Motion:
    """Motion from matched pairs: A's depths and their depth differences B - A, around ``prior``.

    Rigid prior: the median difference. Non-rigid prior: each block moves by the weighted median of
    the pairs' residuals to the prior (Gaussian weights around the block's depth), with a
    pseudo-residual 0 of weight 1 so that a block with few pairs keeps the scan's value. Residuals,
    not raw differences: a block at the end of the shank sees pairs on one side only, and their raw
    median would lag a depth gradient.
    """
    if dy.size == 0:
        return prior
    if prior.rigid:
        return Motion.constant(float(np.median(dy)), float(prior.depths_um[0]))
    if dy.size < 6:
        return prior
    resid = dy - prior.at(depth_a)
    shifts = np.empty(prior.depths_um.size)
    for k, c in enumerate(prior.depths_um):
        w = np.exp(-0.5 * ((depth_a - c) / REFINE_SIGMA_UM) ** 2)
        shifts[k] = prior.shifts_um[k] + _weighted_median(np.append(resid, 0.0), np.append(w, 1.0))
    return Motion(prior.depths_um.copy(), shifts)
