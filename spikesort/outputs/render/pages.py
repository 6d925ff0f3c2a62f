"""The report's HTML: summary.html (overview, drift map, the table of every unit) and one page per unit."""

from __future__ import annotations

import html
import logging
import re
import time
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.layout import DRIFT_MAP, REPORT_HTML

from . import figures
from .stats import (
    UnitIndex,
    spike_amplitudes_uv,
    template_peaks,
    unit_medians,
    unit_positions,
    unit_templates,
)

log = logging.getLogger(__name__)

DRIFT_MAP_RECORDED = "drift_map_recorded.png"
# cluster_<name>.tsv shown for a unit, with its caption and format
METRIC_ROWS = (
    ("fr", "firing rate", "{:.2f} Hz"),
    ("Amplitude", "amplitude", "{:.1f} µV"),
    ("snr", "SNR", "{:.1f}"),
    ("ContamPct", "contamination", "{:.1f} %"),
    ("isi_viol", "ISI violation ratio", "{:.3f}"),
    ("presence_ratio", "presence", "{:.2f}"),
    ("amp_cutoff", "amplitude cutoff", "{:.3f}"),
    ("depth_um", "depth", "{:.0f} µm"),
)
# files of an earlier report that this one replaces
_UNIT_FILE = re.compile(r"unit_-?\d+(_amplitudes)?\.(html|png)")
STYLE = """body{font-family:sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f4f4f4}tr:hover td{background:#f6f9ff}.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
nav a{margin-right:1.2em}svg{max-width:100%;height:auto}"""


def unit_page_name(unit_id) -> str:
    return f"unit_{int(unit_id)}.html"


def _amplitude_png_name(unit_id) -> str:
    return f"unit_{int(unit_id)}_amplitudes.png"


def _metric_cells(data, u) -> list[str]:
    cells = []
    for name, _, fmt in METRIC_ROWS:
        v = data.metric(name, u)
        cells.append(fmt.split(" ")[0].format(v) if np.isfinite(v) else "")
    return cells


def _label_html(label: str) -> str:
    return f'<span style="color:{figures.label_color(label) if label else "#222"}">{html.escape(label)}</span>'


def _head(title: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n"
    )


def summary_html(data, *, n_spikes: np.ndarray, pages: set, overview_svg: str, drift_svg: str) -> str:
    esc = html.escape
    counts: dict = {}
    for u in data.unit_ids.tolist():
        counts[data.label(u) or "unlabelled"] = counts.get(data.label(u) or "unlabelled", 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"
    rows = []
    for u, n in zip(data.unit_ids.tolist(), n_spikes.tolist()):
        link = f'<a href="{unit_page_name(u)}">{u}</a>' if u in pages else str(u)
        cells = [link, _label_html(data.label(u)), str(n)] + _metric_cells(data, u)
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ["unit", "label", "spikes"] + [esc(caption) for _, caption, _ in METRIC_ROWS]
    note = (
        f"<p>Unit pages: {len(pages)} of {data.n_units} units (click a unit id, or a unit in the overview).</p>"
        if data.n_units
        else ""
    )
    return (
        _head(f"spikesort report: {data.folder}")
        + f"<h1>spikesort report</h1>\n<p>Folder: <code>{esc(str(Path(data.folder).resolve()))}</code><br>\n"
        f"{data.n_units} units ({esc(summary)}), {len(data.spike_times)} spikes, {data.duration_s:.1f} s at "
        f"{data.sampling_rate_hz:g} Hz.</p>\n"
        f"<h2>Units on the probe</h2>\n{overview_svg}\n<h2>Drift map</h2>\n{drift_svg}\n"
        f'<h2>Units</h2>\n{note}\n<table class="units"><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>\n'
        + "\n".join(rows)
        + "\n</table>\n</body></html>\n"
    )


def unit_html(data, u: int, *, n_spikes: int, prev_u, next_u, figs: list[str]) -> str:
    label = data.label(u)
    nav = [f'<a href="{REPORT_HTML}">summary</a>']
    nav += [f'<a href="{unit_page_name(prev_u)}">&larr; unit {prev_u}</a>'] if prev_u is not None else []
    nav += [f'<a href="{unit_page_name(next_u)}">unit {next_u} &rarr;</a>'] if next_u is not None else []
    rows = [("spikes", str(n_spikes))]
    for name, caption, fmt in METRIC_ROWS:
        v = data.metric(name, u)
        if np.isfinite(v):
            rows.append((caption, fmt.format(v)))
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    title = f"unit {u}" + (f" ({label})" if label else "")
    return (
        _head(f"{title}: {data.folder}") + f"<nav>{''.join(nav)}</nav>\n"
        f'<h1 style="color:{figures.label_color(label) if label else "#222"}">{html.escape(title)}</h1>\n'
        f'<div class="figs">{figs[0]}<div><table class="metrics">{table}</table>\n{figs[1]}</div></div>\n'
        f'<div class="figs">{figs[2]}</div>\n</body></html>\n'
    )


def _write(path: Path, content) -> None:
    try:
        if isinstance(content, str):
            path.write_text(content, encoding="utf8")
        else:
            path.write_bytes(content)
    except OSError as exc:
        raise SpikesortError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_report(data, out: Path, *, unit_ids=None) -> Path:
    """Write the report of a finished folder's data (a ``spikesort.outputs.report.FolderData``) into ``out``:
    summary.html (overview, drift map, the table of every unit) and unit_<id>.html per unit of ``unit_ids``
    (default: every unit) with its PNG raster. Unit files of an earlier report are replaced. Returns the
    path of summary.html."""
    t0 = time.perf_counter()
    out = Path(out)
    ids = np.asarray(data.unit_ids)
    chosen = ids if unit_ids is None else np.asarray(unit_ids, dtype=np.int64).ravel()
    missing = np.setdiff1d(chosen, ids)
    if missing.size:
        raise SpikesortError(f"no unit {', '.join(map(str, missing[:5].tolist()))} in {data.folder}")
    pages = set(chosen.tolist())
    keep = {name for u in pages for name in (unit_page_name(u), _amplitude_png_name(u))}
    try:
        out.mkdir(parents=True, exist_ok=True)
        # unit files of an earlier report that this one does not rewrite (rewriting in place is much
        # cheaper than deleting and creating a file on some file systems)
        for old in out.iterdir():
            if _UNIT_FILE.fullmatch(old.name) and old.name not in keep:
                old.unlink()
    except OSError as exc:
        raise SpikesortError(f"cannot prepare {out}: {exc.strerror or exc}") from None
    index = UnitIndex.build(np.asarray(data.spike_clusters), ids)
    peaks = template_peaks(data)
    templates = unit_templates(data, index)
    amps = spike_amplitudes_uv(data, peaks)
    positions = unit_positions(data, index, templates=templates, peaks=peaks)
    unit_amps = unit_medians(amps, index, np.asarray(data.spike_clusters))
    drift_svg, drift_pngs = figures.drift_map(data, amps, png_name=DRIFT_MAP, recorded_png_name=DRIFT_MAP_RECORDED)
    for stale in {DRIFT_MAP, DRIFT_MAP_RECORDED} - set(drift_pngs):
        (out / stale).unlink(missing_ok=True)
    for name, png in drift_pngs.items():
        _write(out / name, png)
    overview_svg = figures.overview(data, positions, unit_amps, pages=pages)
    n_spikes = index.counts
    fs = data.sampling_rate_hz
    page_ids = [u for u in ids.tolist() if u in pages]
    for j, u in enumerate(page_ids):
        i = int(np.searchsorted(ids, u))
        spikes = index.spikes(i)  # ascending: the index sorts by unit with a stable sort
        times = data.spike_times[spikes]
        amp_svg, amp_png = figures.amplitude_over_time(
            times / fs, amps[spikes], duration_s=data.duration_s, png_name=_amplitude_png_name(u)
        )
        _write(out / _amplitude_png_name(u), amp_png)
        k = int(templates[i]) if 0 <= templates[i] < len(peaks.channel) else -1  # -1: no template to draw
        figs = [
            figures.waveforms(data, spikes, template=k, peak_channel=int(peaks.channel[k]) if k >= 0 else -1),
            figures.acg(times, sampling_rate_hz=fs),
            amp_svg,
        ]
        _write(
            out / unit_page_name(u),
            unit_html(
                data,
                u,
                n_spikes=int(n_spikes[i]),
                prev_u=page_ids[j - 1] if j else None,
                next_u=page_ids[j + 1] if j + 1 < len(page_ids) else None,
                figs=figs,
            ),
        )
    page = out / REPORT_HTML
    _write(page, summary_html(data, n_spikes=n_spikes, pages=pages, overview_svg=overview_svg, drift_svg=drift_svg))
    log.info(
        "report written to %s: %d unit pages of %d units in %.2f s",
        out,
        len(page_ids),
        len(ids),
        time.perf_counter() - t0,
    )
    return page
