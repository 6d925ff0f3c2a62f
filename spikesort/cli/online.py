"""``spikesort online``: sort a recording while it is being written."""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

import click

from .app import PROG, _start_log, _Terminated, main, stop_request
from .options import resolve_params

log = logging.getLogger("spikesort.cli")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--probe",
    "probe",
    metavar="PROBE",
    required=True,
    help="bundled probe name (see `spikesort probes list`) or a .json/.prb/Kilosort .mat file",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    metavar="OUT",
    help="output folder: OUT/online/ while running, the Phy folder in OUT at the stop",
)
@click.option("--sampling-rate", type=float, metavar="HZ", help="raw binary: sampling rate in Hz")
@click.option("--n-channels", type=int, metavar="N", help="raw binary: number of interleaved channels")
@click.option("--dtype", metavar="DTYPE", help="raw binary: sample type, e.g. int16")
@click.option(
    "--offset", type=int, default=0, metavar="BYTES", show_default=True, help="raw binary: header bytes to skip"
)
@click.option("--stream", metavar="NAME", help="Open Ephys: the continuous stream's folder name, when several")
@click.option(
    "--warmup-s",
    type=float,
    default=120.0,
    show_default=True,
    metavar="S",
    help="seconds sorted offline first (whitening, templates)",
)
@click.option(
    "--chunk-s",
    "chunk_s",
    type=float,
    default=0.5,
    show_default=True,
    metavar="S",
    help="a batch is sorted once this much new data is in the file (at most 1 s)",
)
@click.option(
    "--recluster-s",
    type=float,
    default=30.0,
    show_default=True,
    metavar="S",
    help="how often unexplained spikes are clustered into new units (0: never)",
)
@click.option(
    "--idle-stop-s",
    type=float,
    default=60.0,
    show_default=True,
    metavar="S",
    help="stop after this long without new data (0: never)",
)
@click.option(
    "--publish",
    metavar="ADDRESS",
    help="also publish every batch on a ZeroMQ PUB socket, e.g. tcp://127.0.0.1:5556 (format: docs/online.md)",
)
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    metavar="FILE.toml",
    help="sorting parameters (template: `spikesort params`)",
)
@click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE", help="set a sorting parameter (repeatable)")
@click.option("--overwrite", is_flag=True, help="replace an existing output folder")
@click.option("--resume", is_flag=True, help="continue the interrupted online run in OUT where it stopped")
@click.option("-q", "--quiet", is_flag=True, help="warnings and errors only")
@click.option("-v", "--verbose", count=True, help="debug messages on the console")
def online(
    path,
    probe,
    output,
    sampling_rate,
    n_channels,
    dtype,
    offset,
    stream,
    warmup_s,
    chunk_s,
    recluster_s,
    idle_stop_s,
    publish,
    config,
    set_values,
    overwrite,
    resume,
    quiet,
    verbose,
):
    """Sort the recording at PATH while it is being written: a raw binary file (give
    --sampling-rate, --n-channels, --dtype) or an Open Ephys binary recording folder.

    \b
    Spikes go to OUT/online/spikes.csv as they are sorted; stop with Ctrl-C (or SIGTERM, or
    --idle-stop-s without new data): the Phy folder of everything seen is then written to OUT.
    Example:
      spikesort online /data/run.dat --sampling-rate 30000 --n-channels 64 --dtype int16 \\
          --probe linear-64 -o live --publish tcp://127.0.0.1:5556
    """
    cmd_log = _start_log(verbose=verbose, quiet=quiet)
    t0 = time.perf_counter()
    params = resolve_params(config=config, set_values=set_values, flags={})
    from spikesort.online import online as follow

    batches = follow(
        path,
        probe=probe,
        output_folder=output,
        sampling_rate_hz=sampling_rate,
        n_channels=n_channels,
        dtype=dtype,
        offset_bytes=offset,
        stream=stream,
        params=params,
        publish=publish,
        resume=resume,
        overwrite=overwrite,
        warmup_s=warmup_s,
        chunk_s=chunk_s,
        recluster_s=recluster_s,
        idle_stop_s=idle_stop_s or None,
    )
    n_spikes = n_batches = 0
    try:
        for batch in batches:
            if n_batches == 0:
                cmd_log.adopt(output)
            n_batches += 1
            n_spikes += len(batch)
    except (KeyboardInterrupt, _Terminated, SystemError) as exc:
        stop = stop_request(exc)
        if stop is None:
            raise
        # the normal way to stop: the generator wrote the Phy folder on its way out
        log.info("stopped by %s", "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else "SIGTERM")
    params_py = output / "params.py"
    click.echo(f"{PROG} online: {n_spikes} spikes in {n_batches} batches, {time.perf_counter() - t0:.1f} s")
    click.echo(f"  spikes:        {output / 'online' / 'spikes.csv'}")
    if params_py.is_file():
        click.echo(f"  open in Phy:   phy template-gui {shlex.quote(str(params_py))}")
        click.echo("  continue with: the same command and --resume")
