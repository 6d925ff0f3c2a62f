"""Numba kernels for preprocessing: zero-phase IIR filtering and the common median reference.

Traces are (n_samples, n_channels) float32; the inner loops run across channels, which are
contiguous, so one pass filters every channel at once. State is kept in float64.
The numpy twins are ``scipy.signal.sosfiltfilt`` (same odd padding and initial conditions)
and ``x - np.median(x, axis=1)``.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _sos_pass(x, sos, zi, reverse):
    """Filter the rows of x (T, C) in place with the cascade ``sos``, starting each section's
    state at ``zi[s] * x[first row]`` (steady state for a constant signal)."""
    n_t, n_c = x.shape
    n_s = sos.shape[0]
    z = np.empty((n_s, 2, n_c), dtype=np.float64)
    first = n_t - 1 if reverse else 0
    for s in range(n_s):
        for c in range(n_c):
            z[s, 0, c] = zi[s, 0] * x[first, c]
            z[s, 1, c] = zi[s, 1] * x[first, c]
    for i in range(n_t):
        t = n_t - 1 - i if reverse else i
        for c in range(n_c):
            v = np.float64(x[t, c])
            for s in range(n_s):
                b0, b1, b2 = sos[s, 0], sos[s, 1], sos[s, 2]
                a1, a2 = sos[s, 4], sos[s, 5]
                y = b0 * v + z[s, 0, c]
                z[s, 0, c] = b1 * v - a1 * y + z[s, 1, c]
                z[s, 1, c] = b2 * v - a2 * y
                v = y
            x[t, c] = v


@njit(nogil=True, cache=True)
def sosfiltfilt_rows(x, sos, zi, padlen):
    """Zero-phase filter along axis 0 of x (T, C) float32 with odd-extension padding of
    ``padlen`` samples, like scipy.signal.sosfiltfilt(sos, x, axis=0, padlen=padlen)."""
    n_t, n_c = x.shape
    ext = np.empty((n_t + 2 * padlen, n_c), dtype=np.float32)
    for t in range(n_t):
        for c in range(n_c):
            ext[padlen + t, c] = x[t, c]
    for p in range(padlen):
        for c in range(n_c):
            ext[padlen - 1 - p, c] = 2 * x[0, c] - x[p + 1, c]
            ext[padlen + n_t + p, c] = 2 * x[n_t - 1, c] - x[n_t - 2 - p, c]
    _sos_pass(ext, sos, zi, False)
    _sos_pass(ext, sos, zi, True)
    return ext[padlen: padlen + n_t].copy()


@njit(nogil=True, cache=True)
def _select(buf, k):
    """k-th smallest of buf (partially reorders buf); Hoare's quickselect, no allocation."""
    lo, hi = 0, buf.shape[0] - 1
    while lo < hi:
        pivot = buf[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                buf[i], buf[j] = buf[j], buf[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return buf[k]


@njit(nogil=True, cache=True)
def subtract_reference(x, channels, use_median):
    """x[t, :] -= median (or mean) of x[t, channels]; in place."""
    n_t, n_c = x.shape
    m = channels.shape[0]
    buf = np.empty(m, dtype=np.float32)
    for t in range(n_t):
        for j in range(m):
            buf[j] = x[t, channels[j]]
        if use_median:
            hi = _select(buf, m // 2)
            if m % 2 == 0:
                # the lower middle is the largest of the values left below position m // 2
                lo = buf[0]
                for j in range(1, m // 2):
                    if buf[j] > lo:
                        lo = buf[j]
                ref = 0.5 * (lo + hi)
            else:
                ref = hi
        else:
            ref = buf.mean()
        for c in range(n_c):
            x[t, c] -= ref
