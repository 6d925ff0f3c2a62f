"""``spikesort track OUT_1 OUT_2 ... -o TRACKS``: the same neurons across sessions (the method is
:mod:`spikesort.tracking`)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .app import PROG, _start_log, main

log = logging.getLogger("spikesort.cli")  # the name users see in the log file


@main.command("track")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    metavar="TRACKS",
    help="folder for tracks.csv, motion.csv, tracking.json and tracks.png",
)
@click.option("--overwrite", is_flag=True, help="replace the tracks of an earlier run in TRACKS")
@click.option(
    "--max-shift",
    type=click.FloatRange(min=0),
    default=150.0,
    show_default=True,
    metavar="UM",
    help="largest probe motion between two sessions looked for",
)
@click.option(
    "--max-skip",
    type=click.IntRange(min=0, max=5),
    default=2,
    show_default=True,
    metavar="N",
    help="sessions a track may skip",
)
@click.option("-q", "--quiet", is_flag=True, help="warnings and errors only")
@click.option("-v", "--verbose", count=True, help="debug messages on the console")
def track_command(folders, output, overwrite, max_shift, max_skip, quiet, verbose):
    """Follow the same neurons across sorted FOLDERS of one probe, given in session order.

    FOLDERS are spikesort output folders or any Phy template folder (Kilosort's too). Writes
    TRACKS/tracks.csv (track_id, session, unit_id, probability), the motion between sessions
    (motion.csv), tracking.json, a figure (tracks.png) and the log (spikesort.log).
    """
    from spikesort.tracking import track
    from spikesort.tracking.outputs import TRACKS_CSV, TRACKS_PNG, check_output

    command_log = _start_log(verbose=verbose, quiet=quiet)
    log.debug("spikesort track %s -o %s", " ".join(map(str, folders)), output)
    check_output(output, overwrite=overwrite)
    # TRACKS is made only once the tracks are there: a refused or failed run leaves no folder behind
    result = track([str(f) for f in folders], output, max_shift_um=max_shift, max_skip=max_skip, overwrite=True)
    command_log.adopt(output)
    click.echo(f"{PROG}: {result.n_tracks} tracks over {len(result.sessions)} sessions")
    click.echo(f"  tracks:  {output / TRACKS_CSV}")
    click.echo(f"  figure:  {output / TRACKS_PNG}")
