"""Mains hum: its lines found in the preprocessing fit's blocks, and fitted out of every chunk.

The common reference takes out what every channel sees at one size, and where one spike reaches
few channels the reference is also subtracted at each channel's own gain (``reference_gains``).
Where a spike reaches a third of the channels or more (a tetrode, a 32-channel 3-column probe)
the reference carries the spikes, so neither helps: a tetrode has no reference at all, and hum
that differs between channels stays. Its lines are narrow, though. A sum of sinusoids at the
mains harmonics, fitted to each chunk and channel by least squares, holds next to nothing of a
spike (a 1 ms spike projects on a 2 s sinusoid at about 1/1000 of its size), so it can be
subtracted whatever the probe. Each harmonic's amplitude and phase are fitted with their linear
change over the chunk, which absorbs a mains frequency a few mHz off the one measured.

Only harmonics of 50 or 60 Hz that stand out of the spectrum around them are taken: on a
recording without hum nothing is found and nothing changes.
"""

from __future__ import annotations

import functools

import numpy as np

from .noise_sd import robust_sd

MAINS_HZ = (50.0, 60.0)
# how far the mains frequency may be from nominal (grids hold it within 0.2 Hz)
MAINS_TOLERANCE_HZ = 0.5
# a spectral bin is a line when its power is this many times the median of the bins around it
# (1 s blocks, Hann window: about 0.07 noise sd of sinusoid amplitude at 30 kHz; averaged over
# the fit's blocks and channels, noise alone stays within a few % of the median)
LINE_MIN_RATIO = 20.0
LINE_FLOOR_BINS = 25  # bins on either side whose median is the floor
# lines are taken out when together they hold at least this share of the traces' power (below it
# they lift the noise sd by under 0.5 %, less than the fits cost a large spike: a few % of its peak)
LINE_MIN_SHARE = 0.01
LINE_MAX_HARMONICS = 40  # the strongest are removed when there are more
SPECTRUM_CHANNELS = 8  # channels (evenly spread) whose spectra find the lines (3 ms a block on 2 cores)
# a chunk shorter than this many samples per fitted column is left as it is (a least-squares fit
# with few samples per column takes signal with it)
MIN_SAMPLES_PER_COLUMN = 50


def line_power(x: np.ndarray) -> np.ndarray:
    """(n // 2 + 1,) float64 Hann-windowed power spectrum of (n, C) ``x`` summed over at most
    SPECTRUM_CHANNELS of its channels, evenly spread."""
    n, c = x.shape
    if n < 2 or c == 0:
        return np.zeros(max(n // 2 + 1, 1))
    cols = np.unique(np.linspace(0, c - 1, min(c, SPECTRUM_CHANNELS)).round().astype(np.int64))
    spec = np.fft.rfft(x[:, cols].astype(np.float64) * np.hanning(n)[:, None], axis=0)
    return (spec.real**2 + spec.imag**2).sum(axis=1)


def find_lines(power: np.ndarray, *, n_samples: int, sampling_rate_hz: float) -> np.ndarray:
    """Frequencies (Hz, ascending) of the mains harmonics that stand out of ``power`` (a
    ``line_power`` of ``n_samples``-long blocks, summed over blocks), or an empty array.

    Each bin at least LINE_MIN_RATIO times its neighbours' median and the highest among its two
    neighbours is a peak, its frequency refined by a parabola through the log powers. Peaks near
    a harmonic of 50 or of 60 Hz (whichever explains more of their power) give the mains
    frequency, a power-weighted least-squares fit of the peaks' frequencies on their harmonic
    numbers; the lines are the harmonics with a peak."""
    power = np.asarray(power, dtype=np.float64)
    nb = len(power)
    if nb < 2 * LINE_FLOOR_BINS + 3 or n_samples < 2:
        return np.zeros(0)
    bin_hz = sampling_rate_hz / n_samples
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(power, LINE_FLOOR_BINS, mode="reflect"), 2 * LINE_FLOOR_BINS + 1
    )
    floor = np.median(windows, axis=1)
    inner = np.arange(1, nb - 1)
    peak = inner[
        (power[inner] >= LINE_MIN_RATIO * np.maximum(floor[inner], 1e-300))
        & (power[inner] >= power[inner - 1])
        & (power[inner] > power[inner + 1])
    ]
    if len(peak) == 0:
        return np.zeros(0)
    lp = np.log(np.maximum(power, 1e-300))
    a, b, c = lp[peak - 1], lp[peak], lp[peak + 1]
    den = a - 2 * b + c
    shift = np.where(den < 0, 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0)
    freq = (peak + np.clip(shift, -0.5, 0.5)) * bin_hz
    excess = power[peak] - floor[peak]
    best = None
    for nominal in MAINS_HZ:
        k = np.round(freq / nominal)
        # harmonics close enough to nominal that the tolerance cannot take the next one's peak
        off = np.abs(freq - k * nominal)
        rough = (k >= 1) & (k * MAINS_TOLERANCE_HZ < nominal / 4) & (off <= k * MAINS_TOLERANCE_HZ)
        if not rough.any():
            continue
        f0 = float(np.sum(excess[rough] * k[rough] * freq[rough]) / np.sum(excess[rough] * k[rough] ** 2))
        k = np.round(freq / f0)
        on = (k >= 1) & (np.abs(freq - k * f0) <= 1.5 * bin_hz)
        if abs(f0 - nominal) <= MAINS_TOLERANCE_HZ and on.any() and (best is None or excess[on].sum() > best[0]):
            best = (excess[on].sum(), k[on], freq[on], excess[on])
    if best is None:
        return np.zeros(0)
    _, k, f, w = best
    f0 = float(np.sum(w * k * f) / np.sum(w * k * k))
    # the lines' share of the traces' power: each line's excess over the floor within 2 bins
    bins = np.round(f / bin_hz).astype(np.int64)
    above = np.clip(power - floor, 0, None)
    if sum(float(above[max(b - 2, 0) : b + 3].sum()) for b in bins) < LINE_MIN_SHARE * float(power.sum()):
        return np.zeros(0)
    harmonics = np.unique(k.astype(np.int64))
    if len(harmonics) > LINE_MAX_HARMONICS:
        strength = np.array([w[k == h].sum() for h in harmonics])
        harmonics = np.sort(harmonics[np.argsort(-strength, kind="stable")[:LINE_MAX_HARMONICS]])
    lines = harmonics * f0
    return lines[lines < sampling_rate_hz / 2]


# the fits are local: one per stretch of this many periods of the mains (0.2 s at 50 Hz), blended
# into their neighbours' (a mains frequency 0.03 Hz off the measured one turns the 10th
# harmonic by half a cycle in 2 s, and a fit over a whole chunk left 40 % of it)
FIT_PERIODS = 10


@functools.lru_cache(maxsize=16)
def _basis(n: int, cycles: tuple) -> np.ndarray | None:
    """(n, 4H) float32 orthonormal basis of cos, sin, and both times a ramp over the stretch, at
    each of ``cycles`` (cycles per sample); None when ``n`` is too short to fit them."""
    if n < MIN_SAMPLES_PER_COLUMN * 4 * len(cycles):
        return None
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2
    ramp = t / max((n - 1) / 2, 1.0)
    cols = []
    for c in cycles:
        phase = 2 * np.pi * c * t
        cos, sin = np.cos(phase), np.sin(phase)
        cols += [cos, sin, ramp * cos, ramp * sin]
    q, _ = np.linalg.qr(np.stack(cols, axis=1))
    return np.ascontiguousarray(q, dtype=np.float32)


def remove_lines(x: np.ndarray, *, cycles: np.ndarray) -> np.ndarray:
    """(n, C) float32 ``x`` less its fit on the lines at ``cycles`` (frequencies over the sampling
    rate), in place; returned.

    Nodes every FIT_PERIODS / 2 mains periods; each node's least-squares fit spans the stretch
    from the node before to the node after, and is weighted by a hat that is 1 on its node and 0 on
    its neighbours, so the fits blend into one smooth model of the hum. The fits leave out the
    samples where most channels are far from their noise (``_common_outliers``)."""
    n = x.shape[0]
    if len(cycles) == 0 or n == 0:
        return x
    cycles = tuple(float(c) for c in cycles)
    # the fundamental: the lines' spacing (harmonics of it)
    step = min(np.diff((0.0,) + cycles)) if len(cycles) > 1 else cycles[0]
    spacing = max(1, int(round(FIT_PERIODS / 2 / step)))
    n_seg = max(1, int(round((n - 1) / spacing)))
    nodes = np.round(np.linspace(0, n - 1, n_seg + 1)).astype(np.int64)
    if n_seg == 1 or _basis(int(nodes[2] - nodes[0] + 1), cycles) is None:
        spans = [(0, n - 1, None)]  # one fit over the whole block
    else:
        last = len(nodes) - 1
        spans = [(nodes[max(i - 1, 0)], nodes[min(i + 1, last)], nodes[i]) for i in range(len(nodes))]
    # the fits see the traces clipped at 3 sd: a large spike then leaks about half as much of
    # itself into the fitted hum (80 uV spikes at 10 Hz: 2.7 against 5.4 uV at most)
    lim = 3.0 * x.std(axis=0)
    clipped = np.clip(x, -lim, lim)
    keep = ~_common_outliers(x, pad=max(1, spacing // 100))
    model = np.zeros_like(x)
    for lo, hi, c in spans:
        q = _basis(int(hi - lo + 1), cycles)
        fit = None if q is None else _fit(q, clipped[lo : hi + 1], keep[lo : hi + 1])
        if fit is None:
            continue
        if c is not None:
            t = np.arange(lo, hi + 1)
            left = (t - lo) / max(c - lo, 1) if c > lo else np.ones(len(t))
            right = (hi - t) / max(hi - c, 1) if hi > c else np.ones(len(t))
            fit *= np.where(t <= c, left, right).astype(np.float32)[:, None]
        model[lo : hi + 1] += fit
    x -= model
    return x


# samples where the median channel is this many robust sds from zero are left out of the fits:
# movement artefacts and saturations (mV, seen on every channel), and on a tetrode its spikes.
# Fitted with the rest, an artefact rang through the fitted hum for a fifth of a second, and on the
# dirty tetrode a false unit gathered 460 spikes 2-50 ms after artefacts and saturations
OUTLIER_SDS = 5.0
OUTLIER_CHANNELS = 16


def _common_outliers(x: np.ndarray, *, pad: int) -> np.ndarray:
    """(n,) bool: samples where the median over channels of |x| / (robust sd) exceeds
    OUTLIER_SDS, widened by ``pad`` samples on either side."""
    # events seen on every channel are seen on a few evenly spread ones (384 channels: 16)
    cols = np.unique(np.linspace(0, x.shape[1] - 1, min(x.shape[1], OUTLIER_CHANNELS)).round().astype(np.int64))
    sub = x[:, cols]
    sd = robust_sd(sub, max_samples=20_000)
    far = np.median(np.abs(sub) / np.maximum(sd, 1e-12), axis=1) > OUTLIER_SDS
    if not far.any():
        return far
    return np.convolve(far.astype(np.float32), np.ones(2 * pad + 1, np.float32), mode="same") > 0


def _fit(q: np.ndarray, seg: np.ndarray, keep: np.ndarray) -> np.ndarray | None:
    """``q`` times the least-squares coefficients of ``seg`` on ``q``'s columns over the rows in
    ``keep`` (all rows: a projection, ``q`` being orthonormal); None when too few rows are kept."""
    if keep.all():
        return q @ (q.T @ seg)
    if keep.sum() < MIN_SAMPLES_PER_COLUMN * q.shape[1] // 2:
        return None
    # the left-out rows weighted 0: no copy of the traces' kept rows
    qk = q * keep[:, None].astype(q.dtype)
    gram = qk.T.astype(np.float64) @ qk.astype(np.float64)
    coef = np.linalg.solve(gram + 1e-9 * np.eye(len(gram)), (qk.T @ seg).astype(np.float64))
    return q @ coef.astype(np.float32)


def without_lines(x: np.ndarray, ref: np.ndarray | None, *, cycles: np.ndarray):
    """Filtered, referenced traces and their reference with the mains lines at ``cycles`` fitted out."""
    remove_lines(x, cycles=cycles)
    if ref is not None:
        ref = remove_lines(np.array(ref, dtype=np.float32)[:, None], cycles=cycles)[:, 0]
    return x, ref


def mains_lines(spectra: list, *, sampling_rate_hz: float) -> np.ndarray:
    """The mains lines (Hz) in the fit blocks' spectra ((block length, power) each; the blocks of
    the most common length are summed)."""
    lengths = [n for n, _ in spectra]
    n = max(set(lengths), key=lengths.count)
    return find_lines(sum(p for m, p in spectra if m == n), n_samples=n, sampling_rate_hz=sampling_rate_hz)
