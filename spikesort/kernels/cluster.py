"""Numba kernel for clustering: 2-means on a group's local PCA features.

The numpy twin is in ``tests/test_kernels.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import JIT


@njit(**JIT)
def two_means_labels(x, first, u, n_iter):
    """Labels 0/1 of Lloyd's 2-means on the rows of x (n, d) float64, seeded k-means++ style:
    the first centre is row ``first``, the second the row where the cumulative squared distance
    to it first exceeds ``u`` (uniform in [0, 1)) of its total, or row 0 when every row sits on
    the first centre. Ties in the assignment go to centre 0."""
    n, d = x.shape
    lab = np.empty(n, dtype=np.int64)
    lab[:] = 0
    if n == 0:
        return lab
    cent = np.empty((2, d), dtype=np.float64)
    for j in range(d):
        cent[0, j] = x[first, j]
    cdf = np.empty(n, dtype=np.float64)
    total = 0.0
    for i in range(n):
        s = 0.0
        for j in range(d):
            diff = x[i, j] - cent[0, j]
            s += diff * diff
        total += s
        cdf[i] = total
    second = 0
    if total > 0:
        target = u * total
        second = n - 1
        for i in range(n):
            if cdf[i] > target:
                second = i
                break
    for j in range(d):
        cent[1, j] = x[second, j]
    sums = np.empty((2, d), dtype=np.float64)
    sums[:] = 0
    counts = np.empty(2, dtype=np.int64)
    counts[:] = 0
    for it in range(n_iter):
        changed = False
        for i in range(n):
            d0 = 0.0
            d1 = 0.0
            for j in range(d):
                a = x[i, j] - cent[0, j]
                b = x[i, j] - cent[1, j]
                d0 += a * a
                d1 += b * b
            new = 1 if d1 < d0 else 0
            if new != lab[i]:
                changed = True
            lab[i] = new
        if not changed and it > 0:
            break
        sums[:] = 0.0
        counts[:] = 0
        for i in range(n):
            k = lab[i]
            counts[k] += 1
            for j in range(d):
                sums[k, j] += x[i, j]
        for k in range(2):
            if counts[k] > 0:
                for j in range(d):
                    cent[k, j] = sums[k, j] / counts[k]
    return lab
