"""The export step: per-spike features, unit metrics and the Phy folder.

The features are computed chunk by chunk and their rows written to the end of their .npy files
as the chunks come back (in time order, like the spikes): what the step holds grows with the
spike count by the few arrays the metrics and the result need (times, units, amplitudes), not by
the ~160 bytes a spike of Phy's feature files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from spikesort.outputs.result import SortingResult
from spikesort.stages.export import phy_whitening, unit_metrics, write_phy
from spikesort.stages.features import FeatureFiles, features_block, similarity_matrix, template_feature_index
from spikesort.stages.geometry import neighbor_table

from .state import Curated, Detected, Preprocessed, _Run

log = logging.getLogger(__name__)


def pc_neighbors(*, positions_um: np.ndarray, shank_ids: np.ndarray, n_pc_channels: int) -> np.ndarray:
    """(C, n) the ``n_pc_channels`` channels nearest each channel (itself first), on its shank;
    a channel's own index fills the places its shank cannot."""
    n_channels = len(positions_um)
    n = min(n_channels, n_pc_channels)
    nb = neighbor_table(
        positions_um=positions_um, radius_um=0.0, good_channels=None, shank_ids=shank_ids, min_neighbors=n
    )[:, :n]
    return np.where(nb >= 0, nb, np.arange(n_channels)[:, None])


def _export(run: _Run, out: Path, *, prep: Preprocessed, det: Detected, cur: Curated) -> SortingResult:
    """Features, metrics and the Phy folder (empty arrays when nothing was found)."""
    info, p, store, chunks = run.info, run.params, run.store, run.chunks
    fs, model, spikes, final = info.sampling_rate_hz, prep.model, cur.spikes, cur.templates
    similar = similarity_matrix(final.dense)
    tf_index = template_feature_index(similar, n_features=p.n_template_features)
    pc_nb = pc_neighbors(positions_um=info.positions_um, shank_ids=info.shank_ids, n_pc_channels=p.n_pc_channels)
    n_pc_ch = pc_nb.shape[1]
    bounds = np.searchsorted(spikes.times, [[c.keep_start, c.keep_stop] for c in chunks])

    def feat_fn(ic):
        ch = chunks[ic]
        lo, hi = bounds[ic]
        x = store.read(ch.read_start, ch.read_stop)
        return features_block(
            x,
            times=spikes.times[lo:hi] - ch.read_start,
            units=spikes.templates[lo:hi],
            templates=final,
            pc_neighbors=pc_nb,
            bases=det.bases,
            tf_index=tf_index,
            positions_um=info.positions_um,
        )

    # the feature files are removed on leaving unless write_phy renamed them into the folder
    with FeatureFiles(out, n=len(spikes.times)) as files:
        parts = run.map(feat_fn, range(len(chunks)), "features", "export")
        feats = files.gather(parts, firsts=bounds[:, 0])
        amplitudes = feats.amplitudes
        _, w_inv_uv = phy_whitening(model.whitening, info.gains_to_uv)
        templates_uv = final.dense @ w_inv_uv.astype(np.float32)
        metrics, labels = unit_metrics(
            spike_times=spikes.times,
            spike_clusters=spikes.templates,
            amplitudes=amplitudes,
            templates_uv=templates_uv,
            templates_white=final.dense,
            noise_uv=model.noise_sd * info.gains_to_uv,
            positions_um=info.positions_um,
            sampling_rate_hz=fs,
            duration_s=info.duration_s,
            params=p,
        )
        pc_features, template_features, positions = feats.pc_features, feats.template_features, feats.positions_um
        if final.n_templates == 0:
            # one row per template and spike: the arrays are empty but keep their other dimensions
            pc_features = np.zeros((0, max(2, pc_features.shape[1]), n_pc_ch), np.float32)
            template_features = np.zeros((0, 1), np.float32)
            positions = np.zeros((0, 2), np.float32)
            tf_index = np.zeros((0, 1), np.int64)
        write_phy(
            out,
            recording=run.recording,
            spike_times=spikes.times,
            spike_units=spikes.templates,
            amplitudes=amplitudes,
            templates_white=final.dense,
            pre=run.pre,
            whitening=model.whitening,
            gains_to_uv=info.gains_to_uv,
            positions_um=info.positions_um,
            shank_ids=info.shank_ids,
            pc_features=pc_features,
            pc_feature_ind=pc_nb[final.main_channel],
            template_features=template_features,
            template_feature_ind=tf_index,
            similar=similar,
            spike_positions=positions,
            metrics=metrics,
            labels=labels,
            sampling_rate_hz=fs,
        )
    return SortingResult(
        output_folder=out,
        spike_times=spikes.times,
        spike_clusters=spikes.templates,
        amplitudes=amplitudes,
        unit_ids=np.arange(final.n_templates),
        sampling_rate_hz=fs,
        labels=np.asarray(labels),
        metrics=metrics,
    )
