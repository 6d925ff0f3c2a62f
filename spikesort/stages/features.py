"""Per-spike features of the final units, for Phy and for the unit metrics.

For each matched spike, in one streamed pass over the whitened traces:
- PC features: projections on the temporal bases over the ``n`` channels nearest the unit's
  peak channel (Phy's feature view, and spike positions);
- template features: the least-squares scale of the spike against its own template and the
  unit's most similar templates (Phy's template-feature view; column 0 is the amplitude).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikesort.kernels.detect import project_neighborhoods
from spikesort.kernels.match import template_projections

from .detect import localize
from .templates import Templates


@dataclass
class SpikeFeatures:
    pc_features: np.ndarray  # (n, K_pc, nch) float32
    template_features: np.ndarray  # (n, J) float32
    positions_um: np.ndarray  # (n, 2) float32

    @classmethod
    def gathered(cls, parts, *, firsts, n: int) -> SpikeFeatures | None:
        """Part i of ``parts`` (SpikeFeatures) holds the spikes from ``firsts[i]`` on; each is
        copied into arrays for ``n`` spikes allocated once, so that the features are never held
        twice, as a list and its concatenation. None when ``parts`` is empty."""
        out, filled = None, 0
        for i, part in enumerate(parts):
            lo = int(firsts[i])
            if out is None:
                out = cls(
                    *(
                        np.empty((n, *getattr(part, f).shape[1:]), getattr(part, f).dtype)
                        for f in ("pc_features", "template_features", "positions_um")
                    )
                )
            hi = lo + len(part.positions_um)
            out.pc_features[lo:hi] = part.pc_features
            out.template_features[lo:hi] = part.template_features
            out.positions_um[lo:hi] = part.positions_um
            filled += hi - lo
        if out is not None and filled != n:
            raise RuntimeError(f"features were computed for {filled} spikes of {n}")
        return out


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
