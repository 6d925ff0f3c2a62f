"""``spikesort track OUT_1 OUT_2 ... -o TRACKS``: the same neurons across sessions.

Defines ``track_command`` without registering it in the ``spikesort`` group (the wiring is done
where the group is built). Used alone it behaves like the group: a SpikesortError ends with one
line ``spikesort: error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from spikesort.errors import SpikesortError

log = logging.getLogger("spikesort.cli")  # the name users see in the log file

EXIT_USAGE = 2


class _Console(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                msg = f"spikesort: {record.levelname.lower()}: {msg}"
            click.echo(msg, err=True)
        except Exception:
            self.handleError(record)


class _TrackCommand(click.Command):
    """Run alone (not through the group), failures are still one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name or "spikesort track", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click.UsageError as exc:
            click.echo(f"spikesort: error: {_one_line(exc.format_message())}", err=True)
            sys.exit(EXIT_USAGE)
        except SpikesortError as exc:
            click.echo(f"spikesort: error: {_one_line(str(exc))}", err=True)
            sys.exit(EXIT_USAGE)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "(no message)"


def _run(folders, output: Path, overwrite: bool, max_shift: float, max_skip: int, quiet: bool, verbose: int):
    from spikesort.tracking import track
    from spikesort.tracking.outputs import TRACK_LOG, TRACKS_CSV, TRACKS_PNG, check_output

    pkg = logging.getLogger("spikesort")
    saved = pkg.level
    console = _Console(level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    pkg.addHandler(console)
    pkg.setLevel(logging.DEBUG)
    file_handler = None
    try:
        check_output(output, overwrite=overwrite)
        output.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output / TRACK_LOG, mode="w", encoding="utf8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        pkg.addHandler(file_handler)
        log.debug("spikesort track %s -o %s", " ".join(map(str, folders)), output)
        result = track([str(f) for f in folders], output, max_shift_um=max_shift, max_skip=max_skip,
                       overwrite=True)
        log.info("tracks:  %s", output / TRACKS_CSV)
        log.info("figure:  %s", output / TRACKS_PNG)
        return result
    except SpikesortError as exc:
        log.debug("failed: %s", exc)
        raise
    finally:
        pkg.removeHandler(console)
        if file_handler is not None:
            pkg.removeHandler(file_handler)
            file_handler.close()
        pkg.setLevel(saved)


@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), metavar="TRACKS",
              help="folder for tracks.csv, motion.csv, tracking.json and tracks.png")
@click.option("--overwrite", is_flag=True, help="replace the tracks of an earlier run in TRACKS")
@click.option("--max-shift", type=click.FloatRange(min=0), default=150.0, show_default=True, metavar="UM",
              help="largest probe motion between two sessions looked for")
@click.option("--max-skip", type=click.IntRange(min=0, max=5), default=2, show_default=True, metavar="N",
              help="sessions a track may skip")
@click.option("-q", "--quiet", is_flag=True, help="warnings and errors only")
@click.option("-v", "--verbose", count=True, help="debug messages on the console")
def _track(folders, output, overwrite, max_shift, max_skip, quiet, verbose):
    """Follow the same neurons across sorted FOLDERS of one probe, given in session order.

    FOLDERS are spikesort output folders or any Phy template folder (Kilosort's too). Writes
    TRACKS/tracks.csv (track_id, session, unit_id, probability), the motion between sessions
    (motion.csv), tracking.json and a figure (tracks.png).
    """
    _run(folders, output, overwrite, max_shift, max_skip, quiet, verbose)


track_command = click.command("track", cls=_TrackCommand)(_track)
