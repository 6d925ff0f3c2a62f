"""The report's figures: inline SVG for what is drawn as lines and marks, PNG rasters (with SVG axes around
them) for what holds many thousands of spikes."""

from __future__ import annotations

import numpy as np

from .png import _VIRIDIS_KNOTS, GREYS, VIRIDIS, encode_png, palette_indices, palette_of
from .stats import autocorrelogram, recorded_depths
from .svg import Canvas, Panel, esc, nice_ticks, num, polyline_tenths, tick_labels

LABEL_COLORS = {"good": "#1a9850", "mua": "#f28e2b", "noise": "#8c8c8c"}
OTHER_COLOR = "#4e79a7"
PEAK_COLOR = "#d62728"
CHANNEL_COLOR = "#c8c8c8"
VIRIDIS_PALETTE = palette_of(VIRIDIS)
GREYS_PALETTE = palette_of(GREYS)


def label_color(label: str) -> str:
    return LABEL_COLORS.get(label, OTHER_COLOR)


# --------------------------------------------------------------------------- rasters


def _pixel_index(values: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """Pixel (0..n-1) of each value in [lo, hi]; -1 outside."""
    i = np.floor((values - lo) * (n / (hi - lo))).astype(np.int64)
    i[values == hi] = n - 1
    return np.where((i >= 0) & (i < n), i, -1)


def max_image(x, y, v, *, xlim, ylim, shape: tuple[int, int], dot: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) largest ``v`` of the points in each pixel, each point painted as a dot x dot square (the
    upper rows are the top of ylim), and the mask of empty pixels."""
    h, w = shape
    xi = _pixel_index(np.asarray(x, dtype=np.float64), *xlim, w)
    yi = h - 1 - _pixel_index(np.asarray(y, dtype=np.float64), *ylim, h)
    ok = (xi >= 0) & (yi < h)
    flat = yi[ok] * (w + dot) + xi[ok]
    img = np.full((h + dot) * (w + dot), -np.inf)
    np.maximum.at(img, flat, np.asarray(v, dtype=np.float64)[ok])
    img = img.reshape(h + dot, w + dot)
    out = img[:h, :w].copy()
    for dy in range(dot):
        for dx in range(dot):
            if dx or dy:
                # a point paints the pixels right of and below it
                np.maximum(out[dy:, dx:], img[: h - dy, : w - dx], out=out[dy:, dx:])
    return out, ~np.isfinite(out)


def count_image(x, y, *, xlim, ylim, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) number of points in each pixel (upper rows: top of ylim); points above ylim go in the top row."""
    h, w = shape
    xi = _pixel_index(np.asarray(x, dtype=np.float64), *xlim, w)
    y = np.minimum(np.asarray(y, dtype=np.float64), ylim[1])
    yi = h - 1 - _pixel_index(y, *ylim, h)
    ok = (xi >= 0) & (yi < h)
    return np.bincount(yi[ok] * w + xi[ok], minlength=h * w).reshape(h, w)


def _colorbar(c: Canvas, box, *, lo: float, hi: float, label: str) -> None:
    x, y, w, h = box
    stops = "".join(
        f'<stop offset="{num(100 * i / (len(_VIRIDIS_KNOTS) - 1))}%" stop-color="{k}"/>'
        for i, k in enumerate(_VIRIDIS_KNOTS)
    )
    c.add(
        f'<defs><linearGradient id="viridis" x1="0" y1="1" x2="0" y2="0">{stops}</linearGradient></defs>'
        f'<rect class="colorbar" x="{num(x)}" y="{num(y)}" width="{num(w)}" height="{num(h)}" '
        f'fill="url(#viridis)" stroke="#333"/>'
    )
    bar = Panel(c, (x + w, y, 1, h), xlim=(0, 1), ylim=(lo, hi))
    ticks = nice_ticks(lo, hi, n=4)
    for yy, s in zip(bar.py(ticks).tolist(), tick_labels(ticks)):
        c.add(f'<path d="M{num(x + w)} {num(yy)}h4" stroke="#333"/>')
        c.text(x + w + 6, yy + 3.5, s, anchor="start", size=10)
    c.text(x + w + 46, y + h / 2, label, rotate=True)


def drift_map(data, amps_uv: np.ndarray, *, png_name: str, recorded_png_name: str) -> tuple[str, dict]:
    """Spike depth over time, coloured by amplitude (µV); with a motion estimate a first panel shows
    the depths as recorded. Returns (svg, {png name: bytes})."""
    n = len(data.spike_times)
    c = Canvas(1000, 470, cls="drift-map")
    if data.spike_positions is None or n == 0:
        p = Panel(c, (70, 35, 800, 380), xlim=(0, max(data.duration_s, 1e-9)), ylim=(0, 1))
        p.axes(title=f"drift map: spike depth over time ({n} spikes)", xlabel="time (s)", yticks=False)
        p.note("no spikes" if n == 0 else "no spike_positions.npy")
        return str(c), {}
    t = data.spike_times / data.sampling_rate_hz
    depth = np.asarray(data.spike_positions[:, 1], dtype=np.float64)
    raw = recorded_depths(
        data, times_s=t, depths_um=depth, x_um=np.asarray(data.spike_positions[:, 0], dtype=np.float64)
    )
    shown = depth if raw is None else np.concatenate([depth, raw])
    lo_y, hi_y = np.percentile(shown, [0.1, 99.9])
    if data.channel_positions is not None and len(data.channel_positions):
        lo_y = min(lo_y, float(np.min(data.channel_positions[:, 1])))
        hi_y = max(hi_y, float(np.max(data.channel_positions[:, 1])))
    ylim = (lo_y - 10.0, hi_y + 10.0)
    xlim = (0.0, max(data.duration_s, float(t.max()), 1e-9))
    lo_a, hi_a = np.percentile(amps_uv, [2, 98])
    hi_a = max(hi_a, lo_a + 1e-9)
    panels = (
        [(depth, png_name, f"drift map: spike depth over time ({n} spikes)")]
        if raw is None
        else [(raw, recorded_png_name, f"as recorded ({n} spikes)"), (depth, png_name, "drift corrected")]
    )
    width = 800 if raw is None else 390
    pngs = {}
    for i, (y, name, title) in enumerate(panels):
        p = Panel(c, (70 + i * (width + 20), 35, width, 380), xlim=xlim, ylim=ylim)
        vmax, empty = max_image(t, y, amps_uv, xlim=xlim, ylim=ylim, shape=(380, width))
        pngs[name] = encode_png(palette_indices(vmax, lo=lo_a, hi=hi_a, empty=empty), palette=VIRIDIS_PALETTE)
        p.image(name, cls="raster drift")
        p.axes(title=title, xlabel="time (s)", ylabel="depth (µm)" if i == 0 else "", yticks=i == 0)
    _colorbar(c, (905, 35, 16, 380), lo=lo_a, hi=hi_a, label="amplitude (µV)")
    return str(c), pngs


def amplitude_over_time(
    times_s: np.ndarray, amps_uv: np.ndarray, *, duration_s: float, png_name: str, shape: tuple[int, int] = (140, 560)
) -> tuple[str, bytes]:
    """One unit's spike amplitudes over time as a 2-D histogram (darker: more spikes)."""
    h, w = shape
    c = Canvas(w + 90, h + 70, cls="amplitudes")
    top = float(np.percentile(amps_uv, 99.5)) * 1.15 if len(amps_uv) else 1.0
    xlim, ylim = (0.0, max(duration_s, float(times_s.max()) if len(times_s) else 0.0, 1e-9)), (0.0, max(top, 1e-9))
    p = Panel(c, (65, 25, w, h), xlim=xlim, ylim=ylim)
    counts = count_image(times_s, amps_uv, xlim=xlim, ylim=ylim, shape=shape)
    peak = max(int(counts.max()), 1)
    # square-root scale: a single spike is still clearly visible next to a crowded pixel
    png = encode_png(palette_indices(np.sqrt(counts / peak), lo=0.0, hi=1.0, empty=counts == 0), palette=GREYS_PALETTE)
    p.image(png_name, cls="raster amplitudes")
    p.axes(title="amplitude over time", xlabel="time (s)", ylabel="amplitude (µV)")
    return str(c), png


# --------------------------------------------------------------------------- vector figures


def acg(spike_times: np.ndarray, *, sampling_rate_hz: float, window_ms: float = 50.0, bin_ms: float = 1.0) -> str:
    """The auto-correlogram as bars (one rect per bin, ``data-count`` holds its count)."""
    counts, edges = autocorrelogram(spike_times, sampling_rate_hz=sampling_rate_hz, window_ms=window_ms, bin_ms=bin_ms)
    c = Canvas(360, 230, cls="acg")
    p = Panel(c, (60, 25, 285, 160), xlim=(edges[0], edges[-1]), ylim=(0, max(int(counts.max()), 1) * 1.05))
    x0, x1, y0 = p.px(edges[:-1]), p.px(edges[1:]), float(p.py(0))
    y = p.py(counts)
    c.add(
        "".join(
            f'<rect class="bar" data-count="{k}" x="{a:.1f}" y="{b:.1f}" width="{e - a:.1f}" '
            f'height="{y0 - b:.1f}" fill="#222"/>'
            for k, a, e, b in zip(counts.tolist(), x0.tolist(), x1.tolist(), y.tolist())
        )
    )
    p.axes(title="auto-correlogram", xlabel="lag (ms)", ylabel="spike pairs")
    return str(c)


def waveforms(data, spikes: np.ndarray, *, template: int, peak_channel: int, max_channels: int = 16) -> str:
    """The unit's template (``template``, its |peak| on ``peak_channel``) in µV at its median spike scale, on
    the channels nearest its peak, each drawn at its channel's probe position; the peak channel in colour;
    a scale bar of the peak amplitude."""
    c = Canvas(330, 460, cls="waveforms")
    box = (60, 25, 255, 390)
    if not (
        len(spikes)
        and template >= 0
        and data.templates is not None
        and data.whitening_mat_inv is not None
        and data.channel_positions is not None
    ):
        p = Panel(c, box, xlim=(0, 1), ylim=(0, 1))
        p.axes(title="template on the probe", xticks=False, yticks=False)
        p.note("no template")
        return str(c)
    pos = np.asarray(data.channel_positions, dtype=np.float64)
    peak_ch = int(peak_channel)
    near = np.argsort(((pos - pos[peak_ch]) ** 2).sum(axis=1), kind="stable")[:max_channels]
    # µV on the shown channels only: a product with all of a 384-channel probe's columns costs 20x more
    winv = np.asarray(data.whitening_mat_inv, dtype=np.float32)[:, near]
    scale = float(np.median(np.abs(data.amplitudes[spikes])))
    wave = np.zeros((data.templates.shape[1], len(pos)), np.float32)
    wave[:, near] = (np.asarray(data.templates[template], dtype=np.float32) @ winv) * np.float32(scale)
    sub = pos[near]
    # a waveform spans most of the smallest horizontal gap; its peak about 1.5 vertical gaps
    dx, dy = np.diff(np.unique(sub[:, 0])), np.diff(np.unique(sub[:, 1]))
    width = 0.8 * (dx.min() if dx.size else 20.0)
    height = 1.5 * (dy.min() if dy.size else 20.0)
    peak = max(float(np.abs(wave[:, near]).max()), 1e-9)
    xlim = (sub[:, 0].min() - 1.6 * width, sub[:, 0].max() + 0.7 * width)
    ylim = (sub[:, 1].min() - height, sub[:, 1].max() + height)
    p = Panel(c, box, xlim=xlim, ylim=ylim)
    x_rel = np.linspace(-width / 2, width / 2, wave.shape[0])
    sq = 5.0
    c.add(
        "".join(
            f'<rect class="ch" x="{x - sq / 2:.1f}" y="{y - sq / 2:.1f}" width="{sq}" height="{sq}" '
            f'fill="{CHANNEL_COLOR}"/>'
            for x, y in zip(p.px(sub[:, 0]).tolist(), p.py(sub[:, 1]).tolist())
        )
    )
    lines = []
    for ch in near.tolist():
        # stroke widths in tenths of a pixel, as the coordinates
        cls, color, lw = ("wf peak", PEAK_COLOR, 16) if ch == peak_ch else ("wf", "#111", 9)
        d = polyline_tenths(p.px(pos[ch, 0] + x_rel), p.py(pos[ch, 1] + wave[:, ch] * (height / peak)))
        lines.append(
            f'<path class="{cls}" data-channel="{ch}" d="{d}" fill="none" stroke="{color}" stroke-width="{lw}"/>'
        )
    c.add('<g transform="scale(0.1)">' + "".join(lines) + "</g>")
    # scale bar: the peak amplitude
    bx, by0, by1 = (
        float(p.px(xlim[0] + 0.5 * width)),
        float(p.py(ylim[0] + 0.3 * height)),
        float(p.py(ylim[0] + 1.3 * height)),
    )
    c.add(f'<path class="scalebar" d="M{bx:.1f} {by0:.1f}V{by1:.1f}" stroke="#000" stroke-width="2.5"/>')
    c.text(bx + 5, (by0 + by1) / 2 + 4, f"{peak:.0f} µV", anchor="start", size=11, color="#000")
    p.axes(title=f"template on the probe ({len(near)} channels)", xlabel="x (µm)", ylabel="depth (µm)")
    return str(c)


def overview(data, positions: np.ndarray, unit_amps: np.ndarray, *, pages: set) -> str:
    """Units on the probe (circles sized by amplitude, coloured by label, with their ids; channels as grey
    squares) and amplitude by depth. A unit with a page links to it."""
    c = Canvas(900, 700, cls="overview")
    cp = None if data.channel_positions is None else np.asarray(data.channel_positions, dtype=np.float64)
    pos_ok = np.isfinite(positions).all(axis=1) if len(positions) else np.zeros(0, bool)
    xs = [positions[pos_ok, 0]] + ([cp[:, 0]] if cp is not None else [])
    ys = [positions[pos_ok, 1]] + ([cp[:, 1]] if cp is not None else [])
    allx, ally = np.concatenate(xs), np.concatenate(ys)
    xlim = (allx.min() - 25, allx.max() + 25) if allx.size else (0, 1)
    ylim = (ally.min() - 25, ally.max() + 25) if ally.size else (0, 1)
    # the probe panel keeps its shape up to 3:1 (a thin probe stays a readable strip)
    probe_w = float(np.clip(600 * (xlim[1] - xlim[0]) / (ylim[1] - ylim[0]), 200, 420))
    left = Panel(c, (70, 30, probe_w, 600), xlim=xlim, ylim=ylim)
    if cp is not None:
        c.add(
            "".join(
                f'<rect class="ch" x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{CHANNEL_COLOR}"/>'
                for x, y in zip(left.px(cp[:, 0]).tolist(), left.py(cp[:, 1]).tolist())
            )
        )
    amp_ok = np.isfinite(unit_amps)
    amp_max = float(unit_amps[amp_ok].max()) if amp_ok.any() else 1.0
    right_x = 70 + probe_w + 90
    right = Panel(
        c, (right_x, 30, 900 - right_x - 20, 600), xlim=(0, amp_max * 1.08 if amp_max > 0 else 1.0), ylim=ylim
    )
    dots, marks = [], []
    for u, (x, y), a in zip(data.unit_ids.tolist(), positions.tolist(), unit_amps.tolist()):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        label = data.label(u)
        color = label_color(label)
        r = 3 + 9 * (a / amp_max if np.isfinite(a) and amp_max > 0 else 0)
        tip = f"<title>unit {u} {esc(label)} {a:.0f} µV</title>"
        circle = (
            f'<circle class="unit" data-id="{u}" data-x="{x:.2f}" data-y="{y:.2f}" '
            f'cx="{float(left.px(x)):.1f}" cy="{float(left.py(y)):.1f}" '
            f'r="{r:.1f}" fill="{color}" fill-opacity="0.7" stroke="#000" stroke-width="0.5">{tip}</circle>'
            f'<text x="{float(left.px(x)):.1f}" y="{float(left.py(y)) + 3:.1f}" text-anchor="middle" '
            f'font-size="8">{u}</text>'
        )
        dots.append(f'<a href="unit_{u}.html">{circle}</a>' if u in pages else circle)
        if np.isfinite(a):
            dot = (
                f'<circle class="unit-amp" data-id="{u}" cx="{float(right.px(a)):.1f}" '
                f'cy="{float(right.py(y)):.1f}" r="4" fill="{color}" stroke="#000" stroke-width="0.5">{tip}'
                f"</circle>"
            )
            marks.append(f'<a href="unit_{u}.html">{dot}</a>' if u in pages else dot)
    c.add("".join(dots) + "".join(marks))
    left.axes(title=f"{data.n_units} units on the probe", xlabel="x (µm)", ylabel="depth (µm)")
    right.axes(title="amplitude by depth", xlabel="median amplitude (µV)", ylabel="depth (µm)")
    if not data.n_units:
        right.note("no units")
    # the legend under the plots, where no unit can hide it
    for i, (name, color) in enumerate(list(LABEL_COLORS.items()) + [("other", OTHER_COLOR)]):
        lx = right.x + 70 * i
        c.add(f'<circle cx="{num(lx + 5)}" cy="685" r="5" fill="{color}" stroke="#000" stroke-width="0.5"/>')
        c.text(lx + 14, 689, name, anchor="start", size=11)
    return str(c)
