"""``PhyData``, what a Phy folder holds, and the checks that turn it into the arrays and tables of the
files: everything is checked before ``io.phy.write_phy_folder`` writes the first file. See
``spikesort.io.phy`` for the scaling convention the arrays follow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SpikesortError
from .npy_stream import StreamedNpy

# Cluster tables every Phy folder gets (Kilosort's names, which Phy users know).
REQUIRED_TABLES = ("KSLabel", "ContamPct", "Amplitude")
LABELS = ("good", "mua", "noise")
# "group" is written by us (seeded from KSLabel) and "info" is phy's own cluster_info.tsv.
_RESERVED_TABLES = ("group", "info")
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True, eq=False)
class PhyData:
    """Everything a Phy folder holds. See ``spikesort.io.phy`` for the scaling convention.

    n spikes, K templates, nt samples per template, C channels (the sorted channels, in the
    order of ``channel_map``), nPC PCs on nch channels per template, nTF template features.
    Integer and float arrays of any width are accepted and converted to the file dtypes.
    """

    spike_times: np.ndarray  # (n,) int samples, non-decreasing
    spike_templates: np.ndarray  # (n,) int in [0, K)
    amplitudes: np.ndarray  # (n,) scale factor relative to the template, ~1
    templates: np.ndarray  # (K, nt, C) whitened; row nt//2 = spike time
    whitening_mat: np.ndarray  # (C, C) x_w = x_raw @ W
    whitening_mat_inv: np.ndarray  # (C, C) inv(W) * gain_uv[None, :]
    channel_map: np.ndarray  # (C,) column of each sorted channel in the data file
    channel_positions: np.ndarray  # (C, 2) µm, distinct
    # the three per-spike feature arrays may also come as files already written (StreamedNpy,
    # float32): they are then checked on their header and renamed into the folder
    pc_features: np.ndarray | StreamedNpy  # (n, nPC, nch)
    pc_feature_ind: np.ndarray  # (K, nch) channel indices in [0, C)
    template_features: np.ndarray | StreamedNpy  # (n, nTF)
    template_feature_ind: np.ndarray  # (K, nTF) template indices in [0, K)
    similar_templates: np.ndarray  # (K, K)
    spike_positions: np.ndarray | StreamedNpy  # (n, 2) µm
    cluster_tables: Mapping[str, Sequence]  # name -> one value per cluster_ids entry
    dat_path: Sequence[str] | str | None  # raw file(s), absolute; None/[] = no raw data
    n_channels_dat: int
    dtype: str
    sample_rate: float
    offset: int = 0
    hp_filtered: bool = False
    spike_clusters: np.ndarray | None = None  # (n,) int >= 0; None = spike_templates
    channel_shanks: np.ndarray | None = None  # (C,) int
    # rows of the cluster tables; None = arange(K) when spike_clusters is None (one row per
    # template, as Kilosort), else the unique values of spike_clusters
    cluster_ids: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# validation: everything is checked before the first file is written
# --------------------------------------------------------------------------------------------


def _shape_error(name: str, arr: np.ndarray, expected: str) -> ValueError:
    return ValueError(f"{name} must have shape {expected}, got {arr.shape}")


def _as_int(name: str, value, shape: tuple, expected: str, dtype, lo=None, hi=None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise _shape_error(name, arr, expected)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.size:
        if lo is not None and arr.min() < lo:
            raise ValueError(f"{name} has a value {arr.min()} below {lo}")
        if hi is not None and arr.max() >= hi:
            raise ValueError(f"{name} has a value {arr.max()} not below {hi}")
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ValueError(f"{name} does not fit in {np.dtype(dtype).name}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _as_float(name: str, value, shape: tuple, expected: str, dtype=np.float32) -> np.ndarray | StreamedNpy:
    if isinstance(value, StreamedNpy):
        return _streamed(name, value, shape, expected, dtype)
    arr = np.asarray(value)
    if arr.shape != shape:
        raise _shape_error(name, arr, expected)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} has {np.count_nonzero(~np.isfinite(out))} non-finite values")
    return out


def _streamed(name: str, value: StreamedNpy, shape: tuple, expected: str, dtype) -> StreamedNpy:
    """The checks of ``_as_float`` on a file written by rows: its header, and the non-finite
    values its writer counted (it cannot be converted: it must already hold ``dtype``)."""
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {expected}, got {value.shape} (file {value.path.name})")
    if value.dtype != np.dtype(dtype):
        want = np.dtype(dtype).name
        raise ValueError(f"{name} must be written as {want}, got {value.dtype} (file {value.path.name})")
    if value.n_nonfinite:
        raise ValueError(f"{name} has {value.n_nonfinite} non-finite values")
    return value


def _array(value) -> np.ndarray | StreamedNpy:
    return value if isinstance(value, StreamedNpy) else np.asarray(value)


def validated_arrays(data: PhyData) -> dict[str, np.ndarray | StreamedNpy]:
    """File name -> array with the file dtype (or the StreamedNpy given); raises ValueError on any
    inconsistency."""
    st = np.asarray(data.spike_times)
    if st.ndim != 1:
        raise _shape_error("spike_times", st, "(n,)")
    n = st.shape[0]
    if n == 1:
        # phylib squeezes (1,) to () and cannot index it
        raise SpikesortError(f"Phy needs at least 2 spikes to open a folder; the sorting has {n}")
    templates = np.asarray(data.templates)
    if templates.ndim != 3:
        raise _shape_error("templates", templates, "(K, nt, C)")
    k, nt, c = templates.shape
    # no spikes, no templates: the empty sorting of a recording where nothing was found
    if (n > 0 and k < 1) or nt < 2 or c < 1:
        raise _shape_error("templates", templates, "(K>=1, nt>=2, C>=1)")

    out: dict[str, np.ndarray] = {}
    out["spike_times.npy"] = _as_int("spike_times", st, (n,), "(n,)", np.int64, lo=0)
    if np.any(np.diff(out["spike_times.npy"]) < 0):
        raise ValueError("spike_times must be sorted (non-decreasing)")
    out["spike_templates.npy"] = _as_int("spike_templates", data.spike_templates, (n,), "(n,)", np.int32, 0, k)
    clusters = data.spike_templates if data.spike_clusters is None else data.spike_clusters
    out["spike_clusters.npy"] = _as_int("spike_clusters", clusters, (n,), "(n,)", np.int32, lo=0)
    out["amplitudes.npy"] = _as_float("amplitudes", data.amplitudes, (n,), "(n,)")
    out["templates.npy"] = _as_float("templates", templates, (k, nt, c), "(K, nt, C)")

    wm = _as_float("whitening_mat", data.whitening_mat, (c, c), f"(C, C) = ({c}, {c})")
    wmi = _as_float("whitening_mat_inv", data.whitening_mat_inv, (c, c), f"(C, C) = ({c}, {c})")
    # W @ (inv(W) * gain) = diag(gain): anything else means the two matrices do not belong
    # together and Phy would show wrong waveforms
    # checked on the caller's float64 values so float32 storage cannot trip it
    prod = np.asarray(data.whitening_mat, dtype=np.float64) @ np.asarray(data.whitening_mat_inv, dtype=np.float64)
    diag = np.diag(prod)
    off = prod - np.diag(diag)
    if np.any(diag <= 0) or np.abs(off).max() > 1e-3 * diag.max():
        raise ValueError(
            "whitening_mat @ whitening_mat_inv must be a positive diagonal (the per-channel gain); "
            f"got diagonal range [{diag.min():.4g}, {diag.max():.4g}], "
            f"largest off-diagonal {np.abs(off).max():.4g}"
        )
    out["whitening_mat.npy"] = wm
    out["whitening_mat_inv.npy"] = wmi

    n_dat = data.n_channels_dat
    if not isinstance(n_dat, (int, np.integer)) or n_dat < c:
        raise ValueError(f"n_channels_dat must be an int >= C = {c}, got {n_dat!r}")
    cmap = _as_int("channel_map", data.channel_map, (c,), "(C,)", np.int32, lo=0, hi=int(n_dat))
    if np.unique(cmap).size != c:
        raise ValueError("channel_map has repeated channels")
    out["channel_map.npy"] = cmap
    pos = _as_float("channel_positions", data.channel_positions, (c, 2), "(C, 2)")
    if np.unique(pos, axis=0).shape[0] != c:
        # phylib would silently replace every position with a straight line
        raise ValueError("channel_positions has repeated positions")
    out["channel_positions.npy"] = pos
    if data.channel_shanks is not None:
        out["channel_shanks.npy"] = _as_int("channel_shanks", data.channel_shanks, (c,), "(C,)", np.int32)

    pcf = _array(data.pc_features)
    if pcf.ndim != 3 or pcf.shape[0] != n:
        raise _shape_error("pc_features", pcf, f"(n, nPC, nch) with n = {n}")
    _, n_pc, nch = pcf.shape
    if n_pc < 2 or nch < 1:
        # with one PC phylib's squeeze turns (n, 1, nch) into nch PCs on one channel
        raise _shape_error("pc_features", pcf, "(n, nPC>=2, nch>=1)")
    out["pc_features.npy"] = _as_float("pc_features", pcf, pcf.shape, "(n, nPC, nch)")
    out["pc_feature_ind.npy"] = _as_int(
        "pc_feature_ind", data.pc_feature_ind, (k, nch), f"(K, nch) = ({k}, {nch})", np.uint32, 0, c
    )

    tf = _array(data.template_features)
    if tf.ndim != 2 or tf.shape[0] != n or tf.shape[1] < 1:
        raise _shape_error("template_features", tf, f"(n, nTF) with n = {n}")
    n_tf = tf.shape[1]
    out["template_features.npy"] = _as_float("template_features", tf, tf.shape, "(n, nTF)")
    out["template_feature_ind.npy"] = _as_int(
        "template_feature_ind", data.template_feature_ind, (k, n_tf), f"(K, nTF) = ({k}, {n_tf})", np.uint32, 0, k
    )
    out["similar_templates.npy"] = _as_float(
        "similar_templates", data.similar_templates, (k, k), f"(K, K) = ({k}, {k})"
    )
    out["spike_positions.npy"] = _as_float("spike_positions", data.spike_positions, (n, 2), "(n, 2)")
    return out


def _format_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        # empty = missing for phylib's read_tsv; repr round-trips the float exactly
        return "" if not math.isfinite(float(v)) else repr(float(v))
    s = str(v)
    if any(ch in s for ch in "\t\r\n"):
        raise ValueError(f"cluster table value {s!r} contains a tab or newline")
    return s


def validated_tables(data: PhyData, spike_clusters: np.ndarray, n_templates: int) -> dict[str, str]:
    """File name -> TSV text for every cluster table, plus cluster_group.tsv."""
    if data.cluster_ids is not None:
        ids = _as_int("cluster_ids", data.cluster_ids, np.shape(data.cluster_ids), "(n_clusters,)", np.int64, lo=0)
        if ids.ndim != 1 or np.unique(ids).size != ids.size:
            raise ValueError("cluster_ids must be a 1-D array of distinct ids")
    elif data.spike_clusters is None:
        ids = np.arange(n_templates)
    else:
        ids = np.unique(spike_clusters).astype(np.int64)
    tables = dict(data.cluster_tables)
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise ValueError(f"cluster_tables lacks {missing}; it needs {list(REQUIRED_TABLES)}")
    out: dict[str, str] = {}
    for name, values in tables.items():
        if not _TABLE_NAME.match(name) or name in _RESERVED_TABLES:
            raise ValueError(
                f"cluster table name {name!r} must be letters, digits or _ and not one of {_RESERVED_TABLES}"
            )
        values = list(values)
        if len(values) != ids.size:
            raise ValueError(f"cluster table {name!r} has {len(values)} values for {ids.size} clusters (cluster_ids)")
        out[f"cluster_{name}.tsv"] = _tsv_text(name, ids, [_format_value(v) for v in values])
    labels = [str(v) for v in tables["KSLabel"]]
    bad = sorted(set(labels) - set(LABELS))
    if bad:
        raise ValueError(f"KSLabel values must be in {LABELS}, got {bad}")
    # Phy's curation column starts from the automatic label
    out["cluster_group.tsv"] = _tsv_text("group", ids, labels)
    return out


def _tsv_text(name: str, ids: np.ndarray, values: list[str]) -> str:
    lines = [f"cluster_id\t{name}"]
    lines += [f"{int(i)}\t{v}" for i, v in zip(ids, values)]
    return "\n".join(lines) + "\n"
