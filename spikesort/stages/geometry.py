"""Channel neighbourhoods from probe geometry (positions in µm, shank ids)."""

from __future__ import annotations

import numpy as np


def distances_um(positions_um: np.ndarray) -> np.ndarray:
    p = np.asarray(positions_um, dtype=np.float64)
    return np.linalg.norm(p[:, None, :] - p[None, :, :], axis=2)


def neighbor_table(
    *,
    positions_um: np.ndarray,
    radius_um: float,
    good_channels: np.ndarray | None = None,
    shank_ids: np.ndarray | None = None,
    min_neighbors: int = 1,
) -> np.ndarray:
    """(C, M) int64 table of each channel's neighbours within ``radius_um``, nearest first
    (the channel itself leads), padded with -1. Channels on another shank or flagged bad are
    never neighbours; at least ``min_neighbors`` nearest channels are kept on sparse probes."""
    n = len(positions_um)
    good = np.ones(n, dtype=bool) if good_channels is None else np.asarray(good_channels, dtype=bool)
    shank = np.zeros(n, dtype=np.int64) if shank_ids is None else np.asarray(shank_ids)
    d = distances_um(positions_um)
    rows = []
    for c in range(n):
        ok = good & (shank == shank[c])
        ok[c] = True
        cand = np.flatnonzero(ok)
        order = cand[np.lexsort((cand, d[c, cand]))]
        within = order[d[c, order] <= radius_um]
        if within.size < min_neighbors:
            within = order[:min_neighbors]
        rows.append(within)
    m = max(len(r) for r in rows)
    table = np.full((n, m), -1, dtype=np.int64)
    for c, r in enumerate(rows):
        table[c, : len(r)] = r
    return table
