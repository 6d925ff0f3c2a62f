"""The bimodality test that splits clusters and vetoes merges: is there a clear valley between two modes?"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d


def bimodality(proj: np.ndarray, split_value: float, *, min_z: float = 2.0) -> float:
    """1 - valley / smaller peak of the density of ``proj`` around ``split_value`` (0 = one mode).

    The density is a histogram smoothed at Silverman's bandwidth, so sampling noise in a single
    mode does not look like a valley.
    """
    n = len(proj)
    if n < 4:
        return 0.0
    lo, hi = np.percentile(proj, [0.5, 99.5])
    if hi <= lo:
        return 0.0
    n_bins = 100
    hist, edges = np.histogram(proj, bins=n_bins, range=(lo, hi))
    sd = np.std(proj)
    iqr = np.subtract(*np.percentile(proj, [75, 25]))
    bw = 0.9 * min(sd, iqr / 1.34 if iqr > 0 else sd) * n**-0.2
    h = gaussian_filter1d(hist.astype(float), max(bw / (edges[1] - edges[0]), 0.5))
    centers = 0.5 * (edges[1:] + edges[:-1])
    cut = int(np.clip(np.searchsorted(centers, split_value), 1, n_bins - 1))
    left, right = int(np.argmax(h[:cut])), cut + int(np.argmax(h[cut:]))
    peak = min(h[left], h[right])
    if peak <= 0:
        return 0.0
    v = left + int(np.argmin(h[left : right + 1]))
    valley = h[v]
    # a valley between few spikes may be sampling noise: the counts within a bandwidth of the
    # smaller peak and of the valley must differ by more than their Poisson spread
    small = left if h[left] <= h[right] else right
    n_peak = np.count_nonzero(np.abs(proj - centers[small]) <= bw)
    n_valley = np.count_nonzero(np.abs(proj - centers[v]) <= bw)
    if n_peak - n_valley < min_z * np.sqrt(n_peak + n_valley):
        return 0.0
    return float(1.0 - valley / peak)
