"""Merges of templates that are one unit seen twice (split by peak channel or alignment).

``lagged_similarity`` is the template similarity every template merge uses, ``footprint_cosine``
the footprint similarity of the merges of one neuron's pieces (:mod:`.footprint`, :mod:`.noise`);
``snippet_merge_test`` the veto that keeps two neurons with similar templates apart.
"""

from __future__ import annotations

import numpy as np

from spikesort.stages.bimodality import bimodality
from spikesort.stages.sampling import keyed_subset

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


def seen_on_peaks(ptp: np.ndarray) -> np.ndarray:
    """(k, k) bool, ``[i, j]``: unit j has at least ``SIGNAL_FRACTION`` of its largest amplitude on
    unit i's largest channel (``ptp``: the (k, C) footprints, peak-to-peak per channel). Two
    footprints that agree see each other so."""
    return ptp[:, ptp.argmax(axis=1)].T >= SIGNAL_FRACTION * ptp.max(axis=1)[None, :]


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
    dots, _ = lagged_dots(a, b, max_lag=max_lag)
    n = int(np.argmax(dots))
    if dots[n] <= -1.0:  # nothing above the starting point of the search
        return -1.0 / (na * nb), 0
    return float(dots[n]) / (na * nb), n - max_lag


def lagged_dots(y: np.ndarray, x: np.ndarray, *, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """For each lag in -max_lag..max_lag: the dot product of ``y`` with ``x`` delayed by that lag,
    and the squared norm of the delayed ``x`` (what stays inside the window); both (nt, C)."""
    nt = y.shape[0]
    dots = np.zeros(2 * max_lag + 1)
    sq = np.zeros(2 * max_lag + 1)
    energy = (x**2).sum(axis=1)
    for n, lag in enumerate(range(-max_lag, max_lag + 1)):
        if lag >= 0:
            dots[n] = float((y[lag:] * x[: nt - lag]).sum())
            sq[n] = float(energy[: nt - lag].sum())
        else:
            dots[n] = float((y[: nt + lag] * x[-lag:]).sum())
            sq[n] = float(energy[-lag:].sum())
    return dots, sq


# a sliver of a neuron's spikes aligned on another of its phases (31-33 spikes, 1.6-3.3 % of the
# unit's, on mearec_np64): its footprint, from so few spikes, agreed to only 0.972-0.985, its
# shape to 0.92 at a lag of 11-17 samples; neurons that look alike at a lag fire at comparable
# rates on every generated recording (2-8 Hz), so a unit this much smaller that looks this alike
# is not one of them
SLIVER_FRACTION, SLIVER_SIMILARITY = 0.05, 0.9


def sliver_of(
    a: np.ndarray, b: np.ndarray, n_a: int, n_b: int, *, max_lag: int, phase_lag: int
) -> tuple[float, int] | None:
    """(similarity, lag of ``b`` onto ``a``) when the unit with fewer spikes (``n_a``, ``n_b``) has
    at most ``SLIVER_FRACTION`` of the other's, is no larger, and has the other's shape aligned on
    another phase (a lag beyond ``max_lag``, up to ``phase_lag``). Its size is its template's
    projection on the other's: the peak-to-peak of a few dozen spikes' template grows with their
    noise (mearec_np2 seed 0: 31 spikes of a 81 uV neuron, 86 uV peak to peak, 0.85 of the
    neuron's template)."""
    few, many = (a, b) if n_a <= n_b else (b, a)
    if min(n_a, n_b) > SLIVER_FRACTION * max(n_a, n_b):
        return None
    s, shift = lagged_similarity(a, b, max_lag=phase_lag)
    if abs(shift) <= max_lag or s < SLIVER_SIMILARITY:
        return None
    dots, energy = lagged_dots(few, many, max_lag=phase_lag)
    best = int(np.argmax(dots))
    return (s, shift) if dots[best] <= energy[best] else None


def merge_similar_templates(
    dense: np.ndarray,
    sizes: np.ndarray,
    *,
    positions_um: np.ndarray,
    max_lag: int,
    threshold: float,
    max_distance_um: float = 100.0,
    norm_ratio: float = 1.6,
    same_unit=None,
) -> list[list[tuple[int, int]]]:
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
            s, shift = lagged_similarity(dense[i], dense[j], max_lag=max_lag)
            sim[i, j] = sim[j, i] = s
            lag[i, j], lag[j, i] = shift, -shift
            if s > threshold:
                pairs.append((s, i, j))
    return complete_link(
        [(i, j) for _s, i, j in sorted(pairs, reverse=True)],
        k=k,
        linked=lambda a, b: sim[a, b] > threshold,
        lag=lag,
        sizes=sizes,
        accept=None if same_unit is None else lambda i, j: same_unit(i, j, int(lag[i, j])),
    )


def complete_link(
    order, *, k: int, linked, lag: np.ndarray, sizes, accept=None, accept_groups=None
) -> list[list[tuple[int, int]]]:
    """Groups of ``k`` units grown over the pairs (i, j) of ``order``, first pairs first: two
    groups join only when ``linked(a, b)`` holds for every cross pair (so no chain links two
    neurons through a unit that looks like both), ``accept(i, j)`` (when given) agrees, and so
    does ``accept_groups(members_i, members_j)`` (when given: the two groups' units, whole).
    Returns, per group, (unit, offset to add to its spike times to align them on the group's
    largest unit by ``sizes``: ``-lag[rep, unit]``)."""
    group = list(range(k))
    members = {i: [i] for i in range(k)}
    for i, j in order:
        gi, gj = group[i], group[j]
        if gi == gj or not all(linked(a, b) for a in members[gi] for b in members[gj]):
            continue
        if accept is not None and not accept(i, j):
            continue
        if accept_groups is not None and not accept_groups(members[gi], members[gj]):
            continue
        for b in members[gj]:
            group[b] = gi
        members[gi] += members.pop(gj)
    out = []
    for g in members.values():
        rep = max(g, key=lambda t: sizes[t])
        out.append([(t, 0 if t == rep else -int(lag[rep, t])) for t in g])
    return out


# the veto's valley is read from up to this many spikes of each cluster. With 300 the valley was
# at the mercy of the draw: two neighbours 28 µm apart on shanks4 seed 1 (clusters of 668 and 1474
# spikes) scored 0-0.34 over six draws against the threshold of 0.25 (merged on five), and two
# clusters of one neuron 0.24-0.44. With 1000: 0.32-0.40 and 0.51-0.53, with every spike 0.45 and
# 0.50; every other pair merged there scored 0 at 1000 (0-0.2 at 300)
VETO_SPIKES = 1000
# which channels carry the two waveforms is read first from this many spikes of each on every
# channel; the veto's spikes are then read on those channels only (on 384 channels, 1000 windows
# of every channel are 0.1 GB a cluster)
CHANNEL_SPIKES = 300


# a spike scaled to this of the mean or less is mostly noise: dividing by its scale would blow it up
MIN_SCALE = 0.25


def _sizeless(si: np.ndarray, sj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Snippets of two units divided by their least-squares scale on the two means' average."""
    ref = 0.5 * (si.mean(0) + sj.mean(0)).ravel()
    rr = max(float(ref @ ref), 1e-12)

    def scaled(x):
        k = np.maximum(x.reshape(len(x), -1) @ ref / rr, MIN_SCALE)
        return x / k[:, None, None].astype(x.dtype)

    return scaled(si), scaled(sj)


def snippet_merge_test(
    store,
    times: np.ndarray,
    labels: np.ndarray,
    *,
    pre: int,
    nt: int,
    threshold: float,
    seed: int,
    max_spikes: int = VETO_SPIKES,
    scale_free: bool = False,
):
    """A veto for template merges: the spikes of two clusters, aligned on the first, must form
    one mode along the axis joining their mean waveforms (else they are two neurons). Up to
    ``max_spikes`` of each, chosen by :func:`.sampling.keyed_subset` with ``seed``, on the channels
    where either mean waveform (of ``CHANNEL_SPIKES`` of them) reaches 0.2 of the larger's peak:
    the rest only adds noise to the projection. ``scale_free``: each spike is first divided by
    its size (its least-squares scale on the two means' average, at least ``MIN_SCALE``), so that
    one neuron's spikes at two sizes (a burst's shrunken ones) form one mode, and only shapes
    and footprints that differ form two."""

    chosen = {}  # (unit, n) -> its drawn spikes: a unit is met in many pairs
    means = {}  # (unit, lag) -> the mean waveform, every channel, that picks the pair's channels

    def drawn(unit: int, n: int, lag: int = 0) -> np.ndarray:
        if (unit, n) not in chosen:
            chosen[unit, n] = keyed_subset(times[labels == unit], n, seed=seed)
        return chosen[unit, n] - lag

    def mean_waveform(unit: int, lag: int) -> np.ndarray:
        if (unit, lag) not in means:
            look = min(CHANNEL_SPIKES, max_spikes)
            means[unit, lag] = store.snippets(drawn(unit, look, lag), pre=pre, nt=nt).mean(0)
        return means[unit, lag]

    def same_unit(i: int, j: int, lag: int) -> bool:
        ti, tj = drawn(i, max_spikes), drawn(j, max_spikes, lag)
        if len(ti) == 0 or len(tj) == 0:
            return False
        mi, mj = mean_waveform(i, 0), mean_waveform(j, lag)
        chans = np.flatnonzero(
            np.maximum(np.abs(mi).max(0), np.abs(mj).max(0)) > 0.2 * max(np.abs(mi).max(), np.abs(mj).max())
        )
        si = store.snippets(ti, pre=pre, nt=nt, channels=chans)
        sj = store.snippets(tj, pre=pre, nt=nt, channels=chans)
        if scale_free:
            si, sj = _sizeless(si, sj)
        axis = (si.mean(0) - sj.mean(0)).ravel()
        nrm = np.linalg.norm(axis)
        if nrm == 0:
            return True
        pi = si.reshape(len(si), -1) @ (axis / nrm)
        pj = sj.reshape(len(sj), -1) @ (axis / nrm)
        return bimodality(np.concatenate([pi, pj]), 0.5 * (pi.mean() + pj.mean())) < threshold

    return same_unit
