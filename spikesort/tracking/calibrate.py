"""Match probability, calibrated within each session from its two halves (as UnitMatch does).

Each unit's first-half and second-half waveforms are two looks at one neuron (positives); halves of
different units of the same session are different neurons seen through the same probe and sorter
(negatives). A cross-session match also carries the error of moving a waveform by a fraction of the
contact pitch, so the first half is moved by a random sub-pitch round trip before it is compared.
A class-balanced logistic model on (waveform similarity, distance, amplitude ratio) learns where
"same neuron" ends in that session: its 0.5 boundary is the session's threshold, no constant.
Firing rates are left out on purpose: they change by ±50 % between days.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compare import PairFeatures, moved_waveforms, pair_features
from .units import SessionUnits, unit_positions

__all__ = ["MatchModel", "fit_session_model", "match_probability"]

L2 = 1e-2


@dataclass
class MatchModel:
    """Logistic model on standardized features: p = 1 / (1 + exp(-(x - mean) / scale @ coef - intercept))."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    n_positive: int
    n_negative: int

    def probability(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = L2, n_iter: int = 50) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression by Newton steps (a few features, thousands of rows)."""
    w_pos = 0.5 / max(y.sum(), 1)
    w_neg = 0.5 / max((1 - y).sum(), 1)
    sw = np.where(y > 0, w_pos, w_neg)
    xa = np.column_stack([x, np.ones(len(x))])
    beta = np.zeros(xa.shape[1])
    reg = np.full(xa.shape[1], l2)
    reg[-1] = 0.0  # the intercept is not shrunk
    for _ in range(n_iter):
        p = 1.0 / (1.0 + np.exp(-np.clip(xa @ beta, -50, 50)))
        grad = xa.T @ (sw * (p - y)) + reg * beta
        hess = (xa * (sw * p * (1 - p))[:, None]).T @ xa + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def _pitch(chan: np.ndarray) -> float:
    ys = np.unique(np.round(chan[:, 1], 3))
    gaps = np.diff(ys)
    return float(np.median(gaps)) * 2 if gaps.size else 20.0


def half_features(s: SessionUnits, *, seed: int = 0) -> PairFeatures:
    """Features between every unit's first half (moved by a sub-pitch round trip) and every second half."""
    rng = np.random.default_rng(seed)
    pitch = _pitch(s.channel_positions)
    delta = rng.uniform(-pitch / 2, pitch / 2, s.n_units)
    chan = s.channel_positions
    first = moved_waveforms(moved_waveforms(s.halves[0], chan, chan, delta / 2), chan, chan, -delta / 2)
    return pair_features(
        first,
        unit_positions(first, chan),
        chan,
        s.halves[1],
        unit_positions(s.halves[1], chan),
        chan,
        np.zeros(s.n_units),
    )


def fit_session_model(s: SessionUnits, *, seed: int = 0) -> MatchModel | None:
    """The session's model from its halves; None when it has fewer than 3 units."""
    if s.n_units < 3:
        return None
    f = half_features(s, seed=seed)
    x = f.stacked()
    y = np.eye(s.n_units).ravel()
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-6)
    coef, intercept = _fit_logistic((x - mean) / scale, y)
    return MatchModel(
        mean=mean, scale=scale, coef=coef, intercept=intercept, n_positive=int(y.sum()), n_negative=int((1 - y).sum())
    )


def match_probability(features: PairFeatures, models: list[MatchModel | None]) -> np.ndarray:
    """(U_A, U_B) match probability: the mean of the two sessions' calibrated models."""
    usable = [m for m in models if m is not None]
    shape = features.cosine.shape
    if not usable:
        # too few units to calibrate: waveform similarity and distance alone, stated in the log by the caller
        return np.clip(features.cosine, 0, 1) * np.exp(-0.5 * (features.distance_um / 20.0) ** 2)
    x = features.stacked()
    return np.mean([m.probability(x) for m in usable], axis=0).reshape(shape)
