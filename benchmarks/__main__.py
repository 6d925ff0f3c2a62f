"""``python -m benchmarks``: the same command as ``python scripts/benchmark.py``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmarks"))
