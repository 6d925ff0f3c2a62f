"""Progress of the streamed stages, for a terminal (tqdm bars) or for the caller's own display.

``progress`` as :func:`spikesort.sort` takes it:

* ``False`` / ``None``: silent;
* ``True``: one tqdm bar per stage on stderr;
* a callable ``progress(stage: str, done: int, total: int)``: called once when a stage starts
  (``done == 0``) and after every finished chunk, with ``done`` counting up to ``total``.
  Acquisition software can drive its own progress bar with it. It runs in the thread that
  runs the sort; an exception it raises stops the sort (a way to cancel).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from spikesort.errors import SpikesortError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], object]
ProgressArg = bool | None | ProgressCallback


class StageProgress(Protocol):
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _Callback:
    """Counts finished work and reports it to the user's callable."""

    def __init__(self, fn: ProgressCallback, *, total: int, desc: str):
        self._fn, self.total, self.desc, self.done = fn, int(total), desc, 0
        self._fn(self.desc, 0, self.total)

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        self._fn(self.desc, self.done, self.total)

    def close(self) -> None:
        pass


def check_progress(progress) -> None:
    """Refuse anything but a bool, None or a callable (one clear message, before any work)."""
    if progress is None or isinstance(progress, bool) or callable(progress):
        return
    raise SpikesortError(
        f"progress must be True, False or a callable progress(stage, done, total); got {type(progress).__name__}"
    )


def stage_progress(progress: ProgressArg, *, total: int, desc: str) -> StageProgress:
    """A progress reporter for one stage of ``total`` chunks: call ``update(n)`` per finished
    chunk and ``close()`` at the end of the stage."""
    check_progress(progress)
    if progress is None or progress is False:
        return _Silent()
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="chunk", leave=False)
    return _Callback(progress, total=total, desc=desc)
