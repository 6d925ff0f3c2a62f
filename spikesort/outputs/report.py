"""The report of a finished sort, made from the output folder alone (no recording needed).

``make_report(OUT)`` writes ``OUT/report/``:

* ``drift_map.png``: every spike's depth against time, coloured by its amplitude in µV;
* ``overview.png``: every unit at its position on the probe, and amplitude against depth;
* ``unit_<id>.png``: per unit, its template on the probe, auto-correlogram, amplitude over time
  and metrics;
* ``summary.html``: one page linking them, with the table of units.

The figures themselves are :mod:`spikesort.outputs.figures`. A big sort (hundreds of units)
gets unit pages for the first ``max_unit_pages`` units by id (optionally good units only); the
other units are still in the overview and the table. Works on any finished folder, including
one where nothing was found (no Phy files).
"""
from __future__ import annotations

import html
import logging
import time
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.layout import DRIFT_MAP, OVERVIEW_PNG as OVERVIEW, REPORT_DIR, REPORT_HTML

from .figures import (DPI, LABEL_COLORS, METRIC_ROWS, FolderData, figure_drift_map, figure_overview, figure_unit,
                      load_folder, pick_units, spike_amplitudes_uv)

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> None:
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as exc:
        raise SpikesortError(f"cannot write {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- the report


def _fmt(v: float, fmt: str) -> str:
    return fmt.format(v) if np.isfinite(v) else ""


def _html(data: FolderData, pages: set, n_spikes_by_unit: dict) -> str:
    esc = html.escape
    counts: dict = {}
    for u in data.unit_ids:
        counts[data.label(u) or "unlabelled"] = counts.get(data.label(u) or "unlabelled", 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"
    rows = []
    for u in data.unit_ids:
        link = f'<a href="unit_{u}.png">{u}</a>' if int(u) in pages else str(u)
        label = data.label(u)
        cells = [link, f'<span style="color:{LABEL_COLORS.get(label, "black")}">{esc(label)}</span>',
                 str(n_spikes_by_unit[int(u)])]
        cells += [_fmt(data.metric(name, u), fmt.split(" ")[0]) for name, _, fmt in METRIC_ROWS]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ["unit", "label", "spikes"] + [esc(caption) for _, caption, _ in METRIC_ROWS]
    n_pages = len(pages)
    page_note = (f"Unit pages: {n_pages} of {data.n_units} units (click a unit id)."
                 if data.n_units else "")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>spikesort report: {esc(str(data.folder))}</title>
<style>body{{font-family:sans-serif;margin:1em 2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} img{{max-width:100%}}</style></head>
<body>
<h1>spikesort report</h1>
<p>Folder: <code>{esc(str(data.folder.resolve()))}</code><br>
{data.n_units} units ({esc(summary)}), {len(data.spike_times)} spikes, {data.duration_s:.1f} s at
{data.sampling_rate_hz:g} Hz.</p>
<h2>Drift map</h2>
<p><a href="{DRIFT_MAP}"><img src="{DRIFT_MAP}" alt="drift map"></a></p>
<h2>Units on the probe</h2>
<p><a href="{OVERVIEW}"><img src="{OVERVIEW}" alt="overview"></a></p>
<h2>Units</h2>
<p>{page_note}</p>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>
{chr(10).join(rows)}
</table>
</body></html>
"""


def make_report(folder, *, max_unit_pages: int | None = 50, good_only: bool = False,
                max_drift_spikes: int = 100_000) -> Path:
    """Write the figures of the output folder ``folder`` into ``folder/report`` and return the
    path of ``summary.html``. Unit pages go to the first ``max_unit_pages`` units by id (None:
    all), good units only with ``good_only``. Pages of an earlier report are replaced."""
    if max_unit_pages is not None and int(max_unit_pages) < 0:
        raise SpikesortError(f"max_unit_pages must be >= 0, got {max_unit_pages}")
    if int(max_drift_spikes) < 1:
        raise SpikesortError(f"max_drift_spikes must be >= 1, got {max_drift_spikes}")
    t0 = time.perf_counter()
    data = load_folder(folder)
    out = data.folder / REPORT_DIR
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise SpikesortError(f"cannot create {out}: {exc.strerror or exc}") from None
    for old in out.glob("unit_*.png"):
        old.unlink()
    amps = spike_amplitudes_uv(data)
    _save(figure_drift_map(data, amps_uv=amps, max_spikes=int(max_drift_spikes)), out / DRIFT_MAP)
    _save(figure_overview(data, amps_uv=amps), out / OVERVIEW)
    chosen = pick_units(data, max_unit_pages=max_unit_pages, good_only=good_only)
    for u in chosen:
        _save(figure_unit(data, u, amps_uv=amps), out / f"unit_{u}.png")
    n_spikes = dict(zip(data.unit_ids.tolist(), np.bincount(np.searchsorted(data.unit_ids, data.spike_clusters),
                                                            minlength=data.n_units).tolist()))
    page = out / REPORT_HTML
    page.write_text(_html(data, {int(u) for u in chosen}, n_spikes), encoding="utf8")
    log.info("report written to %s: %d unit pages of %d units in %.1f s", out, len(chosen), data.n_units,
             time.perf_counter() - t0)
    return page
