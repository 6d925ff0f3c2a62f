"""Numba kernels for detection: local-extremum peaks and neighbourhood projections.

Each kernel has a plain numpy twin in ``tests/test_kernels.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import FASTMATH, INNER, JIT


@njit(**JIT, fastmath=FASTMATH, inline="always")
def _is_peak(x, sign, v, t, c, neighbors, exclusion):
    """sign * x[t, c] (= v) is the largest within ``exclusion`` samples on c and its neighbours;
    ties go to the earlier sample, then the lower channel."""
    n_t = x.shape[0]
    t0 = max(0, t - exclusion)
    t1 = min(n_t, t + exclusion + 1)
    # the own channel first, nearest samples first: most samples above threshold sit on a
    # spike's slope, and the next or previous sample rejects them in one or two reads
    for d in range(1, exclusion + 1):
        if t - d >= t0 and sign * x[t - d, c] >= v:
            return False
        if t + d < t1 and sign * x[t + d, c] > v:
            return False
    for k in range(neighbors.shape[1]):
        cc = neighbors[c, k]
        if cc < 0:
            break
        if cc == c:
            continue
        for tt in range(t0, t1):
            w = sign * x[tt, cc]
            if w > v or (w == v and (tt < t or (tt == t and cc < c))):
                return False
    return True


@njit(**JIT, fastmath=FASTMATH)
def detect_peaks_rows(x, sign, threshold, neighbors, exclusion, rows):
    """``detect_peaks`` on the samples listed in ``rows`` (ascending) only."""
    n_c = x.shape[1]
    cap = 1024
    times = np.empty(cap, dtype=np.int64)
    chans = np.empty(cap, dtype=np.int64)
    n = 0
    for i in range(rows.shape[0]):
        t = rows[i]
        row = x[t]
        # a vectorised count first: most rows hold no value above threshold
        above = 0
        for c in range(n_c):
            above += sign * row[c] > threshold
        if above == 0:
            continue
        for c in range(n_c):
            v = sign * x[t, c]
            if v <= threshold:
                continue
            if _is_peak(x, sign, v, t, c, neighbors, exclusion):
                if n == cap:
                    # element loops, not slice assignment: a shape-checked copy compiles a
                    # formatted error message (seconds of compile time)
                    cap *= 2
                    nt_ = np.empty(cap, dtype=np.int64)
                    nc_ = np.empty(cap, dtype=np.int64)
                    for j in range(n):
                        nt_[j] = times[j]
                        nc_[j] = chans[j]
                    times = nt_
                    chans = nc_
                times[n] = t
                chans[n] = c
                n += 1
    return times[:n], chans[:n]


def detect_peaks(x, sign, threshold, neighbors, exclusion, keep_start, keep_stop):
    """Samples where ``sign * x`` exceeds ``threshold`` and is the largest value within
    ``exclusion`` samples on the channel and its ``neighbors`` (rows padded with -1).

    Ties go to the earlier sample, then the lower channel, so equal peaks give one event.
    Only samples in [keep_start, keep_stop) are returned; the rest of ``x`` is context.
    Returns (times, channels), times sorted, channels ascending within a time.

    Plain Python over ``detect_peaks_rows``: a jitted wrapper cost a second compile of it.
    """
    rows = np.arange(max(0, int(keep_start)), min(x.shape[0], int(keep_stop)), dtype=np.int64)
    return detect_peaks_rows(x, float(sign), float(threshold), neighbors, int(exclusion), rows)


@njit(**JIT, fastmath=FASTMATH)
def project_neighborhoods(x, times, chans, neighbors, bases, pre):
    """Project each event's window on every neighbour channel onto the temporal bases.

    x: (T, C) traces; times/chans: event sample (the aligned peak) and peak channel;
    neighbors: (C, M) channel lists padded with -1; bases: (K, nt) temporal waveforms whose
    sample ``pre`` is the peak. Returns (n, M, K) float32; padded slots and windows that fall
    outside ``x`` give zeros.
    """
    n = times.shape[0]
    m = neighbors.shape[1]
    k_b, nt = bases.shape
    n_t = x.shape[0]
    out = np.empty((n, m, k_b), dtype=np.float32)
    out[:] = 0
    for i in range(n):
        start = times[i] - pre
        if start < 0 or start + nt > n_t:
            continue
        c = chans[i]
        for j in range(m):
            cc = neighbors[c, j]
            if cc < 0:
                break
            for k in range(k_b):
                acc = 0.0
                for s in range(nt):
                    acc += bases[k, s] * x[start + s, cc]
                out[i, j, k] = acc
    return out


# a call, not inline="always": numba would type and lower its body once per call site (it has
# two), and only the few edge rows take this path
@njit(**INNER, fastmath=FASTMATH)
def _filter_row(y, x, h, pre, t, scale):
    """y[t, :] = scale * sum_i h[i] * x[t - pre + i, :] over the taps that fall inside x."""
    n_t, n_c = x.shape
    i0 = max(0, pre - t)
    i1 = min(h.shape[0], n_t - t + pre)
    for c in range(n_c):
        y[t, c] = 0.0
    for i in range(i0, i1):
        hi = h[i]
        src = x[t - pre + i]
        for c in range(n_c):
            y[t, c] += hi * src[c]
    for c in range(n_c):
        y[t, c] *= scale[c]


@njit(**JIT, fastmath=FASTMATH)
def temporal_filter(x, h, pre, scale):
    """Matched filter along time: y[t, c] = scale[c] * sum_i h[i] * x[t - pre + i, c], zero
    beyond the edges (``scale``: (C,) float32, e.g. one over each channel's filtered noise sd).

    The channel loop is innermost, over contiguous memory, so it vectorises. Away from the
    edges four output rows are accumulated together, two input rows at a time: each input row
    loaded feeds four sums, which halves the memory traffic per multiply-add of a one-row loop
    (the filter was a third of a sort's CPU time).
    """
    n_t, n_c = x.shape
    nh = h.shape[0]
    y = np.empty((n_t, n_c), dtype=np.float32)
    # zero-padded taps: output row t + k takes input row t - pre + j with h[j - k] = hp[j - k + 3]
    hp = np.empty(nh + 8, dtype=np.float32)
    hp[:] = 0
    for i in range(nh):
        hp[i + 3] = h[i]
    a0 = np.empty(n_c, dtype=np.float32)
    a1 = np.empty(n_c, dtype=np.float32)
    a2 = np.empty(n_c, dtype=np.float32)
    a3 = np.empty(n_c, dtype=np.float32)
    inner_stop = n_t - (nh - pre)  # rows t whose taps all fall inside x: pre <= t < inner_stop
    t = min(pre, n_t)
    for edge in range(t):
        _filter_row(y, x, h, pre, edge, scale)
    while t + 3 < inner_stop:
        for c in range(n_c):
            a0[c] = 0.0
            a1[c] = 0.0
            a2[c] = 0.0
            a3[c] = 0.0
        s0 = t - pre
        j = 0
        while j + 2 <= nh + 3:
            r0 = x[s0 + j]
            r1 = x[s0 + j + 1]
            for c in range(n_c):
                v0 = r0[c]
                v1 = r1[c]
                a0[c] += hp[j + 3] * v0 + hp[j + 4] * v1
                a1[c] += hp[j + 2] * v0 + hp[j + 3] * v1
                a2[c] += hp[j + 1] * v0 + hp[j + 2] * v1
                a3[c] += hp[j] * v0 + hp[j + 1] * v1
            j += 2
        if j < nh + 3:
            r0 = x[s0 + j]
            for c in range(n_c):
                v0 = r0[c]
                a0[c] += hp[j + 3] * v0
                a1[c] += hp[j + 2] * v0
                a2[c] += hp[j + 1] * v0
                a3[c] += hp[j] * v0
        for c in range(n_c):
            sc = scale[c]
            y[t, c] = a0[c] * sc
            y[t + 1, c] = a1[c] * sc
            y[t + 2, c] = a2[c] * sc
            y[t + 3, c] = a3[c] * sc
        t += 4
    for edge in range(t, n_t):
        _filter_row(y, x, h, pre, edge, scale)
    return y
