"""Helpers the command-line tests share (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

from spikesort import cli


def runner() -> CliRunner:
    try:  # click 8.1 mixes stderr into stdout unless told otherwise; 8.2 dropped the argument
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def invoke(*args):
    return runner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def file_state(path) -> tuple[str, int]:
    """Content hash and mtime: a file the sorter read must keep both."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), Path(path).stat().st_mtime_ns
