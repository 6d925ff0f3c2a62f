"""Speed mode (``--speed``): spikesort's wall time, per-stage costs and peak memory beside a floor.

* the floor pass: read an int16 binary in chunks and high-pass filter every chunk, the cost any
  sorter pays before it does anything of its own;
* the per-stage costs a spikesort run records in ``spikesort_run.json``;
* the speed table and the ratios the issue's targets are stated in;
* ``run_speed``: the ground-truth scenarios (spikesort and peers, as in the accuracy benchmark)
  and spikesort on one long NP1-like recording, each beside a floor pass on the same frames;
  optionally the ``spikesort run`` command on the scenarios, cold and warm (``command``).

A row of the speed table has ``case``, ``kind`` ("a": a ground-truth scenario, spikesort and the
peers; "b": the long NP1-like recording, spikesort only; "c": the ``spikesort run`` command on a
scenario, its report included, see ``benchmarks.command``), ``recording`` (a label), ``minutes``,
``sorter``, ``status``, ``wall_s``, ``x_realtime``, ``peak_rss_mb``, ``floor_s``, ``sort_floor``,
the accuracy fields when scored, and ``stage_<name>_s`` / ``stage_<name>_rss_mb``. The (b) rows
add ``tiled_from_minutes`` (the tile's minutes when the recording was a tile played back to back,
see ``--speed-tile-minutes``; else None) and ``rss_timeline`` ([elapsed s, MB] of the sorter's
process tree every RSS_TIMELINE_S) with ``rss_first_quarter_mb`` / ``rss_last_quarter_mb``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .command import command_rows, load_gt
from .runner import run_benchmark, run_sorter_subprocess, sorter_version
from .scenarios import (
    SPEED_UNITS_PER_CHANNEL,
    ensure_speed_recording,
    ensure_tiled_recording,
    load_recording,
    recording_folder,
)
from .scoring import load_sorting_npz, score_sorting

logger = logging.getLogger(__name__)

# the order spikesort runs its stages in; drift runs inside preprocess (its time is part of it)
STAGES = ("preprocess", "drift", "detect", "cluster", "match", "curate", "export")

# the issue's done-when figures
TARGET_X_REALTIME_A = 8.0  # 64 ch × 300 s
TARGET_X_REALTIME_B = 1.0  # 384 ch
TARGET_RSS_B_MB = 4096.0  # 4 GB, for the 384-channel runs
TARGET_RSS_GROWTH = 1.10  # RSS(longest) ÷ RSS(shortest)
TARGET_SORT_FLOOR = 4.0  # whole sort ÷ floor pass on the same data
TARGET_COLD_OVER_WARM = 1.3  # the command's first run (fresh numba cache) ÷ a later run

# the floor pass filters like spikesort's preprocessing: 3rd-order Butterworth, zero phase, on a
# 2 s grid with a 10 ms margin on each side
FLOOR_HIGHPASS_HZ = 300.0
FLOOR_CHUNK_S = 2.0
FLOOR_MARGIN_S = 0.01
CHECK_STRIDE = 8
# the NP1-like runs' memory over time: one of the polled values every 5 s (an hour: 720 points)
RSS_TIMELINE_S = 5.0


# ---------------------------------------------------------------------------------------------
# the floor pass


@dataclasses.dataclass(frozen=True)
class FloorPass:
    wall_s: float
    n_samples: int
    n_channels: int
    sampling_rate_hz: float
    n_chunks: int
    threads: int
    # mean square of the filtered samples of every CHECK_STRIDE-th channel: a check on the output
    # that costs under 1% of the pass (all channels would cost ~6%)
    mean_square: float

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate_hz

    @property
    def x_realtime(self) -> float:
        return self.duration_s / self.wall_s if self.wall_s > 0 else math.inf


def floor_chunks(*, n_samples: int, chunk: int, margin: int) -> list[tuple[int, int, int, int]]:
    """(read_start, read_stop, keep_start, keep_stop) of every chunk: the kept windows tile
    [0, n_samples) exactly; the reads add up to ``margin`` samples on each side."""
    if chunk < 1 or margin < 0:
        raise ValueError(f"chunk must be >= 1 and margin >= 0, got {chunk} and {margin}")
    out = []
    for keep_start in range(0, n_samples, chunk):
        keep_stop = min(n_samples, keep_start + chunk)
        out.append((max(0, keep_start - margin), min(n_samples, keep_stop + margin), keep_start, keep_stop))
    return out


def highpass_sos(*, sampling_rate_hz: float, highpass_hz: float = FLOOR_HIGHPASS_HZ) -> np.ndarray:
    from scipy import signal

    # float32 coefficients keep sosfiltfilt in float32 (float64 ones would upcast the traces)
    return signal.butter(3, highpass_hz, btype="highpass", fs=sampling_rate_hz, output="sos").astype(np.float32)


def floor_pass(
    *,
    path: Path,
    n_channels: int,
    sampling_rate_hz: float,
    n_samples: int | None = None,
    dtype: str = "int16",
    threads: int = 2,
    chunk_s: float = FLOOR_CHUNK_S,
    margin_s: float = FLOOR_MARGIN_S,
    highpass_hz: float = FLOOR_HIGHPASS_HZ,
) -> FloorPass:
    """Read the first ``n_samples`` frames (all by default) of a headerless (samples, channels)
    binary in chunks and high-pass filter each one, zero phase, in float32, on ``threads``
    threads (file reads and scipy's filter loop release the GIL); return the wall time."""
    from scipy import signal

    path = Path(path)
    itemsize = np.dtype(dtype).itemsize
    frame_bytes = itemsize * int(n_channels)
    total = os.path.getsize(path) // frame_bytes
    n = total if n_samples is None else int(n_samples)
    if not 0 < n <= total:
        raise ValueError(f"{path} holds {total} frames of {n_channels} channels, cannot read {n}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    sos = highpass_sos(sampling_rate_hz=sampling_rate_hz, highpass_hz=highpass_hz)
    chunks = floor_chunks(
        n_samples=n,
        chunk=max(1, round(float(chunk_s * sampling_rate_hz))),
        margin=round(float(margin_s * sampling_rate_hz)),
    )

    def one(bounds) -> float:
        a, b, keep_a, keep_b = bounds
        x = np.fromfile(path, dtype=dtype, count=(b - a) * n_channels, offset=a * frame_bytes)
        # channels as rows: the filter then runs along contiguous memory
        x = np.ascontiguousarray(x.reshape(b - a, n_channels).T, dtype=np.float32)
        y = signal.sosfiltfilt(sos, x, axis=1)[::CHECK_STRIDE, keep_a - a : keep_b - a]
        return float(np.einsum("ij,ij->", y, y, dtype=np.float64))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        energy = sum(pool.map(one, chunks))
    wall = time.perf_counter() - t0
    return FloorPass(
        wall_s=wall,
        n_samples=n,
        n_channels=int(n_channels),
        sampling_rate_hz=float(sampling_rate_hz),
        n_chunks=len(chunks),
        threads=int(threads),
        mean_square=energy / (n * len(range(0, n_channels, CHECK_STRIDE))),
    )


def tiled_floor_pass(*, binary: dict, n_samples: int, threads: int) -> FloorPass:
    """The floor pass over the first ``n_samples`` frames of ``binary`` played back to back: one
    pass per copy (the last one partial), their wall times added; the mean square is over all
    frames (each copy's chunking restarts at the copy's start, as a file of its own would)."""
    tile = int(binary["n_samples"])
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    passes = []
    for start in range(0, int(n_samples), tile):
        passes.append(
            floor_pass(
                path=binary["path"],
                n_channels=binary["n_channels"],
                dtype=binary["dtype"],
                sampling_rate_hz=binary["sampling_rate_hz"],
                n_samples=min(tile, int(n_samples) - start),
                threads=threads,
            )
        )
    return FloorPass(
        wall_s=sum(f.wall_s for f in passes),
        n_samples=sum(f.n_samples for f in passes),
        n_channels=passes[0].n_channels,
        sampling_rate_hz=passes[0].sampling_rate_hz,
        n_chunks=sum(f.n_chunks for f in passes),
        threads=passes[0].threads,
        mean_square=sum(f.mean_square * f.n_samples for f in passes) / sum(f.n_samples for f in passes),
    )


# ---------------------------------------------------------------------------------------------
# memory over time


def rss_timeline_summary(*, timeline: list) -> dict:
    """``rss_first_quarter_mb`` / ``rss_last_quarter_mb``: the median memory of the samples in the
    first and in the last quarter of the timeline's time span ([elapsed s, MB] pairs); a flat RSS
    has the two about equal. None when there are too few samples to tell."""
    points = sorted((float(t), float(mb)) for t, mb in timeline)
    out = {"rss_first_quarter_mb": None, "rss_last_quarter_mb": None}
    if len(points) < 2:
        return out
    t0, t1 = points[0][0], points[-1][0]
    quarter = (t1 - t0) / 4
    first = [mb for t, mb in points if t <= t0 + quarter]
    last = [mb for t, mb in points if t >= t1 - quarter]
    out["rss_first_quarter_mb"] = float(np.median(first))
    out["rss_last_quarter_mb"] = float(np.median(last))
    return out


# ---------------------------------------------------------------------------------------------
# per-stage costs of a spikesort run


def stage_costs(*, run_json: Path) -> dict:
    """``{"stage_<name>_s": seconds, "stage_<name>_rss_mb": MB}`` from a spikesort_run.json (its
    ``timings_s`` and, when the run recorded it, ``peak_rss_mb``); empty when there is none."""
    path = Path(run_json)
    if not path.is_file():
        return {}
    try:
        run = json.loads(path.read_text(encoding="utf8"))
    except (OSError, ValueError):
        logger.warning("could not read %s", path)
        return {}
    out = {}
    for key, suffix in (("timings_s", "_s"), ("peak_rss_mb", "_rss_mb")):
        values = run.get(key)
        if isinstance(values, dict):
            for stage, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"stage_{stage}{suffix}"] = float(v)
    return out


def stage_names(*, rows: list[dict]) -> list[str]:
    """The stages the rows carry: spikesort's in run order, then any other."""
    found = []
    for row in rows:
        for key in row:
            if key.startswith("stage_"):
                stage = key[len("stage_") :].removesuffix("_rss_mb").removesuffix("_s")
                if stage not in found:
                    found.append(stage)
    return [s for s in STAGES if s in found] + [s for s in found if s not in STAGES]


# ---------------------------------------------------------------------------------------------
# the table


COLUMNS = (
    ("case", "case"),
    ("recording", "recording"),
    ("sorter", "sorter"),
    ("well detected", "well"),
    ("wall s", "wall_s"),
    ("× real time", "x_realtime"),
    ("peak RSS MB", "peak_rss_mb"),
    ("floor pass s", "floor_s"),
    ("sort ÷ floor", "sort_floor"),
)


def _num(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def _cell(row: dict, key: str) -> str:
    if key == "well":
        if row.get("status") != "ok":
            return row.get("status", "failed")
        return "–" if row.get("well_detected") is None else f"{row['well_detected']}/{row['num_gt']}"
    if key in ("wall_s", "floor_s"):
        return _num(row.get(key), ".1f")
    if key in ("x_realtime", "sort_floor"):
        return _num(row.get(key), ".2f")
    if key == "report":
        t, share = row.get("report_s"), row.get("report_share")
        return "–" if t is None else f"{t:.1f} ({_num(None if share is None else 100 * share, '.0f')}%)"
    if key == "peak_rss_mb":
        return _num(row.get(key), ".0f")
    if key == "load":
        a, b = row.get("load_before"), row.get("load_after")
        return "–" if a is None or b is None else f"{a:.1f}→{b:.1f}"
    v = row.get(key)
    return "–" if v is None else str(v)


def speed_table(*, rows: list[dict]) -> str:
    """One markdown table: a row per case and sorter, a ``<stage> s / MB`` column per stage
    (time, then peak RSS of the stage, ``–`` when the run did not record it) and, when a
    command row carries it, ``report s (share)``: the report's seconds and share of the wall."""
    stages = stage_names(rows=rows)
    report = any(row.get("report_s") is not None for row in rows)
    heads = (
        [h for h, _ in COLUMNS]
        + [f"{s} s / MB" for s in stages]
        + (["report s (share)"] if report else [])
        + ["load 1 min"]
    )
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for row in rows:
        cells = [_cell(row, k) for _, k in COLUMNS]
        for s in stages:
            t, m = row.get(f"stage_{s}_s"), row.get(f"stage_{s}_rss_mb")
            cells.append("–" if t is None and m is None else f"{_num(t, '.1f')} / {_num(m, '.0f')}")
        if report:
            cells.append(_cell(row, "report"))
        cells.append(_cell(row, "load"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the ratios


@dataclasses.dataclass
class SpeedSummary:
    lines: list[str]  # printed under the table
    ratios: dict  # the same figures, for --out


def _ok(flag: bool | None) -> str:
    return "" if flag is None else (" (met)" if flag else " (NOT met)")


def _is_spikesort(row: dict) -> bool:
    return str(row.get("sorter", "")).split(" ")[0] == "spikesort"


def speed_summary(*, rows: list[dict]) -> SpeedSummary:
    """× real time, whole sort ÷ floor pass, peak RSS and RSS(longest) ÷ RSS(shortest) of the
    NP1-like runs, and spikesort against the peers on the ground-truth scenarios, each beside the
    issue's target."""
    ours = [r for r in rows if _is_spikesort(r) and r.get("status") == "ok" and r.get("kind") != "c"]
    ratios: dict = {"x_realtime": {}, "sort_floor": {}, "floor_x_realtime": {}, "targets_met": {}}
    lines = []
    for r in ours:
        ratios["x_realtime"][r["case"]] = r.get("x_realtime")
        ratios["sort_floor"][r["case"]] = r.get("sort_floor")
    for r in rows:
        if r.get("floor_s"):
            ratios["floor_x_realtime"][r["case"]] = r["duration_s"] / r["floor_s"]

    def check(name: str, values: list, ok) -> bool | None:
        values = [v for v in values if v is not None]
        if not values:
            return None
        met = all(ok(v) for v in values)
        ratios["targets_met"][name] = met
        return met

    a = [r for r in ours if r["kind"] == "a"]
    b = sorted((r for r in ours if r["kind"] == "b"), key=lambda r: r["minutes"])
    if a or b:
        parts = [f"{r['case']} {_num(r.get('x_realtime'), '.2f')}" for r in a + b]
        met_a = check("x_realtime_a", [r.get("x_realtime") for r in a], lambda v: v >= TARGET_X_REALTIME_A)
        met_b = check("x_realtime_b", [r.get("x_realtime") for r in b], lambda v: v >= TARGET_X_REALTIME_B)
        lines.append(
            "× real time (spikesort): "
            + ", ".join(parts)
            + (f"; target ≥ {TARGET_X_REALTIME_A:g} on {', '.join(r['case'] for r in a)}{_ok(met_a)}" if a else "")
            + (f"; target ≥ {TARGET_X_REALTIME_B:g} on the {b[0]['channels']}-channel runs{_ok(met_b)}" if b else "")
        )
        parts = [f"{r['case']} {_num(r.get('sort_floor'), '.2f')}" for r in a + b]
        met = check("sort_floor", [r.get("sort_floor") for r in a + b], lambda v: v <= TARGET_SORT_FLOOR)
        lines.append(
            "whole sort ÷ floor pass (spikesort): " + ", ".join(parts) + f"; target ≤ {TARGET_SORT_FLOOR:g}{_ok(met)}"
        )
    floors = [f"{case} {x:.2f}× real time" for case, x in ratios["floor_x_realtime"].items()]
    if floors:
        lines.append("floor pass alone: " + ", ".join(floors))
    if b:
        peak = [r.get("peak_rss_mb") for r in b]
        met = check("rss_b", peak, lambda v: v <= TARGET_RSS_B_MB)
        lines.append(
            "peak RSS (spikesort): "
            + ", ".join(f"{r['case']} {_num(r.get('peak_rss_mb'), '.0f')} MB" for r in b)
            + f"; target ≤ {TARGET_RSS_B_MB:.0f} MB{_ok(met)}"
        )
    quarters = [r for r in b if r.get("rss_first_quarter_mb") and r.get("rss_last_quarter_mb")]
    for r in quarters:
        ratios.setdefault("rss_quarters", {})[r["case"]] = {
            "first_mb": r["rss_first_quarter_mb"],
            "last_mb": r["rss_last_quarter_mb"],
            "last_over_first": r["rss_last_quarter_mb"] / r["rss_first_quarter_mb"],
        }
    if quarters:
        lines.append(
            "RSS over time (spikesort, median of the first → last quarter of the run): "
            + ", ".join(
                f"{r['case']} {r['rss_first_quarter_mb']:.0f} → {r['rss_last_quarter_mb']:.0f} MB "
                f"(×{r['rss_last_quarter_mb'] / r['rss_first_quarter_mb']:.2f})"
                for r in quarters
            )
        )
    if len(b) >= 2 and b[0].get("peak_rss_mb") and b[-1].get("peak_rss_mb"):
        growth = b[-1]["peak_rss_mb"] / b[0]["peak_rss_mb"]
        label = f"RSS({b[-1]['minutes']:g} min) ÷ RSS({b[0]['minutes']:g} min)"
        ratios["rss_growth"] = {"label": label, "value": growth}
        met = check("rss_growth", [growth], lambda v: v <= TARGET_RSS_GROWTH)
        lines.append(f"{label} = {growth:.3f}; target ≤ {TARGET_RSS_GROWTH:.2f}{_ok(met)}")
    peers = [
        r for r in rows if r["kind"] == "a" and not _is_spikesort(r) and r.get("status") == "ok" and r.get("wall_s")
    ]
    for r in a:
        mine = [p for p in peers if p["case"] == r["case"]]
        if not mine or not r.get("wall_s"):
            continue
        speedup = {p["sorter"]: p["wall_s"] / r["wall_s"] for p in mine}
        ratios.setdefault("peer_wall_over_spikesort", {})[r["case"]] = speedup
        met = check(f"faster_than_peers_{r['case']}", [min(speedup.values())], lambda v: v > 1.0)
        lines.append(
            f"peers on {r['case']} (their wall ÷ spikesort's): "
            + ", ".join(f"{name} {v:.2f}" for name, v in speedup.items())
            + f"; target: faster than every peer{_ok(met)}"
        )
    lines += _command_lines(rows=rows, ratios=ratios)
    return SpeedSummary(lines=lines, ratios=ratios)


def _command_lines(*, rows: list[dict], ratios: dict) -> list[str]:
    """Per case: the command's wall, × real time, CPU and report share, cold and warm, beside the
    whole child process of every sort-call row (interpreter, imports and sort; no report)."""
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows if r.get("kind") == "c"):
        runs = [r for r in rows if r.get("kind") == "c" and r["case"] == case]
        parts = []
        for r in runs:
            entry = {
                k: r.get(k)
                for k in ("status", "wall_s", "cpu_s", "x_realtime", "report_s", "report_share", "peak_rss_mb")
            }
            ratios.setdefault("command", {}).setdefault(case, {})[r.get("mode", r["sorter"])] = entry
            if r.get("status") != "ok":
                parts.append(f"{r.get('mode', r['sorter'])} {r.get('status')}")
                continue
            report = (
                ""
                if r.get("report_s") is None
                else (f", report {r['report_s']:.1f} s = {100 * r['report_share']:.0f}%")
            )
            cpu = "" if r.get("cpu_s") is None else f", CPU {r['cpu_s']:.1f} s"
            wait = f", waited {r['kernel_wait_s']:.1f} s for kernels" if r.get("kernel_wait_s") else ""
            parts.append(
                f"{r.get('mode', r['sorter'])} {_num(r.get('wall_s'), '.1f')} s "
                f"({_num(r.get('x_realtime'), '.2f')}× real time{cpu}{report}{wait})"
            )
        walls = {r.get("mode"): r.get("wall_s") for r in runs if r.get("status") == "ok" and r.get("wall_s")}
        first_run = ""
        if "cold" in walls and "warm" in walls:
            cold_over_warm = walls["cold"] / walls["warm"]
            ratios["command"][case]["cold_over_warm"] = cold_over_warm
            met = cold_over_warm <= TARGET_COLD_OVER_WARM
            first_run = f"; cold ÷ warm {cold_over_warm:.2f}, target ≤ {TARGET_COLD_OVER_WARM:g}{_ok(met)}"
        # the sort-call rows' child processes: interpreter, imports and the sort call, no report
        procs = [
            r
            for r in rows
            if r["case"] == case and r.get("kind") == "a" and r.get("status") == "ok" and r.get("process_wall_s")
        ]
        named = [
            f"{r['sorter']} {r['process_wall_s']:.1f} s"
            + ("" if r.get("cpu_s") is None else f" (CPU {r['cpu_s']:.1f} s)")
            for r in procs
        ]
        peer = (
            ("; the sorters' whole child processes (imports and sort call, no report): " + ", ".join(named))
            if procs
            else ""
        )
        lines.append(
            f"spikesort run on {case} as users run it (report included): " + ", ".join(parts) + first_run + peer
        )
    return lines


# ---------------------------------------------------------------------------------------------
# running the speed mode


def binary_of(*, folder: Path) -> dict:
    """The int16 binary behind a saved recording folder: its path, channels, rate and frames."""
    rec = load_recording(folder=folder)
    path = folder / "recording" / "traces_cached_seg0.raw"
    if rec.get_num_segments() != 1 or not path.is_file():
        raise ValueError(f"{folder / 'recording'} is not a one-segment binary folder")
    return {
        "path": path,
        "n_channels": int(rec.get_num_channels()),
        "sampling_rate_hz": float(rec.get_sampling_frequency()),
        "n_samples": int(rec.get_num_samples(0)),
        "dtype": str(rec.get_dtype()),
    }


def _duration_label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _add_floor(row: dict, floor) -> None:
    row.update(floor_s=floor.wall_s, floor_threads=floor.threads, floor_mean_square=floor.mean_square)
    if row.get("status") == "ok" and row.get("wall_s"):
        row["sort_floor"] = row["wall_s"] / floor.wall_s


def run_speed(
    *,
    scenarios: list[str],
    seed: int,
    sorters: list[str],
    cache_dir: Path,
    work_dir: Path,
    rerun_peers: bool,
    cached_peers_only: bool,
    spikesort_params: dict,
    n_jobs: int,
    timeout_s: float | None,
    keep_outputs: bool,
    channels: int,
    minutes: list[float],
    num_units: int | None,
    floor_threads: int,
    command_modes: list[str] = (),
    tile_minutes: float = 0.0,
    log=lambda msg: None,
) -> list[dict]:
    """Rows of the speed table: (a) every sorter on the ground-truth ``scenarios`` (peers from
    their cache as in the accuracy benchmark); (b) spikesort on the first ``minutes`` of one
    NP1-like recording of ``channels`` channels and max(minutes) minutes; each row with the floor
    pass on the same frames of the same binary (run after the sorts) and, for spikesort, the
    per-stage costs its run recorded; with ``command_modes`` ("cold", "warm"), also (c) the
    ``spikesort run`` command on each scenario's binary (see ``benchmarks.command``).

    With ``tile_minutes`` T > 0 below max(minutes), only T minutes are generated and saved; the
    cases longer than T run on that recording played back to back ceil(max(minutes) / T) times
    (``ensure_tiled_recording``: no copy of the traces), the shorter ones on the T minutes."""
    if tile_minutes < 0:
        raise ValueError(f"tile_minutes must be >= 0, got {tile_minutes}")
    rows = []
    a_rows = run_benchmark(
        scenarios=scenarios,
        seeds=[seed],
        sorters=sorters,
        cache_dir=cache_dir,
        work_dir=work_dir,
        rerun_peers=rerun_peers,
        cached_peers_only=cached_peers_only,
        spikesort_params=spikesort_params,
        n_jobs=n_jobs,
        timeout_s=timeout_s,
        keep_outputs=keep_outputs,
        dummy=False,
        log=log,
    )
    for name in scenarios:
        mine = [r for r in a_rows if r["scenario"] == name]
        if not mine:
            continue
        folder = recording_folder(cache_dir=cache_dir, scenario=name, seed=seed)
        binary = binary_of(folder=folder)
        if command_modes and "spikesort" in sorters:
            mine += command_rows(
                case=name,
                folder=folder,
                binary=binary,
                work_dir=work_dir / f"{name}_seed{seed}",
                modes=list(command_modes),
                params=dict(spikesort_params),
                timeout_s=timeout_s,
                keep_outputs=keep_outputs,
                version=sorter_version(sorter="spikesort"),
                gt=load_gt(folder=folder),
                log=log,
                stage_costs=stage_costs,
            )
        floor = floor_pass(
            path=binary["path"],
            n_channels=binary["n_channels"],
            dtype=binary["dtype"],
            sampling_rate_hz=binary["sampling_rate_hz"],
            threads=floor_threads,
        )
        log(f"[{name}] floor pass: {floor.wall_s:.1f} s ({floor.x_realtime:.1f}× real time)")
        for row in mine:
            row.update(
                case=name,
                kind=row.get("kind", "a"),
                channels=binary["n_channels"],
                minutes=row["duration_s"] / 60,
                recording=f"{binary['n_channels']} ch × {_duration_label(row['duration_s'])}",
            )
            if row["sorter"] == "spikesort" and row.get("status") == "ok":
                row.update(stage_costs(run_json=Path(row["result_folder"]) / "spikesort_run.json"))
            _add_floor(row, floor)
            rows.append(row)

    version = sorter_version(sorter="spikesort")
    if not minutes or "spikesort" not in sorters or version is None:
        log("the NP1-like runs are skipped: they run spikesort only")
        return rows
    units = num_units or max(3, round(SPEED_UNITS_PER_CHANNEL * channels))
    # with a tile shorter than the longest case, only the tile is generated and saved; the longer
    # cases play it back to back (the disk need not hold the whole recording)
    tiled = tile_minutes > 0 and max(minutes) > tile_minutes
    generated_minutes = tile_minutes if tiled else max(minutes)
    t0 = time.perf_counter()
    folder = ensure_speed_recording(
        cache_dir=cache_dir,
        n_channels=channels,
        duration_s=60.0 * generated_minutes,
        num_units=units,
        seed=seed,
        n_jobs=n_jobs,
    )
    log(
        f"[np1 {channels} ch] recording of {generated_minutes:g} min ready in {time.perf_counter() - t0:.1f} s: "
        f"{folder}"
    )
    binary = binary_of(folder=folder)
    fs = binary["sampling_rate_hz"]
    sources = {False: (folder, binary["n_samples"])}
    copies = None
    if tiled:
        # copies from frames, not minutes/T: a float ratio like 3.0000000000000004 must not add one
        copies = max(2, -(-round(max(minutes) * 60.0 * fs) // binary["n_samples"]))
        tiled_path = ensure_tiled_recording(folder=folder, copies=copies)
        sources[True] = (tiled_path, copies * binary["n_samples"])
        log(f"[np1 {channels} ch] {generated_minutes:g} min played {copies} times: {tiled_path}")
    gts = {}
    for m in sorted(set(minutes)):
        on_tiles = tiled and round(m * 60.0 * fs) > binary["n_samples"]
        source, total = sources[on_tiles]
        if on_tiles not in gts:
            gts[on_tiles] = load_sorting_npz(path=source / "gt_sorting.npz")
        gt = gts[on_tiles]
        n = min(total, round(m * 60.0 * fs))
        case = f"np1_{channels}ch_{m:g}min"
        result_folder = work_dir / f"{case}_seed{seed}" / "spikesort-result"
        work_folder = work_dir / f"{case}_seed{seed}" / "spikesort"
        if result_folder.exists():
            shutil.rmtree(result_folder)
        log(f"[{case}] spikesort {version}: running ...")
        report = run_sorter_subprocess(
            sorter="spikesort",
            recording_folder=source,
            work_folder=work_folder,
            result_folder=result_folder,
            params=dict(spikesort_params),
            n_jobs=n_jobs,
            timeout_s=timeout_s,
            frame_range=(0, n),
            rss_timeline_s=RSS_TIMELINE_S,
        )
        if not keep_outputs and work_folder.exists():
            shutil.rmtree(work_folder, ignore_errors=True)
        log(
            f"[{case}] spikesort: {report['status']} in {report.get('wall_s', report['process_wall_s']):.1f} s"
            + (f" ({report['error']})" if report.get("error") else "")
        )
        label = f"{channels} ch × {_duration_label(n / fs)}"
        if on_tiles:
            label += f" ({_duration_label(binary['n_samples'] / fs)} tiled ×{copies})"
        row = {
            "case": case,
            "kind": "b",
            "scenario": case,
            "seed": seed,
            "sorter": "spikesort",
            "version": version,
            "params": dict(spikesort_params),
            "duration_s": n / fs,
            "minutes": m,
            "channels": channels,
            "recording": label,
            "tiled_from_minutes": tile_minutes if on_tiles else None,
            "tile_copies": copies if on_tiles else None,
            "source": "run",
            "recording_folder": str(source),
            "result_folder": str(result_folder),
            "status": report["status"],
            "error": report.get("error"),
            "wall_s": report.get("wall_s"),
            "process_wall_s": report.get("process_wall_s"),
            "cpu_s": report.get("cpu_s"),
            "load_before": report.get("load_before"),
            "load_after": report.get("load_after"),
            "peak_rss_mb": report.get("peak_rss_mb"),
            "rss_timeline": report.get("rss_timeline"),
        }
        row.update(rss_timeline_summary(timeline=report.get("rss_timeline") or []))
        if row["wall_s"]:
            row["x_realtime"] = row["duration_s"] / row["wall_s"]
        if report["status"] == "ok":
            row.update(stage_costs(run_json=result_folder / "spikesort_run.json"))
            row.update(
                score_sorting(
                    gt=gt.frame_slice(start_frame=0, end_frame=n),
                    tested=load_sorting_npz(path=result_folder / "sorting.npz"),
                )
            )
        # the floor pass reads the same frames: on a tiled recording, the tile once per copy
        floor = tiled_floor_pass(binary=binary, n_samples=n, threads=floor_threads)
        log(f"[{case}] floor pass: {floor.wall_s:.1f} s ({floor.x_realtime:.1f}× real time)")
        _add_floor(row, floor)
        rows.append(row)
    return rows
