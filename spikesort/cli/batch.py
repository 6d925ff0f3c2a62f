"""``spikesort batch``: the command line of :mod:`spikesort.batch`. Nothing heavy is imported until
the command runs (``spikesort --help`` stays fast)."""

from __future__ import annotations

from pathlib import Path

import click

from .app import EXIT_INTERNAL, PROG, _start_log, main
from .options import _RunCommand, _with_param_options, resolve_params


@main.command("batch", cls=_RunCommand)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_root",
    required=True,
    type=click.Path(path_type=Path),
    metavar="OUTROOT",
    help="each recording is sorted into OUTROOT/<name>/; OUTROOT/batch_summary.csv sums up",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS|FILE",
    help="run on an existing dask cluster: scheduler address (tcp://host:port) or scheduler file; "
    "default: a local cluster on this machine",
)
@click.option(
    "--workers", type=int, metavar="N", help="local cluster: worker processes (default: one per 4 cores, at least 1)"
)
@click.option(
    "--threads",
    type=int,
    metavar="N",
    help="local cluster: threads per worker, all given to the recording it sorts (default: cores / workers)",
)
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    metavar="FILE.toml",
    help="parameter file for every recording (template: `spikesort params`)",
)
@click.option(
    "--overwrite", is_flag=True, help="sort finished recordings again (default: skip them and resume unfinished ones)"
)
@click.option(
    "--set",
    "set_values",
    multiple=True,
    metavar="KEY=VALUE",
    help="set any parameter for every recording, e.g. --set detect_threshold=6 (repeatable)",
)
@click.option("-q", "--quiet", is_flag=True, help="only failures, warnings and the summary table")
@click.option("-v", "--verbose", count=True, help="debug messages on the console")
def batch(
    manifest, out_root, scheduler, workers, threads, config, overwrite, set_values, quiet, verbose, **param_flags
):
    """Sort every recording of MANIFEST (TOML or CSV) on dask, each into OUTROOT/<name>/.

    \b
    Re-running the same command skips finished recordings and resumes unfinished ones.
    Exit code 0 when every recording is sorted, 1 when some failed (see the table and
    OUTROOT/batch_summary.csv), 2 for a mistake in the manifest or the options.
    \b
    Examples:
      spikesort batch recordings.toml -o sorted/
      spikesort batch recordings.csv -o sorted/ --scheduler tcp://10.0.0.5:8786
    """
    _start_log(verbose=verbose, quiet=quiet)
    params = resolve_params(config=config, set_values=set_values, flags=param_flags)
    from spikesort.batch import read_manifest, run_batch

    jobs = read_manifest(manifest, out_root=out_root)
    result = run_batch(
        jobs,
        out_root=out_root,
        params=params,
        scheduler=scheduler,
        workers=workers,
        threads=threads,
        overwrite=overwrite,
    )
    for line in summary_lines(result):
        click.echo(line)
    if result.failed:
        click.echo(
            f"{PROG}: {len(result.failed)} of {len(result.outcomes)} recordings failed (see {result.summary_path})",
            err=True,
        )
        return EXIT_INTERNAL
    return 0


_with_param_options(batch)


def add_batch_command(group: click.Group) -> click.Command:
    """Put ``batch`` on another click group too (the way spikesort/cli.py registered it; kept for one release)."""
    group.add_command(batch)
    return batch


def summary_lines(result) -> list[str]:
    """The summary table: one row per recording, then the totals."""

    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    header = ("recording", "status", "units", "good", "wall s", "peak MB", "")
    rows = [
        (
            o.name,
            o.status,
            cell(o.units, "d"),
            cell(o.good_units, "d"),
            cell(o.wall_s, ".1f"),
            cell(o.peak_rss_mb, ".0f"),
            o.error,
        )
        for o in result.outcomes
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(6)]
    lines = []
    for r in [header] + rows:
        text = f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}" + "".join(f"  {r[i]:>{widths[i]}}" for i in range(2, 6))
        lines.append((text + ("  " + r[6] if r[6] else "")).rstrip())
    counts = {s: sum(o.status == s for o in result.outcomes) for s in ("done", "skipped", "failed")}
    lines.append(
        f"{counts['done']} sorted, {counts['skipped']} finished earlier, {counts['failed']} failed "
        f"in {result.wall_s:.1f} s ({result.cluster})"
    )
    lines.append(f"summary: {result.summary_path}")
    return lines
