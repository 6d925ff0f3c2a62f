"""Export the curated units of a Phy folder to other formats.

Formats (``spikesort export OUT --to FORMAT``, the command in :mod:`spikesort.cli.export`), all
read through :func:`spikesort.outputs.curated.load_result`, so merges, splits and labels made in
Phy are honoured:

* ``spikeinterface``: a NumpyFolderSorting folder (``spikeinterface.load(path)``) with every
  per-unit column as a unit property.
* ``nwb``: an NWB file (pynwb, the ``nwb`` extra) with a Units table: spike times in s, the
  label and metric columns, each unit's mean waveform on every channel (volts, as NWB wants) and
  an electrodes table holding the probe's contact positions.
* ``npz``: every spike and every per-unit column in one ``.npz`` (see :func:`write_npz`).
* ``binned``: a units x time-bins spike-count matrix with unit depths, the input of population
  models such as CEBRA or LFADS (see :func:`bin_spikes`).

Nothing is ever written inside the Phy folder; an existing destination is refused unless
``overwrite``, and then only a file, or a folder that is a spikeinterface sorting, is replaced.
Each output is written under a temporary name beside the destination and renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.atomic import atomic_destination
from spikesort.errors import SpikesortError

from .curated import CuratedResult, _phy_folder, load_result, parse_labels, select_units

log = logging.getLogger(__name__)

FORMATS = ("spikeinterface", "nwb", "npz", "binned")
# default destination: beside the Phy folder, named after it
SUFFIXES = {"spikeinterface": "_spikeinterface", "nwb": ".nwb", "npz": ".npz", "binned": "_binned.npz"}
DEFAULT_BIN_MS = 10.0
NPZ_FORMAT = "spikesort-npz-1"
BINNED_FORMAT = "spikesort-binned-1"
# a counts matrix larger than this many cells (4 GiB as int32) is refused: choose wider bins
MAX_BINNED_CELLS = 2**30


@dataclass(frozen=True)
class ExportSummary:
    format: str
    path: Path
    n_units: int
    n_spikes: int
    labels: dict  # label -> number of units exported


# --------------------------------------------------------------------------------------------
# destinations
# --------------------------------------------------------------------------------------------


def default_output(folder, fmt: str) -> Path:
    folder = Path(folder)
    if folder.name == "params.py":
        folder = folder.parent
    folder = Path(os.path.abspath(folder))
    return folder.with_name(folder.name + SUFFIXES[fmt])


def _raw_files(phy_folder: Path) -> list[Path]:
    from spikesort.io.phy import read_params_py

    paths = read_params_py(phy_folder / "params.py").get("dat_path") or []
    paths = [paths] if isinstance(paths, str) else list(paths)
    return [Path(os.path.abspath(p if Path(p).is_absolute() else phy_folder / p)) for p in paths]


def _is_sorting_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "si_folder.json").is_file() or (path / "numpysorting_info.json").is_file())


def check_destination(dest: Path, *, phy_folder: Path, fmt: str, overwrite: bool) -> Path:
    """Refuse a destination that is, holds or sits in the Phy folder, is its raw file, or exists
    without ``overwrite`` (and with it, anything but a file or a spikeinterface folder)."""
    dest = Path(os.path.abspath(dest.expanduser()))
    phy = Path(os.path.abspath(phy_folder)).resolve()
    real = dest.resolve()
    if real == phy or phy in real.parents:
        raise SpikesortError(
            f"{dest} is inside the Phy folder {phy_folder}: export never writes there; "
            f"choose another destination with -o"
        )
    if real in phy.parents:
        raise SpikesortError(f"{dest} contains the Phy folder {phy_folder}: choose another destination with -o")
    if real in {p.resolve() for p in _raw_files(phy)}:
        raise SpikesortError(f"{dest} is the raw recording of {phy_folder}: choose another destination with -o")
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise SpikesortError(f"{dest} exists (use --overwrite to replace it)")
        if dest.is_dir() and not _is_sorting_folder(dest):
            raise SpikesortError(f"{dest} is a folder that is not a spikeinterface sorting: not replacing it")
        if dest.is_dir() != (fmt == "spikeinterface"):
            kind = "folder" if dest.is_dir() else "file"
            raise SpikesortError(
                f"{dest} is a {kind}; --to {fmt} writes a "
                f"{'folder' if fmt == 'spikeinterface' else 'file'}: choose another destination"
            )
    return dest


def _save_npz(path: Path, arrays: dict) -> None:
    # a file object: np.savez would append '.npz' to a bare name
    with open(path, "xb") as f:
        np.savez_compressed(f, **arrays)


# --------------------------------------------------------------------------------------------
# the formats
# --------------------------------------------------------------------------------------------


def _unit_arrays(result: CuratedResult) -> dict[str, np.ndarray]:
    out = {"unit_ids": np.asarray(result.unit_ids, dtype=np.int64), "labels": np.asarray(result.labels, dtype=str)}
    for name, values in result.properties.items():
        values = np.asarray(values)
        out[name] = values.astype(str) if values.dtype.kind in "OU" else values
    return out


def write_npz(result: CuratedResult, path) -> None:
    """One ``.npz`` (numpy.load, no pickle) with, for n spikes, U units, nt samples, C channels:

    * ``spike_times`` (n,) int64 samples, ``spike_times_s`` (n,) float64 s, ``spike_clusters``
      (n,) int64 unit id of each spike, ``amplitudes`` (n,) float32 scale of each spike relative
      to its template (about 1);
    * ``unit_ids`` (U,) int64 (Phy's cluster ids), ``labels`` (U,) str, ``ks_label`` (U,) str
      (the automatic label, '' for clusters made in Phy), and the metrics ``n_spikes``,
      ``firing_rate_hz``, ``isi_violation_ratio``, ``contamination``, ``presence_ratio``,
      ``amplitude_cutoff``, ``snr``, ``amplitude_uv``, ``peak_channel``, ``depth_um`` (U,);
    * ``templates_uv`` (U, nt, C) float32 mean waveform in µV, spike time at row
      ``n_samples_before``; ``channel_positions_um`` (C, 2);
    * scalars ``sampling_rate_hz``, ``n_samples``, ``duration_s``, ``format`` ('spikesort-npz-1').
    """
    fs = float(result.sampling_rate_hz)
    arrays = dict(
        format=np.array(NPZ_FORMAT),
        spike_times=np.asarray(result.spike_times, dtype=np.int64),
        spike_times_s=np.asarray(result.spike_times, dtype=np.float64) / fs,
        spike_clusters=np.asarray(result.spike_clusters, dtype=np.int64),
        amplitudes=np.asarray(result.amplitudes, dtype=np.float32),
        **_unit_arrays(result),
        templates_uv=np.asarray(result.templates_uv, dtype=np.float32),
        n_samples_before=np.int64(result.n_samples_before),
        channel_positions_um=np.asarray(result.channel_positions_um, dtype=np.float64),
        sampling_rate_hz=np.float64(fs),
        n_samples=np.int64(result.n_samples),
        duration_s=np.float64(result.duration_s),
    )
    _save_npz(Path(path), arrays)


@dataclass(frozen=True, eq=False)
class BinnedCounts:
    """Spike counts of U units in B equal time bins. ``counts[u, b]`` counts the spikes of unit
    ``unit_ids[u]`` with ``bin_edges_s[b] <= t < bin_edges_s[b + 1]``."""

    counts: np.ndarray  # (U, B) int32
    bin_edges_s: np.ndarray  # (B + 1,) float64
    bin_s: float  # the bin width, a whole number of samples
    unit_ids: np.ndarray  # (U,)
    depth_um: np.ndarray  # (U,)
    labels: np.ndarray  # (U,) str
    n_left_out: int  # spikes after the last whole bin

    @property
    def bin_centers_s(self) -> np.ndarray:
        return 0.5 * (self.bin_edges_s[:-1] + self.bin_edges_s[1:])


def bin_spikes(result: CuratedResult, *, bin_ms: float) -> BinnedCounts:
    """Count each unit's spikes in bins of ``bin_ms`` (rounded to whole samples) from the start
    of the recording. Only whole bins are kept: spikes in a last, shorter piece are left out
    (``n_left_out``), so every column of the matrix covers the same time."""
    fs = float(result.sampling_rate_hz)
    bin_ms = float(bin_ms)
    if not np.isfinite(bin_ms) or bin_ms <= 0:
        raise SpikesortError(f"--bin-ms must be > 0, got {bin_ms:g}")
    width = int(round(bin_ms * fs / 1000.0))
    if width < 1:
        raise SpikesortError(f"--bin-ms {bin_ms:g} is shorter than one sample ({1000.0 / fs:.4g} ms)")
    n_bins = int(result.n_samples) // width
    if n_bins < 1:
        raise SpikesortError(f"--bin-ms {bin_ms:g} is longer than the recording ({result.duration_s:.3g} s)")
    n_units = len(result.unit_ids)
    if n_units * n_bins > MAX_BINNED_CELLS:
        raise SpikesortError(
            f"{n_units} units x {n_bins} bins of {bin_ms:g} ms is too large a matrix: choose a larger --bin-ms"
        )
    if abs(width * 1000.0 / fs - bin_ms) > 1e-9 * bin_ms:
        log.info("bin width %g ms rounded to %d samples = %.6g ms", bin_ms, width, width * 1000.0 / fs)
    b = np.asarray(result.spike_times, dtype=np.int64) // width
    u = np.searchsorted(result.unit_ids, result.spike_clusters)
    inside = b < n_bins
    counts = np.zeros((n_units, n_bins), dtype=np.int32)
    # counting distinct (unit, bin) pairs needs memory per spike, not per matrix cell
    keys, n = np.unique(u[inside] * n_bins + b[inside], return_counts=True)
    counts.reshape(-1)[keys] = n
    left_out = int(np.count_nonzero(~inside))
    if left_out:
        log.info("%d spikes after the last whole %g ms bin are not counted", left_out, bin_ms)
    return BinnedCounts(
        counts=counts,
        bin_edges_s=np.arange(n_bins + 1, dtype=np.float64) * width / fs,
        bin_s=width / fs,
        unit_ids=np.asarray(result.unit_ids, dtype=np.int64),
        depth_um=np.asarray(result.depth_um, dtype=np.float64),
        labels=np.asarray(result.labels, dtype=str),
        n_left_out=left_out,
    )


def write_binned(result: CuratedResult, path, *, bin_ms: float = DEFAULT_BIN_MS) -> BinnedCounts:
    """An ``.npz`` with ``counts`` (U, B) int32 (units x time bins; transpose for CEBRA's
    (time, neurons)), ``bin_edges_s`` (B + 1,), ``bin_centers_s`` (B,), ``bin_s``, ``unit_ids``,
    ``depth_um`` (y of each unit on the probe, µm), ``labels``, ``firing_rate_hz``,
    ``peak_channel``, ``sampling_rate_hz`` and ``format`` ('spikesort-binned-1')."""
    binned = bin_spikes(result, bin_ms=bin_ms)
    _save_npz(
        Path(path),
        dict(
            format=np.array(BINNED_FORMAT),
            counts=binned.counts,
            bin_edges_s=binned.bin_edges_s,
            bin_centers_s=binned.bin_centers_s,
            bin_s=np.float64(binned.bin_s),
            unit_ids=binned.unit_ids,
            depth_um=binned.depth_um,
            labels=binned.labels,
            firing_rate_hz=np.asarray(result.properties["firing_rate_hz"], dtype=np.float64),
            peak_channel=np.asarray(result.properties["peak_channel"], dtype=np.int64),
            sampling_rate_hz=np.float64(result.sampling_rate_hz),
        ),
    )
    return binned


def write_spikeinterface(result: CuratedResult, path) -> None:
    """A spikeinterface NumpyFolderSorting at ``path`` (which must not exist)."""
    sorting = result.to_spikeinterface()
    with warnings.catch_warnings():
        # an in-memory sorting has no provenance to record; the saved folder is complete
        warnings.filterwarnings("ignore", message=".*not serializable.*")
        sorting.save(folder=Path(path), format="numpy_folder")


_NWB_DESCRIPTIONS = {
    "phy_cluster_id": "cluster id of the unit in the Phy folder",
    "label": "curated label from Phy's cluster_group.tsv: good, mua, noise or unsorted",
    "ks_label": "spikesort's automatic label (cluster_KSLabel.tsv); empty for clusters made in Phy",
    "n_spikes": "number of spikes",
    "firing_rate_hz": "spikes per second over the recording",
    "isi_violation_ratio": "ISI violation ratio (Hill et al. 2011)",
    "contamination": "estimated fraction of spikes from other neurons (refractory period model)",
    "presence_ratio": "fraction of time bins in which the unit fires",
    "amplitude_cutoff": "estimated fraction of spikes missed below the detection threshold",
    "snr": "peak of the mean waveform over the noise sd on its peak channel",
    "amplitude_uv": "peak of the mean waveform on its peak channel, microvolts",
    "peak_channel": "index (in the electrodes table) of the channel with the largest peak",
    "depth_um": "depth (probe y) of the unit, micrometres",
}


def write_nwb(
    result: CuratedResult,
    path,
    *,
    session_start_time: _dt.datetime | None = None,
    session_description: str | None = None,
) -> None:
    """An NWB file with the units. ``session_start_time`` defaults to the time the Phy folder's
    spikes were written (spikesort does not know when the recording began)."""
    try:
        from pynwb import NWBHDF5IO, NWBFile
        from pynwb.misc import Units
    except ImportError:
        raise SpikesortError("NWB export needs pynwb: pip install 'spikesort[nwb]'") from None
    folder = Path(result.output_folder)
    if session_start_time is None:
        session_start_time = _dt.datetime.fromtimestamp(
            (folder / "spike_times.npy").stat().st_mtime, tz=_dt.timezone.utc
        )
    fs = float(result.sampling_rate_hz)
    nwb = NWBFile(
        session_description=session_description or f"units sorted by spikesort and curated in Phy ({folder.name})",
        identifier=str(uuid.uuid4()),
        session_start_time=session_start_time,
        source_script="spikesort export",
        source_script_file_name="spikesort/exporters.py",
    )
    device = nwb.create_device(name="probe", description="probe of the sorted recording")
    group = nwb.create_electrode_group(
        name="probe", description="all sorted channels", location="unknown", device=device
    )
    positions = np.asarray(result.channel_positions_um, dtype=np.float64)
    for x, y in positions:
        nwb.add_electrode(group=group, location="unknown", rel_x=float(x), rel_y=float(y))
    nwb.units = Units(
        name="units",
        description="units curated in Phy, from spikesort",
        resolution=1.0 / fs,
        waveform_rate=fs,
        waveform_unit="volts",
        waveform_time_before_peak_in_ms=1000.0 * result.n_samples_before / fs,
        electrode_table=nwb.electrodes,
    )
    columns = _unit_arrays(result)
    columns["phy_cluster_id"] = columns.pop("unit_ids")
    columns["label"] = columns.pop("labels")
    for name in columns:
        nwb.add_unit_column(name=name, description=_NWB_DESCRIPTIONS.get(name, name))
    every_channel = list(range(len(positions)))
    order = np.argsort(result.spike_clusters, kind="stable")
    starts = np.searchsorted(result.spike_clusters[order], result.unit_ids)
    stops = np.searchsorted(result.spike_clusters[order], result.unit_ids, side="right")
    for i, uid in enumerate(result.unit_ids):
        times = np.sort(result.spike_times[order[starts[i] : stops[i]]]) / fs
        row = {}
        for name, values in columns.items():
            v = values[i]
            row[name] = str(v) if values.dtype.kind == "U" else v.item()
        nwb.add_unit(
            id=int(uid),
            spike_times=times,
            obs_intervals=[[0.0, result.duration_s]],
            electrodes=every_channel,
            waveform_mean=np.asarray(result.templates_uv[i]) * 1e-6,
            **row,
        )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------


def export(
    folder, *, to: str, output=None, labels=None, bin_ms: float | None = None, overwrite: bool = False
) -> ExportSummary:
    """Export the curated units of the Phy ``folder`` to format ``to`` (one of ``FORMATS``).

    ``labels``: 'good,mua' or a sequence of names; None keeps every unit not labelled noise;
    'all' keeps every unit. ``output``: default beside the folder (:func:`default_output`).
    ``bin_ms``: the bin width of ``binned`` (default ``DEFAULT_BIN_MS``).
    """
    if to not in FORMATS:
        raise SpikesortError(f"unknown export format {to!r}: choose one of {', '.join(FORMATS)}")
    if bin_ms is not None and to != "binned":
        raise SpikesortError(f"--bin-ms applies to --to binned only, not --to {to}")
    phy_folder = _phy_folder(folder)
    # refuse a bad destination before the (longer) reading
    dest = check_destination(
        Path(output) if output is not None else default_output(phy_folder, to),
        phy_folder=phy_folder,
        fmt=to,
        overwrite=overwrite,
    )
    result = load_result(phy_folder)
    present = tuple(dict.fromkeys(np.asarray(result.labels, dtype=str).tolist()))
    if isinstance(labels, str) or labels is None:
        chosen = parse_labels(labels, available=present)
    else:
        chosen = parse_labels(",".join(labels), available=present)
    if chosen is None:
        chosen = tuple(lab for lab in present if lab != "noise")
    if result.n_units == 0:
        raise SpikesortError(f"{result.output_folder} holds no units (the sort found no spikes): nothing to export")
    selected = select_units(result, labels=chosen)
    if len(selected.unit_ids) == 0:
        have = ", ".join(f"{v} {k}" for k, v in result.label_counts().items()) or "no units"
        raise SpikesortError(
            f"no units labelled {', '.join(chosen) or '(none)'} in {result.output_folder} "
            f"(it has {have}): choose other --labels"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_destination(dest) as tmp:
        if to == "npz":
            write_npz(selected, tmp)
        elif to == "binned":
            write_binned(selected, tmp, bin_ms=DEFAULT_BIN_MS if bin_ms is None else bin_ms)
        elif to == "nwb":
            write_nwb(selected, tmp)
        else:
            write_spikeinterface(selected, tmp)
    summary = ExportSummary(
        format=to,
        path=dest,
        n_units=len(selected.unit_ids),
        n_spikes=len(selected.spike_times),
        labels=selected.label_counts(),
    )
    log.info(
        "exported %d units (%d spikes) from %s to %s (%s)",
        summary.n_units,
        summary.n_spikes,
        result.output_folder,
        dest,
        to,
    )
    return summary
