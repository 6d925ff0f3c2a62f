"""Templates from clusters, and template matching by peeling on the residual.

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
from spikesort.kernels.match import best_matches, select_non_overlapping, subtract_filtered, subtract_templates

log = logging.getLogger(__name__)


@dataclass
class Templates:
    dense: np.ndarray  # (K, nt, C) float32, whitened
    values: np.ndarray  # (K, nt, S) float32 on the support
    channels: np.ndarray  # (K, S) int64 support channels, padded with -1
    norm2: np.ndarray  # (K,) float32 squared norm
    main_channel: np.ndarray  # (K,) int64
    pre: int

    @property
    def n_templates(self) -> int:
        return self.dense.shape[0]

    def take(self, keep: np.ndarray) -> "Templates":
        return sparsify(self.dense[keep], pre=self.pre)


def sparsify(dense: np.ndarray, *, pre: int, support_fraction: float = 0.1, max_support: int = 32) -> Templates:
    """Keep each template's channels whose norm is at least ``support_fraction`` of its largest."""
    k, nt, n_c = dense.shape
    ch_norm = np.sqrt((dense**2).sum(axis=1))  # (K, C)
    s = 1
    supports = []
    for i in range(k):
        order = np.argsort(-ch_norm[i], kind="stable")
        keep = order[ch_norm[i, order] >= support_fraction * max(ch_norm[i, order[0]], 1e-12)][:max_support]
        supports.append(np.sort(keep))
        s = max(s, len(keep))
    values = np.zeros((k, nt, s), dtype=np.float32)
    channels = np.full((k, s), -1, dtype=np.int64)
    clean = np.zeros_like(dense, dtype=np.float32)
    for i, sup in enumerate(supports):
        values[i, :, : len(sup)] = dense[i][:, sup]
        channels[i, : len(sup)] = sup
        clean[i][:, sup] = dense[i][:, sup]
    norm2 = (values.astype(np.float64) ** 2).sum(axis=(1, 2)).astype(np.float32)
    main = np.argmax(ch_norm, axis=1).astype(np.int64) if k else np.zeros(0, np.int64)
    return Templates(dense=clean, values=values, channels=channels, norm2=norm2, main_channel=main, pre=pre)


def channel_candidates(t: Templates, *, n_channels: int, fraction: float = 0.3, max_per_channel: int = 32) -> np.ndarray:
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


@dataclass
class MatchedSpikes:
    times: np.ndarray  # (n,) int64
    templates: np.ndarray  # (n,) int64
    amplitudes: np.ndarray  # (n,) float32 scale of the template
    gains: np.ndarray  # (n,) float32 residual energy explained

    @classmethod
    def concat(cls, parts: list["MatchedSpikes"]) -> "MatchedSpikes":
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("times", "templates", "amplitudes", "gains")))

    def take(self, idx) -> "MatchedSpikes":
        return MatchedSpikes(self.times[idx], self.templates[idx], self.amplitudes[idx], self.gains[idx])


def match_block(x: np.ndarray, *, keep_start: int, keep_stop: int, offset: int, templates: Templates,
                chan_templates: np.ndarray, sign: int, detect_threshold: float, peak_neighbors: np.ndarray,
                exclusion: int, match_threshold: float, iterations: int, max_lag: int,
                amplitude_range: tuple[float, float], bases: np.ndarray,
                filter_sd: np.ndarray, filtered: np.ndarray | None = None) -> tuple[MatchedSpikes, np.ndarray]:
    """Peel templates off one whitened block. Returns the spikes (recording samples) and the residual.

    ``filtered``: ``filtered_templates(templates, bases[0])``, computed here when not given."""
    r = np.array(x, dtype=np.float32, copy=True)
    nt = templates.values.shape[1]
    pre = templates.pre
    lo = max(keep_start, pre + max_lag)
    hi = min(keep_stop, r.shape[0] - (nt - pre) - max_lag)
    parts = []
    if templates.n_templates == 0 or hi <= lo:
        return MatchedSpikes.concat([]), r
    thr2 = float(match_threshold) ** 2
    h = np.ascontiguousarray(bases[0])
    inv_sd = (1.0 / filter_sd).astype(np.float32)
    y = temporal_filter(r, h, pre, inv_sd)
    if filtered is None:
        filtered = filtered_templates(templates, h)
    values_t = np.ascontiguousarray(templates.values.transpose(0, 2, 1))
    rows = np.arange(lo, hi)
    for _ in range(iterations):
        t, c = detect_peaks_rows(y, 1.0, float(detect_threshold), peak_neighbors, exclusion, rows)
        if len(t) == 0:
            break
        k, tt, a, g = best_matches(r, t, c, values_t, templates.channels, templates.norm2,
                                   chan_templates, pre, max_lag, float(amplitude_range[0]), float(amplitude_range[1]))
        ok = np.flatnonzero((k >= 0) & (g > thr2))
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
    return spikes.take(order), r


def rows_near(times: np.ndarray, *, reach: int, lo: int, hi: int) -> np.ndarray:
    """Sorted samples of [lo, hi) within ``reach`` of any of ``times``."""
    marks = np.zeros(hi - lo + 1, dtype=np.int64)
    np.add.at(marks, np.clip(times - reach - lo, 0, hi - lo), 1)
    np.add.at(marks, np.clip(times + reach + 1 - lo, 0, hi - lo), -1)
    return np.flatnonzero(np.cumsum(marks)[:-1] > 0) + lo


def filtered_templates(templates: Templates, h: np.ndarray) -> np.ndarray:
    """(K, 2 nt - 1, S) each template's support channels convolved with the reversed filter
    ``h``: what subtracting the template does to the matched-filter output (subtract_filtered)."""
    k, nt, s = templates.values.shape
    if len(h) != nt:
        raise ValueError(f"filter length {len(h)} differs from the template length {nt}")
    out = np.zeros((k, 2 * nt - 1, s), dtype=np.float32)
    hr = np.asarray(h, dtype=np.float64)[::-1]
    for i in range(k):
        for j in range(s):
            if templates.channels[i, j] >= 0:
                out[i, :, j] = np.convolve(templates.values[i, :, j].astype(np.float64), hr)
    return out


def lagged_similarity(a: np.ndarray, b: np.ndarray, *, max_lag: int, signal_fraction: float = 0.2) -> tuple[float, int]:
    """Best cosine similarity of two (nt, C) templates over shifts of ``b`` by -max_lag..max_lag
    samples, and that shift (b delayed by ``lag`` matches a).

    Only channels where either template has at least ``signal_fraction`` of its strongest
    channel's norm count: elsewhere a template of a few dozen spikes is mostly averaged noise,
    which would pull two halves of one sparse unit below any merge threshold.
    """
    ca, cb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    if ca.max(initial=0) == 0 or cb.max(initial=0) == 0:
        return 0.0, 0
    chans = (ca >= signal_fraction * ca.max()) | (cb >= signal_fraction * cb.max())
    a, b = a[:, chans], b[:, chans]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    nt = a.shape[0]
    best, best_lag = -1.0, 0
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            s = float((a[lag:] * b[: nt - lag]).sum())
        else:
            s = float((a[: nt + lag] * b[-lag:]).sum())
        if s > best:
            best, best_lag = s, lag
    return best / (na * nb), best_lag


def merge_similar_templates(dense: np.ndarray, sizes: np.ndarray, *, positions_um: np.ndarray, max_lag: int,
                            threshold: float, max_distance_um: float = 100.0, norm_ratio: float = 1.6,
                            same_unit=None) -> list[list[tuple[int, int]]]:
    """Groups of templates that are one unit seen twice (split by peak channel or alignment).

    Pairs whose lag-aware cosine similarity exceeds ``threshold`` and whose norms are within
    ``norm_ratio`` of each other are joined, most similar first; a group joins another only if
    every cross pair is similar enough, so chains of loosely similar units are not glued, and
    ``same_unit(i, j, lag)`` (when given) does not veto the pair.
    Returns, per group, (template, sample offset that aligns its spikes on the group's largest
    member).
    """
    k = dense.shape[0]
    if k == 0:
        return []
    ch_norm = np.sqrt((dense**2).sum(axis=1))
    main = ch_norm.argmax(axis=1)
    norms = np.linalg.norm(dense.reshape(k, -1), axis=1)
    sim = np.full((k, k), -1.0)
    lag = np.zeros((k, k), dtype=np.int64)
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            if np.linalg.norm(positions_um[main[i]] - positions_um[main[j]]) > max_distance_um:
                continue
            r = norms[i] / max(norms[j], 1e-12)
            if r > norm_ratio or r < 1 / norm_ratio:
                continue
            s, l = lagged_similarity(dense[i], dense[j], max_lag=max_lag)
            sim[i, j] = sim[j, i] = s
            lag[i, j], lag[j, i] = l, -l
            if s > threshold:
                pairs.append((s, i, j))
    group = list(range(k))
    members = {i: [i] for i in range(k)}
    for s, i, j in sorted(pairs, reverse=True):
        gi, gj = group[i], group[j]
        if gi == gj:
            continue
        if all(sim[a, b] > threshold for a in members[gi] for b in members[gj]) and (
                same_unit is None or same_unit(i, j, int(lag[i, j]))):
            for b in members[gj]:
                group[b] = gi
            members[gi] += members.pop(gj)
    out = []
    for g in members.values():
        rep = max(g, key=lambda t: sizes[t])
        # offsets to add to a member's spike times to align them on the group's largest member
        out.append([(t, 0 if t == rep else -int(lag[rep, t])) for t in g])
    return out


def snippet_merge_test(store, times: np.ndarray, labels: np.ndarray, *, pre: int, nt: int, threshold: float,
                       rng: np.random.Generator, max_spikes: int = 300):
    """A veto for template merges: the spikes of two clusters, aligned on the first, must form
    one mode along the axis joining their mean waveforms (else they are two neurons)."""
    from .cluster import bimodality

    def same_unit(i: int, j: int, lag: int) -> bool:
        ti, tj = times[labels == i], times[labels == j] - lag
        if len(ti) > max_spikes:
            ti = rng.choice(ti, max_spikes, replace=False)
        if len(tj) > max_spikes:
            tj = rng.choice(tj, max_spikes, replace=False)
        if len(ti) == 0 or len(tj) == 0:
            return False
        si, sj = store.snippets(ti, pre=pre, nt=nt), store.snippets(tj, pre=pre, nt=nt)
        mi, mj = si.mean(0), sj.mean(0)
        # the channels that carry either waveform; the rest only adds noise to the projection
        chans = np.flatnonzero(np.maximum(np.abs(mi).max(0), np.abs(mj).max(0)) > 0.2 * max(np.abs(mi).max(), np.abs(mj).max()))
        axis = (mi - mj)[:, chans].ravel()
        nrm = np.linalg.norm(axis)
        if nrm == 0:
            return True
        pi = si[:, :, chans].reshape(len(si), -1) @ (axis / nrm)
        pj = sj[:, :, chans].reshape(len(sj), -1) @ (axis / nrm)
        return bimodality(np.concatenate([pi, pj]), 0.5 * (pi.mean() + pj.mean())) < threshold

    return same_unit


def template_snr(templates_uv: np.ndarray, noise_uv: np.ndarray) -> np.ndarray:
    """|peak| on each template's best channel over that channel's noise sd (both µV)."""
    if len(templates_uv) == 0:
        return np.zeros(0)
    peak = np.abs(templates_uv).max(axis=1)  # (K, C)
    best = peak.argmax(axis=1)
    return peak[np.arange(len(best)), best] / np.maximum(noise_uv[best], 1e-12)


def build_templates(store, times: np.ndarray, labels: np.ndarray, *, n_units: int, pre: int, nt: int,
                    rng: np.random.Generator, max_spikes: int = 300, n_jobs: int = 1) -> Templates:
    """Median waveform of up to ``max_spikes`` spikes of each label, read from the trace store.

    The spikes are drawn in unit order first, so ``n_jobs`` threads (the reads and numpy's
    selection release the GIL) give the same templates as one."""
    from concurrent.futures import ThreadPoolExecutor

    chosen = []
    for u in range(n_units):
        t = times[labels == u]
        if len(t) > max_spikes:
            t = np.sort(rng.choice(t, max_spikes, replace=False))
        chosen.append(t)
    dense = np.zeros((n_units, nt, store.n_channels), dtype=np.float32)

    def one(u):
        if len(chosen[u]):
            dense[u] = robust_template(store.snippets(chosen[u], pre=pre, nt=nt))

    if n_jobs > 1 and n_units > 1:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            list(pool.map(one, range(n_units)))
    else:
        for u in range(n_units):
            one(u)
    return sparsify(dense, pre=pre)


def robust_template(snippets: np.ndarray, *, signal_fraction: float = 0.05) -> np.ndarray:
    """Median of (n, nt, C) snippets on the channels that carry the waveform (mean-waveform norm at
    least ``signal_fraction`` of the largest), their mean elsewhere: far channels hold only noise,
    where median and mean agree within the noise, and on a 384-channel probe the median of every
    channel was the costliest part of building templates."""
    mean = snippets.mean(axis=0)
    norm = np.sqrt((mean.astype(np.float64) ** 2).sum(axis=0))
    chans = np.flatnonzero(norm >= signal_fraction * norm.max()) if norm.max() > 0 else np.arange(len(norm))
    mean[:, chans] = median_over_first_axis(snippets[:, :, chans])
    return mean


def median_over_first_axis(x: np.ndarray) -> np.ndarray:
    """np.median(x, axis=0), ~7x faster: numpy partitions a strided axis slowly, so the samples
    are moved to the last, contiguous axis first, and partitioned once."""
    n = len(x)
    flat = np.ascontiguousarray(x.reshape(n, -1).T)
    flat.partition(n // 2, axis=1)
    med = flat[:, n // 2]
    if n % 2 == 0:  # the lower middle is the largest value left of the upper one
        med = 0.5 * (med + flat[:, : n // 2].max(axis=1))
    return med.reshape(x.shape[1:]).astype(x.dtype)
