"""Two units of one shape at two sizes: each spike goes to the unit whose size it has.

Two neurons whose waveforms are nearly one shape on the same contacts (a large one and a smaller
one beside it) differ in size only. The matching picks a spike's template by how much of the
spike it explains, which is blind to size: for a spike of the smaller neuron the larger template,
fitted at 0.7, explains about as much as its own template at 1.0, and noise decides. On
``crowded64`` seed 91 two such neurons (228 and 155 µV) swapped a third of the smaller one's
spikes, and neither unit reached an accuracy of 0.8.

The size is what tells them apart. Each spike is fitted with both templates, and goes where its
fit, less the cost of its size under that unit's own spread of sizes (a Gaussian prior on the
template's scale, in the same units as the fit: twice the log-likelihood of whitened noise), is
best; the sizes are re-estimated from the spikes so assigned, a few times. This is done only
where the spikes of the two units, fitted with the larger template, show two modes of size with
a valley between them: a bursting neuron's spikes shrink along a continuum without one.
"""

from __future__ import annotations

import logging

import numpy as np

from .bimodality import bimodality
from .match import MatchedSpikes
from .noise_sd import MAD_TO_SD

log = logging.getLogger(__name__)

# templates this alike on the channels either one reaches are one shape (the pair on crowded64
# seed 91: 0.96)
LOOKALIKE_COSINE = 0.9
# a channel belongs to a footprint when its template norm reaches this share of the unit's peak
FOOTPRINT_SHARE = 0.2
# the two sizes' valley must fall below (1 - this) of the smaller mode
MIN_VALLEY = 0.5
ITERATIONS = 5
# (snippet, spike) pairs subtracted at once: a few tens of MB of windows
PAIRS_PER_BLOCK = 2048
SPIKES_PER_BLOCK = 4096


def _fits(snips: np.ndarray, template: np.ndarray, *, margin: int, fine_lag: int):
    """(lag, scale, score) of ``template`` on each snippet at its best lag within ``fine_lag``:
    score = signed <x,T>^2 / |T|^2, the energy the fit explains."""
    nt = template.shape[0]
    n2 = max(float((template.astype(np.float64) ** 2).sum()), 1e-12)
    best_g = np.full(len(snips), -np.inf)
    best_a = np.zeros(len(snips))
    best_l = np.zeros(len(snips), dtype=np.int64)
    for lag in range(-fine_lag, fine_lag + 1):
        c = np.einsum("ntc,tc->n", snips[:, margin + lag : margin + lag + nt], template, dtype=np.float64)
        g = c * np.abs(c) / n2
        better = g > best_g
        best_g = np.where(better, g, best_g)
        best_a = np.where(better, c / n2, best_a)
        best_l = np.where(better, lag, best_l)
    return best_l, best_a, best_g


def _without_others(
    snips: np.ndarray, starts: np.ndarray, *, ordered: MatchedSpikes, dense, pre: int, own_at: int, skip
) -> np.ndarray:
    """``snips`` (n, W, C') starting at recording samples ``starts``, with every other spike that
    reaches into them subtracted at its fitted scale, as the matching had subtracted them: on a
    crowded probe a neighbour's spike in the window, or the other unit's when the two neurons fire
    together, otherwise decides which of two look-alike templates fits better. The snippet's own
    spike (a unit of ``skip`` at ``start + own_at``) stays; ``pre``: the templates' lead;
    ``ordered``: every spike, in time order."""
    times, units, scales = ordered.times, ordered.templates, ordered.amplitudes
    width, nt = snips.shape[1], dense.shape[1]
    starts = np.asarray(starts, dtype=np.int64)
    lo = np.searchsorted(times, starts + pre - nt + 1)
    hi = np.searchsorted(times, starts + pre + width)
    rows = np.repeat(np.arange(len(starts)), hi - lo)  # (snippet, spike) pairs
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(hi - lo) - (hi - lo), hi - lo) + np.repeat(lo, hi - lo)
    own = np.isin(units[cols], list(skip)) & (times[cols] == starts[rows] + own_at)
    rows, cols = rows[~own], cols[~own]
    # each template placed in a zero frame, so a window at any offset is one slice of it
    frame = np.zeros((dense.shape[0], 2 * width + nt, dense.shape[2]))
    frame[:, width : width + nt] = dense
    step = np.arange(width)
    for p0 in range(0, len(rows), PAIRS_PER_BLOCK):
        r, c = rows[p0 : p0 + PAIRS_PER_BLOCK], cols[p0 : p0 + PAIRS_PER_BLOCK]
        off = times[c] - pre - starts[r]  # where that spike's template starts in the snippet
        parts = frame[units[c][:, None], (width - off)[:, None] + step[None, :]]  # (pairs, width, C')
        np.subtract.at(snips, r, scales[c][:, None, None] * parts)
    return snips


def _robust(x: np.ndarray) -> tuple[float, float]:
    m = float(np.median(x))
    return m, MAD_TO_SD * float(np.median(np.abs(x - m)))


def _alike(a: np.ndarray, b: np.ndarray, *, fine_lag: int) -> float:
    """Largest cosine of two (nt, C') templates over shifts within ``fine_lag``."""
    best = -1.0
    nt = a.shape[0]
    for lag in range(-fine_lag, fine_lag + 1):
        x, y = (a[lag:], b[: nt - lag]) if lag >= 0 else (a[:lag], b[-lag:])
        den = np.linalg.norm(x) * np.linalg.norm(y)
        if den > 0:
            best = max(best, float((x * y).sum() / den))
    return best


def sizes_apart(
    store,
    spikes: MatchedSpikes,
    dense: np.ndarray,
    *,
    pre: int,
    nt: int,
    duplicate: int,
    fine_lag: int = 3,
    min_spikes: int = 50,
) -> tuple[MatchedSpikes, int]:
    """``spikes`` with the spikes of each pair of look-alike units of two sizes given to the unit
    whose size they have (module docstring), and how many moved. ``dense``: (K, nt, C) whitened
    templates; ``duplicate``: a spike is not moved into a unit that has a spike this close (two
    neurons firing together are two spikes)."""
    k = dense.shape[0]
    sizes = np.bincount(spikes.templates, minlength=k)
    d64 = dense.astype(np.float64)
    norms = np.sqrt((d64**2).sum(axis=1))  # (K, C)
    peak = np.maximum(norms.max(axis=1), 1e-12)
    feet = norms >= FOOTPRINT_SHARE * peak[:, None]
    pairs = []
    for a in range(k):
        for b in range(a + 1, k):
            if min(sizes[a], sizes[b]) < min_spikes or not (feet[a] & feet[b]).any():
                continue
            chans = np.flatnonzero(feet[a] | feet[b])
            cos = _alike(d64[a][:, chans], d64[b][:, chans], fine_lag=fine_lag)
            if cos >= LOOKALIKE_COSINE:
                pairs.append((cos, a, b))
    units = spikes.templates.copy()
    times = spikes.times.copy()
    amplitudes = spikes.amplitudes.copy()
    gains = spikes.gains.copy()
    used: set = set()
    moved_total = 0
    for _, a, b in sorted(pairs, reverse=True):
        if a in used or b in used:
            continue
        # a: the larger template
        if np.linalg.norm(norms[a]) < np.linalg.norm(norms[b]):
            a, b = b, a
        chans = np.flatnonzero(feet[a] | feet[b])
        idx = np.flatnonzero((units == a) | (units == b))
        own_b = units[idx] == b
        order = np.argsort(times, kind="stable")  # moved spikes shift by a few samples: once a pair
        everyone = MatchedSpikes(times[order], units[order], amplitudes[order], gains[order])
        fits_a, fits_b = [], []
        for s0 in range(0, len(idx), SPIKES_PER_BLOCK):  # windows of a long recording's units by blocks
            block = times[idx[s0 : s0 + SPIKES_PER_BLOCK]]
            snips = store.snippets(block, pre=pre + fine_lag, nt=nt + 2 * fine_lag, channels=chans)
            kw = dict(ordered=everyone, dense=d64[:, :, chans], pre=pre, own_at=pre + fine_lag, skip=(a, b))
            snips = _without_others(snips.astype(np.float64), block - pre - fine_lag, **kw)
            fits_a.append(_fits(snips, d64[a][:, chans], margin=fine_lag, fine_lag=fine_lag))
            fits_b.append(_fits(snips, d64[b][:, chans], margin=fine_lag, fine_lag=fine_lag))
        la, sa, ga = (np.concatenate(x) for x in zip(*fits_a))
        lb, sb, gb = (np.concatenate(x) for x in zip(*fits_b))
        # two sizes on the larger template, with a valley between them
        size_a, _ = _robust(sa[~own_b])
        size_b, _ = _robust(sa[own_b])
        if size_b >= size_a or bimodality(sa, 0.5 * (size_a + size_b)) < MIN_VALLEY:
            continue
        # a scale's spread is never below what the noise alone gives it: 1 / |T|
        floor_a = 1.0 / max(np.linalg.norm(d64[a][:, chans]), 1e-12)
        floor_b = 1.0 / max(np.linalg.norm(d64[b][:, chans]), 1e-12)
        to_b = own_b.copy()
        for _ in range(ITERATIONS):
            if to_b.all() or not to_b.any():
                break
            mu_a, sd_a = _robust(sa[~to_b])
            mu_b, sd_b = _robust(sb[to_b])
            sd_a, sd_b = max(sd_a, floor_a), max(sd_b, floor_b)
            # twice the log-likelihood of the spike under each unit, its scale integrated over the
            # unit's spread of scales; the last term, 0 for a unit whose spread is the noise's,
            # charges a broad one for the sizes it allows
            cost_a = ga - ((sa - mu_a) / sd_a) ** 2 - 2 * np.log(sd_a / floor_a)
            cost_b = gb - ((sb - mu_b) / sd_b) ** 2 - 2 * np.log(sd_b / floor_b)
            new = cost_b > cost_a
            if (new == to_b).all():
                break
            to_b = new
        moves = np.flatnonzero(to_b != own_b)
        # two neurons firing together: a spike stays where it is when the unit it would join
        # already has one within ``duplicate``
        new_times = times[idx] + np.where(to_b, lb, la)
        keep = np.ones(len(moves), dtype=bool)
        for target, into in ((b, to_b[moves]), (a, ~to_b[moves])):
            others = np.sort(times[units == target])
            if len(others) == 0 or not into.any():
                continue
            t = new_times[moves[into]]
            j = np.clip(np.searchsorted(others, t), 1, len(others) - 1)
            near = np.minimum(np.abs(others[j] - t), np.abs(others[j - 1] - t)) <= duplicate
            keep[np.flatnonzero(into)[near]] = False
        moves = moves[keep]
        if len(moves) == 0:
            continue
        used.update((a, b))
        rows = idx[moves]
        into_b = to_b[moves]
        times[rows] = new_times[moves]
        units[rows] = np.where(into_b, b, a)
        amplitudes[rows] = np.where(into_b, sb[moves], sa[moves]).astype(np.float32)
        gains[rows] = np.where(into_b, gb[moves], ga[moves]).astype(np.float32)
        moved_total += len(moves)
        log.info(
            "units %d and %d: one shape at two sizes (%.2f and %.2f of the larger): %d spikes moved to the unit of "
            "their size (%d to %d, %d to %d)",
            a,
            b,
            size_a,
            size_b,
            len(moves),
            int(into_b.sum()),
            b,
            int((~into_b).sum()),
            a,
        )
    if moved_total == 0:
        return spikes, 0
    order = np.lexsort((units, times))
    return MatchedSpikes(times[order], units[order], amplitudes[order], gains[order]), moved_total
