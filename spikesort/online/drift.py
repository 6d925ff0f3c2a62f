"""Rigid drift, tracked during the stream and applied to the templates.

Every detection that a matched spike explains gives one offset: its estimated depth minus its
unit's depth at the reference position (the warm-up's). The median offset over the last
``window`` samples is the probe's rigid displacement; the templates are moved to it by kriging
interpolation along the probe (the traces stay as recorded). Units added during the stream get
their reference depth from their position when added, less the displacement then.
"""

from __future__ import annotations

import copy
import logging
from collections import deque

import numpy as np

from spikesort.kernels.detect import project_neighborhoods
from spikesort.stages.detect import Detections, localize
from spikesort.stages.drift.interpolate import Kriging

log = logging.getLogger(__name__)

# templates are interpolated exactly (a small regularisation), not smoothed as the traces are
# offline: a template is a mean, its noise is already low
TEMPLATE_SIGMA_UM = 20.0
TEMPLATE_REGULARIZATION = 1e-3


def template_depths(dense: np.ndarray, *, feature_neighbors, bases, pre: int, positions_um) -> np.ndarray:
    """(K,) depth (µm, y) of each template, localised as detections are (same features)."""
    if len(dense) == 0:
        return np.zeros(0)
    out = np.zeros(len(dense))
    for k, t in enumerate(dense):
        c = int(np.argmax((t**2).sum(axis=0)))
        f = project_neighborhoods(
            np.ascontiguousarray(t, dtype=np.float32),
            np.array([pre], np.int64),
            np.array([c], np.int64),
            feature_neighbors,
            bases,
            pre,
        )
        out[k] = localize(f, np.array([c]), neighbors=feature_neighbors, positions_um=positions_um)[0, 1]
    return out


class RigidTracker:
    def __init__(
        self,
        *,
        positions_um,
        shank_ids,
        good_channels,
        ref_depth_um: np.ndarray,
        window: int,
        min_spikes: int = 50,
        max_um: float = 100.0,
    ):
        self.kriging = Kriging.build(
            positions_um=positions_um,
            shank_ids=shank_ids,
            good_channels=good_channels,
            sigma_um=TEMPLATE_SIGMA_UM,
            regularization=TEMPLATE_REGULARIZATION,
        )
        self.ref = np.asarray(ref_depth_um, dtype=np.float64)
        self.window, self.min_spikes, self.max_um = window, min_spikes, max_um
        self.obs: deque = deque()  # (sample, offsets array)
        self.history: list = []  # (sample, estimate) each time it was updated

    def fork(self, *, ref_depth_um: np.ndarray) -> RigidTracker:
        """A tracker of its own (no observations yet) on the same probe, for another lane."""
        t = copy.copy(self)
        t.ref = np.asarray(ref_depth_um, dtype=np.float64)
        t.obs, t.history = deque(), []
        return t

    def observe(self, det: Detections, spikes, *, now: int) -> None:
        """Offsets of the detections, each given the unit of the matched spike nearest in time."""
        if len(det) and len(spikes.times):
            order = np.argsort(spikes.times, kind="stable")
            st, su = spikes.times[order], spikes.templates[order]
            i = np.clip(np.searchsorted(st, det.times), 0, len(st) - 1)
            j = np.maximum(i - 1, 0)
            nearest = np.where(np.abs(st[j] - det.times) < np.abs(st[i] - det.times), j, i)
            units = su[nearest]
            ok = units < len(self.ref)
            self.obs.append((now, det.positions_um[ok, 1] - self.ref[units[ok]]))
        while self.obs and self.obs[0][0] < now - self.window:
            self.obs.popleft()

    def estimate(self) -> float | None:
        """The current displacement (µm), or None with too few spikes in the window."""
        if not self.obs:
            return None
        off = np.concatenate([o for _, o in self.obs])
        if len(off) < self.min_spikes:
            return None
        return float(np.clip(np.median(off), -self.max_um, self.max_um))

    def move(self, dense: np.ndarray, shift_um: float) -> np.ndarray:
        """Templates at the reference position, seen with the probe displaced by ``shift_um``: the
        unit now sits ``shift_um`` deeper, so channel c sees what the reference showed at p_c - shift."""
        m = self.kriging.matrix(-float(shift_um))
        return (dense @ m.T).astype(np.float32)

    def add_units(self, ref_depths_um: np.ndarray) -> None:
        self.ref = np.concatenate([self.ref, np.asarray(ref_depths_um, np.float64)])
