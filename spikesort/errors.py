"""The one exception type for mistakes a user can fix (bad path, bad flag, bad probe), and the
record of a Ctrl-C."""

import threading


class SpikesortError(ValueError):
    """A user-facing error: its message is the one line the CLI prints."""


def one_line(text) -> str:
    """A message on one line (its lines joined), as the CLI and the batch summary print errors."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else "(no message)"


# Ctrl-C that cannot be lost. Python raises KeyboardInterrupt wherever the main thread is when
# SIGINT lands; inside a finalizer (``__del__``, e.g. llvmlite's) the exception is printed and
# dropped, and a run would go on to the end. The command's handler also records the request
# (and only records it while numba compiles in the main thread), and every stage checks it at
# its start and end and after each chunk.
_stop_requested = threading.Event()


def request_stop() -> None:
    _stop_requested.set()


def clear_stop() -> None:
    _stop_requested.clear()


def raise_if_stop_requested() -> None:
    """Raise KeyboardInterrupt again if Ctrl-C was pressed (one that a finalizer swallowed)."""
    if _stop_requested.is_set():
        raise KeyboardInterrupt
