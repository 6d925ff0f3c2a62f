"""``spikesort demo``: simulate a recording with known units, sort it, score the result."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import click

from .app import PROG, _start_log, main

log = logging.getLogger("spikesort.cli")


@main.command()
@click.option(
    "-o",
    "--output",
    "output",
    default="spikesort-demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="folder for the simulated recording and its sorting",
)
@click.option("--duration", type=float, default=60.0, show_default=True, metavar="S", help="seconds to simulate")
@click.option("--channels", type=int, default=32, show_default=True, metavar="N", help="channels of the probe")
@click.option("--units", type=int, default=12, show_default=True, metavar="N", help="ground-truth units")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the simulation and the sorter")
@click.option("--overwrite", is_flag=True, help="replace an earlier demo folder")
@click.option("-q", "--quiet", is_flag=True, help="no progress bars, warnings and errors only")
@click.option("-v", "--verbose", count=True, help="debug messages on the console")
def demo(output, duration, channels, units, seed, overwrite, quiet, verbose):
    """Simulate a recording with known units, sort it, and score the result.

    Nothing is downloaded. Faster than real time with the defaults, the first run included.
    """
    cmd_log = _start_log(verbose=verbose, quiet=quiet)
    from spikesort.kernels.warmup import warm_up_note

    warm_up_note()  # a first run compiles the kernels: start it now, beside the simulation
    from spikesort.demo import run_demo

    s = run_demo(
        output,
        duration_s=duration,
        n_channels=channels,
        n_units=units,
        seed=seed,
        overwrite=overwrite,
        progress=not quiet,
        on_folder_ready=cmd_log.adopt,
    )
    click.echo(
        f"{PROG} demo: {s['duration_s']:g} s simulated on {s['n_channels']} channels, "
        f"{s['n_gt_units']} ground-truth units"
    )
    click.echo(f"  units well detected (accuracy >= 0.8): {s['well_detected']} of {s['n_gt_units']}")
    click.echo(f"  false positive units:                  {s['false_positives']} (of {s['n_units_found']} units found)")
    click.echo(f"  mean accuracy:                         {s['mean_accuracy']:.2f}")
    click.echo(f"  wall time:                             {s['sort_s']:.1f} s sorting, {s['total_s']:.1f} s in all")
    click.echo(f"  recording (int16 binary):              {s['recording_folder']}")
    click.echo(f"  Phy folder:                            {s['phy_folder']}")
    if s.get("phy_params"):
        click.echo(f"  open in Phy:                           phy template-gui {shlex.quote(s['phy_params'])}")
    from spikesort.job import report_or_warn

    report = report_or_warn(s["phy_folder"], log=log)  # the demo's sort is done: a figure problem must not fail it
    if report is not None:
        click.echo(f"  report:                                {report}")
