"""What the drift stage leaves in the output folder, read back.

``drift.json`` records the decision every time (corrected or not, why, mode per shank, span of
the estimate); the motion files (``Motion.save``) are there only when the traces were corrected.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spikesort.layout import DRIFT_RECORD

from .estimate import Motion


def _write_record(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf8")
    tmp.replace(path)


def read_drift_record(folder) -> dict | None:
    """What the drift stage decided for the run in ``folder`` (drift.json), None if absent."""
    try:
        return json.loads((Path(folder) / DRIFT_RECORD).read_text(encoding="utf8"))
    except (OSError, ValueError):
        return None


def applied_motion(folder) -> Motion | None:
    """The motion the traces of the run in ``folder`` were corrected with, None if they were not."""
    record = read_drift_record(folder)
    if not record or not record.get("corrected") or not Motion.exists(folder):
        return None
    return Motion.load(folder)


def motion_spread_um(motion: Motion) -> float:
    """How far the estimate moves: the largest, over blocks, 1st-to-99th percentile range (µm)."""
    d = motion.displacement_um
    if d.size == 0:
        return 0.0
    lo, hi = np.percentile(d, [1.0, 99.0], axis=0)
    return float(np.max(hi - lo))
