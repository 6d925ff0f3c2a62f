"""Sort while the recording is being made (issue 17): ``spikesort online`` and, from Python,

    for batch in spikesort.online("run.dat", probe="linear-32", output_folder="out",
                                  sampling_rate_hz=30000, n_channels=32, dtype="int16"):
        ...  # batch.samples, batch.units, batch.amplitudes, batch.emitted_unix_s

The module is callable (``spikesort.online(...)`` is :func:`online`). See docs/online.md.
"""

from __future__ import annotations

import sys
import types

from .emit import OnlineBatch, decode_message
from .stream import OnlineOptions

__all__ = ["online", "OnlineBatch", "OnlineOptions", "decode_message"]


def online(
    recording_path,
    *,
    probe,
    output_folder,
    sampling_rate_hz=None,
    n_channels=None,
    dtype=None,
    offset_bytes: int = 0,
    stream: str | None = None,
    params=None,
    publish: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress=False,
    **options,
):
    """Follow the growing recording at ``recording_path`` (a raw binary file, or an Open Ephys
    binary folder) and yield an :class:`OnlineBatch` for every sorted chunk (the first one holds
    the warm-up's spikes). Stop by leaving the loop (or Ctrl-C), or it stops after
    ``idle_stop_s`` without new data; the Phy folder of everything seen is then written to
    ``output_folder``. ``options`` are the fields of :class:`OnlineOptions` (warmup_s, ...);
    ``params`` a :class:`spikesort.Params` or a dict of its fields."""
    from spikesort.params import Params

    from .runner import OnlineRun
    from .source import stream_info

    if isinstance(params, dict):
        params = Params.from_dict(params)
    info = stream_info(
        recording_path,
        sampling_rate_hz=sampling_rate_hz,
        n_channels=n_channels,
        dtype=dtype,
        offset_bytes=offset_bytes,
        stream=stream,
    )
    run = OnlineRun(
        info,
        probe=probe,
        output_folder=output_folder,
        params=params,
        options=OnlineOptions(**options),
        publish=publish,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    yield from run.batches()


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return online(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
