"""One-to-one links between sessions, and tracks as chains of links.

Per session pair the Hungarian assignment on -log(probability) keeps no unit twice; links under
the threshold are dropped. Tracks follow consecutive links first; a unit with no link forward may
then link to a unit with no link backward one or two sessions later (a missed session). Every link
goes forward in session order and every unit has at most one link each way, so a track never holds
two units of one session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Link", "assign_pairs", "build_tracks", "TrackRow"]


@dataclass(frozen=True)
class Link:
    session_a: int
    unit_a: int  # index into session a's units
    session_b: int
    unit_b: int
    probability: float


@dataclass(frozen=True)
class TrackRow:
    """One row of tracks.csv."""

    track_id: int
    session: str
    unit_id: int
    probability: float  # the link into this unit (the track's first unit: the link out of it); NaN alone


def assign_pairs(
    prob: np.ndarray, *, threshold: float = 0.5, rows: np.ndarray | None = None, cols: np.ndarray | None = None
) -> list[tuple[int, int, float]]:
    """Hungarian assignment on -log p (restricted to ``rows`` x ``cols``), links with p >= threshold."""
    from scipy.optimize import linear_sum_assignment

    rows = np.arange(prob.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    cols = np.arange(prob.shape[1]) if cols is None else np.asarray(cols, dtype=np.int64)
    if rows.size == 0 or cols.size == 0:
        return []
    sub = prob[np.ix_(rows, cols)]
    # a pair under the threshold costs what "no link" costs: the assignment has to pair every unit of
    # the smaller side, and unclipped costs of those forced pairs would trade a likely link away
    cost = -np.log(np.clip(sub, max(threshold, 1e-12), 1.0))
    r, c = linear_sum_assignment(cost)
    return [(int(rows[i]), int(cols[j]), float(sub[i, j])) for i, j in zip(r, c) if sub[i, j] >= threshold]


def build_tracks(n_units: list[int], links: list[Link]) -> list[list[tuple[int, int, float]]]:
    """Chains of (session, unit index, probability of the link into it; NaN for the first)."""
    forward: dict[tuple[int, int], Link] = {}
    backward: dict[tuple[int, int], Link] = {}
    for link in sorted(links, key=lambda k: (k.session_b - k.session_a, -k.probability)):
        a, b = (link.session_a, link.unit_a), (link.session_b, link.unit_b)
        if link.session_b <= link.session_a:
            raise ValueError(f"links must go forward in session order: {link}")
        if a in forward or b in backward:
            continue  # the unit is already linked that way: keep the earlier (shorter, likelier) link
        forward[a] = link
        backward[b] = link
    tracks = []
    for s, n in enumerate(n_units):
        for u in range(n):
            if (s, u) in backward:
                continue  # not a track's first unit
            chain = [(s, u, float("nan"))]
            key = (s, u)
            while key in forward:
                link = forward[key]
                key = (link.session_b, link.unit_b)
                chain.append((key[0], key[1], link.probability))
            tracks.append(chain)
    return tracks
