"""Write (and read back) a Phy "template-gui" folder that ``phylib`` 2.7 loads.

Scaling convention (what makes Phy show µV)
-------------------------------------------
Traces are row vectors in time: ``x`` has shape (n_samples, C). Whitening multiplies on the
right, ``x_w = x @ W``, as Kilosort does, and phylib undoes it the same way.

What phylib 2.7.1 / phy 2.x compute from the files (read from their source):

* Template waveforms. ``phylib.io.model.TemplateModel._get_template_dense`` calls
  ``_unwhiten(templates[k])``, which is ``templates[k] @ whitening_mat_inv`` times an optional
  ``template_scaling`` (any name in params.py becomes a model attribute; we never write it, so
  it is 1). phy's Template view and the "templates" mode of the Waveform view
  (``phy.apps.base.TemplateMixin._get_template_waveforms``) draw exactly that matrix.
* Template amplitude. phy's cluster-view column ``amp``
  (``TemplateMixin.get_template_amplitude``) is ``max over channels of (max - min over time)``
  of that unwhitened template, i.e. its peak-to-peak on the best channel. The best channels
  (``_find_best_channels``) are ranked by the same per-channel peak-to-peak.
* Spike amplitudes. ``amplitudes.npy`` is shown as it is in the Amplitude view ("template"
  mode, ``TemplateMixin.get_spike_template_amplitudes``). phylib's own model of a spike is
  ``spike ≈ amplitudes[i] * unwhitened template``: ``TemplateModel.get_amplitudes_true`` returns
  ``ptp(templates[k] @ whitening_mat_inv) * amplitudes[i]`` as the spike amplitude in data
  units, and phylib's ALF export relies on it.
* Raw waveforms (Waveform view "waveforms", Trace view, "raw" amplitudes) are read from
  ``dat_path`` by ``phylib.io.traces`` in the file's own units: phylib applies no gain there.
  They are in µV only if the data file itself is (e.g. a float32 µV copy). phylib extracts the
  window ``[t - nt//2, t + nt - nt//2)`` around ``spike_times[i]``
  (``phylib.io.traces._extract_waveform``), so templates should have the spike's reference
  sample at row ``nt // 2``; :func:`pad_templates_to_center` does that.

So we use:

* ``whitening_mat`` W: the whitening applied to the traces the sorter worked on, in raw units
  (``x_w = x_raw @ W``).
* ``whitening_mat_inv`` = ``inv(W) * gain_uv[None, :]`` where ``gain_uv[c]`` is µV per raw unit
  on channel c (:func:`inverse_whitening_uv`). Then ``x_w @ whitening_mat_inv`` = ``x_raw *
  gain_uv`` = µV. (If the sorter whitened traces already in µV, pass gain 1.)
* ``templates[k]`` (whitened space) such that ``templates[k] @ whitening_mat_inv`` is unit k's
  mean waveform in µV at amplitude 1 (:func:`whitened_templates_from_uv` builds them from µV
  templates).
* ``amplitudes[i]``: dimensionless scale of spike i relative to its template (≈ 1), so that
  spike i in µV ≈ ``amplitudes[i] * templates[k] @ whitening_mat_inv``. Phy's Template view
  and ``amp`` column then read in µV, and ``get_amplitudes_true(sample2unit=1)`` returns µV.
  The Amplitude view shows these scale factors (≈ 1), not µV: phylib has one template per
  cluster and cannot show both the template and the spike amplitude in µV while keeping its
  ``spike = amplitude × template`` model.
* ``template_features[i, j]``: the same kind of scale factor, for spike i fitted with template
  ``template_feature_ind[k_i, j]`` (Kilosort puts the spike's own template first).

phylib squeezes every array it loads (``read_array(...).squeeze()``), so axes of length 1 break
it. The writer pads a lone template with an empty second one (and a lone template-feature
column with a zero column) and refuses 1 spike or fewer than 2 PCs. A sorting with no spikes at
all is written as every file with zero rows (zero templates), which phylib cannot open.
"""

from __future__ import annotations

import ast
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic as _write_atomic
from ..errors import SpikesortError
from .npy_stream import NpyRowWriter, StreamedNpy
from .phy_data import LABELS, REQUIRED_TABLES, PhyData, validated_arrays, validated_tables

logger = logging.getLogger(__name__)

__all__ = [
    "LABELS",
    "REQUIRED_TABLES",
    "PhyData",
    "inverse_whitening_uv",
    "pad_templates_to_center",
    "read_params_py",
    "read_phy_folder",
    "whitened_templates_from_uv",
    "write_phy_folder",
]


# --------------------------------------------------------------------------------------------
# helpers for callers
# --------------------------------------------------------------------------------------------


def inverse_whitening_uv(*, whitening_mat: np.ndarray, gain_uv: np.ndarray | float) -> np.ndarray:
    """``inv(whitening_mat)`` with column c scaled by ``gain_uv[c]`` (µV per raw unit).

    With ``x_w = x_raw @ W`` this maps whitened traces to µV: ``x_w @ result = x_raw * gain``.
    """
    w = np.asarray(whitening_mat, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"whitening_mat must be square (C, C), got shape {w.shape}")
    gain = np.broadcast_to(np.asarray(gain_uv, dtype=np.float64), (w.shape[0],))
    if not np.all(np.isfinite(gain)) or np.any(gain <= 0):
        raise ValueError(f"gain_uv must be finite and > 0 on every channel, got {gain}")
    return np.linalg.inv(w) * gain[None, :]


def whitened_templates_from_uv(*, templates_uv: np.ndarray, whitening_mat_inv: np.ndarray) -> np.ndarray:
    """Whitened templates ``t_w`` with ``t_w @ whitening_mat_inv == templates_uv`` (K, nt, C)."""
    t = np.asarray(templates_uv, dtype=np.float64)
    wmi = np.asarray(whitening_mat_inv, dtype=np.float64)
    if t.ndim != 3 or wmi.shape != (t.shape[2], t.shape[2]):
        raise ValueError(f"templates_uv must be (K, nt, C) and whitening_mat_inv (C, C); got {t.shape} and {wmi.shape}")
    return (t @ np.linalg.inv(wmi)).astype(np.float32)


def pad_templates_to_center(templates: np.ndarray, *, n_before: int) -> np.ndarray:
    """Zero-pad templates (K, nt, C) whose spike sample is row ``n_before`` so that it is row
    ``nt' // 2`` of the result, where phylib centres the raw waveforms it extracts."""
    t = np.asarray(templates)
    if t.ndim != 3:
        raise ValueError(f"templates must be (K, nt, C), got shape {t.shape}")
    nt = t.shape[1]
    if not 0 <= n_before < nt:
        raise ValueError(f"n_before={n_before} is outside the {nt} template samples")
    n_after = nt - n_before - 1
    # total length 2*max+1 puts the spike sample exactly at the middle row
    half = max(n_before, n_after)
    pad = ((0, 0), (half - n_before, half - n_after), (0, 0))
    return np.pad(t, pad)


# --------------------------------------------------------------------------------------------
# what phylib needs beyond the checked data: no axis of length 1, a params.py
# --------------------------------------------------------------------------------------------


def _pad_singletons(arrays: dict[str, np.ndarray]) -> None:
    """phylib squeezes arrays on load: give it a second (empty) template and a second
    template-feature column when there is only one, so no axis has length 1."""
    if arrays["spike_times.npy"].size == 0:
        return  # phylib cannot open a sorting without spikes anyway
    if arrays["templates.npy"].shape[0] == 1:
        logger.info("one template only: adding an empty template 1 so that phylib can load it")
        arrays["templates.npy"] = np.concatenate([arrays["templates.npy"], np.zeros_like(arrays["templates.npy"])])
        arrays["similar_templates.npy"] = np.pad(arrays["similar_templates.npy"], ((0, 1), (0, 1)))
        arrays["pc_feature_ind.npy"] = np.repeat(arrays["pc_feature_ind.npy"], 2, axis=0)
        arrays["template_feature_ind.npy"] = np.repeat(arrays["template_feature_ind.npy"], 2, axis=0)
    if arrays["template_features.npy"].shape[1] == 1:
        k = arrays["templates.npy"].shape[0]
        ind = arrays["template_feature_ind.npy"]
        # the extra column points at another template so it never overwrites the real value
        extra = ((ind[:, 0].astype(np.int64) + 1) % k).astype(np.uint32)[:, None]
        arrays["template_feature_ind.npy"] = np.ascontiguousarray(np.hstack([ind, extra]))
        tf = arrays["template_features.npy"]
        if isinstance(tf, StreamedNpy):
            arrays["template_features.npy"] = _zero_column_added(tf)
        else:
            arrays["template_features.npy"] = np.ascontiguousarray(np.pad(tf, ((0, 0), (0, 1))))


PAD_BLOCK_ROWS = 1 << 16  # rows per read when a streamed file gets its zero column


def _zero_column_added(src: StreamedNpy) -> StreamedNpy:
    """``src`` (n, 1) rewritten as (n, 2) with a zero second column, block by block."""
    n = src.shape[0]
    # a name of its own: the padded file is written while the unpadded one is read
    with NpyRowWriter(src.path.with_name("template_features.padded.npy"), shape=(n, 2), dtype=src.dtype) as w:
        for lo in range(0, n, PAD_BLOCK_ROWS):
            w.write(np.pad(src.read_rows(lo, min(n, lo + PAD_BLOCK_ROWS)), ((0, 0), (0, 1))))
        out = w.finish()
    src.discard()
    return out


def _dat_path_entry(path: str | os.PathLike, folder: Path) -> str:
    """Relative to the Phy folder when the raw file is inside it (any depth) or directly in
    its parent directory, so the pair can be moved together; absolute otherwise."""
    p = Path(os.path.abspath(path))
    f = Path(os.path.abspath(folder))
    if p.parent == f.parent or f in p.parents:
        return os.path.relpath(p, f)
    return str(p)


def _params_text(data: PhyData, folder: Path) -> str:
    if data.dat_path is None:
        paths: list = []
    elif isinstance(data.dat_path, (str, os.PathLike)):
        paths = [data.dat_path]
    else:
        paths = list(data.dat_path)
    entries = []
    for p in paths:
        if not os.path.exists(p):
            logger.warning("raw data file %s does not exist: Phy will show no raw waveforms", p)
        entries.append(_dat_path_entry(p, folder))
    try:
        dt = np.dtype(data.dtype)
    except TypeError as e:
        raise ValueError(f"dtype {data.dtype!r} is not a numpy dtype") from e
    # a name like 'int16' reads best; keep the byte-order form only when it matters
    dtype_str = dt.name if dt.byteorder in ("=", "|") else dt.str
    rate = float(data.sample_rate)
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"sample_rate must be finite and > 0, got {data.sample_rate!r}")
    offset = data.offset
    if not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    # plain Python types so repr gives literals (numpy 2 reprs read np.float64(...))
    values = dict(
        dat_path=[str(e) for e in entries],
        n_channels_dat=int(data.n_channels_dat),
        dtype=dtype_str,
        offset=int(offset),
        sample_rate=rate,
        hp_filtered=bool(data.hp_filtered),
    )
    lines = ["# Phy parameters written by spikesort; literals only, read by phylib.io.model.load_model"]
    lines += [f"{k} = {v!r}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _warn_foreign_files(folder: Path, ours: set[str]) -> None:
    # files phylib would also pick up: a stale template_ind.npy would make it read our dense
    # templates as sparse, stale cluster_*.tsv would add columns
    foreign = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in ours and (p.suffix in (".tsv", ".csv") or p.name.startswith(("spike_", "template")))
    )
    if foreign:
        logger.warning("Phy folder %s already holds files phylib will read: %s", folder, ", ".join(foreign))


def write_phy_folder(folder: str | os.PathLike, data: PhyData) -> None:
    """Write ``data`` as a Phy template-gui folder (created if missing).

    Callers pass (see the module docstring for why):

    * ``templates`` in whitened space such that ``templates[k] @ whitening_mat_inv`` is unit k's
      mean waveform in µV, with the spike sample at row ``nt // 2``
      (:func:`whitened_templates_from_uv`, :func:`pad_templates_to_center`);
    * ``whitening_mat`` W (``x_w = x_raw @ W``) and ``whitening_mat_inv = inv(W) * gain_uv``
      (:func:`inverse_whitening_uv`); ``W @ whitening_mat_inv`` must be diagonal;
    * ``amplitudes`` and ``template_features`` as scale factors relative to the templates (≈ 1);
    * ``cluster_tables`` with at least KSLabel ('good'/'mua'/'noise'), ContamPct and Amplitude;
      cluster_group.tsv is seeded from KSLabel. Non-finite numbers are written as empty cells;
    * ``dat_path`` as absolute path(s) (relative ones are taken from the current directory);
      params.py stores them relative to the folder when the file is inside the folder or in
      its parent directory, absolute otherwise. None or [] means no raw data.

    Every input is checked before anything is written (ValueError naming the array and its
    shapes; SpikesortError for a sorting of exactly 1 spike, which Phy cannot open). Each file
    goes to a hidden temporary name and is renamed into place; params.py is written last, so a
    folder with params.py has all its files. ``pc_features``, ``template_features`` and
    ``spike_positions`` may be files already written beside their place (``StreamedNpy`` from
    ``io.npy_stream``, float32): they are checked on their headers and renamed in turn, and
    removed when this raises. Existing files of the same names are replaced,
    other files are left alone (with a warning when phylib would read them).
    """
    folder = Path(folder)
    arrays: dict = {}
    try:
        arrays = validated_arrays(data)
        tables = validated_tables(data, arrays["spike_clusters.npy"], arrays["templates.npy"].shape[0])
        params = _params_text(data, folder)
        _pad_singletons(arrays)

        folder.mkdir(parents=True, exist_ok=True)
        ours = set(arrays) | set(tables) | {"params.py"}
        _warn_foreign_files(folder, ours)
        for name, arr in arrays.items():
            if isinstance(arr, StreamedNpy):
                arr.commit(folder / name)  # written and fsynced already
            else:
                _write_atomic(folder / name, lambda f, a=arr: np.save(f, a, allow_pickle=False))
        for name, text in tables.items():
            _write_atomic(folder / name, lambda f, t=text: f.write(t.encode("utf-8")))
        _write_atomic(folder / "params.py", lambda f: f.write(params.encode("utf-8")))
    except BaseException:
        # no temporary file outlives a failed write (one already renamed is left alone)
        given = (data.pc_features, data.template_features, data.spike_positions, *arrays.values())
        for s in given:
            if isinstance(s, StreamedNpy):
                s.discard()
        raise
    logger.info(
        "wrote Phy folder %s: %d spikes, %d templates",
        folder,
        arrays["spike_times.npy"].size,
        arrays["templates.npy"].shape[0],
    )
    if arrays["spike_times.npy"].size == 0:
        logger.warning(
            "no spikes found: %s holds every Phy file with zero spikes and units, which Phy "
            "itself cannot open (phylib needs at least 2 spikes)",
            folder,
        )


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_params_py(path: str | os.PathLike) -> dict[str, Any]:
    """Read a params.py made of ``name = literal`` lines without running it."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError) as e:
        raise SpikesortError(f"cannot read Phy parameters {path}: {e}") from e
    out: dict[str, Any] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise SpikesortError(f"{path}:{node.lineno}: only 'name = literal' lines are allowed")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError as e:
            raise SpikesortError(f"{path}:{node.lineno}: value is not a literal") from e
    return out


def read_phy_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """Load a Phy folder: ``{'params': dict, 'cluster_tables': {name: {cluster_id: value}},
    <npy stem>: array, ...}``. Empty TSV cells are left out, like phylib does."""
    folder = Path(folder)
    if not (folder / "params.py").is_file():
        raise SpikesortError(f"{folder} is not a Phy folder (no params.py)")
    out: dict[str, Any] = {"params": read_params_py(folder / "params.py"), "cluster_tables": {}}
    for p in sorted(folder.glob("*.npy")):
        out[p.stem] = np.load(p, allow_pickle=False)
    for p in sorted(folder.glob("cluster_*.tsv")):
        lines = p.read_text(encoding="utf-8").splitlines()
        if not lines:
            continue
        name = lines[0].split("\t")[1]
        table: dict[int, Any] = {}
        for line in lines[1:]:
            cid, _, value = line.partition("\t")
            if value != "":
                table[int(cid)] = _parse_cell(value)
        out["cluster_tables"][name] = table
    return out


def _parse_cell(value: str):
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value
