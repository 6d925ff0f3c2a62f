"""Numba kernels for template matching by peeling (fit, choose, subtract on the residual).

Templates are stored sparsely: ``values`` (K, nt, S) on ``channels`` (K, S) padded with -1;
sample ``pre`` of a template is its peak. Each kernel has a numpy twin in the tests.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import FASTMATH, JIT


@njit(**JIT, fastmath=FASTMATH, inline="always")
def _dot_template(r, start, values, channels, k):
    """<r[start:start + nt, support], template k>."""
    dot = 0.0
    for s in range(channels.shape[1]):
        ch = channels[k, s]
        if ch < 0:
            break
        for j in range(values.shape[1]):
            dot += r[start + j, ch] * values[k, j, s]
    return dot


@njit(**JIT, fastmath=FASTMATH)
def best_matches(r, times, chans, values_t, channels, norm2, chan_templates, pre, max_lag, amp_lo, amp_hi):
    """For each candidate peak, the template, lag and amplitude that most reduce the residual energy.

    ``r`` (T, C) is the residual, ``values_t`` (K, S, nt) the templates channel-major. Each
    (candidate, template) pair copies the residual under the template's support, every lag's
    window at once, into a channel-major patch: the dot products then run over contiguous
    samples, and each strided read of ``r`` serves all the lags (3x faster than dot products
    over the rows of ``r`` lag by lag).
    The amplitude is the least-squares scale clipped to [amp_lo, amp_hi]; the reduction
    ``2 a <r, T> - a^2 |T|^2`` is the gain. Returns (template, time, amplitude, gain) per
    candidate; template is -1 where no window fits inside ``r``.
    """
    n = times.shape[0]
    n_t = r.shape[0]
    s_max = channels.shape[1]
    nt = values_t.shape[2]
    q = chan_templates.shape[1]
    best_k = np.empty(n, dtype=np.int64)
    best_k[:] = -1
    best_t = np.empty(n, dtype=np.int64)
    best_t[:] = 0
    best_a = np.empty(n, dtype=np.float32)
    best_a[:] = 0
    best_g = np.empty(n, dtype=np.float32)
    best_g[:] = -np.inf
    patch = np.empty((s_max, nt + 2 * max_lag), dtype=np.float32)
    for i in range(n):
        c = chans[i]
        # the lags whose window fits inside r
        lag_lo = max(-max_lag, pre - times[i])
        lag_hi = min(max_lag, n_t - nt + pre - times[i])
        if lag_lo > lag_hi:
            continue
        w0 = times[i] + lag_lo - pre
        width = nt + lag_hi - lag_lo
        for qi in range(q):
            k = chan_templates[c, qi]
            if k < 0:
                break
            n_s = s_max
            for s in range(s_max):
                ch = channels[k, s]
                if ch < 0:
                    n_s = s
                    break
                row = patch[s]
                for j in range(width):
                    row[j] = r[w0 + j, ch]
            for lag in range(lag_lo, lag_hi + 1):
                off = lag - lag_lo
                dot = 0.0
                for s in range(n_s):
                    row = patch[s]
                    tpl = values_t[k, s]
                    acc = np.float32(0.0)
                    for j in range(nt):
                        acc += row[off + j] * tpl[j]
                    dot += acc
                a = dot / norm2[k]
                if a < amp_lo:
                    a = amp_lo
                elif a > amp_hi:
                    a = amp_hi
                g = 2.0 * a * dot - a * a * norm2[k]
                if g > best_g[i]:
                    best_g[i] = g
                    best_k[i] = k
                    best_t[i] = times[i] + lag
                    best_a[i] = a
    return best_k, best_t, best_a, best_g


@njit(**JIT, fastmath=FASTMATH)
def select_non_overlapping(order, ks, ts, channels, pre, nt, n_t, n_c):
    """Greedy pick in the given order (best gain first) of fits whose windows share no
    (sample, channel) with a fit already picked; the rest wait for the next round."""
    claimed = np.empty((n_t, n_c), dtype=np.bool_)
    claimed[:] = False
    keep = np.empty(ks.shape[0], dtype=np.bool_)
    keep[:] = False
    s_max = channels.shape[1]
    for oi in range(order.shape[0]):
        i = order[oi]
        k = ks[i]
        start = ts[i] - pre
        free = True
        for s in range(s_max):
            ch = channels[k, s]
            if ch < 0:
                break
            for j in range(nt):
                if claimed[start + j, ch]:
                    free = False
                    break
            if not free:
                break
        if not free:
            continue
        keep[i] = True
        for s in range(s_max):
            ch = channels[k, s]
            if ch < 0:
                break
            for j in range(nt):
                claimed[start + j, ch] = True
    return keep


@njit(**JIT, fastmath=FASTMATH)
def subtract_templates(r, ts, ks, amps, values, channels, pre):
    """r[t - pre + j, ch] -= a * template; in place."""
    nt = values.shape[1]
    s_max = channels.shape[1]
    n_t = r.shape[0]
    for i in range(ts.shape[0]):
        k = ks[i]
        start = ts[i] - pre
        for s in range(s_max):
            ch = channels[k, s]
            if ch < 0:
                break
            for j in range(nt):
                tt = start + j
                if 0 <= tt < n_t:
                    r[tt, ch] -= amps[i] * values[k, j, s]


@njit(**JIT, fastmath=FASTMATH)
def template_projections(x, times, ind, values, channels, norm2, pre):
    """Least-squares scale of each listed template on each spike's window: <x, T> / |T|^2.

    ind: (n, J) template ids per spike (-1 = none, gives 0). Windows outside ``x`` give 0.
    """
    n, j_max = ind.shape
    nt = values.shape[1]
    n_t = x.shape[0]
    out = np.empty((n, j_max), dtype=np.float32)
    out[:] = 0
    for i in range(n):
        start = times[i] - pre
        if start < 0 or start + nt > n_t:
            continue
        for jj in range(j_max):
            k = ind[i, jj]
            if k < 0:
                continue
            dot = _dot_template(x, start, values, channels, k)
            out[i, jj] = dot / norm2[k] if norm2[k] > 0 else 0.0
    return out


@njit(**JIT, fastmath=FASTMATH)
def subtract_filtered(y, ts, ks, amps, filtered, channels, inv_sd):
    """The matched-filter output y (T, C) after ``subtract_templates``, updated in place:
    y[t - (nt - 1) + m, ch] -= a * filtered[k, m, s] * inv_sd[ch], where ``filtered`` holds each
    template's support channels convolved with the reversed filter (``filtered_templates``).

    The filter is linear, so this equals refiltering the residual, at the cost of a template
    instead of a filter pass over every sample the template touched."""
    n_t = y.shape[0]
    m_len = filtered.shape[1]
    off = (m_len - 1) // 2
    for i in range(ts.shape[0]):
        k = ks[i]
        base = ts[i] - off
        for s in range(channels.shape[1]):
            ch = channels[k, s]
            if ch < 0:
                break
            f = amps[i] * inv_sd[ch]
            for m in range(m_len):
                t = base + m
                if 0 <= t < n_t:
                    y[t, ch] -= f * filtered[k, m, s]


@njit(**JIT, fastmath=FASTMATH)
def support_energy(r, times, labels, channels, pre, nt):
    """Sum of r^2 over each spike's window (rows ``times - pre`` .. ``+ nt``, clipped to ``r``'s
    first and last row) on its template's support channels; float64 per spike."""
    n_t = r.shape[0]
    out = np.empty(times.shape[0], dtype=np.float64)
    for i in range(times.shape[0]):
        k = labels[i]
        acc = 0.0
        for s in range(channels.shape[1]):
            ch = channels[k, s]
            if ch < 0:
                break
            for j in range(nt):
                t = min(max(times[i] - pre + j, 0), n_t - 1)
                v = r[t, ch]
                acc += v * v
        out[i] = acc
    return out
