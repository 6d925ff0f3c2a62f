"""Merges of the pieces of one neuron whose spikes change size (bursts).

A neuron whose spikes shrink and widen within a burst (to a third of their size on biophysical
simulations) comes out of the clustering as a full-size unit and one or more smaller ones. The
pieces' templates differ in size and a little in shape, and the refractory test of
:mod:`.refractory` fails on them: the matching fits a piece's template to what the full-size
template leaves of a stretched spike a few hundred µs away, and those coincidences count against
the merge. What does not change is where the neuron is: its amplitude scales on every channel
together, so the pieces' spatial footprints (peak-to-peak amplitude per channel, in µV) agree up to
a factor. Two neurons agreeing that closely over many channels are rare; on a tetrode every
neuron has nearly the same footprint, so the rule needs the footprint to span several channels.
"""

from __future__ import annotations

import logging

import numpy as np

from spikesort.stages.match import MatchedSpikes

from .refractory import cross_refractory_ratio
from .templates import lagged_similarity

log = logging.getLogger(__name__)

# the footprint of a unit: channels with at least this fraction of its largest peak-to-peak
SIGNAL_FRACTION = 0.1


def footprint_cosine(pa: np.ndarray, pb: np.ndarray) -> tuple[float, int]:
    """Cosine of two footprints (peak-to-peak amplitude per channel) over the channels where
    either has signal, and the number of those channels."""
    if pa.max(initial=0) <= 0 or pb.max(initial=0) <= 0:
        return 0.0, 0
    chans = (pa >= SIGNAL_FRACTION * pa.max()) | (pb >= SIGNAL_FRACTION * pb.max())
    pa, pb = pa[chans], pb[chans]
    return float(pa @ pb) / float(np.linalg.norm(pa) * np.linalg.norm(pb)), int(chans.sum())


def footprint_merges(
    dense: np.ndarray,
    templates_uv: np.ndarray,
    sizes: np.ndarray,
    *,
    max_lag: int,
    min_cosine: float = 0.99,
    min_similarity: float = 0.8,
    min_channels: int = 8,
    independent=None,
    min_size_ratio: float = 1.5,
) -> list[list[tuple[int, int]]]:
    """Groups of units that are one neuron seen at several sizes, each as (unit, offset that
    aligns its spikes on the group's largest unit), like the other template merges.

    A pair needs footprints agreeing to ``min_cosine`` over at least ``min_channels`` channels
    and whitened templates of one shape (lag-aware cosine ``min_similarity``). Groups are joined
    most similar first, and only when every cross pair agrees, so no chain links two neurons
    through a piece that looks like both.

    Two neurons a few µm apart also have footprints that agree to 0.99 (on dense probes, and
    beyond the end of a shank). A pair of about one size (peak-to-peak within
    ``min_size_ratio``) is not a neuron at several sizes: it merges only when
    ``independent(i, j)`` (if given) does not say the two fire independently of each other.
    """
    k = dense.shape[0]
    if k == 0:
        return []
    ok = np.zeros((k, k), dtype=bool)
    lag = np.zeros((k, k), dtype=np.int64)
    pairs = []
    ptp = np.ptp(templates_uv, axis=1)  # (k, C)
    peak = ptp.argmax(axis=1)
    # a footprint that agrees has signal on the other unit's largest channel at least
    near = ptp[:, peak].T >= SIGNAL_FRACTION * ptp.max(axis=1)[None, :]  # near[i, j]: j seen on i's peak
    for i in range(k):
        for j in np.flatnonzero(near[i] & near[:, i]):
            if j <= i:
                continue
            cos, n_ch = footprint_cosine(ptp[i], ptp[j])
            if cos < min_cosine or n_ch < min_channels:
                continue
            s, shift = lagged_similarity(dense[i], dense[j], max_lag=max_lag)
            if s < min_similarity:
                continue
            one_size = max(ptp[i].max(), ptp[j].max()) < min_size_ratio * min(ptp[i].max(), ptp[j].max())
            if one_size and independent is not None and independent(i, j):
                log.info("units %d and %d: footprints agree, but one size and independent firing: kept apart", i, j)
                continue
            ok[i, j] = ok[j, i] = True
            lag[i, j], lag[j, i] = shift, -shift
            pairs.append((cos, i, j))
    group = list(range(k))
    members = {i: [i] for i in range(k)}
    for _c, i, j in sorted(pairs, reverse=True):
        gi, gj = group[i], group[j]
        if gi == gj or not all(ok[a, b] for a in members[gi] for b in members[gj]):
            continue
        for b in members[gj]:
            group[b] = gi
        members[gi] += members.pop(gj)
    out = []
    for g in members.values():
        rep = max(g, key=lambda t: sizes[t])
        out.append([(t, 0 if t == rep else -int(lag[rep, t])) for t in g])
        if len(g) > 1:
            log.info("units %s: one neuron at several sizes (footprints agree): merged", sorted(g))
    return out


def fire_independently(
    ta: np.ndarray,
    tb: np.ndarray,
    *,
    refractory: int,
    double_fit: int,
    duration: int,
    rate_bin: int | None = None,
    min_expected: float = 5.0,
    min_ratio: float = 0.5,
) -> bool:
    """Two spike trains fire independently: at lags between ``double_fit`` and ``refractory``
    samples there are at least ``min_ratio`` of the pairs independent firing would give, and
    that expectation is at least ``min_expected`` (enough evidence). One neuron leaves a gap
    there; lags up to ``double_fit`` are left out, where one spike fitted by two pieces'
    templates lands."""
    obs_r, exp_r = cross_refractory_ratio(ta, tb, refractory=refractory, duration=duration, rate_bin=rate_bin)
    obs_d, exp_d = cross_refractory_ratio(ta, tb, refractory=double_fit, duration=duration, rate_bin=rate_bin)
    expected = exp_r - exp_d
    observed = obs_r * exp_r - obs_d * exp_d
    return expected >= min_expected and observed >= min_ratio * expected


def independence_test(spikes: MatchedSpikes, **kw):
    """``independent(i, j)`` for units i and j of ``spikes`` (``fire_independently``, keywords passed on)."""
    order = np.argsort(spikes.times, kind="stable")
    t, k = spikes.times[order], spikes.templates[order]

    def independent(i: int, j: int) -> bool:
        return fire_independently(t[k == i], t[k == j], **kw)

    return independent


def drop_refractory_doubles(spikes: MatchedSpikes, *, units: np.ndarray, refractory: int) -> MatchedSpikes:
    """In the given (merged) units, drop the smaller of two spikes closer than ``refractory``
    samples: one neuron does not fire twice that fast, so the pair is one spike fitted twice
    (once by each piece's template)."""
    sel = np.isin(spikes.templates, units)
    if not sel.any() or refractory <= 0:
        return spikes
    idx = np.flatnonzero(sel)
    order = idx[np.lexsort((spikes.times[idx], spikes.templates[idx]))]
    t, k, g = spikes.times[order], spikes.templates[order], spikes.gains[order]
    drop = np.zeros(len(order), dtype=bool)
    last = 0  # the kept spike the next one is compared with
    for i in range(1, len(order)):
        if k[i] != k[last] or t[i] - t[last] > refractory:
            last = i
            continue
        if g[i] > g[last]:
            drop[last] = True
            last = i
        else:
            drop[i] = True
    if not drop.any():
        return spikes
    log.info("%d spikes fitted twice by pieces of one neuron dropped", int(drop.sum()))
    keep = np.ones(len(spikes.times), dtype=bool)
    keep[order[drop]] = False
    return spikes.take(np.flatnonzero(keep))
