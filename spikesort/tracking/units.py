"""What tracking needs from one sorted folder, read from the Phy files alone.

Works on spikesort's folders and on any Phy template folder (Kilosort's too): params.py is parsed,
never run; spike_clusters.npy may be missing (then clusters = templates, as Kilosort writes it);
units labelled ``noise`` (cluster_group.tsv, else cluster_KSLabel.tsv) are left out. A curated
cluster made of several templates gets the spike-count-weighted mean of their waveforms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.io.phy import read_params_py
from spikesort.layout import (
    AMPLITUDES,
    AUTO_LABELS,
    CHANNEL_POSITIONS,
    CURATED_LABELS,
    PARAMS_PY,
    SPIKE_CLUSTERS,
    SPIKE_TEMPLATES,
    SPIKE_TIMES,
    TEMPLATES,
    WHITENING_MAT_INV,
)

log = logging.getLogger(__name__)

__all__ = ["SessionUnits", "read_session", "unit_positions", "WINDOW_MS"]

WINDOW_MS = (0.6, 1.2)  # waveform window around each unit's trough: same length whatever the sorter's nt
TOP_CHANNELS = 6  # channels of the centre of mass that locates a unit


@dataclass(eq=False)
class SessionUnits:
    """Units of one session. U units, T window samples, C channels."""

    folder: str  # as given by the caller
    unit_ids: np.ndarray  # (U,) cluster ids
    waveforms: np.ndarray  # (U, T, C) mean waveform (unwhitened; µV in spikesort's folders)
    halves: np.ndarray  # (2, U, T, C) the same from the first and the second half of each unit's spikes
    positions: np.ndarray  # (U, 2) µm, centre of mass of peak-to-peak on the top channels
    n_spikes: np.ndarray  # (U,)
    channel_positions: np.ndarray  # (C, 2) µm
    sample_rate: float
    duration_s: float

    @property
    def n_units(self) -> int:
        return int(self.unit_ids.size)


def _load(folder: Path, name: str, *, required: bool = True):
    path = folder / name
    if not path.is_file():
        if required:
            raise SpikesortError(f"{folder} is not a sorted Phy folder: {name} is missing")
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SpikesortError(f"cannot read {path}: {exc}") from None


def _labels(folder: Path) -> dict[int, str]:
    # a curator's labels win over the sorter's
    for name in (CURATED_LABELS, AUTO_LABELS):
        path = folder / name
        if path.is_file():
            out = {}
            for line in path.read_text(encoding="utf8").splitlines()[1:]:
                cid, _, value = line.partition("\t")
                if cid.strip() and value.strip():
                    out[int(cid)] = value.strip()
            return out
    return {}


def unit_positions(waveforms: np.ndarray, channel_positions: np.ndarray, *, top: int = TOP_CHANNELS) -> np.ndarray:
    """(U, 2) centre of mass of each waveform's peak-to-peak on its ``top`` largest channels."""
    ptp = np.ptp(waveforms, axis=1)  # (U, C)
    if ptp.shape[0] == 0:
        return np.zeros((0, 2))
    top = min(top, ptp.shape[1])
    idx = np.argsort(-ptp, axis=1)[:, :top]
    w = np.take_along_axis(ptp, idx, axis=1)
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return (w[:, :, None] * channel_positions[idx]).sum(axis=1)


def read_session(folder, *, label: str | None = None) -> SessionUnits:
    """Read the units of a sorted Phy folder (``label``: the name used in logs and tables)."""
    folder_p = Path(folder)
    label = str(folder) if label is None else label
    if not folder_p.is_dir():
        raise SpikesortError(f"sorted folder not found: {folder}")
    if not (folder_p / PARAMS_PY).is_file():
        raise SpikesortError(f"{folder} is not a Phy folder (no {PARAMS_PY})")
    params = read_params_py(folder_p / PARAMS_PY)
    try:
        fs = float(params["sample_rate"])
    except (KeyError, TypeError, ValueError):
        raise SpikesortError(f"{folder_p / PARAMS_PY} gives no sample_rate") from None
    times = _load(folder_p, SPIKE_TIMES).astype(np.int64).ravel()
    spike_templates = _load(folder_p, SPIKE_TEMPLATES).astype(np.int64).ravel()
    clusters = _load(folder_p, SPIKE_CLUSTERS, required=False)
    clusters = spike_templates if clusters is None else clusters.astype(np.int64).ravel()
    amps = _load(folder_p, AMPLITUDES).astype(np.float64).ravel()
    templates = _load(folder_p, TEMPLATES).astype(np.float64)
    wmi = _load(folder_p, WHITENING_MAT_INV, required=False)
    chan_pos = _load(folder_p, CHANNEL_POSITIONS).astype(np.float64)
    if templates.ndim != 3 or chan_pos.shape != (templates.shape[2], 2):
        raise SpikesortError(
            f"{folder}: templates.npy {templates.shape} and channel_positions.npy {chan_pos.shape} do not fit together"
        )
    if not (times.size == spike_templates.size == clusters.size == amps.size):
        raise SpikesortError(f"{folder}: spike_times, spike_templates, spike_clusters and amplitudes differ in length")
    if times.size and spike_templates.max() >= templates.shape[0]:
        raise SpikesortError(f"{folder}: spike_templates.npy points past templates.npy")
    # unwhitened templates (Kilosort's whitening_mat_inv undoes its whitening too)
    templates = templates @ wmi.astype(np.float64) if wmi is not None else templates

    labels = _labels(folder_p)
    order = np.argsort(times, kind="stable")
    times, spike_templates, clusters, amps = times[order], spike_templates[order], clusters[order], amps[order]
    ids = np.array([c for c in np.unique(clusters) if labels.get(int(c), "") != "noise"], dtype=np.int64)
    n_before = int(round(WINDOW_MS[0] * fs / 1000))
    n_after = int(round(WINDOW_MS[1] * fs / 1000))
    k_templates = templates.shape[0]
    full, halves, counts = [], [], []
    for cid in ids:
        sel = np.flatnonzero(clusters == cid)
        parts = [sel, sel[: sel.size // 2], sel[sel.size // 2 :]]
        wf = []
        for part in parts:
            if part.size == 0:
                part = sel
            # template mix weighted by spike counts times amplitudes: the cluster's mean spike
            weights = np.bincount(spike_templates[part], weights=amps[part], minlength=k_templates) / part.size
            wf.append(np.tensordot(weights, templates, axes=1))
        full.append(wf[0])
        halves.append(wf[1:])
        counts.append(sel.size)
    u, nt, c = len(ids), templates.shape[1], templates.shape[2]
    full_a = np.asarray(full).reshape(u, nt, c)
    halves_a = np.asarray(halves).reshape(u, 2, nt, c).transpose(1, 0, 2, 3)
    # one alignment per unit (from its full waveform) for the halves too
    stacked = _aligned_like(full_a, full_a, n_before, n_after)
    halves_al = np.stack([_aligned_like(full_a, h, n_before, n_after) for h in halves_a])
    duration = float(times[-1] - times[0]) / fs if times.size > 1 else 0.0
    log.debug("%s: %d units (%d noise left out), %d channels", label, u, len(np.unique(clusters)) - u, c)
    return SessionUnits(
        folder=label,
        unit_ids=ids,
        waveforms=stacked,
        halves=halves_al,
        positions=unit_positions(stacked, chan_pos),
        n_spikes=np.asarray(counts, dtype=np.int64),
        channel_positions=chan_pos,
        sample_rate=fs,
        duration_s=duration,
    )


def _aligned_like(reference: np.ndarray, waveforms: np.ndarray, n_before: int, n_after: int) -> np.ndarray:
    """Cut ``waveforms`` around the trough of ``reference``'s largest channel (same shape; zero-padded)."""
    u, nt, c = reference.shape
    out = np.zeros((u, n_before + n_after, c), dtype=np.float64)
    for k in range(u):
        best = int(np.argmax(np.ptp(reference[k], axis=0)))
        t0 = int(np.argmax(np.abs(reference[k, :, best]))) - n_before
        lo, hi = max(t0, 0), min(t0 + n_before + n_after, nt)
        if hi > lo:
            out[k, lo - t0 : hi - t0] = waveforms[k, lo:hi]
    return out
