#!/usr/bin/env python
"""Ground-truth benchmark of spikesort against peer sorters: the command; the code is the
top-level ``benchmarks`` package (see its docstring, or ``--help``)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # run as a script, only scripts/ is on the path
    sys.path.insert(0, ROOT)

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
