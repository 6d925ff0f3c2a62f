"""Read a Phy folder back, after (or without) a manual curation in Phy, as curated units.

What Phy changes when a curator saves (phy 2.x, ``phylib.io.model.TemplateModel``):

* ``spike_clusters.npy``: a merge gives the merged spikes one new cluster id (larger than every
  id so far), a split gives each part a new id; old ids are never reused. ``spike_templates.npy``
  is never changed, so every spike still knows the template it was fitted with.
* ``cluster_group.tsv``: the curator's label per cluster (``good``, ``mua``, ``noise``, or
  ``unsorted`` when moved back there); a cluster without a row is unsorted too. Phy also
  rewrites the other ``cluster_*.tsv`` columns,
  copying a parent's value to a new cluster, so numbers in them (snr, ContamPct, ...) can be
  stale for merged and split clusters.

So :func:`load_result` takes the units from ``spike_clusters.npy`` and the labels from
``cluster_group.tsv`` (``unsorted`` for a cluster without a row; the automatic
``cluster_KSLabel.tsv`` only when there is no ``cluster_group.tsv`` at all), and recomputes every
unit's metrics from the spikes. A unit's waveform is the spike-count-weighted mean of the µV
templates its spikes were fitted with, as phylib's ``get_cluster_mean_waveforms``.
The folder is only read, never written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.layout import RUN_FILE  # noqa: F401 (re-exported)
from spikesort.params import Params
from spikesort.stages.metrics import UnitMetrics, compute_unit_metrics

from .folder import FolderFiles, UnreadableFile, read_folder
from .result import SortingResult

log = logging.getLogger(__name__)

# Phy's four groups; a curator may type others, which are kept as they are
KNOWN_LABELS = ("good", "mua", "noise", "unsorted")
UNSORTED = "unsorted"

# metrics recomputed for every curated unit (names of spikesort.stages.metrics.UnitMetrics fields)
METRIC_COLUMNS = (
    "n_spikes",
    "firing_rate_hz",
    "isi_violation_ratio",
    "contamination",
    "presence_ratio",
    "amplitude_cutoff",
    "snr",
    "amplitude_uv",
    "peak_channel",
    "depth_um",
)


@dataclass
class CuratedResult(SortingResult):
    """A :class:`spikesort.outputs.result.SortingResult` read from a Phy folder, with per-unit extras.

    ``unit_ids`` are Phy's cluster ids (sorted), ``labels`` the curated labels, ``amplitudes``
    the per-spike scale factors of ``amplitudes.npy``. ``properties`` maps a name to one value
    per unit: ``ks_label`` (the automatic label from ``cluster_KSLabel.tsv``, '' when the
    cluster has none) and the recomputed metrics of :data:`METRIC_COLUMNS`.
    """

    properties: dict = field(default_factory=dict)
    templates_uv: np.ndarray | None = None  # (U, nt, C) mean waveform of each unit, µV
    channel_positions_um: np.ndarray | None = None  # (C, 2)
    n_samples: int = 0  # length of the sorted recording
    n_samples_before: int = 0  # template row of the spike time (nt // 2)

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate_hz

    @property
    def depth_um(self) -> np.ndarray:
        return np.asarray(self.properties["depth_um"])

    def label_counts(self) -> dict[str, int]:
        names, counts = np.unique(np.asarray(self.labels, dtype=str), return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}

    def to_spikeinterface(self):
        """A spikeinterface NumpySorting with every entry of ``properties`` (and ``label``) set
        as a unit property."""
        sorting = super().to_spikeinterface()
        sorting.set_property("label", np.asarray(self.labels, dtype=str))
        for name, values in self.properties.items():
            sorting.set_property(name, np.asarray(values))
        return sorting


# --------------------------------------------------------------------------------------------
# reading the files
# --------------------------------------------------------------------------------------------


def read_cluster_table(path: str | os.PathLike) -> dict[int, str]:
    """A Phy ``cluster_<name>.tsv`` as {cluster_id: text}; empty cells are left out (as phylib
    does). Accepts comma- or tab-separated files, as phylib does."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SpikesortError(f"cannot read {path}: {e}") from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        return {}
    sep = "\t" if "\t" in lines[0] else ","
    header = [h.strip() for h in lines[0].split(sep)]
    if len(header) < 2 or header[0] not in ("cluster_id", "id"):
        raise SpikesortError(f"{path}: the first line must be 'cluster_id<TAB>name', got {lines[0]!r}")
    out: dict[int, str] = {}
    for n, line in enumerate(lines[1:], start=2):
        cells = [c.strip() for c in line.split(sep)]
        try:
            cid = int(cells[0])
        except ValueError:
            raise SpikesortError(f"{path}:{n}: cluster id {cells[0]!r} is not an integer") from None
        if len(cells) > 1 and cells[1] != "":
            out[cid] = cells[1]
    return out


def _phy_folder(folder) -> Path:
    """The Phy folder of ``folder`` (or of a params.py path); SpikesortError when it is none."""
    folder = Path(folder).expanduser()
    if folder.is_file() and folder.name == "params.py":
        folder = folder.parent
    if not folder.exists():
        raise SpikesortError(f"Phy folder not found: {folder}")
    if not folder.is_dir():
        raise SpikesortError(f"{folder} is not a folder")
    if not (folder / "params.py").is_file():
        raise SpikesortError(f"{folder} is not a Phy folder (no params.py)")
    return folder


def _load(files: FolderFiles, name: str, *, required: bool = True, mmap: bool = False):
    array = files.array(name, mmap=mmap)
    if array is None and required:
        raise SpikesortError(f"{files.path} lacks {name}: not a complete spikesort Phy folder")
    return array


def _run_record(files: FolderFiles) -> dict:
    try:
        return files.run_record()
    except UnreadableFile as e:
        log.warning("cannot read %s (%s): using default parameters for the metrics", e.path, e.reason)
        return {}


def _n_samples(folder: Path, params: dict, run: dict, last_spike: int) -> int:
    """Recording length: from the run record, else from the raw file's size, else the last spike."""
    rec = run.get("recording") if isinstance(run.get("recording"), dict) else {}
    if rec.get("n_samples"):
        return int(rec["n_samples"])
    paths = params.get("dat_path") or []
    paths = [paths] if isinstance(paths, str) else list(paths)
    try:
        itemsize = np.dtype(params.get("dtype", "int16")).itemsize
        n_ch = int(params["n_channels_dat"])
        total = 0
        for p in paths:
            p = Path(p) if Path(p).is_absolute() else folder / p
            total += (p.stat().st_size - int(params.get("offset", 0))) // (itemsize * n_ch)
        if total > last_spike:
            return int(total)
    except (KeyError, TypeError, ValueError, OSError):
        pass
    return int(last_spike) + 1


def _metric_params(run: dict) -> Params:
    values = run.get("params") if isinstance(run.get("params"), dict) else {}
    keep = {k: values[k] for k in ("refractory_ms", "censored_ms") if k in values}
    try:
        return Params.from_dict(keep)
    except SpikesortError as e:
        log.warning("%s in %s: using default refractory and censored periods", e, RUN_FILE)
        return Params()


# --------------------------------------------------------------------------------------------
# per-unit waveforms and noise
# --------------------------------------------------------------------------------------------


def template_counts(*, spike_clusters, spike_templates, unit_ids, n_templates: int) -> np.ndarray:
    """(U, K): how many spikes of each unit were fitted with each template."""
    units = np.searchsorted(unit_ids, spike_clusters)
    flat = units * n_templates + np.asarray(spike_templates, dtype=np.int64)
    return np.bincount(flat, minlength=len(unit_ids) * n_templates).reshape(len(unit_ids), n_templates)


def unit_templates_uv(*, counts: np.ndarray, templates_uv: np.ndarray) -> np.ndarray:
    """(U, nt, C): for each unit, the mean of the µV templates of its spikes weighted by how many
    of its spikes each template holds (``counts``, from :func:`template_counts`), as phylib's
    ``get_cluster_mean_waveforms``. An unchanged unit gets its own template back exactly."""
    k = templates_uv.shape[0]
    weights = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    flat = weights @ templates_uv.reshape(k, int(np.prod(templates_uv.shape[1:]))).astype(np.float64)
    return flat.reshape((len(counts),) + templates_uv.shape[1:]).astype(np.float32)


def channel_noise_uv(
    *,
    tables: dict,
    templates_uv: np.ndarray,
    unit_ids: np.ndarray,
    counts: np.ndarray,
    whitening_mat_inv: np.ndarray,
    run: dict,
) -> np.ndarray:
    """Per-channel noise sd in µV, for the SNR of curated units.

    The sorter's own value when the run record holds it (``noise_uv``). Otherwise recovered from
    the tables: a unit's ``snr`` is its peak (``Amplitude``) over the noise on its peak channel,
    so noise = Amplitude / snr on the peak channel of the template most of its spikes were
    fitted with (for a cluster made in Phy, Phy copied both values from its largest parent,
    whose template that is). Channels no unit peaks on get the noise the whitening implies
    (``x_w @ whitening_mat_inv`` has unit-variance noise, so a column norm of it), scaled by
    the median ratio of the two estimates where both exist.
    """
    n_ch = templates_uv.shape[2]
    given = run.get("noise_uv")
    if isinstance(given, list) and len(given) == n_ch:
        return np.asarray(given, dtype=np.float64)
    amp, snr = tables.get("Amplitude", {}), tables.get("snr", {})
    peak_channel = np.abs(templates_uv).max(axis=1).argmax(axis=1)
    row = {int(u): i for i, u in enumerate(unit_ids)}
    found: dict[int, list] = {}
    for cid, s in snr.items():
        try:
            a, s = float(amp[cid]), float(s)
        except (KeyError, ValueError):
            continue
        if cid in row and counts[row[cid]].sum() > 0 and s > 0 and a > 0:
            found.setdefault(int(peak_channel[counts[row[cid]].argmax()]), []).append(a / s)
    noise = np.full(n_ch, np.nan)
    for ch, values in found.items():
        noise[ch] = float(np.median(values))
    from_whitening = np.sqrt((np.asarray(whitening_mat_inv, dtype=np.float64) ** 2).sum(axis=0))
    known = np.isfinite(noise) & (from_whitening > 0)
    if known.any():
        scale = float(np.median(noise[known] / from_whitening[known]))
        noise = np.where(np.isfinite(noise), noise, scale * from_whitening)
    return noise


# --------------------------------------------------------------------------------------------
# the public entry points
# --------------------------------------------------------------------------------------------


def parse_labels(text: str | None, *, available=()) -> tuple[str, ...] | None:
    """'good,mua' -> ('good', 'mua'); None, '' -> None (all but noise); 'all' -> every label.

    A name that is neither one of Phy's groups nor used in the folder (``available``) is an
    error, so a typo cannot silently export nothing."""
    if text is None or not str(text).strip():
        return None
    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    if names == ("all",):
        return tuple(dict.fromkeys(KNOWN_LABELS + tuple(available)))
    valid = set(KNOWN_LABELS) | set(available)
    bad = [n for n in names if n not in valid]
    if bad:
        raise SpikesortError(
            f"unknown label {', '.join(map(repr, bad))}: choose from {', '.join(sorted(valid))} (or 'all')"
        )
    return names


def select_units(result: CuratedResult, *, labels) -> CuratedResult:
    """The units whose label is in ``labels`` (names, or a text like 'good,mua' read by
    :func:`parse_labels`, where '' means every label but noise), with their spikes."""
    unit_labels = np.asarray(result.labels, dtype=str)
    if isinstance(labels, str):
        present = tuple(dict.fromkeys(unit_labels.tolist()))
        labels = parse_labels(labels, available=present) or tuple(lab for lab in present if lab != "noise")
    keep = np.isin(unit_labels, list(labels))
    if keep.all():
        return result
    spikes = np.isin(result.spike_clusters, result.unit_ids[keep])
    extra = {}
    if isinstance(getattr(result, "metrics", None), UnitMetrics):
        m = result.metrics
        extra["metrics"] = UnitMetrics(**{f.name: np.asarray(getattr(m, f.name))[keep] for f in fields(m)})
    return replace(
        result,
        **extra,
        spike_times=result.spike_times[spikes],
        spike_clusters=result.spike_clusters[spikes],
        amplitudes=result.amplitudes[spikes],
        unit_ids=result.unit_ids[keep],
        labels=unit_labels[keep],
        properties={k: np.asarray(v)[keep] for k, v in result.properties.items()},
        templates_uv=None if result.templates_uv is None else result.templates_uv[keep],
    )


def load_result(folder, *, labels=None) -> CuratedResult:
    """The curated units of a spikesort Phy folder (also after Phy has merged, split or labelled
    clusters in it). ``folder`` may also be the path of its params.py.

    ``labels``: None keeps every unit; label names (``('good', 'mua')`` or ``'good,mua'``) keep
    the units with those labels (see :func:`select_units`). Nothing in the folder is written.
    """
    folder = _phy_folder(folder)
    files = read_folder(folder)
    params = files.params()
    try:
        fs = float(params["sample_rate"])
    except (KeyError, TypeError, ValueError):
        raise SpikesortError(f"{folder / 'params.py'} has no valid sample_rate") from None
    if not np.isfinite(fs) or fs <= 0:
        raise SpikesortError(f"{folder / 'params.py'}: sample_rate must be > 0, got {fs}")

    spike_times = np.asarray(_load(files, "spike_times.npy"), dtype=np.int64).reshape(-1)
    n = spike_times.size
    spike_templates = np.asarray(_load(files, "spike_templates.npy"), dtype=np.int64).reshape(-1)
    clusters = _load(files, "spike_clusters.npy", required=False)
    spike_clusters = spike_templates.copy() if clusters is None else np.asarray(clusters, dtype=np.int64).reshape(-1)
    amplitudes = np.asarray(_load(files, "amplitudes.npy"), dtype=np.float32).reshape(-1)
    for name, arr in (
        ("spike_templates", spike_templates),
        ("spike_clusters", spike_clusters),
        ("amplitudes", amplitudes),
    ):
        if arr.size != n:
            raise SpikesortError(f"{folder}: {name}.npy has {arr.size} entries for {n} spikes in spike_times.npy")
    if n and (spike_clusters.min() < 0 or spike_templates.min() < 0):
        raise SpikesortError(f"{folder}: negative cluster or template ids in spike_clusters/spike_templates.npy")

    templates = np.asarray(_load(files, "templates.npy"), dtype=np.float64)
    wmi = np.asarray(_load(files, "whitening_mat_inv.npy"), dtype=np.float64)
    positions = np.asarray(_load(files, "channel_positions.npy"), dtype=np.float64)
    if templates.ndim != 3 or wmi.shape != (templates.shape[2],) * 2 or positions.shape != (templates.shape[2], 2):
        raise SpikesortError(
            f"{folder}: templates.npy {templates.shape}, whitening_mat_inv.npy {wmi.shape} and "
            f"channel_positions.npy {positions.shape} do not fit together"
        )
    if n and spike_templates.max() >= templates.shape[0]:
        raise SpikesortError(
            f"{folder}: spike_templates.npy refers to template {spike_templates.max()} "
            f"but templates.npy holds {templates.shape[0]}"
        )
    # the unwhitening phylib does: templates in µV (see spikesort.io.phy)
    templates_uv = templates @ wmi

    # phy's own cluster_info.tsv repeats the others
    tables = {name: read_cluster_table(p) for name, p in files.table_paths().items() if name != "info"}
    unit_ids = np.unique(spike_clusters)
    if "group" in tables:
        group = tables["group"]
    else:
        log.info("%s has no cluster_group.tsv: using the automatic labels of cluster_KSLabel.tsv", folder)
        group = tables.get("KSLabel", {})
    unit_labels = np.array([group.get(int(u), UNSORTED) for u in unit_ids], dtype=object).astype(str)
    ks = tables.get("KSLabel", {})

    run = _run_record(files)
    n_samples = _n_samples(folder, params, run, int(spike_times.max()) if n else 0)
    mp = _metric_params(run)
    counts = template_counts(
        spike_clusters=spike_clusters,
        spike_templates=spike_templates,
        unit_ids=unit_ids,
        n_templates=templates.shape[0],
    )
    unit_templates = unit_templates_uv(counts=counts, templates_uv=templates_uv)
    noise = channel_noise_uv(
        tables=tables, templates_uv=templates_uv, unit_ids=unit_ids, counts=counts, whitening_mat_inv=wmi, run=run
    )
    metrics = compute_unit_metrics(
        spike_times=spike_times,
        spike_clusters=spike_clusters,
        amplitudes=amplitudes,
        templates_uv=unit_templates,
        template_of_unit=np.arange(unit_ids.size),
        unit_ids=unit_ids,
        noise_uv=noise,
        channel_positions=positions,
        sampling_rate_hz=fs,
        duration_s=n_samples / fs,
        refractory_ms=mp.refractory_ms,
        censored_ms=mp.censored_ms,
    )
    properties = {"ks_label": np.array([ks.get(int(u), "") for u in unit_ids], dtype=object).astype(str)}
    properties.update({name: np.asarray(getattr(metrics, name)) for name in METRIC_COLUMNS})
    # SortingResult may carry the metrics itself (then its own per-unit table uses ours, not the
    # possibly stale cluster_*.tsv of merged and split clusters)
    extra = {"metrics": metrics} if "metrics" in {f.name for f in fields(SortingResult)} else {}

    result = CuratedResult(
        **extra,
        output_folder=folder,
        spike_times=spike_times,
        spike_clusters=spike_clusters,
        amplitudes=amplitudes,
        unit_ids=unit_ids,
        sampling_rate_hz=fs,
        timings_s=dict(run.get("timings_s") or {}),
        labels=unit_labels,
        properties=properties,
        templates_uv=unit_templates,
        channel_positions_um=positions,
        n_samples=n_samples,
        n_samples_before=templates.shape[1] // 2,
    )
    log.info(
        "read %s: %d units (%s), %d spikes",
        folder,
        unit_ids.size,
        ", ".join(f"{v} {k}" for k, v in result.label_counts().items()) or "none",
        n,
    )
    return result if labels is None else select_units(result, labels=labels)
