#!/usr/bin/env python
"""Ground-truth benchmark of spikesort against peer sorters: the command; the code is the
top-level ``benchmarks`` package (see its docstring, or ``--help``)."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # run as a script, only scripts/ is on the path
    sys.path.insert(0, ROOT)

from benchmarks.cli import main

# tests/test_motion.py and scripts/phy_check.py import these from here; drop once they import benchmarks.*
from benchmarks.scenarios import Scenario, build_probe, ensure_true_displacement, load_recording  # noqa: F401
from benchmarks.scoring import load_sorting_npz, motion_error_um, score_sorting  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
