"""Per-spike features of the final units, for Phy and for the unit metrics.

For each matched spike, in one streamed pass over the whitened traces:
- PC features: projections on the temporal bases over the ``n`` channels nearest the unit's
  peak channel (Phy's feature view, and spike positions);
- template features: the least-squares scale of the spike against its own template and the
  unit's most similar templates (Phy's template-feature view; column 0 is the amplitude).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.io.npy_stream import NpyRowWriter, StreamedNpy
from spikesort.kernels.detect import project_neighborhoods
from spikesort.kernels.match import template_projections

from .detect import localize
from .templates import Templates


@dataclass
class SpikeFeatures:
    pc_features: np.ndarray  # (n, K_pc, nch) float32
    template_features: np.ndarray  # (n, J) float32
    positions_um: np.ndarray  # (n, 2) float32


# the Phy file each feature array becomes (io.phy's names)
FEATURE_FILES = {
    "pc_features": "pc_features.npy",
    "template_features": "template_features.npy",
    "positions_um": "spike_positions.npy",
}


@dataclass
class StreamedFeatures:
    """The features of every spike, written to files (``io.npy_stream.StreamedNpy``) and not held."""

    pc_features: StreamedNpy  # (n, K_pc, nch) float32
    template_features: StreamedNpy  # (n, J) float32
    positions_um: StreamedNpy  # (n, 2) float32
    amplitudes: np.ndarray  # (n,) float32, template_features[:, 0] (zeros when J = 0): Phy's amplitude


class FeatureFiles:
    """Per-spike features of ``n`` spikes written into ``folder`` as they are computed, in order.

    Holding them for an hour of 384 channels takes ~160 bytes a spike (0.4 GB for 2.6 million
    spikes) until the Phy folder is written: instead each part's rows go straight to the end of
    its .npy file (``io.npy_stream``), under a hidden name until ``io.phy.write_phy_folder``
    renames it. Only the amplitudes (4 bytes a spike) stay in memory, for the metrics.

    A context manager: on leaving it, every file not renamed into place is removed.
    """

    def __init__(self, folder: Path, *, n: int):
        if int(n) < 0:
            raise ValueError(f"n must be >= 0 spikes, got {n}")
        self.folder, self.n = Path(folder), int(n)
        self.writers: dict[str, NpyRowWriter] = {}

    def gather(self, parts, *, firsts) -> StreamedFeatures | None:
        """Part i of ``parts`` (SpikeFeatures, in time order) holds the spikes from ``firsts[i]``
        on; their rows are written as the parts arrive. None when ``parts`` is empty."""
        amplitudes, filled = np.zeros(self.n, np.float32), 0
        for i, part in enumerate(parts):
            lo, m = int(firsts[i]), len(part.positions_um)
            if lo != filled:
                raise ValueError(f"the features of spikes {lo}-{lo + m} came after those up to {filled}: out of order")
            if not self.writers:
                self._open(part)
            for field, w in self.writers.items():
                w.write(getattr(part, field))
            if part.template_features.shape[1]:
                amplitudes[lo : lo + m] = part.template_features[:, 0]
            filled += m
        if not self.writers:
            return None
        if filled != self.n:
            raise RuntimeError(f"features were computed for {filled} spikes of {self.n}")
        return StreamedFeatures(**{field: w.finish() for field, w in self.writers.items()}, amplitudes=amplitudes)

    def _open(self, part: SpikeFeatures) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for field, name in FEATURE_FILES.items():
            rows = getattr(part, field)
            # float32 is what the Phy files hold; non-finite values are counted for its checks
            self.writers[field] = NpyRowWriter(
                self.folder / name, shape=(self.n, *rows.shape[1:]), dtype=np.float32, count_nonfinite=True
            )

    def __enter__(self) -> FeatureFiles:
        return self

    def __exit__(self, *exc) -> None:
        for w in self.writers.values():
            w.discard()  # nothing when write_phy_folder renamed the file


def similarity_matrix(dense: np.ndarray) -> np.ndarray:
    """(K, K) cosine similarity of templates at zero lag."""
    k = dense.shape[0]
    if k == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = dense.reshape(k, -1).astype(np.float64)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    return (flat @ flat.T).astype(np.float32)


def template_feature_index(similar: np.ndarray, *, n_features: int) -> np.ndarray:
    """(K, J) each template first, then its most similar others."""
    k = similar.shape[0]
    j = min(n_features, k)
    out = np.zeros((k, j), dtype=np.int64)
    for i in range(k):
        s = similar[i].astype(np.float64).copy()
        s[i] = np.inf
        out[i] = np.argsort(-s, kind="stable")[:j]
    return out


def features_block(
    x: np.ndarray,
    *,
    times: np.ndarray,
    units: np.ndarray,
    templates: Templates,
    pc_neighbors: np.ndarray,
    bases: np.ndarray,
    tf_index: np.ndarray,
    positions_um: np.ndarray,
) -> SpikeFeatures:
    """Features of spikes at ``times`` (samples in ``x``) of ``units``."""
    main = templates.main_channel[units]
    pcs = project_neighborhoods(x, times, main, pc_neighbors, bases, templates.pre)  # (n, nch, K)
    tf = template_projections(
        x, times, tf_index[units], templates.values, templates.channels, templates.norm2, templates.pre
    )
    pos = localize(pcs, main, neighbors=pc_neighbors, positions_um=positions_um)
    return SpikeFeatures(np.ascontiguousarray(pcs.transpose(0, 2, 1)), tf, pos)
