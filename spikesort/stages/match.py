"""Template matching by peeling on the residual (the templates themselves: :mod:`.templates`).

Each round finds candidate peaks on the residual, fits every template that could own each
peak (a few sample lags, clipped least-squares amplitude), keeps the best fits that do not
overlap in space-time, and subtracts them. Overlapping spikes show up as new peaks in a later
round once the larger spike is gone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spikesort.kernels.detect import detect_peaks_rows, temporal_filter
from spikesort.kernels.match import (
    best_matches,
    select_non_overlapping,
    subtract_filtered,
    subtract_templates,
    support_energy,
    template_projections,
)

from .noise_sd import robust_sd
from .templates import Templates, filtered_templates

log = logging.getLogger(__name__)

QUIET_SD = 4.0  # a window with a sample this large on a template's channels holds a spike
MIN_QUIET_WINDOWS = 200  # fewer quiet windows than this: the spread is taken over all of them


def channel_candidates(
    t: Templates, *, n_channels: int, fraction: float = 0.3, max_per_channel: int = 32
) -> np.ndarray:
    """(C, Q) templates worth trying for a peak on each channel: those with at least
    ``fraction`` of their peak channel's norm there, strongest first; padded with -1."""
    ch_norm = np.sqrt((t.dense.astype(np.float64) ** 2).sum(axis=1))  # (K, C)
    rel = ch_norm / np.maximum(ch_norm.max(axis=1, keepdims=True), 1e-12)
    rows = []
    for c in range(n_channels):
        ks = np.flatnonzero(rel[:, c] >= fraction)
        ks = ks[np.argsort(-ch_norm[ks, c], kind="stable")][:max_per_channel]
        rows.append(ks)
    q = max([len(r) for r in rows] + [1])
    table = np.full((n_channels, q), -1, dtype=np.int64)
    for c, r in enumerate(rows):
        table[c, : len(r)] = r
    return table


def match_thresholds(
    blocks,
    *,
    templates: Templates,
    match_threshold: float,
    noise_sds: float,
    rng: np.random.Generator,
    per_block: int = 500,
    quiet: float = QUIET_SD,
) -> np.ndarray:
    """(K,) score each template's fit must exceed: ``match_threshold`` (in whitened units), and
    ``noise_sds`` sds of that template's own score <x, T>/|T| on the noise.

    Whitening gives each sample unit noise variance, not a flat spectrum. Where the noise is
    coloured, a template's score on noise alone spreads wider than 1 sd (1.2-1.7 on MEArec's
    biophysical recordings, 1.0-1.1 on spikeinterface's generator), and a fixed threshold lets
    noise fits through by the hundred. The spread is measured at ``per_block`` random windows of each
    whitened block in ``blocks``, on the windows where no sample of the template's channels
    reaches ``quiet`` (noise sd): a spike there would widen it.
    """
    k = templates.n_templates
    nt, pre = templates.values.shape[1], templates.pre
    norm = np.sqrt(templates.norm2).astype(np.float32)
    chans = np.where(templates.channels >= 0, templates.channels, 0)
    scores, calm = [], []
    for x in blocks:
        hi = x.shape[0] - nt + pre
        if k == 0 or hi <= pre:
            continue
        times = rng.integers(pre, hi, per_block)
        ind = np.ascontiguousarray(np.broadcast_to(np.arange(k), (per_block, k)))
        amps = template_projections(x, times, ind, templates.values, templates.channels, templates.norm2, pre)
        scores.append(amps * norm)
        # each window's largest sample per channel, a hundred windows at a time (384 channels)
        peak = np.concatenate(
            [
                np.abs(x[t[:, None] - pre + np.arange(nt)]).max(axis=1)
                for t in np.array_split(times, -(-per_block // 100))
            ]
        )  # (n, C)
        on_template = np.where(templates.channels[None] >= 0, peak[:, chans], 0)  # (n, K, S)
        calm.append(on_template.max(axis=2) < quiet)
    if not scores:
        return np.full(k, match_threshold, dtype=np.float32)
    s, ok = np.concatenate(scores), np.concatenate(calm)
    sd = np.ones(k)
    for i in range(k):
        v = s[ok[:, i], i] if ok[:, i].sum() >= MIN_QUIET_WINDOWS else s[:, i]
        sd[i] = robust_sd(v)
    return np.maximum(float(match_threshold), float(noise_sds) * sd).astype(np.float32)


@dataclass
class MatchedSpikes:
    times: np.ndarray  # (n,) int64
    templates: np.ndarray  # (n,) int64
    amplitudes: np.ndarray  # (n,) float32 scale of the template
    gains: np.ndarray  # (n,) float32 residual energy explained

    @classmethod
    def concat(cls, parts: list[MatchedSpikes]) -> MatchedSpikes:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("times", "templates", "amplitudes", "gains"))
        )

    def take(self, idx) -> MatchedSpikes:
        return MatchedSpikes(self.times[idx], self.templates[idx], self.amplitudes[idx], self.gains[idx])


def match_block(
    x: np.ndarray,
    *,
    keep_start: int,
    keep_stop: int,
    offset: int,
    templates: Templates,
    chan_templates: np.ndarray,
    sign: int,
    detect_threshold: float,
    peak_neighbors: np.ndarray,
    exclusion: int,
    match_threshold: float | np.ndarray,
    iterations: int,
    max_lag: int,
    amplitude_range: tuple[float, float],
    bases: np.ndarray,
    filter_sd: np.ndarray,
    filtered: np.ndarray | None = None,
    drop_misfits: bool = False,
    sure_threshold: float | None = None,
    faint_min_amplitude: float | np.ndarray = 0.0,
) -> tuple[MatchedSpikes, np.ndarray]:
    """Peel templates off one whitened block. Returns the spikes (recording samples) and the residual.

    ``match_threshold``: one score for every template, or one per template (``match_thresholds``).
    ``filtered``: ``filtered_templates(templates, bases[0])``, computed here when not given.
    ``drop_misfits``: leave out the fits that explain less than they leave (``poorly_fit``): a
    neuron no template describes, fitted by the least bad one. Their fits are added back to the
    residual.
    ``sure_threshold``, ``faint_min_amplitude``: a candidate whose filtered peak is under
    ``sure_threshold`` (noise sd) is faint, and its fit is kept only at ``faint_min_amplitude`` of
    the template's size or more. Faint candidates find the spikes of faint neurons; fitted small,
    a larger neighbour's template takes spikes of a neuron it does not describe (on a crowded
    probe, 0.55-0.68 of its size). A template too faint for that (``faint_floors``) has no floor.
    ``faint_min_amplitude`` may be those floors, one per template, computed once by the caller."""
    r = np.array(x, dtype=np.float32, copy=True)
    nt = templates.values.shape[1]
    pre = templates.pre
    lo = max(keep_start, pre + max_lag)
    hi = min(keep_stop, r.shape[0] - (nt - pre) - max_lag)
    parts = []
    if templates.n_templates == 0 or hi <= lo:
        return MatchedSpikes.concat([]), r
    thr2 = np.broadcast_to(np.asarray(match_threshold, dtype=np.float32) ** 2, (templates.n_templates,))
    h = np.ascontiguousarray(bases[0])
    inv_sd = (1.0 / filter_sd).astype(np.float32)
    y = temporal_filter(r, h, pre, inv_sd)
    if filtered is None:
        filtered = filtered_templates(templates, h)
    values_t = np.ascontiguousarray(templates.values.transpose(0, 2, 1))
    floors = None
    if sure_threshold is not None and np.ndim(faint_min_amplitude) == 1:
        floors = np.asarray(faint_min_amplitude, dtype=np.float32)
    elif sure_threshold is not None and faint_min_amplitude > 0:
        floors = faint_floors(
            filtered,
            channels=templates.channels,
            inv_sd=inv_sd,
            sure_threshold=sure_threshold,
            faint_min_amplitude=faint_min_amplitude,
        )
    rows = np.arange(lo, hi)
    for _ in range(iterations):
        t, c = detect_peaks_rows(y, 1.0, float(detect_threshold), peak_neighbors, exclusion, rows)
        if len(t) == 0:
            break
        k, tt, a, g = best_matches(
            r,
            t,
            c,
            values_t,
            templates.channels,
            templates.norm2,
            chan_templates,
            pre,
            max_lag,
            float(amplitude_range[0]),
            float(amplitude_range[1]),
        )
        fit = (k >= 0) & (g > thr2[np.maximum(k, 0)])
        if floors is not None:
            fit &= (y[t, c] >= sure_threshold) | (a >= floors[np.maximum(k, 0)])
        ok = np.flatnonzero(fit)
        if len(ok) == 0:
            break
        order = ok[np.argsort(-g[ok], kind="stable")]
        keep = select_non_overlapping(order, k, tt, templates.channels, pre, nt, r.shape[0], r.shape[1])
        sel = np.flatnonzero(keep)
        subtract_templates(r, tt[sel], k[sel], a[sel], templates.values, templates.channels, pre)
        subtract_filtered(y, tt[sel], k[sel], a[sel], filtered, templates.channels, inv_sd)
        # elsewhere neither the filtered traces nor the residual changed, so a candidate there
        # would be found and rejected again: search only near the subtractions
        reach = nt + max(max_lag, exclusion)
        rows = rows_near(tt[sel], reach=reach, lo=lo, hi=hi)
        parts.append(MatchedSpikes(tt[sel] + offset, k[sel], a[sel], g[sel]))
    spikes = MatchedSpikes.concat(parts)
    order = np.lexsort((spikes.templates, spikes.times))
    spikes = spikes.take(order)
    if drop_misfits:
        spikes = set_misfits_aside(spikes, r, offset=offset, templates=templates)
    return spikes, r


def faint_floors(
    filtered: np.ndarray,
    *,
    channels: np.ndarray,
    inv_sd: np.ndarray,
    sure_threshold: float,
    faint_min_amplitude: float,
) -> np.ndarray:
    """(K,) least scale of a fit on a faint candidate: ``faint_min_amplitude``, or 0 for a template
    whose own spike at that scale would be faint too (its peak on the filtered traces, from
    ``filtered`` scaled by ``inv_sd`` per channel, times ``faint_min_amplitude``, under
    ``sure_threshold``).

    Such a template is a faint neuron's, often spread over several contacts, and its median was
    drawn from spikes past the detection threshold, so its own spikes fit at 0.6-0.7 of it: the
    floor kept out a third of them (``crowded64`` seed 90, a 20 µV neuron on four contacts,
    recall 0.71). A larger template's fit that small on a faint peak is what the floor is for:
    its own spike at that scale would peak far above the candidate."""
    if len(filtered) == 0:
        return np.zeros(0, dtype=np.float32)
    valid = channels >= 0
    scale = np.where(valid, inv_sd[np.where(valid, channels, 0)], 0.0).astype(np.float32)  # (K, S)
    peak = (filtered * scale[:, None, :]).max(axis=(1, 2))
    return np.where(peak * faint_min_amplitude < sure_threshold, 0.0, faint_min_amplitude).astype(np.float32)


def set_misfits_aside(
    spikes: MatchedSpikes, residual: np.ndarray, *, offset: int, templates: Templates
) -> MatchedSpikes:
    """``spikes`` without the fits that explain less than they leave (``poorly_fit``); those fits
    are added back to ``residual`` (in place: rows are recording samples minus ``offset``)."""
    if len(spikes.times) == 0:
        return spikes
    local = spikes.times - offset
    bad = poorly_fit(residual, times=local, labels=spikes.templates, amplitudes=spikes.amplitudes, templates=templates)
    if not bad.any():
        return spikes
    idx = np.flatnonzero(bad)
    subtract_templates(
        residual,
        local[idx],
        spikes.templates[idx],
        -spikes.amplitudes[idx],
        templates.values,
        templates.channels,
        templates.pre,
    )
    return spikes.take(np.flatnonzero(~bad))


def rows_near(times: np.ndarray, *, reach: int, lo: int, hi: int) -> np.ndarray:
    """Sorted samples of [lo, hi) within ``reach`` of any of ``times``."""
    marks = np.zeros(hi - lo + 1, dtype=np.int64)
    np.add.at(marks, np.clip(times - reach - lo, 0, hi - lo), 1)
    np.add.at(marks, np.clip(times + reach + 1 - lo, 0, hi - lo), -1)
    return np.flatnonzero(np.cumsum(marks)[:-1] > 0) + lo


def poorly_fit(
    residual: np.ndarray,
    *,
    times: np.ndarray,
    labels: np.ndarray,
    amplitudes: np.ndarray,
    templates: Templates,
    max_unexplained: float = 1.0,
) -> np.ndarray:
    """True for each matched spike that its template explains worse than it leaves unexplained.

    ``times`` are rows of ``residual`` (whitened, noise sd ~1, the fits already subtracted). A spike
    is poorly fit when the residual energy on its template's support, beyond what noise leaves
    there (4 noise sd of margin), exceeds ``max_unexplained`` times the energy the fit removed: a
    neuron that no template describes, fitted by the least bad one. Collisions the peeling
    resolved leave only noise behind and are not flagged.
    """
    out = np.zeros(len(times), dtype=bool)
    if len(times) == 0:
        return out
    nt = templates.values.shape[1]
    labels = np.asarray(labels, dtype=np.int64)
    left = support_energy(residual, np.asarray(times, dtype=np.int64), labels, templates.channels, templates.pre, nt)
    cells = nt * (templates.channels[labels] >= 0).sum(axis=1)
    fitted = np.asarray(amplitudes, np.float64) ** 2 * templates.norm2[labels]
    return left - cells > max_unexplained * fitted + 4.0 * np.sqrt(2.0 * cells)
