"""Assemble the sorter's results into a Phy folder (files written by ``io.phy``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from spikesort.io.phy import PhyData, inverse_whitening_uv, pad_templates_to_center, write_phy_folder

from .labels import label_units, possible_pieces, same_ray_units
from .metrics import UnitMetrics, compute_unit_metrics

log = logging.getLogger(__name__)


def raw_source(recording) -> dict | None:
    """Where Phy can read the raw traces: the binary file behind the recording, when there is one
    whose columns are exactly the recording's channels."""
    kw = getattr(recording, "_kwargs", {}) or {}
    paths = kw.get("file_paths")
    if recording.__class__.__name__ == "BinaryFolderRecording":
        folder = Path(kw.get("folder_path", ""))
        paths = sorted(str(p) for p in folder.glob("traces_cached_seg*.raw"))
        kw = {**kw, "dtype": recording.get_dtype(), "num_channels": recording.get_num_channels(), "file_offset": 0}
    if not paths or kw.get("num_channels") != recording.get_num_channels():
        log.info("the recording is not a plain binary file with these channels: Phy will not show raw traces")
        return None
    return dict(
        dat_path=[str(Path(p).resolve()) for p in paths],
        dtype=str(np.dtype(kw["dtype"])),
        offset=int(kw.get("file_offset", 0) or 0),
        n_channels_dat=int(kw["num_channels"]),
    )


def phy_whitening(whitening: np.ndarray, gains_to_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phy's W (x_w = x @ W) from the sorter's matrix (x_w = x @ whitening.T), and its inverse
    scaled to µV. Channels left out (dead, noisy) have zero rows: they pass through instead."""
    w_phy = np.asarray(whitening, dtype=np.float64).T.copy()
    dead = np.flatnonzero(np.abs(w_phy).sum(axis=0) == 0)
    w_phy[dead, dead] = 1.0
    return w_phy, inverse_whitening_uv(whitening_mat=w_phy, gain_uv=gains_to_uv)


def unit_metrics(
    *,
    spike_times,
    spike_clusters,
    amplitudes,
    templates_uv,
    templates_white,
    noise_uv,
    positions_um,
    sampling_rate_hz,
    duration_s,
    params,
) -> tuple[UnitMetrics, np.ndarray]:
    k = templates_uv.shape[0]
    m = compute_unit_metrics(
        spike_times=spike_times,
        spike_clusters=spike_clusters,
        amplitudes=amplitudes,
        templates_uv=templates_uv,
        template_of_unit=np.arange(k),
        noise_uv=noise_uv,
        channel_positions=positions_um,
        sampling_rate_hz=sampling_rate_hz,
        duration_s=duration_s,
        refractory_ms=params.refractory_ms,
        censored_ms=params.censored_ms,
    )
    counts = np.bincount(np.asarray(spike_clusters, dtype=np.int64), minlength=k)[:k]
    labels = label_units(
        m,
        good_max_contamination=params.good_max_contamination,
        good_min_snr=params.good_min_snr,
        good_min_presence=params.good_min_presence,
        noise_max_snr=params.noise_max_snr,
        good_min_spikes=params.good_min_spikes,
        possible_piece=possible_pieces(
            templates_uv=templates_uv, spike_counts=counts, max_fraction=params.good_max_piece_fraction
        )
        | same_ray_units(
            templates_uv=templates_uv,
            templates_white=templates_white,
            spike_clusters=spike_clusters,
            amplitudes=amplitudes,
            min_fraction=params.good_max_piece_fraction,
        ),
    )
    return m, labels


def write_phy(
    folder: Path,
    *,
    recording,
    spike_times,
    spike_units,
    amplitudes,
    templates_white,
    pre,
    whitening,
    gains_to_uv,
    positions_um,
    shank_ids,
    pc_features,
    pc_feature_ind,
    template_features,
    template_feature_ind,
    similar,
    spike_positions,
    metrics: UnitMetrics,
    labels: np.ndarray,
    sampling_rate_hz: float,
) -> None:
    """``whitening`` is the sorter's (C, C) matrix with whitened = x @ whitening.T."""
    w_phy, winv = phy_whitening(whitening, gains_to_uv)
    src = raw_source(recording)
    n_ch = len(positions_um)
    data = PhyData(
        spike_times=spike_times,
        spike_templates=spike_units,
        amplitudes=amplitudes,
        templates=pad_templates_to_center(templates_white, n_before=pre),
        whitening_mat=w_phy,
        whitening_mat_inv=winv,
        channel_map=np.arange(n_ch),
        channel_positions=positions_um,
        pc_features=pc_features,
        pc_feature_ind=pc_feature_ind,
        template_features=template_features,
        template_feature_ind=template_feature_ind,
        similar_templates=similar,
        spike_positions=spike_positions,
        cluster_tables={
            "KSLabel": list(labels),
            "ContamPct": (100 * np.asarray(metrics.contamination, dtype=float)).round(2).tolist(),
            "Amplitude": np.asarray(metrics.amplitude_uv, dtype=float).round(2).tolist(),
            "fr": np.asarray(metrics.firing_rate_hz, dtype=float).round(3).tolist(),
            "snr": np.asarray(metrics.snr, dtype=float).round(2).tolist(),
            "isi_viol": np.asarray(metrics.isi_violation_ratio, dtype=float).round(4).tolist(),
            "presence_ratio": np.asarray(metrics.presence_ratio, dtype=float).round(3).tolist(),
            "amp_cutoff": np.asarray(metrics.amplitude_cutoff, dtype=float).round(4).tolist(),
            "depth_um": np.asarray(metrics.depth_um, dtype=float).round(1).tolist(),
        },
        dat_path=src["dat_path"] if src else None,
        n_channels_dat=src["n_channels_dat"] if src else n_ch,
        dtype=src["dtype"] if src else "int16",
        offset=src["offset"] if src else 0,
        sample_rate=sampling_rate_hz,
        hp_filtered=False,
        channel_shanks=shank_ids,
    )
    write_phy_folder(folder, data)
