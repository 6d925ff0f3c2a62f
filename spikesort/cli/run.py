"""``spikesort run``: sort one recording into a Phy folder."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import shlex
import shutil
import time
from pathlib import Path

import click

from spikesort.errors import SpikesortError
from spikesort.io.formats import FORMATS
from spikesort.layout import PARAMS_PY

from .app import PROG, _start_log, _Terminated, main, stop_request
from .options import _check_output_folder, _RunCommand, _with_param_options, resolve_params

log = logging.getLogger("spikesort.cli")

# the reader names its Python arguments; at the terminal the user typed these flags
_ARG_TO_FLAG = {
    "sampling_rate_hz": "--sampling-rate",
    "n_channels": "--n-channels",
    "dtype": "--dtype",
    "offset_bytes": "--offset",
    "fmt=": "--format",
}


def _as_flags(message: str) -> str:
    for arg, flag in _ARG_TO_FLAG.items():
        message = re.sub(rf"(?<![\w-]){re.escape(arg)}(?![\w])" if arg[-1] != "=" else re.escape(arg), flag, message)
    return message


def _summary_lines(result, out: Path, log_path: Path, seconds: float) -> list[str]:
    n_spikes = len(getattr(result, "spike_times", ()))
    lines = [f"{PROG}: {result.n_units} units, {n_spikes} spikes, sorted in {seconds:.1f} s", f"  output folder: {out}"]
    params_py = out / PARAMS_PY
    if params_py.is_file():
        lines.append(f"  open in Phy:   phy template-gui {shlex.quote(str(params_py))}")
    lines.append(f"  log:           {log_path}")
    return lines


@main.command(cls=_RunCommand)
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--probe",
    "probe",
    metavar="PROBE",
    help="bundled probe name (see `spikesort probes list`) or a .json/.prb/Kilosort .mat file; "
    "needed unless the recording carries its probe (SpikeGLX, Open Ephys, NWB)",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    metavar="OUT",
    help="output folder (the Phy folder); must not exist unless --overwrite",
)
@click.option(
    "--format", "fmt", metavar="FMT", help=f"recording format, guessed from PATH when absent: {', '.join(FORMATS)}"
)
@click.option("--sampling-rate", type=float, metavar="HZ", help="raw binary: sampling rate in Hz")
@click.option("--n-channels", type=int, metavar="N", help="raw binary: number of interleaved channels")
@click.option("--dtype", metavar="DTYPE", help="raw binary: sample type, e.g. int16")
@click.option(
    "--offset", type=int, default=0, metavar="BYTES", show_default=True, help="raw binary: header bytes to skip"
)
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    metavar="FILE.toml",
    help="parameter file (template: `spikesort params`)",
)
@click.option("--overwrite", is_flag=True, help="replace an existing output folder")
@click.option(
    "--resume",
    is_flag=True,
    help="continue the interrupted run in OUT: finished stages made from the same recording, "
    "parameters and version are reused; the result is the same as an uninterrupted run's",
)
@click.option(
    "--export-raw",
    is_flag=True,
    help="also write OUT/recording.dat (int16, µV) and point params.py at it, for Phy's trace and "
    "waveform views when Phy cannot read the recording's own format",
)
@click.option(
    "--set",
    "set_values",
    multiple=True,
    metavar="KEY=VALUE",
    help="set any parameter, e.g. --set detect_threshold=6 (repeatable)",
)
@click.option("-q", "--quiet", is_flag=True, help="no progress bars, warnings and errors only")
@click.option("-v", "--verbose", count=True, help="debug messages on the console")
def run(
    path,
    probe,
    output,
    fmt,
    sampling_rate,
    n_channels,
    dtype,
    offset,
    config,
    overwrite,
    set_values,
    quiet,
    verbose,
    export_raw=False,
    resume=False,
    **param_flags,
):
    """Sort the recording at PATH into the Phy folder OUT.

    \b
    Examples:
      spikesort run data.bin --sampling-rate 30000 --n-channels 32 --dtype int16 \\
          --probe linear-32 -o sorted
      spikesort run run1_g0/ -o sorted                     # SpikeGLX folder (.meta gives the probe)
      spikesort run data.dat ... --probe my_probe.json --detect-threshold 6 -o sorted
    """
    cmd_log = _start_log(verbose=verbose, quiet=quiet)
    t0 = time.perf_counter()
    params = resolve_params(config=config, set_values=set_values, flags=param_flags)
    protected = [path] + [p for p in (Path(probe) if probe else None, config) if p is not None and p.exists()]
    _check_output_folder(output, overwrite=overwrite, protected=protected, resume=resume)
    from spikesort.kernels.warmup import warm_up_note

    # a first run compiles the kernels: start it now, beside the imports and the reading of the recording
    warm_up_note()

    @contextlib.contextmanager
    def in_its_folder(recording):
        log.debug("parameters: %s", json.dumps(params.to_dict()))
        # every check above passed: the folder is this run's. Made now, so that the log is in it even if the
        # run is killed; sort() then starts afresh in it or, with --resume, goes on from its checkpoints
        if overwrite and output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True, exist_ok=True)
        cmd_log.adopt(output)
        try:
            yield
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f": {exc.filename}" if exc.filename else ""
            raise SpikesortError(
                f"{exc.strerror or 'disk full'}{where} (free some space, then run the same "
                f"command with --resume to continue)"
            ) from None
        except (KeyboardInterrupt, _Terminated, SystemError) as exc:
            if stop_request(exc) is None:
                raise
            from spikesort.pipeline.checkpoints import is_complete

            if output.is_dir() and not is_complete(output):
                log.warning("the run stopped before the end: run the same command with --resume to continue it")
            raise
        finally:
            cmd_log.adopt(output)

    def raw_copy(recording, result):
        if export_raw:
            from spikesort.io.raw_copy import export_raw_recording

            export_raw_recording(recording, output, chunk_s=params.chunk_s, progress=not quiet)

    from spikesort.job import RecordingSource, sort_and_report

    source = RecordingSource(
        path=path,
        probe=probe,
        fmt=fmt,
        sampling_rate_hz=sampling_rate,
        n_channels=n_channels,
        dtype=dtype,
        offset_bytes=offset,
    )
    job = sort_and_report(
        source,
        output,
        params=params,
        log=log,
        reword=_as_flags,
        resume=True,
        progress=not quiet,
        missing_probe=f"the recording {path} has no probe geometry: pass --probe NAME_OR_FILE "
        f"(see `spikesort probes list`)",
        around_sort=in_its_folder,
        after_sort=raw_copy,
    )
    for line in _summary_lines(job.result, output, cmd_log.path, time.perf_counter() - t0):
        click.echo(line)
    if job.report is not None:
        click.echo(f"  report:        {job.report}")


_with_param_options(run)
