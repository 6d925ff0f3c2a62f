"""Templates: the median waveform of each unit, read from the whitened trace store, and what
matching and curation derive from them (sparse supports, matched-filter responses, SNR)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampling import keyed_subset


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

    def take(self, keep: np.ndarray) -> Templates:
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


def template_snr(templates_uv: np.ndarray, noise_uv: np.ndarray) -> np.ndarray:
    """|peak| on each template's best channel over that channel's noise sd (both µV)."""
    if len(templates_uv) == 0:
        return np.zeros(0)
    peak = np.abs(templates_uv).max(axis=1)  # (K, C)
    best = peak.argmax(axis=1)
    return peak[np.arange(len(best)), best] / np.maximum(noise_uv[best], 1e-12)


def trough_offsets(
    dense: np.ndarray, *, pre: int, sign: int, min_offset: int = 1, dominant: bool = True, edges: bool = False
) -> np.ndarray:
    """(K,) samples by which each unit's spike times must move to put its trough (its largest
    deflection of the detection ``sign``, on the channel where that deflection is largest) at
    ``pre``; 0 where the trough is within ``min_offset`` of ``pre`` already, on the window's edge
    (unless ``edges``: the spikes were caught at least that far off their trough, and moved there
    they show it whole), or, with ``dominant``, not the largest deflection on that channel (a unit
    whose opposite lobe dominates keeps its alignment)."""
    if sign not in (-1, 1):
        raise ValueError(f"sign must be -1 or 1, got {sign}")
    k, nt = dense.shape[:2]
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    signed = sign * dense.astype(np.float64)
    main = signed.max(axis=1).argmax(axis=1)
    wave = signed[np.arange(k), :, main]  # (K, nt)
    trough = wave.argmax(axis=1)
    offset = trough - pre
    inside = (trough > 0) & (trough < nt - 1) | edges  # an extremum, not a slope cut by the window's edge
    lobe = wave.max(axis=1) >= np.abs(wave).max(axis=1) if dominant else np.ones(k, dtype=bool)
    move = lobe & inside & (np.abs(offset) >= min_offset)
    return np.where(move, offset, 0).astype(np.int64)


def realigned(
    times: np.ndarray, labels: np.ndarray, *, dense: np.ndarray, pre: int, sign: int, min_offset: int = 1
) -> np.ndarray:
    """Spike times moved by their cluster's :func:`trough_offsets` (label -1: not moved).

    Detection aligns most spikes on their trough, but some clusters are caught on another lobe:
    a biophysical burst's widened spikes on the lobe before it (on MEArec's dense probes, troughs
    25-40 samples late, the waveform cut by the window's end), and online, detections in residuals
    on a neuron's rebound. Off by that much, a template neither looks like its neuron's other
    units nor is matched where the neuron fires."""
    offsets = trough_offsets(dense, pre=pre, sign=sign, min_offset=min_offset)
    out = np.array(times, dtype=np.int64, copy=True)
    inside = labels >= 0
    out[inside] += offsets[labels[inside]]
    return out


def build_templates(
    store,
    times: np.ndarray,
    labels: np.ndarray,
    *,
    n_units: int,
    pre: int,
    nt: int,
    seed: int,
    max_spikes: int = 300,
    n_jobs: int = 1,
    memo: dict | None = None,
) -> Templates:
    """Median waveform of up to ``max_spikes`` spikes of each label, read from the trace store.

    Each unit's spikes are chosen from its own spikes and the ``seed`` alone
    (:func:`.sampling.keyed_subset`): a change to one unit leaves every other unit's template
    as it was, and ``n_jobs`` threads give the same templates as one.

    ``memo`` (a dict the caller keeps for one store) holds the last call's templates by the
    spikes they were drawn from: a unit whose chosen spikes are the same again is not read and
    reduced again. Curation rebuilds every template after each merge or drop, and most units
    are untouched by it (on an hour of 384 channels, reading their windows back was most of
    curation's time)."""
    from concurrent.futures import ThreadPoolExecutor

    # one sort by label, not one pass over every spike per unit (hours of 384 channels: millions)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_units + 1))
    by_unit = np.asarray(times)[order]
    chosen = [keyed_subset(by_unit[bounds[u] : bounds[u + 1]], max_spikes, seed=seed) for u in range(n_units)]
    dense = np.zeros((n_units, nt, store.n_channels), dtype=np.float32)
    keys = [(pre, nt, c.tobytes()) for c in chosen]
    known = {} if memo is None else memo

    def one(u):
        if keys[u] in known:
            dense[u] = known[keys[u]]
        elif len(chosen[u]):
            dense[u] = robust_template(store.snippets(chosen[u], pre=pre, nt=nt))

    if n_jobs > 1 and n_units > 1:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            list(pool.map(one, range(n_units)))
    else:
        for u in range(n_units):
            one(u)
    if memo is not None:  # this call's templates only: the next call's units are mostly these
        memo.clear()
        memo.update((keys[u], dense[u].copy()) for u in range(n_units) if len(chosen[u]))
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
