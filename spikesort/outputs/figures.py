"""The figures of a finished sort, made from the output folder alone (no recording needed).

:func:`load_folder` reads what they need (:class:`FolderData`, through the folder reader
:mod:`spikesort.outputs.folder`); then one function per figure, each returning a matplotlib
``Figure`` drawn on the Agg canvas directly (no pyplot, no display, no global state):

* :func:`figure_drift_map`: every spike's depth (``spike_positions.npy``) against time, coloured
  by its amplitude in µV; a drift shows as slanted bands;
* :func:`figure_overview`: every unit at its position on the probe (size: amplitude, colour:
  label), and amplitude against depth;
* :func:`figure_unit`: one unit's template on the channels around its peak drawn at their probe
  positions (µV), its auto-correlogram, its amplitude over time and its metrics.

:func:`spikesort.outputs.report.make_report` writes them into ``OUT/report/``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.layout import (AMPLITUDES, CHANNEL_POSITIONS, CHANNEL_SHANKS, RUN_FILE, SPIKE_CLUSTERS,
                              SPIKE_POSITIONS, SPIKE_TEMPLATES, SPIKE_TIMES, TEMPLATES, WHITENING_MAT_INV)

from .folder import read_folder

log = logging.getLogger(__name__)

LABEL_COLORS = {"good": "#1a9850", "mua": "#f28e2b", "noise": "#8c8c8c"}
OTHER_COLOR = "#4e79a7"
# cluster_<name>.tsv shown on a unit page, with its caption and format
METRIC_ROWS = (("fr", "firing rate", "{:.2f} Hz"), ("Amplitude", "amplitude", "{:.1f} µV"),
               ("snr", "SNR", "{:.1f}"), ("ContamPct", "contamination", "{:.1f} %"),
               ("isi_viol", "ISI violation ratio", "{:.3f}"), ("presence_ratio", "presence", "{:.2f}"),
               ("amp_cutoff", "amplitude cutoff", "{:.3f}"), ("depth_um", "depth", "{:.0f} µm"))
DPI = 80


# --------------------------------------------------------------------------- the folder's data


@dataclass
class FolderData:
    """What the figures need, read from an output folder. n spikes, K templates, C channels."""

    folder: Path
    sampling_rate_hz: float
    duration_s: float
    spike_times: np.ndarray        # (n,) int64 samples
    spike_clusters: np.ndarray     # (n,) int64 (Phy's curated clusters when curated)
    spike_templates: np.ndarray    # (n,) int64
    amplitudes: np.ndarray         # (n,) scale of each spike relative to its template (~1)
    spike_positions: np.ndarray | None  # (n, 2) µm
    templates: np.ndarray | None   # (K, nt, C) whitened, memory-mapped
    whitening_mat_inv: np.ndarray | None  # (C, C): template @ it = µV
    channel_positions: np.ndarray | None  # (C, 2) µm
    channel_shanks: np.ndarray | None     # (C,) shank of each channel
    unit_ids: np.ndarray           # (U,) the clusters that have spikes, ascending
    labels: dict                   # unit id -> 'good' / 'mua' / 'noise' (Phy's curation first)
    tables: dict                   # tsv name -> {unit id: cell text}

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)

    def unit_spikes(self, unit_id) -> np.ndarray:
        return np.flatnonzero(self.spike_clusters == unit_id)

    def template_of(self, spikes: np.ndarray) -> int:
        """The template most of these spikes were matched with (a curated merge has several)."""
        return int(np.bincount(self.spike_templates[spikes]).argmax())

    def template_uv(self, k: int) -> np.ndarray:
        """Template k in µV at amplitude 1, (nt, C)."""
        return np.asarray(self.templates[k], dtype=np.float32) @ self.whitening_mat_inv.astype(np.float32)

    def label(self, unit_id) -> str:
        return self.labels.get(int(unit_id), "")

    def metric(self, name: str, unit_id) -> float:
        try:
            return float(self.tables.get(name, {}).get(int(unit_id), "nan"))
        except ValueError:
            return float("nan")


def load_folder(folder) -> FolderData:
    """Read what the report needs from a finished spikesort (or any Phy) output folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpikesortError(f"output folder not found: {folder}")
    files = read_folder(folder)
    run = files.run_record_or_empty()
    times = files.array(SPIKE_TIMES)
    if times is None and not run:
        raise SpikesortError(f"{folder} is not a finished spikesort output folder "
                             f"(neither spike_times.npy nor {RUN_FILE})")
    fs = files.sampling_rate_hz()
    if not fs or float(fs) <= 0:
        raise SpikesortError(f"{folder}: the sampling rate is unknown (no {RUN_FILE}, no params.py)")
    fs = float(fs)
    times = np.zeros(0, np.int64) if times is None else np.asarray(times, dtype=np.int64).ravel()
    n = len(times)
    templates_of_spikes = files.array(SPIKE_TEMPLATES)
    clusters = files.array(SPIKE_CLUSTERS)
    templates_of_spikes = (np.zeros(n, np.int64) if templates_of_spikes is None
                           else np.asarray(templates_of_spikes, dtype=np.int64).ravel())
    clusters = templates_of_spikes if clusters is None else np.asarray(clusters, dtype=np.int64).ravel()
    amplitudes = files.array(AMPLITUDES)
    amplitudes = np.ones(n) if amplitudes is None else np.asarray(amplitudes, dtype=np.float64).ravel()
    positions = files.array(SPIKE_POSITIONS)
    if positions is not None and positions.shape != (n, 2):
        positions = None
    for name, arr in (("spike_templates", templates_of_spikes), ("spike_clusters", clusters),
                      ("amplitudes", amplitudes)):
        if len(arr) != n:
            raise SpikesortError(f"{folder}: {name}.npy has {len(arr)} entries for {n} spikes")
    duration = files.duration_s() or (float(times.max() + 1) / fs if n else 0.0)
    tables = files.tables()
    # per cluster, a curator's label over the sorter's
    labels = {**tables.get("KSLabel", {}), **tables.get("group", {})}
    return FolderData(folder=folder, sampling_rate_hz=fs, duration_s=float(duration), spike_times=times,
                      spike_clusters=clusters, spike_templates=templates_of_spikes, amplitudes=amplitudes,
                      spike_positions=positions, templates=files.array(TEMPLATES, mmap=True),
                      whitening_mat_inv=files.array(WHITENING_MAT_INV),
                      channel_positions=files.array(CHANNEL_POSITIONS),
                      channel_shanks=files.array(CHANNEL_SHANKS),
                      unit_ids=np.unique(clusters), labels=labels, tables=tables)


def spike_amplitudes_uv(data: FolderData) -> np.ndarray:
    """Each spike's amplitude in µV: its scale times the |peak| of its template in µV."""
    if data.templates is None or data.whitening_mat_inv is None or len(data.spike_times) == 0:
        return np.abs(data.amplitudes)
    k_max = int(data.spike_templates.max()) + 1
    peak = np.zeros(k_max)
    winv = data.whitening_mat_inv.astype(np.float32)
    # a few large matrix products: one small product per template is ~20x slower
    for a in range(0, k_max, 64):
        block = np.asarray(data.templates[a:min(a + 64, k_max)], dtype=np.float32)
        uv = (block.reshape(-1, block.shape[2]) @ winv).reshape(block.shape)
        peak[a:a + len(block)] = np.abs(uv).max(axis=(1, 2))
    return np.abs(data.amplitudes) * peak[data.spike_templates]


# --------------------------------------------------------------------------- computations


def autocorrelogram(spike_times, *, sampling_rate_hz: float, window_ms: float = 50.0,
                    bin_ms: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the time differences between all pairs of distinct spikes of one train, within
    ±window_ms, in bins of bin_ms with 0 on a bin edge; returns (counts, bin edges in ms)."""
    t = np.sort(np.asarray(spike_times, dtype=np.int64))
    window = window_ms * sampling_rate_hz / 1000.0
    n_bins = int(round(window_ms / bin_ms))
    edges = np.linspace(-n_bins * bin_ms, n_bins * bin_ms, 2 * n_bins + 1)
    diffs = []
    lag = 1
    # later spikes k places on: stop once no pair that far apart is inside the window
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


def unit_positions(data: FolderData) -> np.ndarray:
    """(U, 2) median position of each unit's spikes (its template's peak channel when the folder has no
    spike positions)."""
    out = np.full((data.n_units, 2), np.nan)
    if data.spike_positions is not None and len(data.spike_times):
        order = np.argsort(data.spike_clusters, kind="stable")
        starts = np.searchsorted(data.spike_clusters[order], data.unit_ids)
        stops = np.searchsorted(data.spike_clusters[order], data.unit_ids, side="right")
        for i, (a, b) in enumerate(zip(starts, stops)):
            out[i] = np.median(data.spike_positions[order[a:b]], axis=0)
        return out
    if data.channel_positions is not None and data.templates is not None:
        for i, u in enumerate(data.unit_ids):
            k = data.template_of(data.unit_spikes(u))
            out[i] = data.channel_positions[np.abs(data.template_uv(k)).max(axis=0).argmax()]
    return out


def unit_amplitudes_uv(data: FolderData, amps_uv: np.ndarray) -> np.ndarray:
    """(U,) median spike amplitude of each unit in µV."""
    out = np.full(data.n_units, np.nan)
    if len(data.spike_times):
        order = np.argsort(data.spike_clusters, kind="stable")
        starts = np.searchsorted(data.spike_clusters[order], data.unit_ids)
        stops = np.searchsorted(data.spike_clusters[order], data.unit_ids, side="right")
        for i, (a, b) in enumerate(zip(starts, stops)):
            out[i] = np.median(amps_uv[order[a:b]])
    return out


def pick_units(data: FolderData, *, max_unit_pages: int | None, good_only: bool) -> np.ndarray:
    """Units that get a page: by id, good ones only if asked, at most max_unit_pages."""
    ids = data.unit_ids
    if good_only:
        ids = np.array([u for u in ids if data.label(u) == "good"], dtype=np.int64)
    return ids if max_unit_pages is None else ids[:max(0, int(max_unit_pages))]


# --------------------------------------------------------------------------- figures


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def recorded_depths(data: FolderData, *, times_s: np.ndarray, depths_um: np.ndarray,
                    x_um: np.ndarray) -> np.ndarray | None:
    """Depths as recorded, when the folder holds a motion estimate (``spikesort.stages.drift``): spike
    positions are then measured on drift-corrected traces, and recorded = corrected +
    displacement. None without an estimate (or one that cannot be read)."""
    try:
        from spikesort.stages.drift.stage import Motion

        if not Motion.exists(data.folder):
            return None
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


def figure_drift_map(data: FolderData, *, amps_uv: np.ndarray | None = None, max_spikes: int = 100_000,
                     seed: int = 0):
    """Spike depth against time, coloured by amplitude (µV). At most ``max_spikes`` points (a
    random subset, for a big sort). The scatter of spike_positions is labelled 'spikes'; with a
    motion estimate in the folder a first panel ('spikes as recorded') shows the depths before
    drift correction."""
    fig = _figure(11, 5)
    n = len(data.spike_times)
    if data.spike_positions is None or n == 0:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_title(f"drift map: spike depth over time ({n} spikes)")
        _empty(ax, "no spikes" if n == 0 else "no spike_positions.npy")
        return fig
    amps = spike_amplitudes_uv(data) if amps_uv is None else amps_uv
    idx = np.arange(n)
    if n > max_spikes:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_spikes, replace=False))
    shown = f"{len(idx)} of {n} spikes" if len(idx) < n else f"{n} spikes"
    t_s = data.spike_times[idx] / data.sampling_rate_hz
    depth = data.spike_positions[idx, 1].astype(np.float64)
    raw = recorded_depths(data, times_s=t_s, depths_um=depth, x_um=data.spike_positions[idx, 0].astype(np.float64))
    a = amps[idx]
    lo, hi = np.percentile(a, [2, 98])
    # small spikes first so that large ones are drawn on top
    order = np.argsort(a, kind="stable")
    style = dict(s=6.0 if len(idx) < 20_000 else 2.0, cmap="viridis", vmin=lo, vmax=max(hi, lo + 1e-9),
                 linewidths=0, rasterized=True)
    if raw is None:
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.11, top=0.92)
        panels = [(fig.add_subplot(1, 1, 1), depth, "spikes", f"drift map: spike depth over time ({shown})")]
    else:
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.11, top=0.92, wspace=0.12)
        ax0 = fig.add_subplot(1, 2, 1)
        ax1 = fig.add_subplot(1, 2, 2, sharex=ax0, sharey=ax0)
        panels = [(ax0, raw, "spikes as recorded", f"as recorded ({shown})"),
                  (ax1, depth, "spikes", "drift corrected")]
    for ax, y, label, title in panels:
        sc = ax.scatter(t_s[order], y[order], c=a[order], label=label, **style)
        ax.set_title(title)
        ax.set_xlabel("time (s)")
        ax.set_xlim(0, max(data.duration_s, float(t_s.max())))
    panels[0][0].set_ylabel("depth (µm)")
    fig.colorbar(sc, ax=[p[0] for p in panels], label="amplitude (µV)")
    return fig


def figure_overview(data: FolderData, *, amps_uv: np.ndarray | None = None):
    """Units on the probe (left; the scatter labelled 'units', one point per unit) and their
    amplitude against depth (right)."""
    fig = _figure(10, 7)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.94, wspace=0.25)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax.set_title(f"{data.n_units} units on the probe")
    if data.channel_positions is not None:
        cp = data.channel_positions
        ax.scatter(cp[:, 0], cp[:, 1], marker="s", s=12, color="0.7", linewidths=0, label="channels")
    if data.n_units == 0:
        _empty(ax2, "no units")
        if data.channel_positions is None:
            _empty(ax, "no units")
        return fig
    amps = spike_amplitudes_uv(data) if amps_uv is None else amps_uv
    pos = unit_positions(data)
    unit_amp = unit_amplitudes_uv(data, amps)
    colors = [LABEL_COLORS.get(data.label(u), OTHER_COLOR) for u in data.unit_ids]
    size = 20 + 180 * np.clip(np.nan_to_num(unit_amp) / max(np.nanmax(unit_amp), 1e-9), 0, 1)
    ax.scatter(pos[:, 0], pos[:, 1], s=size, c=colors, alpha=0.7, edgecolors="k", linewidths=0.5, label="units")
    if data.n_units <= 150:
        for u, (x, y) in zip(data.unit_ids, pos):
            if np.isfinite(x) and np.isfinite(y):
                ax.annotate(str(u), (x, y), fontsize=7, ha="center", va="center")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("depth (µm)")
    ax2.scatter(unit_amp, pos[:, 1], s=25, c=colors, edgecolors="k", linewidths=0.5, label="units")
    ax2.set_xlabel("median amplitude (µV)")
    ax2.set_ylabel("depth (µm)")
    ax2.set_title("amplitude by depth")
    from matplotlib.lines import Line2D

    ax2.legend(handles=[Line2D([], [], marker="o", linestyle="", color=c, label=name)
                        for name, c in LABEL_COLORS.items()], loc="best", fontsize=8)
    return fig


def _draw_waveforms(ax, data: FolderData, waveform_uv: np.ndarray, *, max_channels: int = 16) -> None:
    """Each channel's waveform drawn at the channel's probe position, the peak channel in colour."""
    pos = data.channel_positions
    peak_ch = int(np.abs(waveform_uv).max(axis=0).argmax())
    near = np.argsort(((pos - pos[peak_ch]) ** 2).sum(axis=1), kind="stable")[:max_channels]
    sub = pos[near]
    # a waveform spans most of the smallest horizontal gap; its peak about 1.5 vertical gaps
    dx = np.diff(np.unique(sub[:, 0]))
    dy = np.diff(np.unique(sub[:, 1]))
    width = 0.8 * (dx.min() if dx.size else 20.0)
    height = 1.5 * (dy.min() if dy.size else 20.0)
    peak = max(np.abs(waveform_uv[:, near]).max(), 1e-9)
    nt = waveform_uv.shape[0]
    x_rel = np.linspace(-width / 2, width / 2, nt)
    # one line artist for all channels (NaN breaks it between them): a page per unit stays cheap
    others = [c for c in near if c != peak_ch]
    xs = np.concatenate([np.append(pos[c, 0] + x_rel, np.nan) for c in others]) if others else []
    ys = np.concatenate([np.append(pos[c, 1] + waveform_uv[:, c] * height / peak, np.nan)
                         for c in others]) if others else []
    ax.plot(xs, ys, color="k", linewidth=0.8)
    ax.plot(pos[peak_ch, 0] + x_rel, pos[peak_ch, 1] + waveform_uv[:, peak_ch] * height / peak, color="C3",
            linewidth=1.2)
    ax.scatter(sub[:, 0], sub[:, 1], marker="s", s=9, color="0.8", zorder=0)
    # scale bar: the peak amplitude
    x0, y0 = sub[:, 0].min() - width, sub[:, 1].min()
    ax.plot([x0, x0], [y0, y0 + height], color="k", linewidth=2)
    ax.text(x0, y0 + height / 2, f" {peak:.0f} µV", va="center", fontsize=8)
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("depth (µm)")


def figure_unit(data: FolderData, unit_id, *, amps_uv: np.ndarray | None = None):
    """One unit's page: waveforms on the probe, auto-correlogram (bars), amplitude over time,
    metrics."""
    fig = _figure(11, 6.5)
    # fixed margins: tight_layout would cost about as much as drawing the page
    grid = fig.add_gridspec(2, 3, width_ratios=[1.1, 1, 1], left=0.07, right=0.98, bottom=0.08, top=0.9,
                            wspace=0.3, hspace=0.35)
    ax_w = fig.add_subplot(grid[:, 0])
    ax_acg = fig.add_subplot(grid[0, 1])
    ax_txt = fig.add_subplot(grid[0, 2])
    ax_amp = fig.add_subplot(grid[1, 1:])
    spikes = data.unit_spikes(unit_id)
    label = data.label(unit_id)
    fig.suptitle(f"unit {unit_id}" + (f" ({label})" if label else ""), color=LABEL_COLORS.get(label, "k"))
    amps = spike_amplitudes_uv(data) if amps_uv is None else amps_uv
    # waveforms: the unit's template in µV at its median spike scale
    ax_w.set_title("template on the probe")
    if len(spikes) and data.templates is not None and data.whitening_mat_inv is not None \
            and data.channel_positions is not None:
        k = data.template_of(spikes)
        scale = float(np.median(np.abs(data.amplitudes[spikes])))
        _draw_waveforms(ax_w, data, data.template_uv(k) * scale)
    else:
        _empty(ax_w, "no template")
    counts, edges = autocorrelogram(data.spike_times[spikes], sampling_rate_hz=data.sampling_rate_hz)
    ax_acg.stairs(counts, edges, fill=True, color="k", label="acg")
    ax_acg.set_title("auto-correlogram")
    ax_acg.set_xlabel("lag (ms)")
    ax_acg.set_ylabel("spike pairs")
    ax_acg.set_xlim(edges[0], edges[-1])
    ax_amp.scatter(data.spike_times[spikes] / data.sampling_rate_hz, amps[spikes], s=2, color="k",
                   linewidths=0, rasterized=True, label="amplitudes")
    ax_amp.set_title("amplitude over time")
    ax_amp.set_xlabel("time (s)")
    ax_amp.set_ylabel("amplitude (µV)")
    ax_amp.set_xlim(0, max(data.duration_s, 1e-9))
    ax_amp.set_ylim(bottom=0)
    lines = [f"spikes: {len(spikes)}"]
    for name, caption, fmt in METRIC_ROWS:
        v = data.metric(name, unit_id)
        if np.isfinite(v):
            lines.append(f"{caption}: {fmt.format(v)}")
    ax_txt.axis("off")
    ax_txt.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=10,
                transform=ax_txt.transAxes)
    return fig
