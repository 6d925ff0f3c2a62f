"""The drift map: spike depth against time, as recorded and drift corrected.

``draw_drift_panels`` draws the scatter panels on axes the caller made; the drift stage's
``drift_map.png`` (``draw_drift_map``) and the report's drift map
(``spikesort.outputs.report.figure_drift_map``) both draw with it, each from its own data and
with its own style. matplotlib is imported only when a figure is saved here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .estimate import Motion


def draw_drift_panels(panels, *, times_s, colour, order, xlim=None, motion: Motion | None = None, **scatter) -> list:
    """Spike depth against time on each panel ``(axes, depths_um, label, title)``.

    One dot per spike at (``times_s``, depth), coloured by ``colour``, drawn in ``order`` (the
    largest spikes last, on top); ``label`` names a panel's scatter (None: unnamed); ``scatter``
    is passed on to ``Axes.scatter`` (size, colour map and limits, ...). Every panel gets the
    time axis (limited to ``xlim`` when given); the first one the depth axis and, with a
    ``motion``, the estimated motion of each block (block centre + displacement, red).
    Returns the scatter of each panel.
    """
    t = np.asarray(times_s)[order]
    c = np.asarray(colour)[order]
    out = []
    for ax, y, label, title in panels:
        kw = scatter if label is None else dict(scatter, label=label)
        out.append(ax.scatter(t, np.asarray(y)[order], c=c, **kw))
        ax.set_title(title)
        ax.set_xlabel("time (s)")
        if xlim is not None:
            ax.set_xlim(*xlim)
    first = panels[0][0]
    first.set_ylabel("depth (µm)")
    if motion is not None and motion.displacement_um.size:
        for b in range(motion.displacement_um.shape[1]):
            first.plot(
                motion.time_bins_s, motion.depth_bins_um[b] + motion.displacement_um[:, b], color="tab:red", lw=1
            )
    return out


def draw_drift_map(
    path, *, times_s, raw_um, corrected_um, amplitudes, motion: Motion | None = None, max_points: int = 200_000
) -> Path:
    """Spike depth against time, as recorded (left) and corrected (right), as a PNG.

    Darker dots are larger spikes; the left panel also shows the estimated motion of each
    block (block centre + displacement).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = np.asarray(times_s, dtype=np.float64)
    raw, cor = np.asarray(raw_um, dtype=np.float64), np.asarray(corrected_um, dtype=np.float64)
    a = np.log(np.maximum(np.asarray(amplitudes, dtype=np.float64), 1e-3))
    if len(t) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(t), max_points, replace=False))
        t, raw, cor, a = t[keep], raw[keep], cor[keep], a[keep]
    order = np.argsort(a)  # large spikes drawn last, on top
    shade = (a - np.percentile(a, 5)) / max(np.ptp(np.percentile(a, [5, 99])), 1e-9) if len(a) else a
    shade = np.clip(shade, 0, 1)
    fig = Figure(figsize=(12, 6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    draw_drift_panels(
        [(axes[0], raw, None, "as recorded"), (axes[1], cor, None, "drift corrected")],
        times_s=t,
        colour=shade,
        order=order,
        motion=motion,
        s=1,
        cmap="Greys",
        vmin=-0.3,
        vmax=1.0,
        linewidths=0,
        rasterized=True,
    )
    if motion is not None and motion.displacement_um.size:
        d = motion.displacement_um
        fig.suptitle(
            f"drift: displacement RMS {np.sqrt(np.mean(d**2)):.1f} µm, range {d.min():+.1f} to "
            f"{d.max():+.1f} µm (red: estimated motion)"
        )
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
