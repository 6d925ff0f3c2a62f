"""The speed mode's "command" rows: spikesort timed as users run it.

``spikesort run REC --format binary ... --probe probe.json -o OUT`` in a subprocess, on the int16
binary a scenario is cached as, everything included: interpreter start, imports, numba's JIT (or
its cache), the sort, the Phy folder and the report. Wall time and peak memory (polled over the
process tree, as for the sorters in ``runner``) are of the whole command.

"cold" runs with ``NUMBA_CACHE_DIR`` pointed at a fresh empty folder: numba compiles every kernel,
as on the first run after install. "warm" runs with the same folder again, now filled. Python's
own ``.pyc`` files are warm in both (they are not redirected). Asked for "warm" alone, the run uses
numba's default cache (whatever earlier runs left there).

A command row has ``kind`` "c", ``sorter`` "spikesort command cold|warm", ``wall_s``,
``x_realtime``, ``peak_rss_mb``, ``report_s`` (from the log line "report written to ... in X s"
in OUT/spikesort.log), ``report_share`` (report_s ÷ wall_s), ``kernel_wait_s`` (how long the sort
stood waiting for kernels still compiling, from the same log), the stage costs of OUT's
``spikesort_run.json`` and, when the output can be read, the accuracy fields.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .runner import run_polled
from .scoring import load_sorting_npz, score_sorting

MODES = ("cold", "warm")
PROBE_NAME = "probe.json"
LOG_NAME = "spikesort.log"
RUN_JSON = "spikesort_run.json"
# the report's own log line (spikesort.outputs.render.pages)
REPORT_LINE = re.compile(r"report written to .* in ([0-9.]+) s")
# a kernel's first call waiting for the compile process of a cold run (spikesort.kernels.warmup)
WAIT_LINE = re.compile(r"waited ([0-9.]+) s for the compile process's")


def ensure_probe_json(*, folder: Path) -> Path:
    """``folder/probe.json``: the probe of the recording saved in ``folder/recording``, as a
    probeinterface JSON file (written once)."""
    path = Path(folder) / PROBE_NAME
    if not path.is_file():
        from probeinterface import write_probeinterface

        from .scenarios import load_recording

        tmp = path.with_name(f".{PROBE_NAME}.tmp")
        write_probeinterface(tmp, load_recording(folder=folder).get_probegroup())
        tmp.rename(path)
    return path


def spikesort_executable() -> list[str]:
    """The ``spikesort`` console script of this interpreter's environment (what users type);
    ``python -m spikesort.cli`` when it is not installed."""
    script = Path(sys.executable).with_name("spikesort")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "spikesort.cli"]


def _set_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def command_argv(*, binary: dict, probe: Path, output: Path, params: dict | None = None) -> list[str]:
    """The ``spikesort run`` command line for a raw binary; ``params`` become ``--set KEY=VALUE``."""
    argv = spikesort_executable() + [
        "run",
        str(binary["path"]),
        "--format",
        "binary",
        "--sampling-rate",
        f"{binary['sampling_rate_hz']:g}",
        "--n-channels",
        str(binary["n_channels"]),
        "--dtype",
        str(binary["dtype"]),
        "--probe",
        str(probe),
        "-o",
        str(output),
    ]
    for key, value in (params or {}).items():
        argv += ["--set", f"{key}={_set_value(value)}"]
    return argv


def time_command(*, argv: list[str], env: dict, log_path: Path, timeout_s: float | None, poll_s: float = 0.5) -> dict:
    """Run ``argv`` (stdout and stderr to ``log_path``); return status, wall_s (the whole process),
    peak_rss_mb (polled over the process tree), cpu_s (user + system of the command and the workers
    it waited for: a check on wall times taken on a busy machine), returncode and the 1-min load
    before and after."""
    import resource

    load_before = os.getloadavg()[0]
    # this process runs nothing else meanwhile: its reaped children's CPU time grows by the command's
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = run_polled(argv, log_path=log_path, timeout_s=timeout_s, poll_s=poll_s, env=env)
    wall, peak_mb, timed_out = child.wall_s, child.peak_mb, child.timed_out
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if timed_out:
        status, error = "timeout", f"killed after {timeout_s:.0f} s"
    elif child.returncode != 0:
        status, error = "failed", f"exit code {child.returncode}, see {log_path}"
    else:
        status, error = "ok", None
    return {
        "status": status,
        "error": error,
        "returncode": child.returncode,
        "wall_s": wall,
        "peak_rss_mb": peak_mb,
        "cpu_s": cpu,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def report_seconds(*, output: Path) -> float | None:
    """Seconds the report took: the last "report written to ... in X s" line of OUT/spikesort.log,
    else ``timings_s["report"]`` of OUT/spikesort_run.json; None when neither has it."""
    log_path = Path(output) / LOG_NAME
    if log_path.is_file():
        found = REPORT_LINE.findall(log_path.read_text(encoding="utf8", errors="replace"))
        if found:
            return float(found[-1])
    run_json = Path(output) / RUN_JSON
    if run_json.is_file():
        try:
            value = json.loads(run_json.read_text(encoding="utf8")).get("timings_s", {}).get("report")
        except (OSError, ValueError, AttributeError):
            value = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def kernel_wait_seconds(*, output: Path) -> float | None:
    """Seconds the sort stood waiting for kernels still being compiled (a cold run's compile
    process): the sum of the "waited X s for the compile process's ..." lines of OUT/spikesort.log;
    0 when it never waited, None without a log."""
    log_path = Path(output) / LOG_NAME
    if not log_path.is_file():
        return None
    return sum(float(x) for x in WAIT_LINE.findall(log_path.read_text(encoding="utf8", errors="replace")))


def phy_sorting(*, output: Path, sampling_rate_hz: float):
    """The sorting of a Phy folder (spike_times.npy, spike_clusters.npy), for scoring."""
    from spikeinterface.core import NumpySorting

    times = np.load(Path(output) / "spike_times.npy").ravel().astype(np.int64)
    clusters = np.load(Path(output) / "spike_clusters.npy").ravel().astype(np.int64)
    return NumpySorting.from_samples_and_labels([times], [clusters], sampling_frequency=sampling_rate_hz)


def command_rows(
    *,
    case: str,
    folder: Path,
    binary: dict,
    work_dir: Path,
    modes: list[str],
    params: dict,
    timeout_s: float | None,
    keep_outputs: bool,
    version: str | None,
    gt=None,
    log=lambda msg: None,
    stage_costs=None,
    run=time_command,
) -> list[dict]:
    """One row per mode in ``modes`` ("cold" before "warm"): ``spikesort run`` on ``binary`` (see
    ``speed.binary_of``) of the recording saved in ``folder``, its output in ``work_dir``."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown command mode(s) {bad}: expected some of {MODES}")
    probe = ensure_probe_json(folder=folder)
    base = Path(work_dir) / f"{case}_command"
    base.mkdir(parents=True, exist_ok=True)
    numba_dir = None
    if "cold" in modes:
        # a fresh empty folder: nothing compiled yet; "warm" then reuses it, filled by "cold"
        numba_dir = Path(tempfile.mkdtemp(prefix="numba-cold-", dir=base))
    duration = binary["n_samples"] / binary["sampling_rate_hz"]
    rows = []
    try:
        for mode in [m for m in MODES if m in modes]:
            output = base / f"out_{mode}"
            if output.exists():  # as a user's first run: no --overwrite
                shutil.rmtree(output)
            env = dict(os.environ)
            if numba_dir is not None:
                env["NUMBA_CACHE_DIR"] = str(numba_dir)
            argv = command_argv(binary=binary, probe=probe, output=output, params=params)
            log(f"[{case}] spikesort command {mode}: {' '.join(argv)}")
            report = run(argv=argv, env=env, log_path=base / f"command_{mode}.log", timeout_s=timeout_s)
            row = {
                "case": case,
                "kind": "c",
                "scenario": case,
                "sorter": f"spikesort command {mode}",
                "mode": mode,
                "version": version,
                "params": dict(params),
                "duration_s": duration,
                "minutes": duration / 60,
                "channels": binary["n_channels"],
                "source": "run",
                "result_folder": str(output),
                "numba_cache_dir": str(numba_dir) if numba_dir is not None else "default",
                "command": argv,
                **{
                    k: report.get(k)
                    for k in ("status", "error", "wall_s", "cpu_s", "peak_rss_mb", "load_before", "load_after")
                },
            }
            row["process_wall_s"] = row["wall_s"]
            if row["status"] == "ok" and row["wall_s"]:
                row["x_realtime"] = duration / row["wall_s"]
                row["report_s"] = report_seconds(output=output)
                row["kernel_wait_s"] = kernel_wait_seconds(output=output)
                if row["report_s"] is not None:
                    row["report_share"] = row["report_s"] / row["wall_s"]
                if stage_costs is not None:
                    row.update(stage_costs(run_json=output / RUN_JSON))
                if gt is not None and (output / "spike_times.npy").is_file():
                    row.update(
                        score_sorting(
                            gt=gt, tested=phy_sorting(output=output, sampling_rate_hz=binary["sampling_rate_hz"])
                        )
                    )
            log(
                f"[{case}] spikesort command {mode}: {row['status']} in {row['wall_s']:.1f} s"
                + (f", report {row['report_s']:.1f} s" if row.get("report_s") is not None else "")
                + (f" ({row['error']})" if row.get("error") else "")
            )
            rows.append(row)
            if not keep_outputs and row["status"] == "ok":
                shutil.rmtree(output, ignore_errors=True)
    finally:
        if numba_dir is not None and not keep_outputs:
            shutil.rmtree(numba_dir, ignore_errors=True)
    return rows


def load_gt(*, folder: Path):
    """The ground truth saved beside a recording, None when there is none."""
    path = Path(folder) / "gt_sorting.npz"
    return load_sorting_npz(path=path) if path.is_file() else None
