"""What a sort gives back: spike times, units and labels, with the paths of its outputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spikesort.layout import LOG_FILE, PARAMS_PY, REPORT_DIR, REPORT_HTML, RUN_FILE, TEMPLATES, WHITENING_MAT_INV

from .folder import FolderFiles, UnreadableFile, read_folder, read_tsv  # noqa: F401 (read_tsv: its old home)

if TYPE_CHECKING:
    from spikesort.stages.metrics import UnitMetrics

log = logging.getLogger(__name__)

# the per-unit columns of SortingResult.units, in order (also the spikeinterface properties)
UNIT_COLUMNS = (
    "label",
    "n_spikes",
    "firing_rate_hz",
    "amplitude_uv",
    "snr",
    "depth_um",
    "peak_channel",
    "contamination",
    "isi_violation_ratio",
    "presence_ratio",
    "amplitude_cutoff",
)
# cluster_<name>.tsv written by export.write_phy -> column, and the factor back to the metric
_TSV_COLUMNS = {
    "fr": ("firing_rate_hz", 1.0),
    "Amplitude": ("amplitude_uv", 1.0),
    "snr": ("snr", 1.0),
    "depth_um": ("depth_um", 1.0),
    "ContamPct": ("contamination", 0.01),
    "isi_viol": ("isi_violation_ratio", 1.0),
    "presence_ratio": ("presence_ratio", 1.0),
    "amp_cutoff": ("amplitude_cutoff", 1.0),
}


@dataclass
class SortingResult:
    output_folder: Path
    spike_times: np.ndarray
    spike_clusters: np.ndarray
    amplitudes: np.ndarray
    unit_ids: np.ndarray
    sampling_rate_hz: float
    timings_s: dict = field(default_factory=dict)
    labels: np.ndarray | None = None  # 'good' / 'mua' / 'noise' per unit
    # spikesort.stages.metrics.UnitMetrics of unit_ids; None = read back from the cluster_*.tsv files
    metrics: UnitMetrics | None = None

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)

    # ---- where the outputs are ---------------------------------------------------------------
    def _existing(self, *parts) -> Path | None:
        p = Path(self.output_folder, *parts)
        return p if p.exists() else None

    @property
    def params_py(self) -> Path | None:
        """``params.py`` to open with ``phy template-gui``; None when the sort found no units."""
        return self._existing(PARAMS_PY)

    @property
    def phy_folder(self) -> Path | None:
        return Path(self.output_folder) if self.params_py is not None else None

    @property
    def log_file(self) -> Path | None:
        """The run's log (written by ``spikesort run``; a Python caller's logging config decides)."""
        return self._existing(LOG_FILE)

    @property
    def run_file(self) -> Path | None:
        """``spikesort_run.json``: version, resolved parameters, timings."""
        return self._existing(RUN_FILE)

    @property
    def report_html(self) -> Path | None:
        """The report's summary page, once :meth:`make_report` (or ``spikesort report``) made it."""
        return self._existing(REPORT_DIR, REPORT_HTML)

    def make_report(self, **kwargs) -> Path:
        """Write the figures into ``OUT/report`` (see :func:`spikesort.outputs.report.make_report`)."""
        from .report import make_report

        return make_report(self.output_folder, **kwargs)

    # ---- per-unit table ----------------------------------------------------------------------
    def _unit_columns(self) -> dict[str, np.ndarray]:
        ids = np.asarray(self.unit_ids)
        n = len(ids)
        cols: dict[str, np.ndarray] = {}
        labels = self.labels if self.labels is not None and len(self.labels) == n else None
        cols["label"] = np.asarray(labels if labels is not None else [""] * n, dtype=object)
        cols["n_spikes"] = _spike_counts(self.spike_clusters, ids)
        if self.metrics is not None and len(self.metrics) == n:
            m = self.metrics
            for name in UNIT_COLUMNS[2:]:
                values = np.asarray(getattr(m, name))
                cols[name] = values.astype(np.int64 if name == "peak_channel" else np.float64)
        else:
            cols.update(read_unit_tables(self.output_folder, ids))
        return cols

    @property
    def units(self):
        """One row per unit (index ``unit_id``): label, spike count and quality metrics, as a
        pandas DataFrame. Columns: see ``UNIT_COLUMNS``; a metric that is undefined is NaN."""
        import pandas as pd

        cols = self._unit_columns()
        frame = pd.DataFrame(
            {name: cols[name] for name in UNIT_COLUMNS},
            index=pd.Index(np.asarray(self.unit_ids, dtype=np.int64), name="unit_id"),
        )
        frame["label"] = frame["label"].astype(str)
        return frame

    def to_spikeinterface(self):
        """A spikeinterface ``NumpySorting`` with every column of :attr:`units` as a unit property."""
        from spikeinterface.core import NumpySorting

        sorting = NumpySorting.from_samples_and_labels(
            [self.spike_times], [self.spike_clusters], self.sampling_rate_hz, unit_ids=self.unit_ids
        )
        cols = self._unit_columns()
        for name in UNIT_COLUMNS:
            values = cols[name]
            sorting.set_property(name, values.astype(str) if name == "label" else values)
        return sorting


def _spike_counts(spike_clusters, ids: np.ndarray) -> np.ndarray:
    clusters = np.asarray(spike_clusters, dtype=np.int64)
    if len(ids) == 0 or clusters.size == 0:
        return np.zeros(len(ids), dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[order], clusters), 0, len(ids) - 1)
    hit = ids[order][pos] == clusters
    return np.bincount(order[pos[hit]], minlength=len(ids)).astype(np.int64)


def read_unit_tables(folder, unit_ids) -> dict[str, np.ndarray]:
    """The metric columns of ``unit_ids`` from the cluster_*.tsv files of a Phy folder (NaN where a
    file or a row is missing), plus the peak channel of each unit's template."""
    files = read_folder(folder)
    ids = np.asarray(unit_ids, dtype=np.int64)
    row = {int(u): i for i, u in enumerate(ids)}
    out = {name: np.full(len(ids), np.nan) for name, _ in _TSV_COLUMNS.values()}
    for tsv, (name, factor) in _TSV_COLUMNS.items():
        for cid, value in files.table(tsv).items():
            if cid in row:
                try:
                    out[name][row[cid]] = float(value) * factor
                except ValueError:
                    pass  # a hand-edited cell: leave NaN rather than fail
    out["peak_channel"] = _peak_channels(files, ids)
    return out


def _peak_channels(files: FolderFiles, ids: np.ndarray) -> np.ndarray:
    # peak channel = largest |µV| of the template (templates @ whitening_mat_inv), as metrics.py
    peak = np.full(len(ids), -1, dtype=np.int64)
    try:
        templates = files.array(TEMPLATES, mmap=True, required=True)
        winv = files.array(WHITENING_MAT_INV, required=True)
    except UnreadableFile:
        return peak
    for i, u in enumerate(ids):
        if 0 <= u < templates.shape[0]:
            peak[i] = int(np.abs(np.asarray(templates[u]) @ winv).max(axis=0).argmax())
    return peak
