"""Which shanks get their drift corrected, and how (rigid or non-rigid)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .estimate import ShankGeometry

# a shank needs this many usable channels before its drift can be estimated
MIN_CHANNELS = 8


@dataclass(frozen=True)
class DriftPlan:
    shanks: tuple  # ShankGeometry of each shank to estimate and correct
    skipped: dict  # shank index -> reason it is not corrected

    def describe(self) -> str:
        parts = [f"{g.mode} on shank {g.shank} ({g.depth_max_um - g.depth_min_um:.0f} µm)" for g in self.shanks]
        parts += [f"shank {s} skipped: {why}" for s, why in sorted(self.skipped.items())]
        return "; ".join(parts)


def plan_drift(
    *, mode: str, positions_um, shank_ids=None, good_channels=None, min_span_um: float, nonrigid_span_um: float
) -> DriftPlan:
    """Decide, per shank, whether and how drift is corrected.

    ``auto``: non-rigid on shanks spanning at least ``nonrigid_span_um`` of depth, rigid on
    shorter ones; ``rigid``/``nonrigid`` force the mode. In every mode a shank with fewer than
    MIN_CHANNELS usable channels or a depth span below ``min_span_um`` is left alone: a tetrode
    or a few contacts cannot tell drift from a unit changing shape.
    """
    pos = np.asarray(positions_um, dtype=np.float64)
    n = len(pos)
    shanks = np.zeros(n, np.int64) if shank_ids is None else np.asarray(shank_ids, dtype=np.int64)
    good = np.ones(n, bool) if good_channels is None else np.asarray(good_channels, bool)
    plan, skipped = [], {}
    for s in np.unique(shanks):
        if mode == "none":
            skipped[int(s)] = "drift correction is off (drift = none)"
            continue
        ch = np.flatnonzero((shanks == s) & good)
        y = pos[ch, 1]
        span = float(np.ptp(y)) if len(y) else 0.0
        if len(ch) < MIN_CHANNELS:
            skipped[int(s)] = (
                f"only {len(ch)} usable channels, drift estimation needs at least {MIN_CHANNELS} "
                "along the depth of a shank"
            )
        elif span < min_span_um:
            skipped[int(s)] = (
                f"the contacts span only {span:.0f} µm of depth, below drift_min_span_um = "
                f"{min_span_um:g}: too short to tell drift from noise"
            )
        else:
            chosen = mode if mode in ("rigid", "nonrigid") else ("nonrigid" if span >= nonrigid_span_um else "rigid")
            rows = np.diff(np.unique(np.round(y, 1)))
            plan.append(
                ShankGeometry(
                    int(s), float(y.min()), float(y.max()), chosen, edge_um=float(np.median(rows)) if len(rows) else 0.0
                )
            )
    return DriftPlan(tuple(plan), skipped)
