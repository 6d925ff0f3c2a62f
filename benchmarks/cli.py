"""The command line: ``scripts/benchmark.py`` and ``python -m benchmarks`` both call ``main``.

This module prints the tables (stdout) and the progress lines (stderr); the modules it calls
return rows and print nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .catalog import FAMILIES, SCENARIOS
from .runner import ALL_SORTERS, child_main, run_benchmark
from .speed import run_speed, speed_summary, speed_table
from .tables import markdown_table, write_outputs

# the first line of --help
SUMMARY = "Ground-truth benchmark: spikesort against peer sorters on generated recordings."


def _parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def scenario_list() -> str:
    """The --help list of scenarios, by family."""
    lines = ["scenarios, by family (--family):"]
    for family, names in FAMILIES.items():
        lines.append(f"  {family}:")
        lines += [f"    {n:13s} {SCENARIOS[n].description}" for n in names]
    return "\n".join(lines)


def build_parser(*, prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=SUMMARY + " Prints one markdown table.",
        epilog=scenario_list() + "\n\n"
        "columns: well detected = GT units matched with accuracy >= 0.8 (delta 0.4 ms); FP units =\n"
        "unmatched sorted units with best agreement < 0.2; mean accuracy over all GT units (0 when\n"
        "missed); wall s = the sort call alone (imports and scoring excluded); CPU s = user+system\n"
        "of the sorter process and its workers; peak RSS = max of the polled memory (PSS) of the\n"
        "process tree and of ru_maxrss. On a shared machine check load_before/load_after in --out.\n\n"
        "--speed: one run measures (a) every sorter on --scenarios (default static64; peers from\n"
        "their cache as above), (b) spikesort on the first --speed-minutes of one Neuropixels-1.0-like\n"
        "recording of --speed-channels channels (generated once, saved as int16 and cached, so its\n"
        "generation is never timed), and beside each (c) the floor pass: read that int16 binary in\n"
        "2 s chunks and high-pass it (300 Hz, 3rd-order Butterworth, zero phase, float32) on\n"
        "--floor-threads threads. The table adds floor pass s, sort ÷ floor and per-stage\n"
        "'seconds / peak RSS MB' from spikesort_run.json, and ratio lines under it: × real time,\n"
        "sort ÷ floor, peak RSS and RSS(longest) ÷ RSS(shortest), each beside the issue's target.\n"
        "(d) --speed-command: `spikesort run` on each scenario's int16 binary as users run it, in a\n"
        "subprocess (interpreter start, imports, JIT, sort, Phy folder and report all timed; peak RSS\n"
        "polled over the process tree): cold = NUMBA_CACHE_DIR a fresh empty folder (every kernel\n"
        "compiled, as on a first run after install), warm = the same folder again; Python's .pyc files\n"
        "are warm in both. Its rows add 'report s (share)' from OUT/spikesort.log.\n"
        "--speed-tile-minutes T: (b) saves T minutes only and plays them back to back for the longer\n"
        "cases (labelled '(T min tiled ×k)'); the (b) rows also carry the memory of the sorter's\n"
        "process tree every 5 s (rss_timeline in --out) and the median of its first and last quarter.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=None,
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help="scenarios to run (default: static32 static64; with --speed: static64)",
    )
    p.add_argument(
        "--family",
        nargs="+",
        default=[],
        choices=sorted(FAMILIES),
        metavar="FAMILY",
        help="add every scenario of these families: " + ", ".join(FAMILIES),
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="generation seeds (default: 0)")
    p.add_argument(
        "--sorters",
        nargs="+",
        default=list(ALL_SORTERS),
        choices=ALL_SORTERS,
        metavar="NAME",
        help="sorters to run: " + ", ".join(ALL_SORTERS) + "; peers that are not installed are skipped (default: all)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("SPIKESORT_BENCH_CACHE", "~/.cache/spikesort-bench")),
        help="folder for generated recordings and cached peer results "
        "(default: $SPIKESORT_BENCH_CACHE or ~/.cache/spikesort-bench)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="folder for sorter output folders (default: CACHE/runs)")
    p.add_argument("--keep-outputs", action="store_true", help="keep the sorters' output folders")
    p.add_argument("--rerun-peers", action="store_true", help="re-run peers even when a cached result exists")
    p.add_argument(
        "--cached-peers-only", action="store_true", help="show peers only where a cached result exists, never run them"
    )
    p.add_argument(
        "--param",
        dest="params",
        action="append",
        type=_parse_param,
        default=[],
        metavar="KEY=VALUE",
        help="extra spikesort.sort() parameter (VALUE parsed as JSON when it can be); repeatable",
    )
    p.add_argument(
        "--n-jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="spikeinterface n_jobs for generation and peers (default: all cores)",
    )
    p.add_argument("--timeout", type=float, default=None, help="kill a sorter after this many seconds")
    p.add_argument("--out", type=Path, default=None, help="also write the rows to OUT.json and OUT.csv")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    speed = p.add_argument_group("speed mode")
    speed.add_argument(
        "--speed",
        action="store_true",
        help="measure speed and memory (per stage, beside a floor pass) instead of accuracy; one seed",
    )
    speed.add_argument(
        "--speed-channels",
        type=int,
        default=384,
        metavar="N",
        help="channels of the NP1-like recording: its first N contacts (default: 384)",
    )
    speed.add_argument(
        "--speed-minutes",
        nargs="*",
        type=float,
        default=[5.0, 10.0],
        metavar="MIN",
        help="durations sorted from the start of one recording of the longest; none: skip (b) (default: 5 10)",
    )
    speed.add_argument(
        "--speed-tile-minutes",
        type=float,
        default=0.0,
        metavar="T",
        help="generate and save only T minutes of the NP1-like recording and sort the longer "
        "--speed-minutes on it played back to back ceil(max/T) times (a spikeinterface concatenation, "
        "the traces are not copied); the cases of at most T minutes run on the T minutes. It exists "
        "for the disk: a 60-minute, 384-channel recording is 83 GB as int16 (0: off, the whole "
        "recording is generated; default: 0)",
    )
    speed.add_argument(
        "--speed-units",
        type=int,
        default=None,
        metavar="N",
        help="ground-truth units of the NP1-like recording (default: 150 per 384 channels)",
    )
    speed.add_argument(
        "--speed-command",
        nargs="*",
        default=["cold", "warm"],
        choices=["cold", "warm"],
        metavar="MODE",
        help="also time `spikesort run` on each scenario's binary in a subprocess, report included: "
        "cold (NUMBA_CACHE_DIR a fresh empty folder), warm (the same folder again); none: skip "
        "(default: cold warm)",
    )
    speed.add_argument(
        "--floor-threads", type=int, default=2, metavar="N", help="threads of the floor pass (default: 2)"
    )
    online = p.add_argument_group("online mode")
    online.add_argument(
        "--online",
        action="store_true",
        help="measure `spikesort online` instead: replay recordings at real-time pace into a growing file "
        "and report latency, backlog, new units and well-detected units beside the offline sort",
    )
    online.add_argument(
        "--online-replays",
        nargs="+",
        default=["static64", "zigzag64"],
        choices=["static64", "zigzag64", "np384"],
        metavar="NAME",
        help="recordings to replay: static64 zigzag64 (64 ch, 300 s) np384 (384 ch, its 300 s source looped) "
        "(default: static64 zigzag64)",
    )
    online.add_argument(
        "--online-duration", type=float, default=None, metavar="S", help="seconds replayed (default: the source's 300)"
    )
    online.add_argument("--online-speed", type=float, default=1.0, metavar="X", help="x real time (default: 1)")
    online.add_argument("--online-warmup", type=float, default=120.0, metavar="S", help="warm-up s (default: 120)")
    online.add_argument("--online-repeats", type=int, default=1, metavar="N", help="runs of each replay (default: 1)")
    online.add_argument("--online-no-offline", action="store_true", help="skip the offline sort beside each replay")
    # hidden: a stand-in for spikesort.sort (ground truth degraded in known ways), to test this script
    p.add_argument("--dummy", action="store_true", help=argparse.SUPPRESS)
    # hidden: run one sorter (internal, used by the subprocess)
    p.add_argument("--_child", type=Path, default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None, *, prog: str | None = None) -> int:
    parser = build_parser(prog=prog)
    args = parser.parse_args(argv)
    if args.rerun_peers and args.cached_peers_only:
        parser.error("--rerun-peers and --cached-peers-only contradict each other")
    if args._child is not None:
        return child_main(spec_path=args._child)
    if args.online:
        if args.speed or args.dummy:
            parser.error("--online measures spikesort online alone: --speed and --dummy do not apply")
        if args.online_repeats < 1 or args.online_speed <= 0 or args.online_warmup <= 0:
            parser.error("--online-repeats, --online-speed and --online-warmup must be positive")
    if args.speed:
        if len(args.seeds) != 1:
            parser.error("--speed runs one seed")
        if args.dummy:
            parser.error("--speed measures spikesort itself: --dummy does not apply")
        if not 8 <= args.speed_channels <= 384:
            parser.error("--speed-channels must be between 8 and 384 (the contacts of one NP1 bank)")
        if any(not 0 < m <= 600 for m in args.speed_minutes):
            parser.error("--speed-minutes must be above 0 and at most 600")
        if not 0 <= args.speed_tile_minutes <= 600:
            parser.error("--speed-tile-minutes must be at least 0 (0: off) and at most 600")
        if args.floor_threads < 1 or (args.speed_units is not None and args.speed_units < 1):
            parser.error("--floor-threads and --speed-units must be at least 1")
    scenarios = list(args.scenarios or [])
    scenarios += [n for f in args.family for n in FAMILIES[f] if n not in scenarios]
    scenarios = scenarios or (["static64"] if args.speed else ["static32", "static64"])
    cache_dir = args.cache.expanduser().resolve()
    work_dir = (args.workdir or cache_dir / "runs").expanduser().resolve()

    def log(msg):
        if not args.quiet:
            print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    if args.speed:
        return speed_main(args=args, scenarios=scenarios, cache_dir=cache_dir, work_dir=work_dir, log=log)
    if args.online:
        return online_main(args=args, cache_dir=cache_dir, work_dir=work_dir, log=log)
    rows = run_benchmark(
        scenarios=scenarios,
        seeds=args.seeds,
        sorters=args.sorters,
        cache_dir=cache_dir,
        work_dir=work_dir,
        rerun_peers=args.rerun_peers,
        cached_peers_only=args.cached_peers_only,
        spikesort_params=dict(args.params),
        n_jobs=args.n_jobs,
        timeout_s=args.timeout,
        keep_outputs=args.keep_outputs,
        dummy=args.dummy,
        log=log,
    )
    for row in rows:
        if row["sorter"] != "spikesort":
            row["sorter"] = f"{row['sorter']} {row['version']}"
        elif args.dummy:
            row["sorter"] = "spikesort (dummy)"
    print(markdown_table(rows=rows))
    if args.out is not None:
        write_outputs(rows=rows, out=args.out)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"{r['scenario']} seed {r['seed']} {r['sorter']}: {r['status']}: {r.get('error')}", file=sys.stderr)
    return 0


def speed_main(*, args, scenarios: list[str], cache_dir: Path, work_dir: Path, log) -> int:
    rows = run_speed(
        scenarios=scenarios,
        seed=args.seeds[0],
        sorters=args.sorters,
        cache_dir=cache_dir,
        work_dir=work_dir,
        rerun_peers=args.rerun_peers,
        cached_peers_only=args.cached_peers_only,
        spikesort_params=dict(args.params),
        n_jobs=args.n_jobs,
        timeout_s=args.timeout,
        keep_outputs=args.keep_outputs,
        channels=args.speed_channels,
        minutes=args.speed_minutes,
        num_units=args.speed_units,
        floor_threads=args.floor_threads,
        command_modes=args.speed_command,
        tile_minutes=args.speed_tile_minutes,
        log=log,
    )
    for row in rows:
        if not row["sorter"].startswith("spikesort"):
            row["sorter"] = f"{row['sorter']} {row['version']}"
    summary = speed_summary(rows=rows)
    print(speed_table(rows=rows))
    print()
    print("\n".join(summary.lines))
    if args.out is not None:
        write_outputs(rows=rows, out=args.out, extra={"ratios": summary.ratios})
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['case']} {r['sorter']}: {r['status']}: {r.get('error')}", file=sys.stderr)
    return 0


def online_main(*, args, cache_dir: Path, work_dir: Path, log) -> int:
    from .online import online_table, replay

    rows = []
    for name in args.online_replays:
        for i in range(args.online_repeats):
            log(f"[online {name}] run {i + 1} of {args.online_repeats} ...")
            try:
                row = replay(
                    name,
                    cache_dir=cache_dir,
                    work_dir=work_dir,
                    duration_s=args.online_duration,
                    speed=args.online_speed,
                    warmup_s=args.online_warmup,
                    offline=not args.online_no_offline and i == 0,
                    seed=args.seeds[0],
                    n_jobs=args.n_jobs,
                    log_fn=log,
                )
                row["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - one failed replay is a row, the others still run
                row = {"replay": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            if i and rows and rows[-1].get("offline_well") is not None:
                row.setdefault("offline_well", rows[-1]["offline_well"])
            rows.append(row)
            log(f"[online {name}] {json.dumps({k: v for k, v in row.items() if k != 'backlog_series'})}")
    print(online_table(rows=rows))
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps({"online": rows}, indent=1))
    return 0 if all(r.get("status") == "ok" for r in rows) else 1
