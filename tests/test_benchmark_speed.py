"""The speed mode of the benchmark (benchmarks/speed.py, ``scripts/benchmark.py --speed``): the
floor pass, the stage costs, the table and the ratios, and one tiny end-to-end run (spikesort
only, a temporary cache)."""

from __future__ import annotations

import json
import math
import os
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cli, command, scenarios, speed


def _binary(tmp_path, *, n_samples=50_000, n_channels=10, seed=0):
    rng = np.random.default_rng(seed)
    # a scale of its own per channel: a read with the channels misaligned would show
    x = (rng.standard_normal((n_samples, n_channels)) * 40 * np.arange(1, n_channels + 1)).astype(np.int16)
    path = tmp_path / "traces.raw"
    x.tofile(path)
    return path, x


# ---------------------------------------------------------------------------------------------
# the floor pass


def test_floor_chunks_tile_the_recording():
    chunks = speed.floor_chunks(n_samples=10_001, chunk=3000, margin=100)
    keeps = [(k0, k1) for _, _, k0, k1 in chunks]
    assert keeps[0][0] == 0 and keeps[-1][1] == 10_001
    assert all(a[1] == b[0] for a, b in pairwise(keeps))
    for r0, r1, k0, k1 in chunks:
        assert r0 == max(0, k0 - 100) and r1 == min(10_001, k1 + 100)
    with pytest.raises(ValueError):
        speed.floor_chunks(n_samples=10, chunk=0, margin=0)


def test_floor_pass_filters_every_sample(tmp_path):
    from scipy import signal

    fs = 30_000.0
    path, x = _binary(tmp_path)
    sos = signal.butter(3, 300.0, btype="highpass", fs=fs, output="sos")
    whole = signal.sosfiltfilt(sos, x.astype(np.float64), axis=0)
    expected = float(np.mean(whole[:, :: speed.CHECK_STRIDE] ** 2))  # the checked channels: 0 and 8
    # 0.5 s chunks with a 10 ms margin: only the chunk edges differ from the whole-signal filter
    one = speed.floor_pass(path=path, n_channels=10, sampling_rate_hz=fs, threads=1, chunk_s=0.5)
    two = speed.floor_pass(path=path, n_channels=10, sampling_rate_hz=fs, threads=2, chunk_s=0.5)
    assert one.n_samples == 50_000 and one.n_chunks == 4 and one.wall_s > 0
    assert one.mean_square == pytest.approx(expected, rel=0.01)
    assert two.mean_square == pytest.approx(one.mean_square, rel=1e-9)  # threads change nothing
    assert one.duration_s == pytest.approx(50_000 / fs) and one.x_realtime > 0
    # the 300 Hz high-pass keeps most of the power of white noise, not all
    raw = float(np.mean(x[:, :: speed.CHECK_STRIDE].astype(np.float64) ** 2))
    assert 0.8 * raw < one.mean_square < raw


def test_floor_pass_reads_the_first_frames_only(tmp_path):
    path, x = _binary(tmp_path)
    first = speed.floor_pass(path=path, n_channels=10, sampling_rate_hz=30_000.0, n_samples=20_000)
    assert first.n_samples == 20_000 and first.duration_s == pytest.approx(2 / 3)
    # the second half replaced by zeros: the first 20 000 frames alone give the same result
    y = x.copy()
    y[20_000:] = 0
    y.tofile(tmp_path / "zeroed.raw")
    again = speed.floor_pass(path=tmp_path / "zeroed.raw", n_channels=10, sampling_rate_hz=30_000.0, n_samples=20_000)
    assert again.mean_square == pytest.approx(first.mean_square, rel=1e-9)
    with pytest.raises(ValueError, match="cannot read"):
        speed.floor_pass(path=path, n_channels=10, sampling_rate_hz=30_000.0, n_samples=50_001)
    with pytest.raises(ValueError, match="threads"):
        speed.floor_pass(path=path, n_channels=10, sampling_rate_hz=30_000.0, threads=0)


# ---------------------------------------------------------------------------------------------
# stage costs, table, ratios


def test_stage_costs(tmp_path):
    assert speed.stage_costs(run_json=tmp_path / "missing.json") == {}
    path = tmp_path / "spikesort_run.json"
    path.write_text(
        json.dumps(
            {
                "timings_s": {"preprocess": 2.5, "drift": 1.0, "match": 3.0},
                "peak_rss_mb": {"preprocess": 800, "match": 950.5, "note": "x"},
            }
        )
    )
    costs = speed.stage_costs(run_json=path)
    assert costs == {
        "stage_preprocess_s": 2.5,
        "stage_drift_s": 1.0,
        "stage_match_s": 3.0,
        "stage_preprocess_rss_mb": 800.0,
        "stage_match_rss_mb": 950.5,
    }
    path.write_text("{not json")
    assert speed.stage_costs(run_json=path) == {}


def _rows():
    common = {"status": "ok", "load_before": 0.5, "load_after": 1.0}
    return [
        dict(
            case="static64",
            kind="a",
            recording="64 ch × 5 min",
            sorter="spikesort",
            duration_s=300.0,
            minutes=5.0,
            channels=64,
            wall_s=30.0,
            x_realtime=10.0,
            peak_rss_mb=900.0,
            floor_s=10.0,
            sort_floor=3.0,
            well_detected=44,
            num_gt=50,
            stage_preprocess_s=12.0,
            stage_match_s=8.0,
            stage_match_rss_mb=700.0,
            **common,
        ),
        dict(
            case="static64",
            kind="a",
            recording="64 ch × 5 min",
            sorter="tridesclous2 2026.01",
            duration_s=300.0,
            minutes=5.0,
            channels=64,
            wall_s=150.0,
            x_realtime=2.0,
            peak_rss_mb=3000.0,
            floor_s=10.0,
            sort_floor=15.0,
            well_detected=44,
            num_gt=50,
            **common,
        ),
        dict(
            case="np1_384ch_5min",
            kind="b",
            recording="384 ch × 5 min",
            sorter="spikesort",
            duration_s=300.0,
            minutes=5.0,
            channels=384,
            wall_s=200.0,
            x_realtime=1.5,
            peak_rss_mb=2000.0,
            floor_s=60.0,
            sort_floor=200 / 60,
            well_detected=120,
            num_gt=150,
            **common,
        ),
        dict(
            case="np1_384ch_10min",
            kind="b",
            recording="384 ch × 10 min",
            sorter="spikesort",
            duration_s=600.0,
            minutes=10.0,
            channels=384,
            wall_s=500.0,
            x_realtime=1.2,
            peak_rss_mb=2300.0,
            floor_s=120.0,
            sort_floor=500 / 120,
            well_detected=None,
            num_gt=150,
            **common,
        ),
    ]


def test_speed_table():
    table = speed.speed_table(rows=_rows()).splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[:9] == [
        "case",
        "recording",
        "sorter",
        "well detected",
        "wall s",
        "× real time",
        "peak RSS MB",
        "floor pass s",
        "sort ÷ floor",
    ]
    # only the stages some row carries, in run order; then the load column
    assert head[9:] == ["preprocess s / MB", "match s / MB", "load 1 min"]
    assert len(table) == 2 + 4
    first = [c.strip() for c in table[2].strip("|").split("|")]
    assert first[3:] == ["44/50", "30.0", "10.00", "900", "10.0", "3.00", "12.0 / –", "8.0 / 700", "0.5→1.0"]
    peer = [c.strip() for c in table[3].strip("|").split("|")]
    assert peer[9:11] == ["–", "–"]  # no stage costs for a peer
    last = [c.strip() for c in table[5].strip("|").split("|")]
    assert last[3] == "–" and last[8] == "4.17"


def test_speed_summary():
    summary = speed.speed_summary(rows=_rows())
    r = summary.ratios
    assert r["x_realtime"] == {"static64": 10.0, "np1_384ch_5min": 1.5, "np1_384ch_10min": 1.2}
    assert r["rss_growth"]["value"] == pytest.approx(2300 / 2000)
    assert r["rss_growth"]["label"] == "RSS(10 min) ÷ RSS(5 min)"
    assert r["floor_x_realtime"]["np1_384ch_10min"] == pytest.approx(5.0)
    assert r["peer_wall_over_spikesort"]["static64"] == {"tridesclous2 2026.01": pytest.approx(5.0)}
    assert r["targets_met"] == {
        "x_realtime_a": True,
        "x_realtime_b": True,
        "sort_floor": False,
        "rss_b": True,
        "rss_growth": False,
        "faster_than_peers_static64": True,
    }
    text = "\n".join(summary.lines)
    assert "RSS(10 min) ÷ RSS(5 min) = 1.150; target ≤ 1.10 (NOT met)" in text
    assert "whole sort ÷ floor pass (spikesort): static64 3.00, np1_384ch_5min 3.33, np1_384ch_10min 4.17" in text
    assert "tridesclous2 2026.01 5.00" in text
    # a failed run is left out of the ratios instead of breaking them
    rows = _rows()
    rows[3].update(status="failed", wall_s=None, x_realtime=None, sort_floor=None)
    assert "rss_growth" not in speed.speed_summary(rows=rows).ratios


# ---------------------------------------------------------------------------------------------
# end to end


def test_speed_mode_end_to_end(tmp_path, monkeypatch, capsys):
    """A tiny speed run: a 16-channel, 10 s ground-truth scenario for (a) and 6 s / 12 s of one
    16-channel NP1-like recording for (b), spikesort only, each sorted in its own process (the
    command rows have tests of their own, below)."""
    monkeypatch.setitem(scenarios.SCENARIOS, "tiny16", scenarios.Scenario("tiny16", "np1_16", 5, 10.0, "none", "test"))
    out = tmp_path / "speed.json"
    code = cli.main(
        [
            "--speed",
            "--scenarios",
            "tiny16",
            "--speed-channels",
            "16",
            "--speed-minutes",
            "0.1",
            "0.2",
            "--sorters",
            "spikesort",
            "--cache",
            str(tmp_path / "cache"),
            "--n-jobs",
            "2",
            "--speed-command",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    rows = {r["case"]: r for r in doc["rows"]}
    assert set(rows) == {"tiny16", "np1_16ch_0.1min", "np1_16ch_0.2min"}
    for case, row in rows.items():
        assert row["status"] == "ok", (case, row.get("error"))
        assert row["wall_s"] > 0 and row["floor_s"] > 0 and row["peak_rss_mb"] > 50
        assert row["sort_floor"] == pytest.approx(row["wall_s"] / row["floor_s"])
        assert row["x_realtime"] == pytest.approx(row["duration_s"] / row["wall_s"])
        # the stage times spikesort recorded add up to about its wall time
        stages = sum(row[f"stage_{s}_s"] for s in ("preprocess", "detect", "cluster", "match", "curate", "export"))
        assert 0.5 * row["wall_s"] < stages <= row["wall_s"] * 1.01
        assert row["num_gt"] > 0 and row["well_detected"] is not None
    assert rows["np1_16ch_0.1min"]["duration_s"] == pytest.approx(6.0)
    assert rows["np1_16ch_0.2min"]["duration_s"] == pytest.approx(12.0)
    # one recording of the longest duration was generated; the shorter case is its first part
    recordings = sorted(p.name for p in (tmp_path / "cache" / "recordings").iterdir())
    assert recordings == ["np1_16ch_12s_seed0", "tiny16_seed0"]
    growth = doc["ratios"]["rss_growth"]["value"]
    assert math.isfinite(growth) and growth > 0
    assert growth == pytest.approx(rows["np1_16ch_0.2min"]["peak_rss_mb"] / rows["np1_16ch_0.1min"]["peak_rss_mb"])
    # the printed table: header, rule, one row per case; then the ratio lines
    lines = printed.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3 and "preprocess s / MB" in table[0] and "floor pass s" in table[0]
    assert any(line.startswith("| np1_16ch_0.2min | 16 ch × 12 s | spikesort |") for line in table)
    assert any(line.startswith("× real time (spikesort): tiny16 ") for line in lines)
    assert any(line.startswith("whole sort ÷ floor pass (spikesort): ") for line in lines)
    assert any(line.startswith("RSS(0.2 min) ÷ RSS(0.1 min) = ") for line in lines)
    # the CSV has the same rows
    assert len(out.with_suffix(".csv").read_text().splitlines()) == 1 + 3


def test_speed_flags_are_checked(capsys):
    for argv, message in (
        (["--speed", "--seeds", "0", "1"], "one seed"),
        (["--speed", "--speed-channels", "500"], "between 8 and 384"),
        (["--speed", "--speed-minutes", "0"], "above 0"),
        (["--speed", "--dummy"], "--dummy"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the command as users run it


def test_command_rows_warm(tmp_path):
    """`spikesort run` on an 8 s, 16-channel recording in a subprocess, on numba's default cache
    (warm: the runs above filled it): one row with the whole command's wall, memory and report."""
    tiny = scenarios.Scenario("cmd16", "np1_16", 5, 8.0, "none", "test")
    folder = scenarios.ensure_recording(cache_dir=tmp_path / "cache", scenario=tiny, seed=0, n_jobs=2)
    binary = speed.binary_of(folder=folder)
    rows = command.command_rows(
        case="cmd16",
        folder=folder,
        binary=binary,
        work_dir=tmp_path / "runs",
        modes=["warm"],
        params={},
        timeout_s=120,
        keep_outputs=False,
        version="x",
        gt=command.load_gt(folder=folder),
        stage_costs=speed.stage_costs,
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok", row.get("error")
    assert (row["kind"], row["sorter"], row["mode"], row["numba_cache_dir"]) == (
        "c",
        "spikesort command warm",
        "warm",
        "default",
    )
    assert row["command"][1:3] == ["run", str(binary["path"])] and "--probe" in row["command"]
    assert (folder / "probe.json").is_file()
    assert row["duration_s"] == pytest.approx(8.0)
    assert row["wall_s"] > 0 and row["x_realtime"] == pytest.approx(8.0 / row["wall_s"])
    assert row["peak_rss_mb"] > 50 and row["cpu_s"] > 0
    assert row["report_s"] is not None and 0 <= row["report_share"] < 1
    # the sort's own stages ran inside the command, which also started python and made the report
    stages = sum(row[f"stage_{s}_s"] for s in ("preprocess", "detect", "cluster", "match", "curate", "export"))
    assert 0 < stages + row["report_s"] < row["wall_s"]
    assert row["num_gt"] == 5 and row["well_detected"] is not None
    assert not (tmp_path / "runs" / "cmd16_command" / "out_warm").exists()  # outputs not kept
    table = speed.speed_table(rows=[dict(row, recording="16 ch × 8 s")]).splitlines()
    assert "report s (share)" in table[0] and "| spikesort command warm |" in table[2]


def test_command_cold_then_warm(tmp_path):
    """Cold runs on a fresh, empty NUMBA_CACHE_DIR; warm on the same folder after it (the command
    itself is replaced by a stand-in that writes what spikesort run writes)."""
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "probe.json").write_text("{}")  # already there: not rewritten
    binary = {
        "path": tmp_path / "rec" / "traces.raw",
        "n_channels": 4,
        "sampling_rate_hz": 30_000.0,
        "n_samples": 300_000,
        "dtype": "int16",
    }
    calls = []

    def fake_run(*, argv, env, log_path, timeout_s):
        cache = env["NUMBA_CACHE_DIR"]
        calls.append((argv, cache, sorted(os.listdir(cache))))
        out = Path(argv[argv.index("-o") + 1])
        assert not out.exists()  # as a first run: no --overwrite
        out.mkdir()
        wait = "x DEBUG spikesort.kernels.warmup: waited 0.25 s for the compile process's k\n"
        waits = 2 * wait if len(calls) == 1 else ""  # the cold run waits for two kernels
        (out / "spikesort.log").write_text(
            waits + "x INFO spikesort.outputs.render.pages: report written to r: 2 unit pages of 2 units in 1.50 s\n"
        )
        (Path(cache) / "kernel.nbi").write_text("")  # what numba leaves behind
        return {
            "status": "ok",
            "error": None,
            "wall_s": 5.0 if len(calls) == 1 else 2.5,
            "peak_rss_mb": 300.0,
            "load_before": 1.0,
            "load_after": 1.0,
        }

    rows = command.command_rows(
        case="c",
        folder=tmp_path / "rec",
        binary=binary,
        work_dir=tmp_path / "runs",
        modes=["warm", "cold"],
        params={"detect_threshold": 6, "amplitude_range": [0.5, 2]},
        timeout_s=None,
        keep_outputs=False,
        version="x",
        run=fake_run,
    )
    assert [r["mode"] for r in rows] == ["cold", "warm"]
    assert calls[0][1] == calls[1][1] and calls[0][2] == [] and calls[1][2] == ["kernel.nbi"]
    assert rows[0]["numba_cache_dir"] == calls[0][1] and not Path(calls[0][1]).exists()  # removed afterwards
    assert ["--set", "detect_threshold=6", "--set", "amplitude_range=0.5,2"] == calls[0][0][-4:]
    assert "--overwrite" not in calls[0][0]
    assert [r["report_s"] for r in rows] == [1.5, 1.5]
    assert [r["kernel_wait_s"] for r in rows] == [0.5, 0]  # the cold run waited twice for its compile process
    assert [r["report_share"] for r in rows] == [pytest.approx(0.3), pytest.approx(0.6)]
    assert [r["x_realtime"] for r in rows] == [pytest.approx(2.0), pytest.approx(4.0)]
    assert (tmp_path / "rec" / "probe.json").read_text() == "{}"
    # the ratio lines: the command on its own line; the sort-call ratios leave it out
    peer = {
        "case": "c",
        "kind": "a",
        "sorter": "herdingspikes 0.4.6",
        "status": "ok",
        "wall_s": 9.0,
        "process_wall_s": 12.0,
        "cpu_s": 20.0,
    }
    ours = {
        "case": "c",
        "kind": "a",
        "sorter": "spikesort",
        "status": "ok",
        "wall_s": 3.0,
        "x_realtime": 3.3,
        "process_wall_s": 4.0,
    }
    summary = speed.speed_summary(rows=[ours, peer] + rows)
    assert summary.ratios["x_realtime"] == {"c": 3.3}
    assert summary.ratios["command"]["c"]["warm"]["wall_s"] == 2.5
    assert (
        "spikesort run on c as users run it (report included): cold 5.0 s (2.00× real time, report 1.5 s = 30%, "
        "waited 0.5 s for kernels), warm 2.5 s (4.00× real time, report 1.5 s = 60%); cold ÷ warm 2.00, target "
        "≤ 1.3 (NOT met); the sorters' whole child processes (imports and sort call, no report): spikesort 4.0 s, "
        "herdingspikes 0.4.6 12.0 s (CPU 20.0 s)"
    ) in summary.lines
    assert summary.ratios["command"]["c"]["cold_over_warm"] == 2.0
    with pytest.raises(ValueError, match="unknown command mode"):
        command.command_rows(
            case="c",
            folder=tmp_path / "rec",
            binary=binary,
            work_dir=tmp_path / "runs",
            modes=["hot"],
            params={},
            timeout_s=None,
            keep_outputs=False,
            version="x",
            run=fake_run,
        )


def test_report_seconds(tmp_path):
    assert command.report_seconds(output=tmp_path) is None
    (tmp_path / "spikesort_run.json").write_text(json.dumps({"timings_s": {"report": 2.25}}))
    assert command.report_seconds(output=tmp_path) == 2.25  # no log: the run record
    (tmp_path / "spikesort.log").write_text(
        "report written to a: 1 unit pages of 1 units in 0.50 s\n"
        "report written to b: 3 unit pages of 3 units in 0.75 s\n"
    )
    assert command.report_seconds(output=tmp_path) == 0.75  # the last report of the log


def test_speed_command_flag():
    parser = cli.build_parser()
    assert parser.parse_args(["--speed"]).speed_command == ["cold", "warm"]
    assert parser.parse_args(["--speed", "--speed-command"]).speed_command == []
    assert parser.parse_args(["--speed", "--speed-command", "warm"]).speed_command == ["warm"]
