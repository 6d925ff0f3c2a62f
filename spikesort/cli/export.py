"""``spikesort export``: the curated units of a Phy folder in another format (the formats are
:mod:`spikesort.outputs.convert`)."""

from __future__ import annotations

from pathlib import Path

import click

from spikesort.outputs import convert  # neither numba nor spikeinterface: pynwb and spikeinterface load on use

from .app import _start_log, main


@main.command("export")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--to",
    "fmt",
    type=click.Choice(convert.FORMATS),
    required=True,
    help="spikeinterface (a sorting folder), nwb (Units table), npz (spikes and unit table), "
    "binned (units x time-bins counts with depths, .npz)",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    metavar="PATH",
    help="destination [default: beside FOLDER: FOLDER_spikeinterface/, FOLDER.nwb, FOLDER.npz, FOLDER_binned.npz]",
)
@click.option(
    "--labels",
    default=None,
    metavar="L1,L2",
    help="units to export by label: good, mua, noise, unsorted, or all [default: all but noise]",
)
@click.option(
    "--bin-ms",
    type=float,
    default=None,
    metavar="MS",
    help=f"binned: bin width in ms [default: {convert.DEFAULT_BIN_MS:g}]",
)
@click.option("--overwrite", is_flag=True, help="replace an existing destination")
@click.option("-q", "--quiet", is_flag=True, help="warnings and errors only")
@click.option("-v", "--verbose", count=True, help="debug messages on the console")
def export_command(folder, fmt, output, labels, bin_ms, overwrite, quiet, verbose):
    """Export the units of a sorted (and maybe Phy-curated) FOLDER to another format.

    Reads the folder as Phy left it: merged and split clusters from spike_clusters.npy,
    labels from cluster_group.tsv. The folder itself is never changed.

    \b
    Examples:
      spikesort export sorted --to nwb                      # sorted.nwb, all but noise
      spikesort export sorted --to binned --bin-ms 20 --labels good
      spikesort export sorted --to spikeinterface -o si_sorting/
    """
    _start_log(verbose=verbose, quiet=quiet)
    s = convert.export(folder, to=fmt, output=output, labels=labels, bin_ms=bin_ms, overwrite=overwrite)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s.labels.items()))
    click.echo(f"spikesort: exported {s.n_units} units ({counts}), {s.n_spikes} spikes")
    click.echo(f"  {s.format}: {s.path}")
