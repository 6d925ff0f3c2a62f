"""One recording from start to finish: open it, attach its probe, sort it, make its report.

``spikesort run`` and every task of ``spikesort batch`` do exactly this. Each keeps its own
messages (how to give a probe: a flag or a manifest column) and its own work around the sort
(the CLI makes the output folder and moves its log there; a batch worker gives the recording
its BLAS threads), passed in as ``around_sort``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spikesort.errors import SpikesortError
from spikesort.params import Params


@dataclass(frozen=True)
class RecordingSource:
    """Where a recording is and how to open it: the flags of ``spikesort run``, a row of a manifest."""

    path: Path
    probe: str | None = None  # a bundled probe name or a probe file; None: the recording's own
    fmt: str | None = None
    sampling_rate_hz: float | None = None
    n_channels: int | None = None
    dtype: str | None = None
    offset_bytes: int = 0


@dataclass
class JobResult:
    result: object  # the SortingResult
    report: Path | None  # summary.html, None when the report could not be made


def open_source(source: RecordingSource, *, missing_probe: str, reword: Callable[[str], str] | None = None):
    """The recording of ``source`` with its probe attached.

    ``missing_probe``: the message when the recording carries no probe and ``source.probe`` is
    None. ``reword``: rewrites the reader's messages (the CLI names its flags, not the arguments).
    """
    from spikesort.io.probes import attach_probe, load_probe
    from spikesort.io.recordings import open_recording

    try:
        recording = open_recording(
            source.path,
            fmt=source.fmt,
            sampling_rate_hz=source.sampling_rate_hz,
            n_channels=source.n_channels,
            dtype=source.dtype,
            offset_bytes=source.offset_bytes,
        )
    except SpikesortError as exc:
        if reword is None:
            raise
        raise SpikesortError(reword(str(exc))) from None
    if source.probe is not None:
        recording = attach_probe(recording, load_probe(source.probe))
    elif not recording.has_probe():
        raise SpikesortError(missing_probe)
    return recording


def report_or_warn(folder: Path, *, log: logging.Logger) -> Path | None:
    """The report of a finished sort; a failure is a warning on ``log``, since the sorting itself is
    finished and safe."""
    try:
        from spikesort.outputs.report import make_report

        return make_report(folder)
    except Exception as exc:
        log.warning("report not written (%s): rebuild it with `spikesort report %s`", exc, folder)
        return None


def sort_and_report(
    source: RecordingSource,
    output: Path,
    *,
    params: Params,
    log: logging.Logger,
    missing_probe: str,
    reword: Callable[[str], str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress=False,
    around_sort: Callable[[object], contextlib.AbstractContextManager] | None = None,
    after_sort: Callable[[object, object], None] | None = None,
) -> JobResult:
    """Open ``source`` (:func:`open_source`), sort it into ``output``, then make the report.

    ``around_sort(recording)``: a context manager the sort runs in. ``after_sort(recording,
    result)``: runs after the sort, before the report. ``resume``, ``overwrite`` and ``progress``
    go to :func:`spikesort.pipeline.sort`.
    """
    recording = open_source(source, missing_probe=missing_probe, reword=reword)
    from spikesort.pipeline import sort

    with around_sort(recording) if around_sort is not None else contextlib.nullcontext():
        result = sort(recording, output, params=params, overwrite=overwrite, resume=resume, progress=progress)
    if after_sort is not None:
        after_sort(recording, result)
    return JobResult(result=result, report=report_or_warn(output, log=log))
