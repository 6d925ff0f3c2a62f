"""The speed mode of the benchmark (benchmarks/speed.py, ``scripts/benchmark.py --speed``): the
floor pass, the stage costs, the table and the ratios, and one tiny end-to-end run (spikesort
only, a temporary cache)."""

from __future__ import annotations

import functools
import json
import math
import os
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cli, command, runner, scenarios, speed
from benchmarks.scoring import load_sorting_npz


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
        (["--speed", "--speed-tile-minutes", "-1"], "--speed-tile-minutes must be at least 0"),
        (["--speed", "--speed-tile-minutes", "601"], "--speed-tile-minutes must be at least 0"),
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


def test_speed_tile_flag_defaults_to_off():
    parser = cli.build_parser()
    assert parser.parse_args(["--speed"]).speed_tile_minutes == 0.0
    assert parser.parse_args(["--speed", "--speed-tile-minutes", "10"]).speed_tile_minutes == 10.0


def test_speed_command_flag():
    parser = cli.build_parser()
    assert parser.parse_args(["--speed"]).speed_command == ["cold", "warm"]
    assert parser.parse_args(["--speed", "--speed-command"]).speed_command == []
    assert parser.parse_args(["--speed", "--speed-command", "warm"]).speed_command == ["warm"]


# ---------------------------------------------------------------------------------------------
# a long recording as a short one played back to back (--speed-tile-minutes)


def test_tiled_sorting_shifts_each_copy():
    from spikeinterface.core import NumpySorting

    gt = NumpySorting.from_unit_dict([{"a": np.array([1, 5, 9]), "b": np.array([0, 7])}], sampling_frequency=30_000.0)
    tiled = scenarios.tiled_sorting(sorting=gt, copies=3, n_samples=10)
    assert list(tiled.unit_ids) == ["a", "b"] and tiled.sampling_frequency == 30_000.0
    assert tiled.get_unit_spike_train("a").tolist() == [1, 5, 9, 11, 15, 19, 21, 25, 29]
    assert tiled.get_unit_spike_train("b").tolist() == [0, 7, 10, 17, 20, 27]
    assert tiled.to_spike_vector().size == 3 * 5
    assert np.all(np.diff(tiled.to_spike_vector()["sample_index"]) >= 0)  # still sorted
    with pytest.raises(ValueError, match="length of one copy"):
        scenarios.tiled_sorting(sorting=gt, copies=2, n_samples=9)
    with pytest.raises(ValueError, match="copies"):
        scenarios.tiled_sorting(sorting=gt, copies=0, n_samples=10)


def test_tiled_recording_folder(tmp_path):
    """A 1 s, 8-channel binary folder played 3 times: loaded as the sorter's subprocess loads a
    recording folder, 3× the frames, copy 2 = copy 1, the probe, gains and offsets of the source,
    the ground truth tiled; the traces are not copied and a second call reuses the folder."""
    tiny = scenarios.Scenario("tile8", "np1_8", 3, 1.0, "none", "test")
    folder = scenarios.ensure_recording(cache_dir=tmp_path / "cache", scenario=tiny, seed=0, n_jobs=1)
    tiled = scenarios.ensure_tiled_recording(folder=folder, copies=3)
    assert tiled == folder.parent / "tile8_seed0_x3"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tile8_seed0", "tile8_seed0_x3"]  # no temp left
    assert not list(tiled.rglob("*.raw"))
    source = scenarios.load_recording(folder=folder)
    rec = scenarios.load_recording(folder=tiled)
    n = source.get_num_samples(0)
    assert n == 30_000 and rec.get_num_segments() == 1 and rec.get_num_samples(0) == 3 * n
    assert np.array_equal(rec.get_traces(start_frame=n, end_frame=2 * n), rec.get_traces(start_frame=0, end_frame=n))
    assert np.array_equal(rec.get_traces(start_frame=2 * n, end_frame=3 * n), source.get_traces())
    # a read across the seam: the end of one copy, then the start of the next
    seam = rec.get_traces(start_frame=n - 50, end_frame=n + 50)
    assert np.array_equal(
        seam, np.concatenate([source.get_traces(start_frame=n - 50), source.get_traces(end_frame=50)])
    )
    assert np.array_equal(rec.get_channel_locations(), source.get_channel_locations())
    assert np.array_equal(rec.get_channel_gains(), source.get_channel_gains())
    assert np.array_equal(rec.get_channel_offsets(), source.get_channel_offsets())
    assert rec.get_probe().model_name == source.get_probe().model_name and rec.get_dtype() == source.get_dtype()
    assert rec.frame_slice(start_frame=0, end_frame=2 * n + 7).get_num_samples() == 2 * n + 7  # the child's cut
    gt = load_sorting_npz(path=folder / "gt_sorting.npz")
    gt3 = load_sorting_npz(path=tiled / "gt_sorting.npz")
    assert list(gt3.unit_ids) == list(gt.unit_ids)
    for uid in gt.unit_ids:
        st = gt.get_unit_spike_train(uid)
        assert gt3.get_unit_spike_train(uid).tolist() == np.concatenate([st, st + n, st + 2 * n]).tolist()
    assert np.array_equal(np.load(tiled / "gt_unit_locations.npy"), np.load(folder / "gt_unit_locations.npy"))
    spec = json.loads((tiled / "scenario.json").read_text())["tiled"]
    assert spec["copies"] == 3 and spec["tile_samples"] == n and spec["base_folder"] == "tile8_seed0"
    assert spec["base"] == json.loads((folder / "scenario.json").read_text())
    stamp = (tiled / "recording" / "si_folder.json").stat().st_mtime_ns
    assert scenarios.ensure_tiled_recording(folder=folder, copies=3) == tiled
    assert (tiled / "recording" / "si_folder.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(ValueError, match="at least 2 copies"):
        scenarios.ensure_tiled_recording(folder=folder, copies=1)
    # the floor pass over the tiled frames: the tile once per copy, the last one partial
    binary = speed.binary_of(folder=folder)
    floor = speed.tiled_floor_pass(binary=binary, n_samples=2 * n + n // 2, threads=1)
    one = speed.floor_pass(
        path=binary["path"], n_channels=8, sampling_rate_hz=binary["sampling_rate_hz"], n_samples=n, threads=1
    )
    assert floor.n_samples == 2 * n + n // 2 and floor.wall_s > 0
    assert floor.n_chunks == 2 * one.n_chunks + math.ceil(one.n_chunks / 2)
    half = speed.floor_pass(
        path=binary["path"], n_channels=8, sampling_rate_hz=binary["sampling_rate_hz"], n_samples=n // 2, threads=1
    )
    expected = (2 * n * one.mean_square + n // 2 * half.mean_square) / (2 * n + n // 2)
    assert floor.mean_square == pytest.approx(expected, rel=1e-9)


def test_tiled_folder_in_the_sorter_subprocess(tmp_path):
    """The subprocess worker loads the tiled folder and cuts it as the speed mode asks (the
    stand-in sorter, which returns the folder's ground truth degraded); its memory is sampled
    over time when asked."""
    tiny = scenarios.Scenario("tile4", "np1_8", 4, 1.0, "none", "test")
    folder = scenarios.ensure_recording(cache_dir=tmp_path / "cache", scenario=tiny, seed=0, n_jobs=1)
    tiled = scenarios.ensure_tiled_recording(folder=folder, copies=2)
    report = runner.run_sorter_subprocess(
        sorter="spikesort",
        recording_folder=tiled,
        work_folder=tmp_path / "work",
        result_folder=tmp_path / "result",
        params={},
        n_jobs=1,
        timeout_s=120,
        dummy=True,
        poll_s=0.1,
        frame_range=(0, 50_000),
        rss_timeline_s=0.2,
    )
    assert report["status"] == "ok", report.get("error")
    sorting = load_sorting_npz(path=tmp_path / "result" / "sorting.npz")
    spikes = sorting.to_spike_vector()["sample_index"]
    assert spikes.max() < 50_000 and spikes.max() > 30_000  # the second copy, cut at the frame range
    timeline = report["rss_timeline"]
    assert len(timeline) >= 3 and all(len(p) == 2 for p in timeline)
    times = [t for t, _ in timeline]
    # one poll kept every 0.2 s at the most (the times are rounded to 0.1 s)
    assert times == sorted(times) and all(b - a > 0.1 for a, b in pairwise(times))
    assert max(mb for _, mb in timeline) <= report["peak_rss_mb"]
    summary = speed.rss_timeline_summary(timeline=timeline)
    assert summary["rss_first_quarter_mb"] > 0 and summary["rss_last_quarter_mb"] > 0


def test_rss_timeline_summary():
    # 0..100 s: 200 MB over the first quarter, then a climb, then 400 MB over the last quarter
    timeline = [[0.0, 100.0], [10.0, 200.0], [20.0, 200.0], [25.0, 300.0], [50.0, 350.0]]
    timeline += [[75.0, 390.0], [80.0, 400.0], [90.0, 400.0], [100.0, 410.0]]
    summary = speed.rss_timeline_summary(timeline=timeline)
    assert summary == {"rss_first_quarter_mb": 200.0, "rss_last_quarter_mb": 400.0}
    assert speed.rss_timeline_summary(timeline=list(reversed(timeline))) == summary  # order does not matter
    assert speed.rss_timeline_summary(timeline=[]) == {"rss_first_quarter_mb": None, "rss_last_quarter_mb": None}
    assert speed.rss_timeline_summary(timeline=[[3.0, 5.0]])["rss_last_quarter_mb"] is None
    # the ratio line under the table reads the two medians
    row = dict(_rows()[2], rss_first_quarter_mb=200.0, rss_last_quarter_mb=210.0)
    out = speed.speed_summary(rows=[row])
    assert out.ratios["rss_quarters"]["np1_384ch_5min"]["last_over_first"] == pytest.approx(1.05)
    assert "np1_384ch_5min 200 → 210 MB (×1.05)" in "\n".join(out.lines)


def test_speed_mode_on_a_tiled_recording(tmp_path, monkeypatch):
    """(b) with a 6 s tile: the 3 s case sorts the tile itself, the 12 s case the tile played
    twice (only the tile is saved); the rows say which, with the memory timeline of each run."""
    # runs of seconds: a point every 0.2 s, polled as often, so that even a child done in a second
    # leaves the two points the quarters need (polled each second, a fast run once left one)
    monkeypatch.setattr(speed, "RSS_TIMELINE_S", 0.2)
    fast_poll = functools.partial(speed.run_sorter_subprocess, poll_s=0.2)
    monkeypatch.setattr(speed, "run_sorter_subprocess", fast_poll)
    rows = speed.run_speed(
        scenarios=[],
        seed=0,
        sorters=["spikesort"],
        cache_dir=tmp_path / "cache",
        work_dir=tmp_path / "runs",
        rerun_peers=False,
        cached_peers_only=False,
        spikesort_params={},
        n_jobs=2,
        timeout_s=300,
        keep_outputs=False,
        channels=16,
        minutes=[0.05, 0.2],
        num_units=None,
        floor_threads=1,
        tile_minutes=0.1,
    )
    short, long = rows
    for row in rows:
        assert row["status"] == "ok", row.get("error")
        assert row["num_gt"] > 0 and row["well_detected"] is not None and row["floor_s"] > 0
        assert row["rss_timeline"] and row["rss_first_quarter_mb"] > 0 and row["rss_last_quarter_mb"] > 0
    recordings = tmp_path / "cache" / "recordings"
    assert sorted(p.name for p in recordings.iterdir()) == ["np1_16ch_6s_seed0", "np1_16ch_6s_seed0_x2"]
    assert (short["recording"], short["tiled_from_minutes"], short["duration_s"]) == ("16 ch × 3 s", None, 3.0)
    assert short["recording_folder"] == str(recordings / "np1_16ch_6s_seed0")
    assert (long["recording"], long["tiled_from_minutes"], long["tile_copies"]) == (
        "16 ch × 12 s (6 s tiled ×2)",
        0.1,
        2,
    )
    assert long["recording_folder"] == str(recordings / "np1_16ch_6s_seed0_x2") and long["duration_s"] == 12.0
    # the ground truth of both copies is scored: twice the tile's units' spikes, the same units
    assert long["num_gt"] == short["num_gt"]
    with pytest.raises(ValueError, match="tile_minutes"):
        speed.run_speed(
            scenarios=[],
            seed=0,
            sorters=[],
            cache_dir=tmp_path,
            work_dir=tmp_path,
            rerun_peers=False,
            cached_peers_only=False,
            spikesort_params={},
            n_jobs=1,
            timeout_s=None,
            keep_outputs=False,
            channels=16,
            minutes=[1.0],
            num_units=None,
            floor_threads=1,
            tile_minutes=-1.0,
        )


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only: /proc/self/status")
def test_a_child_reports_its_own_peak_rss_not_the_larger_parent_s_it_was_started_from():
    import subprocess
    import sys

    ballast = np.ones(400_000_000 // 8)  # 400 MB touched by this (parent) process
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[1]); from benchmarks.runner import _own_peak_mb; "
        "r = resource.getrusage(resource.RUSAGE_SELF); print(r.ru_maxrss / 1024, _own_peak_mb(r))"
    )
    root = str(Path(runner.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, check=True).stdout
    inherited, own = map(float, out.split())
    assert ballast.sum() > 0
    assert inherited > 400  # what Linux keeps across exec
    assert own < 200


def test_a_poll_after_the_process_tree_exited_is_no_memory_sample(tmp_path, monkeypatch):
    import sys

    from benchmarks import runner

    # the tree can exit between the liveness check and the memory read: that read is 0 MB, and
    # a 0 in the timeline's last quarter would read as memory falling to nothing
    readings = iter([50.0, 0.0, 60.0, 0.0, 70.0] + [0.0] * 1000)
    monkeypatch.setattr(runner, "_tree_memory_mb", lambda proc: next(readings))
    polled = runner.run_polled(
        [sys.executable, "-c", "import time; time.sleep(1.0)"],
        log_path=tmp_path / "log",
        timeout_s=30,
        poll_s=0.05,
        timeline_s=0.01,
    )
    assert polled.returncode == 0 and polled.peak_mb == 70.0
    assert [mb for _, mb in polled.timeline] == [50.0, 60.0, 70.0]
