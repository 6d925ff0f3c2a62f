"""``spikesort report``: (re)build the figures of a finished output folder."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .app import PROG, main


@main.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--max-unit-pages",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="unit pages for the first N units by id only (the rest are in the overview and the table); "
    "default: every unit",
)
@click.option("--all-units", is_flag=True, help="a page for every unit, however many (the default)")
@click.option("--good-only", is_flag=True, help="unit pages for units labelled good only")
def report_cmd(folder, max_unit_pages, all_units, good_only):
    """(Re)build the figures of a finished output FOLDER in FOLDER/report (open summary.html)."""
    from spikesort.outputs.report import make_report

    t0 = time.perf_counter()
    page = make_report(folder, max_unit_pages=None if all_units else max_unit_pages, good_only=good_only)
    n_pages = len(list(page.parent.glob("unit_*.html")))
    click.echo(f"{PROG}: report with {n_pages} unit pages written in {time.perf_counter() - t0:.1f} s")
    click.echo(f"  open: {page}")
