"""Every numba kernel against a plain numpy twin written here from its docstring contract.

The twins favour clarity over speed (python loops, float64 sums); inputs are kept small.
Argument dtypes match the production call sites (float32 traces, int64 indices, float scalars)
so no extra numba specialisation is compiled.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from spikesort.kernels.detect import detect_peaks, project_neighborhoods, temporal_filter
from spikesort.kernels.match import (
    best_matches,
    select_non_overlapping,
    subtract_filtered,
    subtract_templates,
    support_energy,
)

SEEDS = [0, 1, 2, 3, 4]
I64 = np.int64


# ---------------------------------------------------------------------------------------------
# twins
# ---------------------------------------------------------------------------------------------


def ref_detect_peaks(x, sign, threshold, neighbors, exclusion, keep_start, keep_stop):
    """(t, c) in the keep window with sign*x[t, c] > threshold that is the maximum of sign*x over
    samples [t - exclusion, t + exclusion] (clipped to x) on c and its neighbours, where a larger
    value wins, then the earlier sample, then the lower channel."""
    y = sign * np.asarray(x, dtype=np.float64)
    n_t = y.shape[0]
    times, chans = [], []
    for t in range(keep_start, keep_stop):
        for c in range(y.shape[1]):
            if not y[t, c] > threshold:
                continue
            group = {c} | {int(n) for n in neighbors[c] if n >= 0}
            best = max(
                (y[tt, cc], -tt, -cc)
                for cc in group
                for tt in range(max(0, t - exclusion), min(n_t, t + exclusion + 1))
            )
            if best == (y[t, c], -t, -c):
                times.append(t)
                chans.append(c)
    return np.array(times, dtype=I64), np.array(chans, dtype=I64)


def ref_project(x, times, chans, neighbors, bases, pre):
    n, m = len(times), neighbors.shape[1]
    k_b, nt = bases.shape
    out = np.zeros((n, m, k_b))
    for i, (t, c) in enumerate(zip(times, chans)):
        start = t - pre
        if start < 0 or start + nt > x.shape[0]:
            continue
        for j, cc in enumerate(neighbors[c]):
            if cc >= 0:
                out[i, j] = bases.astype(np.float64) @ x[start : start + nt, cc].astype(np.float64)
    return out


def ref_temporal_filter(x, h, pre):
    """y[t, c] = sum_i h[i] * x[t - pre + i, c], terms whose sample falls outside x count as 0."""
    n_t, n_c = x.shape
    y = np.zeros((n_t, n_c))
    for t in range(n_t):
        for i in range(len(h)):
            src = t - pre + i
            if 0 <= src < n_t:
                y[t] += float(h[i]) * x[src].astype(np.float64)
    return y


def ref_best_matches(r, times, chans, values, channels, norm2, chan_templates, pre, max_lag, amp_lo, amp_hi):
    """Exhaustive search over the candidate channel's templates and lags; first best kept."""
    n, n_t, nt = len(times), r.shape[0], values.shape[1]
    ks = np.full(n, -1, dtype=I64)
    ts = np.zeros(n, dtype=I64)
    amps = np.zeros(n)
    gains = np.full(n, -np.inf)
    for i in range(n):
        for k in chan_templates[chans[i]]:
            if k < 0:
                continue
            sup = channels[k]
            tpl = values[k][:, sup >= 0].astype(np.float64)
            for lag in range(-max_lag, max_lag + 1):
                start = times[i] + lag - pre
                if start < 0 or start + nt > n_t:
                    continue
                dot = float((r[start : start + nt, sup[sup >= 0]].astype(np.float64) * tpl).sum())
                a = min(max(dot / float(norm2[k]), amp_lo), amp_hi)
                g = 2 * a * dot - a * a * float(norm2[k])
                if g > gains[i]:
                    ks[i], ts[i], amps[i], gains[i] = k, times[i] + lag, a, g
    return ks, ts, amps, gains


def ref_select(order, ks, ts, channels, pre, nt):
    claimed = set()
    keep = np.zeros(len(ks), dtype=bool)
    for i in order:
        cells = {(ts[i] - pre + j, ch) for ch in channels[ks[i]] if ch >= 0 for j in range(nt)}
        if cells & claimed:
            continue
        keep[i] = True
        claimed |= cells
    return keep


def ref_subtract(r, ts, ks, amps, values, channels, pre):
    out = r.astype(np.float64).copy()
    for t, k, a in zip(ts, ks, amps):
        for s, ch in enumerate(channels[k]):
            if ch < 0:
                continue
            for j in range(values.shape[1]):
                if 0 <= t - pre + j < out.shape[0]:
                    out[t - pre + j, ch] -= float(a) * float(values[k, j, s])
    return out


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def random_neighbors(rng, n_c, m):
    """Each channel leads its own row, then up to m-1 random others, padded with -1."""
    nb = np.full((n_c, m), -1, dtype=I64)
    for c in range(n_c):
        others = rng.permutation([o for o in range(n_c) if o != c])[: rng.integers(0, m)]
        row = [c, *others]
        nb[c, : len(row)] = row
    return nb


def self_neighbors(n_c):
    return np.arange(n_c, dtype=I64)[:, None]


def peaks(x, sign, threshold, neighbors, exclusion, keep_start=0, keep_stop=None):
    keep_stop = x.shape[0] if keep_stop is None else keep_stop
    return detect_peaks(
        np.ascontiguousarray(x, dtype=np.float32),
        float(sign),
        float(threshold),
        neighbors,
        int(exclusion),
        int(keep_start),
        int(keep_stop),
    )


def assert_peaks_equal(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def random_sparse_templates(rng, k, nt, n_c, s):
    """values (K, nt, S), channels (K, S) padded with -1 (random support sizes 1..S), norm2."""
    values = np.zeros((k, nt, s), dtype=np.float32)
    channels = np.full((k, s), -1, dtype=I64)
    for i in range(k):
        n_sup = int(rng.integers(1, min(s, n_c) + 1))
        channels[i, :n_sup] = np.sort(rng.choice(n_c, n_sup, replace=False))
        values[i, :, :n_sup] = rng.normal(size=(nt, n_sup))
    norm2 = (values.astype(np.float64) ** 2).sum(axis=(1, 2)).astype(np.float32)
    return values, channels, norm2


def chan_table(channels, n_c):
    """(C, Q) templates whose support holds channel c, padded with -1."""
    rows = [[k for k in range(len(channels)) if c in channels[k]] for c in range(n_c)]
    q = max([len(r) for r in rows] + [1])
    tab = np.full((n_c, q), -1, dtype=I64)
    for c, r in enumerate(rows):
        tab[c, : len(r)] = r
    return tab


def dense_plant(n_t, n_c, ts, ks, amps, values, channels, pre):
    x = np.zeros((n_t, n_c), dtype=np.float64)
    for t, k, a in zip(ts, ks, amps):
        for s, ch in enumerate(channels[k]):
            if ch >= 0:
                x[t - pre : t - pre + values.shape[1], ch] += a * values[k, :, s]
    return x


# ---------------------------------------------------------------------------------------------
# detect_peaks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sign", [-1, 1])
def test_detect_peaks_matches_twin_random(seed, sign):
    rng = np.random.default_rng(seed)
    n_t, n_c = 300, 5
    x = rng.normal(size=(n_t, n_c)).astype(np.float32)
    nb = random_neighbors(rng, n_c, 4)
    exclusion = int(rng.integers(0, 6))
    ks, ke = int(rng.integers(0, 20)), int(n_t - rng.integers(0, 20))
    got = peaks(x, sign, 1.5, nb, exclusion, ks, ke)
    assert len(got[0]) > 5
    assert_peaks_equal(got, ref_detect_peaks(x, sign, 1.5, nb, exclusion, ks, ke))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sign", [-1, 1])
def test_detect_peaks_matches_twin_with_many_ties(seed, sign):
    # values on a coarse grid: equal neighbouring values everywhere
    rng = np.random.default_rng(100 + seed)
    x = (np.round(rng.normal(size=(200, 4)) * 2) / 2).astype(np.float32)
    nb = random_neighbors(rng, 4, 4)
    got = peaks(x, sign, 0.9, nb, 3)
    assert_peaks_equal(got, ref_detect_peaks(x, sign, 0.9, nb, 3, 0, 200))


def test_detect_peaks_output_types_and_order():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    t, c = peaks(x, -1, 1.0, random_neighbors(rng, 6, 3), 1)
    assert t.dtype == np.int64 and c.dtype == np.int64
    assert len(t) > 10
    key = t * 6 + c
    assert np.all(np.diff(key) > 0)  # times sorted, channels ascending within a time


def test_detect_peaks_empty_inputs():
    nb = self_neighbors(3)
    t, c = peaks(np.zeros((0, 3)), -1, 1.0, nb, 2, 0, 0)
    assert t.shape == (0,) and c.shape == (0,)
    x = np.zeros((50, 3))
    x[20, 1] = -10
    t, c = peaks(x, -1, 1.0, nb, 2, 20, 20)  # empty keep window
    assert len(t) == 0
    t, c = peaks(x, -1, 1.0, nb, 2)  # nothing above threshold of the other sign
    assert list(t) == [20]
    assert len(peaks(x, 1, 1.0, nb, 2)[0]) == 0


def test_detect_peaks_one_channel():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 1)).astype(np.float32)
    nb = np.zeros((1, 1), dtype=I64)
    for sign in (-1, 1):
        got = peaks(x, sign, 1.0, nb, 2)
        assert len(got[0]) > 10
        assert_peaks_equal(got, ref_detect_peaks(x, sign, 1.0, nb, 2, 0, 500))


@pytest.mark.parametrize("sign", [-1, 1])
def test_detect_peaks_first_and_last_samples(sign):
    x = np.zeros((40, 2), dtype=np.float32)
    x[0, 0] = x[39, 1] = sign * 8
    t, c = peaks(x, sign, 4.0, np.array([[0, 1], [1, 0]], dtype=I64), 3)
    assert list(t) == [0, 39] and list(c) == [0, 1]


def test_detect_peaks_keep_window_bounds():
    x = np.zeros((100, 1), dtype=np.float32)
    for t in (4, 5, 94, 95):
        x[t, 0] = -8
    nb = self_neighbors(1)
    t, _ = peaks(x, -1, 4.0, nb, 0, 5, 95)  # [keep_start, keep_stop)
    assert list(t) == [5, 94]


def test_detect_peaks_context_outside_keep_window_suppresses():
    # a larger value just outside the keep window still wins; the rest of x is context
    x = np.zeros((50, 1), dtype=np.float32)
    x[19, 0], x[21, 0] = -9, -7
    assert len(peaks(x, -1, 4.0, self_neighbors(1), 3, 20, 50)[0]) == 0
    assert list(peaks(x, -1, 4.0, self_neighbors(1), 1, 20, 50)[0]) == [21]


def test_detect_peaks_threshold_is_strict():
    x = np.zeros((20, 1), dtype=np.float32)
    x[5, 0], x[15, 0] = -4.0, -4.5
    assert list(peaks(x, -1, 4.0, self_neighbors(1), 2)[0]) == [15]


def test_detect_peaks_sign_selects_polarity():
    x = np.zeros((60, 2), dtype=np.float32)
    x[10, 0], x[40, 1] = -8, 8
    nb = np.array([[0, 1], [1, 0]], dtype=I64)
    assert_peaks_equal(peaks(x, -1, 4.0, nb, 5), ([10], [0]))
    assert_peaks_equal(peaks(x, 1, 4.0, nb, 5), ([40], [1]))


def test_detect_peaks_ties_same_channel_give_one_event_at_the_earlier_sample():
    x = np.zeros((30, 1), dtype=np.float32)
    x[10, 0] = x[12, 0] = -6
    assert_peaks_equal(peaks(x, -1, 4.0, self_neighbors(1), 3), ([10], [0]))
    # beyond the exclusion zone, both are peaks
    assert_peaks_equal(peaks(x, -1, 4.0, self_neighbors(1), 1), ([10, 12], [0, 0]))


def test_detect_peaks_ties_across_channels_go_to_the_lower_channel():
    x = np.zeros((30, 3), dtype=np.float32)
    x[10, 1] = x[10, 2] = 6
    nb = np.array([[0, 1, -1], [1, 0, 2], [2, 1, -1]], dtype=I64)
    assert_peaks_equal(peaks(x, 1, 4.0, nb, 2), ([10], [1]))
    # an earlier equal sample on a higher neighbour channel wins over the lower channel
    x[9, 2] = 6
    assert_peaks_equal(peaks(x, 1, 4.0, nb, 2), ([9], [2]))


def test_detect_peaks_plateau_gives_one_event():
    x = np.zeros((30, 1), dtype=np.float32)
    x[10:16, 0] = -6
    assert_peaks_equal(peaks(x, -1, 4.0, self_neighbors(1), 2), ([10], [0]))


def test_detect_peaks_padding_is_not_read_as_a_channel():
    # with -1 read as "last channel", the big value on channel 2 would suppress channel 0
    x = np.zeros((30, 3), dtype=np.float32)
    x[10, 0], x[10, 2] = -6, -9
    nb = np.array([[0, -1, -1], [1, -1, -1], [2, -1, -1]], dtype=I64)
    assert_peaks_equal(peaks(x, -1, 4.0, nb, 3), ([10, 10], [0, 2]))
    # the same layout with channel 2 as a real neighbour of 0 suppresses it
    nb2 = np.array([[0, 2, -1], [1, -1, -1], [2, 0, -1]], dtype=I64)
    assert_peaks_equal(peaks(x, -1, 4.0, nb2, 3), ([10], [2]))


def test_detect_peaks_exclusion_window_clipped_at_array_edges():
    x = np.zeros((20, 1), dtype=np.float32)
    x[0, 0], x[1, 0] = -9, -6  # the larger sample at the very start wins
    x[19, 0], x[18, 0] = -9, -6  # and at the very end
    assert_peaks_equal(peaks(x, -1, 4.0, self_neighbors(1), 5), ([0, 19], [0, 0]))
    assert_peaks_equal(peaks(x, -1, 4.0, self_neighbors(1), 5, 1, 19), ([], []))


def test_detect_peaks_many_events_grow_the_buffer():
    # more events than the kernel's initial capacity
    x = np.zeros((3000, 2), dtype=np.float32)
    x[::2, :] = -6
    nb = self_neighbors(2)
    got = peaks(x, -1, 4.0, nb, 0)
    assert len(got[0]) == 3000
    assert_peaks_equal(got, (np.repeat(np.arange(0, 3000, 2), 2), np.tile([0, 1], 1500)))


def test_detect_peaks_own_channel_always_in_the_exclusion_zone():
    x = np.zeros((20, 1), dtype=np.float32)
    x[10, 0], x[11, 0] = -6, -8
    nb = np.full((1, 1), -1, dtype=I64)  # no neighbours at all
    assert_peaks_equal(peaks(x, -1, 4.0, nb, 2), ([11], [0]))


# ---------------------------------------------------------------------------------------------
# project_neighborhoods
# ---------------------------------------------------------------------------------------------


def project(x, times, chans, nb, bases, pre):
    return project_neighborhoods(
        np.ascontiguousarray(x, dtype=np.float32),
        np.asarray(times, dtype=I64),
        np.asarray(chans, dtype=I64),
        nb,
        np.ascontiguousarray(bases, dtype=np.float32),
        int(pre),
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_project_matches_twin_random(seed):
    rng = np.random.default_rng(seed)
    n_t, n_c, nt, pre, k_b = 200, 5, 16, 5, 3
    x = rng.normal(size=(n_t, n_c)).astype(np.float32)
    bases = rng.normal(size=(k_b, nt)).astype(np.float32)
    nb = random_neighbors(rng, n_c, 4)
    times = rng.integers(0, n_t, 40)  # includes windows falling off either edge
    chans = rng.integers(0, n_c, 40)
    got = project(x, times, chans, nb, bases, pre)
    assert got.dtype == np.float32 and got.shape == (40, 4, k_b)
    np.testing.assert_allclose(got, ref_project(x, times, chans, nb, bases, pre), rtol=1e-5, atol=1e-4)


def test_project_empty_and_one_channel():
    bases = np.eye(3, 8, dtype=np.float32)
    x = np.arange(40, dtype=np.float32)[:, None]
    out = project(x, np.zeros(0), np.zeros(0), self_neighbors(1), bases, 2)
    assert out.shape == (0, 1, 3) and out.dtype == np.float32
    out = project(x, [10], [0], self_neighbors(1), bases, 2)
    # unit bases pick samples 8, 9, 10 of the window starting at 10 - 2
    np.testing.assert_array_equal(out[0, 0], [8, 9, 10])


def test_project_windows_touching_the_edges():
    n_t, nt, pre = 50, 10, 3
    x = np.random.default_rng(0).normal(size=(n_t, 2)).astype(np.float32)
    bases = np.random.default_rng(1).normal(size=(2, nt)).astype(np.float32)
    nb = np.array([[0, 1], [1, 0]], dtype=I64)
    first, last = pre, n_t - nt + pre  # windows [0, nt) and [n_t - nt, n_t)
    times = [first - 1, first, last, last + 1]
    out = project(x, times, [0, 0, 1, 1], nb, bases, pre)
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[3], 0)
    np.testing.assert_allclose(out[1, 0], bases @ x[:nt, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1, 1], bases @ x[:nt, 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[2, 0], bases @ x[n_t - nt :, 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[2, 1], bases @ x[n_t - nt :, 0], rtol=1e-5, atol=1e-5)


def test_project_padded_slots_are_zero():
    x = np.ones((30, 3), dtype=np.float32)
    nb = np.array([[0, -1, -1], [1, 0, 2], [2, 1, -1]], dtype=I64)
    out = project(x, [10, 10, 10], [0, 1, 2], nb, np.ones((1, 5)), 2)
    np.testing.assert_array_equal(out[:, :, 0], [[5, 0, 0], [5, 5, 5], [5, 5, 0]])


# ---------------------------------------------------------------------------------------------
# temporal_filter
# ---------------------------------------------------------------------------------------------


def tfilter(x, h, pre):
    # production: float32 C-contiguous traces, h = bases[0] (a float32 row), int pre
    x = np.ascontiguousarray(x, dtype=np.float32)
    return temporal_filter(x, np.ascontiguousarray(h, dtype=np.float32), int(pre), np.ones(x.shape[1], np.float32))


@pytest.mark.parametrize("seed", SEEDS)
def test_temporal_filter_matches_twin_random(seed):
    rng = np.random.default_rng(seed)
    n_t, n_c, nt = 150, 5, int(rng.integers(1, 20))
    x = rng.normal(size=(n_t, n_c)).astype(np.float32)
    h = rng.normal(size=nt).astype(np.float32)
    for pre in sorted({0, int(rng.integers(0, nt)), nt - 1}):  # the peak anywhere in the window, ends included
        got = tfilter(x, h, pre)
        assert got.dtype == np.float32 and got.shape == (n_t, n_c)
        np.testing.assert_allclose(got, ref_temporal_filter(x, h, pre), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n_t", [0, 1, 3, 7, 40, 79, 80, 81, 82, 83, 84, 401])
def test_temporal_filter_production_length_every_row_count(n_t):
    # a 76-tap filter as in production: the four-row inner path, the edges, and row counts that
    # leave 0-3 rows after the last block of four
    rng = np.random.default_rng(n_t)
    h = rng.normal(size=76).astype(np.float32)
    x = rng.normal(size=(n_t, 9)).astype(np.float32)
    for pre in (0, 30, 75):
        np.testing.assert_allclose(tfilter(x, h, pre), ref_temporal_filter(x, h, pre), rtol=1e-5, atol=1e-4)


def test_temporal_filter_scales_each_channel():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(203, 6)).astype(np.float32)
    h = rng.normal(size=76).astype(np.float32)
    scale = rng.uniform(0.2, 3, 6).astype(np.float32)
    got = temporal_filter(x, h, 30, scale)
    np.testing.assert_allclose(got, ref_temporal_filter(x, h, 30) * scale, rtol=1e-5, atol=1e-4)


def test_temporal_filter_one_channel_is_a_correlation():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 1)).astype(np.float32)
    h = rng.normal(size=11).astype(np.float32)
    pre = 4
    got = tfilter(x, h, pre)
    np.testing.assert_allclose(got, ref_temporal_filter(x, h, pre), rtol=1e-5, atol=1e-4)
    # independently of the twin: a correlation of the zero-padded trace with h, read at offset pre
    xp = np.concatenate([np.zeros(pre), x[:, 0].astype(np.float64), np.zeros(len(h) - 1 - pre)])
    np.testing.assert_allclose(got[:, 0], np.correlate(xp, h.astype(np.float64), mode="valid"), rtol=1e-5, atol=1e-4)


def test_temporal_filter_empty_inputs():
    h = np.ones(5, dtype=np.float32)
    assert tfilter(np.zeros((0, 3)), h, 2).shape == (0, 3)
    assert tfilter(np.zeros((10, 0)), h, 2).shape == (10, 0)
    assert tfilter(np.zeros((0, 0)), h, 2).shape == (0, 0)


def test_temporal_filter_impulse_gives_the_reversed_filter_around_pre():
    # x = delta at t0 -> y[t0 + pre - i] = h[i]: the output peaks at t0 when h peaks at pre
    h = np.array([1, 2, 7, 3, -1, 0.5], dtype=np.float32)
    pre, n_t, t0 = 2, 30, 12
    x = np.zeros((n_t, 2), dtype=np.float32)
    x[t0, 1] = 1
    y = tfilter(x, h, pre)
    np.testing.assert_array_equal(y[:, 0], 0)
    want = np.zeros(n_t)
    want[t0 + pre - np.arange(len(h))] = h
    np.testing.assert_array_equal(y[:, 1], want)
    assert np.argmax(y[:, 1]) == t0


@pytest.mark.parametrize("pre", [0, 3, 7])
def test_temporal_filter_edges_are_zero_padded(pre):
    nt, n_t = 8, 40
    h = np.ones(nt, dtype=np.float32)
    y = tfilter(np.ones((n_t, 2), dtype=np.float32), h, pre)
    # count of the window's samples inside x: nt - pre at t=0 up to nt, down to pre + 1 at the end
    want = np.array([sum(0 <= t - pre + i < n_t for i in range(nt)) for t in range(n_t)], dtype=np.float32)
    assert want[0] == nt - pre and want[-1] == pre + 1 and want[n_t // 2] == nt
    np.testing.assert_array_equal(y, np.column_stack([want, want]))
    # impulses on the very first and last samples are seen by the outputs whose windows reach them
    x = np.zeros((n_t, 1), dtype=np.float32)
    x[0, 0] = x[-1, 0] = 1
    h = np.arange(1, nt + 1, dtype=np.float32)
    np.testing.assert_array_equal(tfilter(x, h, pre), ref_temporal_filter(x, h, pre))


@pytest.mark.parametrize("pre", [0, 4, 11])
def test_temporal_filter_h_longer_than_x(pre):
    rng = np.random.default_rng(pre)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    h = rng.normal(size=12).astype(np.float32)
    got = tfilter(x, h, pre)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, ref_temporal_filter(x, h, pre), rtol=1e-5, atol=1e-5)
    # a single sample: only h[pre] touches it
    one = rng.normal(size=(1, 2)).astype(np.float32)
    np.testing.assert_allclose(tfilter(one, h, pre), h[pre] * one, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# best_matches
# ---------------------------------------------------------------------------------------------


def fit(r, times, chans, values, channels, norm2, cand, pre, max_lag, lo=0.5, hi=2.0):
    # the kernel takes the templates channel-major, (K, S, nt)
    return best_matches(
        np.ascontiguousarray(r, dtype=np.float32),
        np.asarray(times, dtype=I64),
        np.asarray(chans, dtype=I64),
        np.ascontiguousarray(values.transpose(0, 2, 1)),
        channels,
        norm2,
        cand,
        int(pre),
        int(max_lag),
        float(lo),
        float(hi),
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_best_matches_matches_twin_random(seed):
    rng = np.random.default_rng(seed)
    n_t, n_c, nt, pre, k, s, max_lag = 200, 6, 12, 4, 5, 3, 2
    values, channels, norm2 = random_sparse_templates(rng, k, nt, n_c, s)
    cand = chan_table(channels, n_c)
    ts = rng.integers(pre, n_t - nt + pre, 6)
    r = dense_plant(n_t, n_c, ts, rng.integers(0, k, 6), rng.uniform(0.3, 2.5, 6), values, channels, pre)
    r = (r + 0.3 * rng.normal(size=r.shape)).astype(np.float32)
    times = np.concatenate([ts, rng.integers(0, n_t, 30), [0, n_t - 1]])  # some with no window that fits
    chans = rng.integers(0, n_c, len(times))
    kk, tt, aa, gg = fit(r, times, chans, values, channels, norm2, cand, pre, max_lag)
    rk, rt, ra, rg = ref_best_matches(r, times, chans, values, channels, norm2, cand, pre, max_lag, 0.5, 2.0)
    np.testing.assert_array_equal(kk, rk)
    assert np.any(rk == -1) and np.any(rk >= 0)
    ok = rk >= 0
    np.testing.assert_array_equal(tt[ok], rt[ok])
    np.testing.assert_allclose(aa[ok], ra[ok], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gg[ok], rg[ok], rtol=1e-4, atol=1e-3)
    assert aa.dtype == np.float32 and gg.dtype == np.float32 and kk.dtype == np.int64 and tt.dtype == np.int64


def test_best_matches_no_candidates_and_no_templates():
    rng = np.random.default_rng(0)
    values, channels, norm2 = random_sparse_templates(rng, 2, 10, 3, 2)
    r = rng.normal(size=(50, 3)).astype(np.float32)
    out = fit(r, [], [], values, channels, norm2, chan_table(channels, 3), 3, 1)
    assert all(len(o) == 0 for o in out)
    empty_v = np.zeros((0, 10, 1), dtype=np.float32)
    empty_c = np.zeros((0, 1), dtype=I64)
    k, _, _, _ = fit(
        r, [20, 30], [0, 2], empty_v, empty_c, np.zeros(0, np.float32), np.full((3, 1), -1, dtype=I64), 3, 1
    )
    np.testing.assert_array_equal(k, [-1, -1])


def test_best_matches_channel_without_candidate_templates():
    values = np.ones((1, 5, 1), dtype=np.float32)
    channels = np.array([[0]], dtype=I64)
    cand = np.array([[0], [-1]], dtype=I64)
    r = np.zeros((30, 2), dtype=np.float32)
    r[10:15, :] = 1
    k, t, a, _ = fit(r, [12, 12], [0, 1], values, channels, np.array([5.0], np.float32), cand, 2, 0)
    np.testing.assert_array_equal(k, [0, -1])
    assert t[0] == 12 and a[0] == pytest.approx(1.0)


@pytest.mark.parametrize("noise", [0.0, 0.01])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_matches_recovers_a_planted_template(noise, seed):
    rng = np.random.default_rng(seed)
    n_t, n_c, nt, pre, k = 120, 6, 14, 5, 4
    values, channels, norm2 = random_sparse_templates(rng, k, nt, n_c, 4)
    cand = np.tile(np.arange(k, dtype=I64), (n_c, 1))  # every template tried on every channel
    k0, t0, a0 = int(rng.integers(0, k)), 60, 1.25
    r = dense_plant(n_t, n_c, [t0], [k0], [a0], values, channels, pre)
    r = (r + noise * rng.normal(size=r.shape)).astype(np.float32)
    for lag in (-2, 0, 1, 2):  # the candidate peak need not sit on the template's own peak
        kk, tt, aa, gg = fit(r, [t0 + lag], [channels[k0, 0]], values, channels, norm2, cand, pre, 2)
        assert (kk[0], tt[0]) == (k0, t0)
        if noise == 0:
            assert aa[0] == pytest.approx(a0, rel=1e-5)
            assert gg[0] == pytest.approx(a0 * a0 * norm2[k0], rel=1e-4)
        else:
            assert aa[0] == pytest.approx(a0, abs=0.02)


def test_best_matches_amplitude_is_clipped():
    values = np.zeros((1, 6, 1), dtype=np.float32)
    values[0, :, 0] = [0, 1, -3, 1, 0, 0]
    channels = np.array([[0]], dtype=I64)
    norm2 = np.array([11.0], dtype=np.float32)
    cand = np.zeros((1, 1), dtype=I64)
    for a_true, a_fit in [(3.0, 2.0), (0.2, 0.5), (-1.0, 0.5), (1.5, 1.5)]:
        r = dense_plant(40, 1, [20], [0], [a_true], values, channels, 2).astype(np.float32)
        k, t, a, g = fit(r, [20], [0], values, channels, norm2, cand, 2, 0, 0.5, 2.0)
        dot = a_true * 11.0
        assert (k[0], t[0]) == (0, 20)
        assert a[0] == pytest.approx(a_fit, rel=1e-6)
        assert g[0] == pytest.approx(2 * a_fit * dot - a_fit**2 * 11.0, rel=1e-5)


def test_best_matches_one_channel_window_at_both_edges():
    values = np.zeros((1, 8, 1), dtype=np.float32)
    values[0, :, 0] = np.hanning(8)
    channels = np.zeros((1, 1), dtype=I64)
    norm2 = (values**2).sum(axis=(1, 2)).astype(np.float32)
    pre, n_t = 3, 30
    r = dense_plant(n_t, 1, [pre, n_t - 8 + pre], [0, 0], [1.0, 0.8], values, channels, pre).astype(np.float32)
    cand = np.zeros((1, 1), dtype=I64)
    # candidates on the first and last sample whose window fits; lags that fall off are skipped
    k, t, a, _ = fit(r, [pre, n_t - 8 + pre], [0, 0], values, channels, norm2, cand, pre, 2)
    np.testing.assert_array_equal(k, [0, 0])
    np.testing.assert_array_equal(t, [pre, n_t - 8 + pre])
    np.testing.assert_allclose(a, [1.0, 0.8], rtol=1e-5)
    # no lag fits at all
    k, *_ = fit(r, [0, n_t - 1], [0, 0], values, channels, norm2, cand, pre, 2)
    np.testing.assert_array_equal(k, [-1, -1])


def ref_support_energy(r, times, labels, channels, pre, nt):
    """numpy twin: residual energy on each spike's window (rows clipped to r) and template support."""
    rows = np.clip(np.asarray(times)[:, None] - pre + np.arange(nt), 0, r.shape[0] - 1)
    ch = channels[labels]
    valid = ch >= 0
    w = r.astype(np.float64)[rows[:, :, None], np.where(valid, ch, 0)[:, None, :]]
    return ((w**2) * valid[:, None, :]).sum(axis=(1, 2))


@pytest.mark.parametrize("seed", SEEDS)
def test_support_energy_matches_twin_random(seed):
    rng = np.random.default_rng(seed)
    n_t, n_c, nt, pre, k = 150, 7, 12, 4, 6
    _, channels, _ = random_sparse_templates(rng, k, nt, n_c, 4)
    r = rng.normal(size=(n_t, n_c)).astype(np.float32)
    # windows inside, and windows hanging over both ends (their rows clipped to the first and last)
    times = np.concatenate([rng.integers(pre, n_t - nt + pre, 20), [0, 2, n_t - 3, n_t - 1]]).astype(I64)
    labels = rng.integers(0, k, len(times)).astype(I64)
    got = support_energy(r, times, labels, channels, pre, nt)
    np.testing.assert_allclose(got, ref_support_energy(r, times, labels, channels, pre, nt), rtol=1e-6)
    assert got.dtype == np.float64
    assert support_energy(r, np.zeros(0, I64), np.zeros(0, I64), channels, pre, nt).shape == (0,)


# ---------------------------------------------------------------------------------------------
# select_non_overlapping
# ---------------------------------------------------------------------------------------------


def select(order, ks, ts, channels, pre, nt, n_t, n_c):
    return select_non_overlapping(
        np.asarray(order, dtype=I64),
        np.asarray(ks, dtype=I64),
        np.asarray(ts, dtype=I64),
        channels,
        int(pre),
        int(nt),
        int(n_t),
        int(n_c),
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_select_matches_twin_random(seed):
    rng = np.random.default_rng(seed)
    n_t, n_c, nt, pre, k = 300, 8, 10, 3, 6
    _, channels, _ = random_sparse_templates(rng, k, nt, n_c, 3)
    n = 40
    ks = rng.integers(0, k, n)
    ts = rng.integers(pre, n_t - nt + pre + 1, n)  # windows may touch both edges
    order = rng.permutation(n)[: rng.integers(n // 2, n + 1)]  # not every fit is offered
    got = select(order, ks, ts, channels, pre, nt, n_t, n_c)
    want = ref_select(order, ks, ts, channels, pre, nt)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < len(order)


def test_select_overlap_keeps_the_first_in_order():
    channels = np.array([[0, 1, -1], [1, 2, -1], [3, -1, -1]], dtype=I64)
    ks, ts = [0, 1], [20, 25]  # share channel 1 and samples 22..26
    assert list(select([0, 1], ks, ts, channels, 2, 10, 60, 4)) == [True, False]
    assert list(select([1, 0], ks, ts, channels, 2, 10, 60, 4)) == [False, True]


def test_select_disjoint_fits_are_all_kept():
    channels = np.array([[0, 1, -1], [1, 2, -1], [3, -1, -1]], dtype=I64)
    # same time, different channels; same channel, windows back to back; windows at both array edges
    ks = [0, 2, 1, 1, 0]
    ts = [20, 20, 2, 12, 52]  # nt=10, pre=2: windows [0,10), [10,20) on channel 1-2; [50, 60) on 0-1
    keep = select([4, 3, 2, 1, 0], ks, ts, channels, 2, 10, 60, 4)
    np.testing.assert_array_equal(keep, [False, True, True, True, True])  # 0 overlaps 3 at sample 18-19, ch 1
    keep = select([2, 1, 4], ks, ts, channels, 2, 10, 60, 4)
    np.testing.assert_array_equal(keep, [False, True, True, False, True])  # only the offered ones


def test_select_empty_order():
    channels = np.array([[0]], dtype=I64)
    assert select([], [], [], channels, 2, 5, 20, 1).shape == (0,)
    np.testing.assert_array_equal(select([], [0, 0], [5, 10], channels, 2, 5, 20, 1), [False, False])


# ---------------------------------------------------------------------------------------------
# subtract_templates
# ---------------------------------------------------------------------------------------------


def subtract(r, ts, ks, amps, values, channels, pre):
    subtract_templates(
        r,
        np.asarray(ts, dtype=I64),
        np.asarray(ks, dtype=I64),
        np.asarray(amps, dtype=np.float32),
        values,
        channels,
        int(pre),
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_subtract_matches_twin_random(seed):
    rng = np.random.default_rng(seed)
    n_t, n_c, nt, pre, k = 100, 5, 12, 4, 4
    values, channels, _ = random_sparse_templates(rng, k, nt, n_c, 3)
    r = rng.normal(size=(n_t, n_c)).astype(np.float32)
    ts = rng.integers(-5, n_t + 5, 25)  # windows overlapping each other and falling off both edges
    ks = rng.integers(0, k, 25)
    amps = rng.uniform(-2, 2, 25).astype(np.float32)
    want = ref_subtract(r, ts, ks, amps, values, channels, pre)
    subtract(r, ts, ks, amps, values, channels, pre)
    np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-5)


def test_subtract_planted_gives_zeros():
    rng = np.random.default_rng(5)
    n_t, n_c, nt, pre, k = 80, 4, 10, 3, 3
    values, channels, _ = random_sparse_templates(rng, k, nt, n_c, 3)
    ts, ks, amps = [pre, 30, 33, n_t - nt + pre], [0, 1, 2, 1], np.float32([1.0, 0.7, 1.6, 1.2])
    r = dense_plant(n_t, n_c, ts, ks, amps, values, channels, pre).astype(np.float32)
    assert np.abs(r).max() > 0.5
    subtract(r, ts, ks, amps, values, channels, pre)
    np.testing.assert_allclose(r, 0, atol=1e-5)


def test_subtract_empty_and_in_place():
    values = np.ones((1, 4, 1), dtype=np.float32)
    channels = np.zeros((1, 1), dtype=I64)
    r = np.full((10, 1), 2.0, dtype=np.float32)
    subtract(r, [], [], [], values, channels, 1)
    np.testing.assert_array_equal(r, 2.0)
    subtract(r, [0], [0], [0.5], values, channels, 1)  # window [-1, 3) clipped
    np.testing.assert_array_equal(r[:, 0], [1.5, 1.5, 1.5, 2, 2, 2, 2, 2, 2, 2])
    subtract(r, [9], [0], [1.0], values, channels, 1)  # window [8, 12) clipped
    np.testing.assert_array_equal(r[:, 0], [1.5, 1.5, 1.5, 2, 2, 2, 2, 2, 1, 1])


# ---------------------------------------------------------------------------------------------
# preprocessing: zero-phase filter and common reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_channels", [1, 7, 64])
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_sosfiltfilt_rows_matches_scipy(seed, n_channels):
    from scipy import signal

    from spikesort.kernels.preprocess import sosfiltfilt_rows

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3000, n_channels)) * 50 + rng.uniform(-500, 500, n_channels)).astype(np.float32)
    sos = signal.butter(3, [300, 6000], btype="bandpass", fs=30000, output="sos")
    x_before = x.copy()
    got = sosfiltfilt_rows(x, sos, signal.sosfilt_zi(sos), 21, False)
    want = signal.sosfiltfilt(sos, x.astype(np.float64), axis=0, padlen=21)
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())
    # demean: the channel means are taken off before filtering; the input stays as it was
    got = sosfiltfilt_rows(x, sos, signal.sosfilt_zi(sos), 21, True)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    want = signal.sosfiltfilt(sos, centred, axis=0, padlen=21)
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 31, 64, 65, 257, 384])
def test_subtract_reference_median_matches_numpy(m):
    from spikesort.kernels.preprocess import subtract_reference

    rng = np.random.default_rng(m)
    x = rng.standard_normal((700, m + 5)).astype(np.float32)
    x[::7, 0] = x[::7, 1]  # ties
    channels = np.sort(rng.choice(m + 5, m, replace=False)).astype(I64)
    want = x - np.median(x[:, channels].astype(np.float64), axis=1, keepdims=True)
    got = x.copy()
    subtract_reference(got, channels, True)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_subtract_reference_mean_matches_numpy():
    from spikesort.kernels.preprocess import subtract_reference

    x = np.random.default_rng(9).standard_normal((500, 12)).astype(np.float32)
    channels = np.array([0, 3, 4, 11], dtype=I64)
    got = x.copy()
    subtract_reference(got, channels, False)
    np.testing.assert_allclose(got, x - x[:, channels].mean(axis=1, keepdims=True), atol=1e-5)


def test_median_network_is_pruned_and_sorts_the_middle():
    from spikesort.kernels.preprocess import median_network

    pairs, n_pad, n_low = median_network(64)
    assert n_pad == 64 and n_low == 0
    assert 0 < len(pairs) < 543  # Batcher's full network on 64 inputs has 543 compare-exchanges


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_sparse_mix_matches_dense_product(seed):
    from spikesort.kernels.preprocess import sparse_mix
    from spikesort.stages.preprocess import _sparse_rows

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((40, 40)).astype(np.float32) * (rng.random((40, 40)) < 0.2)
    w[3] = 0  # a row with no entry (a bad channel)
    x = rng.standard_normal((300, 40)).astype(np.float32)  # not a multiple of the 128-sample tile
    idx, vals = _sparse_rows(w)
    out = np.empty_like(x)
    sparse_mix(x, idx, vals, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.T.astype(np.float64), atol=1e-4)


def test_median_over_first_axis_matches_numpy():
    from spikesort.stages.templates import median_over_first_axis

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 50, 51):
        x = rng.standard_normal((n, 6, 5)).astype(np.float32)
        np.testing.assert_allclose(median_over_first_axis(x), np.median(x, axis=0), atol=1e-6)


def test_quantize_int16_matches_numpy():
    from spikesort.kernels.preprocess import quantize_int16

    x = (np.random.default_rng(1).standard_normal((200, 9)) * 80).astype(np.float32)
    x[0, 0], x[1, 1], x[2, 2] = 1e9, -1e9, 0.5 / 200
    want = np.clip(np.rint(x * np.float32(200)), -32767, 32767).astype(np.int16)
    np.testing.assert_array_equal(quantize_int16(x, np.float32(200)), want)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_subtract_filtered_equals_refiltering_the_residual(seed):
    """Updating the matched-filter output by each subtracted template's filtered copy gives the
    filter of the new residual, also for templates cut by the block's edges."""
    from spikesort.stages.templates import filtered_templates, sparsify

    rng = np.random.default_rng(seed)
    nt, pre, n_c = 21, 8, 6
    dense = rng.standard_normal((3, nt, n_c)).astype(np.float32)
    dense[:, :, 4:] *= 0.01  # small channels fall outside the support
    t = sparsify(dense, pre=pre)
    h = rng.standard_normal(nt).astype(np.float32)
    inv_sd = rng.uniform(0.5, 2, n_c).astype(np.float32)
    x = rng.standard_normal((200, n_c)).astype(np.float32)
    ts = np.array([pre, 60, 70, 200 - (nt - pre)], dtype=I64)
    ks = np.array([0, 1, 2, 1], dtype=I64)
    amps = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    y = temporal_filter(x, h, pre, inv_sd)
    subtract(x, ts, ks, amps, t.values, t.channels, pre)
    subtract_filtered(y, ts, ks, amps, filtered_templates(t, h), t.channels, inv_sd)
    np.testing.assert_allclose(y, temporal_filter(x, h, pre, inv_sd), atol=1e-4)


def test_reference_channels_spread_evenly_over_long_probes():
    from spikesort.stages.preprocess import REFERENCE_MAX_CHANNELS, reference_channels

    good = np.arange(64)
    np.testing.assert_array_equal(reference_channels(good), good)
    good = np.delete(np.arange(384), [5, 100, 200])
    sub = reference_channels(good)
    assert len(sub) == REFERENCE_MAX_CHANNELS and np.all(np.isin(sub, good))
    assert sub[0] == good[0] and sub[-1] == good[-1]
    assert np.diff(sub).max() <= 4  # no stretch of the probe left out


def test_robust_template_is_the_median_where_the_waveform_is():
    from spikesort.stages.templates import robust_template

    rng = np.random.default_rng(3)
    snippets = rng.standard_normal((301, 20, 10)).astype(np.float32)
    snippets[:, 8, 2:4] += 15  # the unit lives on channels 2 and 3
    snippets[:5, 8, 2] += 1000  # a few overlapping spikes, which a mean would follow
    t = robust_template(snippets)
    np.testing.assert_allclose(t[:, 2:4], np.median(snippets[:, :, 2:4], axis=0), atol=1e-5)
    np.testing.assert_allclose(t[:, 5:], snippets[:, :, 5:].mean(axis=0), atol=1e-5)
    assert abs(t[8, 2] - 15) < 1


def test_store_snippets_match_numpy_slices(tmp_path):
    from spikesort.pipeline.traces import SCALE, TraceStore

    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 7)).astype(np.float32)
    store = TraceStore(tmp_path / "s.dat", n_samples=500, n_channels=7)
    store.create()
    store.write(0, x)
    times = np.array([10, 3, 499, 250, 2], dtype=I64)  # two windows cross an edge: zeros
    chans = np.array([6, 0, 3], dtype=I64)
    got = store.snippets(times, pre=3, nt=8, channels=chans)
    q = np.clip(np.rint(x * SCALE), -32767, 32767).astype(np.int16).astype(np.float32) / SCALE
    for i, t in enumerate(times):
        want = q[t - 3 : t + 5][:, chans] if 0 <= t - 3 and t + 5 <= 500 else np.zeros((8, 3), np.float32)
        np.testing.assert_allclose(got[i], want, atol=1e-6)
    np.testing.assert_allclose(store.snippets(times[:1], pre=3, nt=8)[0], q[7:15], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# two_means_labels
# ---------------------------------------------------------------------------------------------


def ref_two_means(x, first, u, n_iter):
    """numpy twin: k-means++ second centre from the cumulative squared distances, then Lloyd."""
    c0 = x[first]
    d = ((x - c0) ** 2).sum(1)
    second = int(np.searchsorted(np.cumsum(d) / d.sum(), u, side="right")) if d.sum() > 0 else 0
    cent = np.stack([c0, x[min(second, len(x) - 1)]]).astype(np.float64)
    lab = np.zeros(len(x), dtype=I64)
    for it in range(n_iter):
        dist = ((x[:, None, :] - cent[None]) ** 2).sum(2)
        new = np.where(dist[:, 1] < dist[:, 0], 1, 0)
        if (new == lab).all() and it > 0:
            break
        lab = new
        for k in range(2):
            if np.any(lab == k):
                cent[k] = x[lab == k].mean(0)
    return lab


@pytest.mark.parametrize("seed", SEEDS)
def test_two_means_matches_twin_random(seed):
    from spikesort.kernels.cluster import two_means_labels

    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(5, 400)), int(rng.integers(1, 8))
    x = rng.normal(size=(n, d))
    x[: n // 3] += rng.normal(size=d) * 4  # two groups, unequal sizes
    first, u = int(rng.integers(n)), float(rng.random())
    got = two_means_labels(x, first, u, 30)
    np.testing.assert_array_equal(got, ref_two_means(x, first, u, 30))
    assert 0 < got.sum() < n


def test_two_means_separates_two_clouds_and_handles_degenerate_input():
    from spikesort.kernels.cluster import two_means_labels

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(50, 3)), rng.normal(size=(30, 3)) + 20])
    lab = two_means_labels(x, 0, 0.5, 30)
    assert len(set(lab[:50])) == 1 and len(set(lab[50:])) == 1 and lab[0] != lab[-1]
    # every row on the first centre: one cluster, no error
    np.testing.assert_array_equal(two_means_labels(np.ones((10, 2)), 3, 0.7, 30), 0)
    assert two_means_labels(np.zeros((0, 2)), 0, 0.5, 30).shape == (0,)


# ---------------------------------------------------------------------------------------------
# compile warm-up: the note a cold numba cache gets (issue 16)
# ---------------------------------------------------------------------------------------------


def _no_warm_up_yet(monkeypatch, warmup, *, hit, spawned):
    """warm_up_note as in a fresh process whose kernels are all ``hit`` (cached?); records what it
    hands to the compile process (``_spawn``, which returns ``spawned``) and to the thread."""
    to_child, on_thread = [], []
    monkeypatch.setattr(warmup, "_done", False)
    monkeypatch.setattr(warmup, "_cached", lambda d, sig: hit)
    monkeypatch.setattr(warmup, "_spawn", lambda kernels: to_child.extend(kernels) or spawned)
    monkeypatch.setattr(warmup, "_compile", lambda kernels: on_thread.extend(kernels))
    return to_child, on_thread


def _join_warm_up_thread():
    for t in threading.enumerate():
        if t.name == "spikesort-kernel-warm-up":
            t.join()


def test_warm_up_note_once_per_process_when_cold(monkeypatch, caplog):
    from spikesort.kernels import warmup

    to_child, on_thread = _no_warm_up_yet(monkeypatch, warmup, hit=False, spawned=True)
    with caplog.at_level("INFO", logger="spikesort.kernels.warmup"):
        seconds = warmup.warm_up_note()
        assert warmup.warm_up_note() == 0.0  # once per process
    _join_warm_up_thread()
    assert seconds > 0
    assert [r.getMessage() for r in caplog.records] == [f"compiling kernels (first run only, about {seconds:.0f} s)"]
    assert len(to_child) == len(warmup._kernels()) and on_thread == []


@pytest.mark.parametrize("hit, spawned", [(None, True), (False, False)])
def test_warm_up_compiles_on_a_thread_without_disk_cache_or_child(monkeypatch, caplog, hit, spawned):
    """No disk cache (a child's work could not reach this process), or no child process: a thread."""
    from spikesort.kernels import warmup

    to_child, on_thread = _no_warm_up_yet(monkeypatch, warmup, hit=hit, spawned=spawned)
    with caplog.at_level("INFO", logger="spikesort.kernels.warmup"):
        assert warmup.warm_up_note() > 0
    _join_warm_up_thread()
    assert len(on_thread) == len(warmup._kernels())
    assert len(to_child) == (0 if hit is None else len(on_thread))
    assert ("every run pays this" in caplog.records[0].getMessage()) == (hit is None)


_CHILD_SCRIPT = """
import numpy as np
from spikesort.kernels import preprocess, warmup
kernels = warmup._kernels()
d, sig = next(k for k in kernels if k[0] is preprocess._subtract_rows)
assert warmup._cached(d, sig) is False, "the cache folder is not empty"
assert warmup._spawn([(d, sig)])
x = np.arange(12, dtype=np.float32).reshape(4, 3)
preprocess._subtract_rows(x, np.ones(4, dtype=np.float32))  # waits for the child, then loads its code
assert x[0, 0] == -1 and x[3, 2] == 10
print("hits", sum(d._cache_hits.values()), "misses", sum(d._cache_misses.values()))
"""


def test_warm_up_child_process_fills_the_cache_the_sort_loads(tmp_path):
    """The compile process writes numba's disk cache and the kernel's first call here loads that
    code (a cache hit) instead of compiling it again."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    out = subprocess.run([sys.executable, "-c", _CHILD_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["hits", "1", "misses", "0"]


def test_warm_up_compiles_here_what_a_failed_child_did_not(monkeypatch):
    """A compile process that dies (here: it cannot even start its module) leaves nobody waiting:
    its kernels compile on the warm-up thread of this process."""
    from spikesort.kernels import warmup

    def kernel_a():
        pass

    class Dispatcher:  # what _spawn touches of a numba dispatcher
        def __init__(self):
            self.py_func = kernel_a
            self._cache = None

    cold = [(Dispatcher(), ("sig",))]
    compiled = []
    monkeypatch.setattr(warmup, "_CHILD_MODULE", "spikesort_has_no_such_module")
    monkeypatch.setattr(warmup, "_compile", compiled.extend)
    assert warmup._spawn(cold)
    _join_warm_up_thread()
    assert compiled == cold
    assert cold[0][0]._cache._ready.is_set()  # a first call now goes straight to numba


def test_warm_up_child_process_stops_when_its_parent_is_gone(tmp_path):
    """Its stdin ends with the sort's process: it exits at once, leaving no half-written file.
    Ctrl-C (SIGINT to the whole process group) is the sort's business, not its."""
    import os
    import signal
    import subprocess
    import sys

    from spikesort.kernels import warmup

    names = [warmup._name(d) for d, _ in warmup._kernels()]
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    child = subprocess.Popen(
        [sys.executable, "-m", "spikesort.kernels.warmup", *names],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert child.stdout.readline().strip() == names[0]  # it works...
    child.send_signal(signal.SIGINT)
    assert child.stdout.readline().strip() == names[1]  # ...through a Ctrl-C...
    child.stdin.close()  # ...until its parent is gone
    try:
        code = child.wait(timeout=120)
    finally:
        child.kill()
    rest = child.stdout.read().split()
    assert code == 0 and len(rest) < len(names) - 2
    assert not [p for p in (tmp_path / "numba").rglob("*") if ".tmp." in p.name]


def test_warm_up_note_silent_when_cached(monkeypatch, caplog):
    from spikesort.kernels import warmup

    monkeypatch.setattr(warmup, "_done", False)
    monkeypatch.setattr(warmup, "_cached", lambda d, sig: True)
    monkeypatch.setattr(warmup, "_compile", lambda kernels: pytest.fail("nothing to compile"))
    with caplog.at_level("INFO", logger="spikesort.kernels.warmup"):
        assert warmup.warm_up_note() == 0.0
    assert caplog.records == []


def test_warm_up_signatures_are_the_call_sites_types():
    """The warm-up compiles what the pipeline calls: a kernel compiled by the calls in this file
    (whose argument types match the call sites) has the warm-up's signature among its own."""
    from spikesort.kernels import warmup

    for dispatcher, sig in warmup._kernels():
        assert warmup._cached(dispatcher, sig) in (True, False, None)  # reads numba's index, compiles nothing
        if dispatcher.signatures:
            assert sig in dispatcher.signatures, (dispatcher, dispatcher.signatures)


def test_auto_reference_is_off_on_compact_probes_only():
    from spikesort.stages.preprocess import resolve_reference

    tetrode = np.array([[-8.0, -8.0], [-8.0, 8.0], [8.0, -8.0], [8.0, 8.0]])
    line_tetrode = np.c_[np.zeros(4), [-24.0, -8.0, 8.0, 24.0]]
    np1_64 = np.c_[np.tile([16.0, 48.0, 0.0, 32.0], 16), np.repeat(np.arange(32) * 20.0, 2)]
    linear_32 = np.c_[np.zeros(32), np.arange(32) * 50.0]
    assert resolve_reference("auto", positions_um=tetrode) == "none"
    assert resolve_reference("auto", positions_um=line_tetrode) == "none"
    assert resolve_reference("auto", positions_um=np1_64) == "median"
    assert resolve_reference("auto", positions_um=linear_32) == "median"
    assert resolve_reference("auto", positions_um=tetrode[:1]) == "none"
    # an explicit choice is kept whatever the probe
    assert resolve_reference("median", positions_um=tetrode) == "median"
    assert resolve_reference("none", positions_um=np1_64) == "none"
