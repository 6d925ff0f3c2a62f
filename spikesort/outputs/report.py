"""The report of a finished sort, made from the output folder alone (no recording needed).

``make_report(OUT)`` writes ``OUT/report/``:

* ``summary.html``: the units on the probe, the drift map (``drift_map.png``, with
  ``drift_map_recorded.png`` beside it when drift was corrected) and a table of every unit;
* ``unit_<id>.html`` for every unit: its template on the probe, auto-correlogram, amplitude over
  time (``unit_<id>_amplitudes.png``) and metrics.

:func:`load_folder` reads what the report needs (:class:`FolderData`, through the folder reader
:mod:`spikesort.outputs.folder`); :mod:`spikesort.outputs.render` draws it without matplotlib
(SVG in the pages, small PNG rasters for dense data), so a report costs well under a second for a
64-channel sort. Works on any finished folder, including one where nothing was found (no Phy files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.layout import (
    AMPLITUDES,
    CHANNEL_POSITIONS,
    CHANNEL_SHANKS,
    REPORT_DIR,
    RUN_FILE,
    SPIKE_CLUSTERS,
    SPIKE_POSITIONS,
    SPIKE_TEMPLATES,
    SPIKE_TIMES,
    TEMPLATES,
    WHITENING_MAT_INV,
)

from .folder import read_folder
from .render import write_report

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the folder's data


@dataclass
class FolderData:
    """What the figures need, read from an output folder. n spikes, K templates, C channels."""

    folder: Path
    sampling_rate_hz: float
    duration_s: float
    spike_times: np.ndarray  # (n,) int64 samples
    spike_clusters: np.ndarray  # (n,) int64 (Phy's curated clusters when curated)
    spike_templates: np.ndarray  # (n,) int64
    amplitudes: np.ndarray  # (n,) scale of each spike relative to its template (~1)
    spike_positions: np.ndarray | None  # (n, 2) µm
    templates: np.ndarray | None  # (K, nt, C) whitened, memory-mapped
    whitening_mat_inv: np.ndarray | None  # (C, C): template @ it = µV
    channel_positions: np.ndarray | None  # (C, 2) µm
    channel_shanks: np.ndarray | None  # (C,) shank of each channel
    unit_ids: np.ndarray  # (U,) the clusters that have spikes, ascending
    labels: dict  # unit id -> 'good' / 'mua' / 'noise' (Phy's curation first)
    tables: dict  # tsv name -> {unit id: cell text}

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
        raise SpikesortError(
            f"{folder} is not a finished spikesort output folder (neither spike_times.npy nor {RUN_FILE})"
        )
    fs = files.sampling_rate_hz()
    if not fs or float(fs) <= 0:
        raise SpikesortError(f"{folder}: the sampling rate is unknown (no {RUN_FILE}, no params.py)")
    fs = float(fs)
    times = np.zeros(0, np.int64) if times is None else np.asarray(times, dtype=np.int64).ravel()
    n = len(times)
    templates_of_spikes = files.array(SPIKE_TEMPLATES)
    clusters = files.array(SPIKE_CLUSTERS)
    templates_of_spikes = (
        np.zeros(n, np.int64)
        if templates_of_spikes is None
        else np.asarray(templates_of_spikes, dtype=np.int64).ravel()
    )
    clusters = templates_of_spikes if clusters is None else np.asarray(clusters, dtype=np.int64).ravel()
    amplitudes = files.array(AMPLITUDES)
    amplitudes = np.ones(n) if amplitudes is None else np.asarray(amplitudes, dtype=np.float64).ravel()
    positions = files.array(SPIKE_POSITIONS)
    if positions is not None and positions.shape != (n, 2):
        positions = None
    for name, arr in (
        ("spike_templates", templates_of_spikes),
        ("spike_clusters", clusters),
        ("amplitudes", amplitudes),
    ):
        if len(arr) != n:
            raise SpikesortError(f"{folder}: {name}.npy has {len(arr)} entries for {n} spikes")
    duration = files.duration_s() or (float(times.max() + 1) / fs if n else 0.0)
    tables = files.tables()
    # per cluster, a curator's label over the sorter's
    labels = {**tables.get("KSLabel", {}), **tables.get("group", {})}
    return FolderData(
        folder=folder,
        sampling_rate_hz=fs,
        duration_s=float(duration),
        spike_times=times,
        spike_clusters=clusters,
        spike_templates=templates_of_spikes,
        amplitudes=amplitudes,
        spike_positions=positions,
        templates=files.array(TEMPLATES, mmap=True),
        whitening_mat_inv=files.array(WHITENING_MAT_INV),
        channel_positions=files.array(CHANNEL_POSITIONS),
        channel_shanks=files.array(CHANNEL_SHANKS),
        unit_ids=np.unique(clusters),
        labels=labels,
        tables=tables,
    )


def pick_units(data: FolderData, *, max_unit_pages: int | None, good_only: bool) -> np.ndarray:
    """Units that get a page: by id, good ones only if asked, at most max_unit_pages."""
    ids = data.unit_ids
    if good_only:
        ids = np.array([u for u in ids if data.label(u) == "good"], dtype=np.int64)
    return ids if max_unit_pages is None else ids[: max(0, int(max_unit_pages))]


def make_report(
    folder, *, max_unit_pages: int | None = None, good_only: bool = False, max_drift_spikes: int = 100_000
) -> Path:
    """Write the report of the output folder ``folder`` into ``folder/report`` and return the path of
    ``summary.html``. Every unit gets a page, unless ``max_unit_pages`` (the first N by id) or
    ``good_only`` limit them; the table lists every unit either way. ``max_drift_spikes`` is kept for
    callers of earlier versions: the drift map is a raster now and shows every spike."""
    if max_unit_pages is not None and int(max_unit_pages) < 0:
        raise SpikesortError(f"max_unit_pages must be >= 0, got {max_unit_pages}")
    if int(max_drift_spikes) < 1:
        raise SpikesortError(f"max_drift_spikes must be >= 1, got {max_drift_spikes}")
    data = load_folder(folder)
    return write_report(
        data, data.folder / REPORT_DIR, unit_ids=pick_units(data, max_unit_pages=max_unit_pages, good_only=good_only)
    )
