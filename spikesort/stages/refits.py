"""Refits: spikes the peeling made, not the neuron.

A template subtracted from a spike whose shape it does not quite have (a burst's changed spike, a
biophysical waveform longer than the window) leaves a remainder, and the next round fits a
template there: often the same neuron's, at a fixed lag after its own spike or after a piece of
its neuron. Such a fit holds no spike of the recording. It piles up at one lag after the spikes
that caused it, and the recorded traces there hold little of its template: projected on the
template before any subtraction, it is a small fraction of the template's size. A genuine spike
at that lag (a collision, a burst's next spike) is there in the recording at its own size.

On ``mearec_tetrode`` seed 90, a bursting neuron's unit held 842 spikes of no neuron, 2.0-2.2 ms
after its own spikes or 1.4-1.9 ms after those of its neuron's other piece, at 0.1-0.3 of its
size in the recording: they filled the refractory gap between the two units, which stayed apart.
"""

from __future__ import annotations

import logging

import numpy as np

from .match import MatchedSpikes
from .templates import Templates

log = logging.getLogger(__name__)


def crowded_lag_spikes(
    ta: np.ndarray,
    tb: np.ndarray,
    *,
    window: int,
    span: int,
    same: bool,
    lag_halfwidth: int = 3,
    min_count: int = 10,
    over_chance: float = 5.0,
    max_boxes: int = 4,
) -> np.ndarray:
    """Mask of ``ta`` (sorted) at a lag to their nearest spike of ``tb`` (sorted; when ``same``,
    ``tb`` is ``ta`` and a spike's own time is skipped) where far more spikes gather than chance
    puts there: boxes of ``2 lag_halfwidth + 1`` samples within ``window``, each holding at least
    ``min_count`` and ``over_chance`` times what independent trains give, up to ``max_boxes``
    of them, largest first."""
    out = np.zeros(len(ta), dtype=bool)
    if len(ta) == 0 or len(tb) < (2 if same else 1):
        return out
    i = np.searchsorted(tb, ta)
    j = i + 1 if same else i  # in its own train, a spike's next neighbour is past itself
    prev = np.where(i >= 1, tb[np.maximum(i - 1, 0)], np.iinfo(np.int64).min // 2)
    nxt = np.where(j < len(tb), tb[np.minimum(j, len(tb) - 1)], np.iinfo(np.int64).max // 2)
    lag = np.where(ta - prev <= nxt - ta, ta - prev, ta - nxt)
    near = (np.abs(lag) <= window) & (lag != 0)
    if near.sum() < min_count:
        return out
    counts = np.bincount(lag[near] + window, minlength=2 * window + 1)
    kernel = np.ones(2 * lag_halfwidth + 1, dtype=np.int64)
    chance = len(ta) * len(tb) / max(span, 1) * len(kernel)
    for _ in range(max_boxes):
        box = np.convolve(counts, kernel, mode="same")
        peak = int(np.argmax(box))
        if box[peak] < max(min_count, over_chance * chance):
            break
        lo, hi = max(peak - lag_halfwidth, 0), peak + lag_halfwidth + 1
        out |= near & (lag + window >= lo) & (lag + window < hi)
        counts[lo:hi] = 0
    return out


def raw_scales(store, times: np.ndarray, templates: Templates, k: int) -> np.ndarray:
    """Least-squares scale of template ``k`` on the stored (whitened, unpeeled) traces at ``times``."""
    support = templates.channels[k][templates.channels[k] >= 0]
    if len(times) == 0 or len(support) == 0 or templates.norm2[k] <= 0:
        return np.zeros(len(times), dtype=np.float32)
    w = store.snippets(times, pre=templates.pre, nt=templates.values.shape[1], channels=support)
    values = templates.values[k][:, : len(support)]
    return (np.einsum("nts,ts->n", w, values) / templates.norm2[k]).astype(np.float32)


def refit_spikes(
    spikes: MatchedSpikes,
    templates: Templates,
    store,
    *,
    window: int,
    positions_um: np.ndarray,
    max_distance_um: float = 200.0,
    max_raw_scale: float = 0.3,
) -> np.ndarray:
    """Mask of the spikes that are refits: at a crowded lag (``crowded_lag_spikes``) to the spikes
    of their own unit or of a unit within ``max_distance_um``, and under ``max_raw_scale`` of their
    template in the recorded traces (``raw_scales``). Every other spike at that lag stays."""
    k = templates.n_templates
    drop = np.zeros(len(spikes.times), dtype=bool)
    if k == 0 or len(spikes.times) == 0:
        return drop
    main = np.sqrt((templates.dense**2).sum(axis=1)).argmax(axis=1)
    order = np.argsort(spikes.times, kind="stable")
    members = [order[spikes.templates[order] == a] for a in range(k)]  # each unit's spikes, by time
    times = [spikes.times[m] for m in members]
    span = int(spikes.times.max() - spikes.times.min()) + 1
    where = positions_um[main]
    close = np.linalg.norm(where[:, None] - where[None], axis=-1) <= max_distance_um
    for a in range(k):
        if len(times[a]) == 0:
            continue
        crowded = np.zeros(len(times[a]), dtype=bool)
        for b in np.flatnonzero(close[a]):
            crowded |= crowded_lag_spikes(times[a], times[b], window=window, span=span, same=a == b)
        if not crowded.any():
            continue
        scale = raw_scales(store, times[a][crowded], templates, a)
        refit = members[a][np.flatnonzero(crowded)[scale < max_raw_scale]]
        if len(refit):
            drop[refit] = True
            log.info(
                "unit %d: %d of its %d spikes are refits (crowded lags, absent from the recording)",
                a,
                len(refit),
                len(times[a]),
            )
    log.info("refits: %d spikes dropped", int(drop.sum()))
    return drop
