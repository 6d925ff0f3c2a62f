"""The robust noise measure every stage reads amplitudes against."""

from __future__ import annotations

import numpy as np

# MAD -> standard deviation for Gaussian noise
MAD_TO_SD = 1.4826


def robust_sd(x: np.ndarray, axis: int = 0, max_samples: int = 100_000) -> np.ndarray:
    """MAD-based noise sd along ``axis``; long inputs are subsampled with a regular stride
    (the estimate needs thousands of samples, not millions)."""
    n = x.shape[axis]
    if n > max_samples:
        x = np.take(x, np.arange(0, n, -(-n // max_samples)), axis=axis)
    # numpy selects along a strided axis slowly: move it last and contiguous first
    x = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    med = np.median(x, axis=-1, keepdims=True)
    return MAD_TO_SD * np.median(np.abs(x - med), axis=-1)
