"""Drift: motion estimation, interpolation of the traces, the plan of what to correct, the stage.

:mod:`.estimate` (the ``Motion`` estimate from spike positions), :mod:`.interpolate` (kriging
correction of the traces), :mod:`.plan` (which shanks, which mode), :mod:`.stage` (the pipeline
stage), :mod:`.records` (drift.json and the motion files, read back), :mod:`.figure` (the drift
map). All numpy (scipy and matplotlib load inside the functions that need them); the merge of
units split by drift is with the other merge rules, in :mod:`spikesort.stages.merges`.
"""

from .estimate import Motion, ShankGeometry, block_centres, estimate_motion
from .figure import draw_drift_map, draw_drift_panels
from .interpolate import Kriging, correct_block, correct_chunk, correct_store, interpolation_matrix
from .plan import MIN_CHANNELS, DriftPlan, plan_drift
from .records import applied_motion, motion_spread_um, read_drift_record
from .stage import MotionPeaks, correct_drift, localize_fit, motion_peaks, motion_summary

__all__ = [
    "Motion",
    "ShankGeometry",
    "block_centres",
    "estimate_motion",
    "draw_drift_map",
    "draw_drift_panels",
    "Kriging",
    "correct_block",
    "correct_chunk",
    "correct_store",
    "interpolation_matrix",
    "MIN_CHANNELS",
    "DriftPlan",
    "plan_drift",
    "applied_motion",
    "motion_spread_um",
    "read_drift_record",
    "MotionPeaks",
    "correct_drift",
    "localize_fit",
    "motion_peaks",
    "motion_summary",
]
