"""What the report's figures show, computed from a folder's data (a ``spikesort.outputs.report.FolderData``)
with a few vectorised passes over all spikes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class UnitIndex:
    """The spikes of every unit: ``order[starts[i]:stops[i]]`` are unit i's spike indices (by time)."""

    unit_ids: np.ndarray  # (U,)
    order: np.ndarray  # (n,)
    starts: np.ndarray  # (U,)
    stops: np.ndarray  # (U,)

    @classmethod
    def build(cls, clusters: np.ndarray, unit_ids: np.ndarray) -> UnitIndex:
        order = np.argsort(clusters, kind="stable")
        sorted_ids = clusters[order]
        return cls(
            np.asarray(unit_ids),
            order,
            np.searchsorted(sorted_ids, unit_ids),
            np.searchsorted(sorted_ids, unit_ids, side="right"),
        )

    def spikes(self, i: int) -> np.ndarray:
        return self.order[self.starts[i] : self.stops[i]]

    @property
    def counts(self) -> np.ndarray:
        return self.stops - self.starts


def has_templates(data) -> bool:
    return data.templates is not None and data.whitening_mat_inv is not None and len(data.templates) > 0


@dataclass
class TemplatePeaks:
    """Per template, in µV at amplitude 1: the |peak| and the channel it is on."""

    peak_uv: np.ndarray  # (K,) float64
    channel: np.ndarray  # (K,) int64


def template_peaks(data) -> TemplatePeaks:
    """The peak of every template (empty without templates): one pass over all of them."""
    if not has_templates(data):
        return TemplatePeaks(np.zeros(0), np.zeros(0, np.int64))
    k_max = len(data.templates)
    peak, channel = np.zeros(k_max), np.zeros(k_max, np.int64)
    winv = np.asarray(data.whitening_mat_inv, dtype=np.float32)
    # a few large matrix products: one small product per template is much slower
    for a in range(0, k_max, 64):
        block = np.asarray(data.templates[a : min(a + 64, k_max)], dtype=np.float32)
        by_channel = np.abs((block.reshape(-1, block.shape[2]) @ winv).reshape(block.shape)).max(axis=1)  # (k, C)
        channel[a : a + len(block)] = by_channel.argmax(axis=1)
        peak[a : a + len(block)] = by_channel.max(axis=1)
    return TemplatePeaks(peak, channel)


def spike_amplitudes_uv(data, peaks: TemplatePeaks) -> np.ndarray:
    """Each spike's amplitude in µV: its scale times the |peak| of its template in µV (the scale alone
    without templates)."""
    n = len(data.spike_times)
    if n == 0 or len(peaks.peak_uv) == 0 or int(data.spike_templates.max()) >= len(peaks.peak_uv):
        return np.abs(np.asarray(data.amplitudes, dtype=np.float64))
    return np.abs(data.amplitudes) * peaks.peak_uv[data.spike_templates]


def unit_templates(data, index: UnitIndex) -> np.ndarray:
    """(U,) the template most of each unit's spikes were matched with (a curated merge has several; the
    lowest on a tie), -1 for a unit without spikes. One count for all units."""
    n_units = len(index.unit_ids)
    if len(data.spike_times) == 0 or n_units == 0:
        return np.full(n_units, -1, np.int64)
    k = int(data.spike_templates.max()) + 1
    rank = np.searchsorted(index.unit_ids, data.spike_clusters)
    counts = np.bincount(rank * k + data.spike_templates, minlength=n_units * k).reshape(n_units, k)
    return np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), -1)


def unit_medians(values: np.ndarray, index: UnitIndex, clusters: np.ndarray) -> np.ndarray:
    """Per unit median of ``values`` ((n,) or (n, d), float64) over its spikes (as np.median: the mean of the
    two middle values for an even count); NaN for a unit without spikes. One sort for all units."""
    v = np.asarray(values, dtype=np.float64)
    cols = v.reshape(len(v), int(np.prod(v.shape[1:])))
    n_units = len(index.unit_ids)
    out = np.full((n_units, cols.shape[1]), np.nan)
    m = index.counts
    has = m > 0
    lo_i, hi_i = index.starts[has] + (m[has] - 1) // 2, index.starts[has] + m[has] // 2
    for j in range(cols.shape[1]):
        # within each unit, its spikes by value: the middle ones are the median
        by_value = np.argsort(cols[:, j])
        s = cols[by_value[np.argsort(clusters[by_value], kind="stable")], j]
        out[has, j] = (s[lo_i] + s[hi_i]) / 2
    return out.reshape((n_units,) + v.shape[1:])


def unit_positions(data, index: UnitIndex, *, templates: np.ndarray, peaks: TemplatePeaks) -> np.ndarray:
    """(U, 2) median position of each unit's spikes (µm); its template's peak channel when the folder has
    no spike positions; NaN when neither is known."""
    if data.spike_positions is not None and len(data.spike_times):
        return unit_medians(np.asarray(data.spike_positions, dtype=np.float64), index, data.spike_clusters)
    out = np.full((len(index.unit_ids), 2), np.nan)
    if data.channel_positions is not None and len(peaks.channel):
        ok = (templates >= 0) & (templates < len(peaks.channel))
        out[ok] = np.asarray(data.channel_positions, dtype=np.float64)[peaks.channel[templates[ok]], :2]
    return out


def autocorrelogram(
    spike_times, *, sampling_rate_hz: float, window_ms: float = 50.0, bin_ms: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the time differences between all pairs of distinct spikes of one train, within
    ±window_ms, in bins of bin_ms with 0 on a bin edge; returns (counts, bin edges in ms)."""
    t = np.sort(np.asarray(spike_times, dtype=np.int64))
    window = window_ms * sampling_rate_hz / 1000.0
    n_bins = int(round(window_ms / bin_ms))
    edges = np.linspace(-n_bins * bin_ms, n_bins * bin_ms, 2 * n_bins + 1)
    diffs = []
    lag = 1
    # spikes `lag` places later: stop once no pair that far apart is inside the window
    while lag < len(t):
        d = t[lag:] - t[:-lag]
        d = d[d <= window]
        if d.size == 0:
            break
        diffs.append(d)
        lag += 1
    d_ms = np.concatenate(diffs) * (1000.0 / sampling_rate_hz) if diffs else np.zeros(0)
    counts = np.histogram(np.concatenate([d_ms, -d_ms]), bins=edges)[0]
    return counts, edges


def recorded_depths(data, *, times_s: np.ndarray, depths_um: np.ndarray, x_um: np.ndarray) -> np.ndarray | None:
    """Depths as recorded when the folder holds a motion estimate: spike positions are then measured on
    drift-corrected traces, and recorded = corrected + displacement. None without an estimate (or one that
    cannot be read)."""
    from spikesort.layout import MOTION_FILES

    # no estimate: leave the drift stage (and what it imports) unloaded
    if data.folder is None or not all((Path(data.folder) / name).is_file() for name in MOTION_FILES):
        return None
    try:
        from spikesort.stages.drift.stage import Motion

        motion = Motion.load(data.folder)
        shanks = None
        if data.channel_shanks is not None and data.channel_positions is not None and len(times_s):
            from scipy.spatial import cKDTree

            # a spike's shank is that of its nearest contact
            nearest = cKDTree(data.channel_positions[:, :2]).query(np.column_stack([x_um, depths_um]))[1]
            shanks = np.asarray(data.channel_shanks)[nearest]
        return depths_um + motion.at(times_s=times_s, depths_um=depths_um, shanks=shanks)
    except (ImportError, AttributeError, OSError, ValueError) as exc:
        log.warning("motion estimate in %s not shown: %s", data.folder, exc)
        return None
