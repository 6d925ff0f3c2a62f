"""Helpers the probe and recording readers share: a path as the user typed it, an error in one line."""

from __future__ import annotations

from pathlib import Path


def expanduser(path: Path) -> Path:
    # "~name" of a user that does not exist (RuntimeError), a NUL byte (ValueError): keep the path
    # as typed, it is then simply not found
    try:
        return path.expanduser()
    except (RuntimeError, ValueError):
        return path


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (readers' errors can run over many lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__
