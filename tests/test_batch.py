"""spikesort batch: manifests, the local dask cluster, a separately started cluster, resume."""

from __future__ import annotations

import csv
import faulthandler
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from clitools import invoke as _invoke

from spikesort.batch.cluster import _Cluster, cluster_layout
from spikesort.batch.manifest import read_manifest
from spikesort.batch.task import _is_finished
from spikesort.memory import task_peak_rss as _PeakRss
from spikesort.params import Params
from spikesort.pipeline.checkpoints import KILL_ENV, is_unfinished

N_CHANNELS = 8
RATE = 30000


@pytest.fixture(autouse=True)
def _timeout_guard(request):
    """A hung cluster must not hang CI. After the limit the test gets a SIGINT: `spikesort batch`
    cancels its tasks, closes its cluster and exits 130, so the test fails with its output and
    the finally blocks stop the processes it started. Should even that hang, faulthandler dumps
    every thread's stack and ends the process a minute later."""
    limit = 240 if "a_local_cluster" in request.node.name or "separately" in request.node.name else 60
    timer = threading.Timer(limit, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(limit + 60, exit=True)
    yield
    timer.cancel()
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """8 channels x 8 s of simulated units as an int16 binary, and its probe JSON."""
    from probeinterface import ProbeGroup, write_probeinterface

    from spikesort.demo import make_demo_recording

    folder = tmp_path_factory.mktemp("batch_source")
    recording, _ = make_demo_recording(duration_s=8.0, n_channels=N_CHANNELS, n_units=4, seed=1)
    np.round(recording.get_traces() / 0.195).astype(np.int16).tofile(folder / "rec.bin")
    group = ProbeGroup()
    group.add_probe(recording.get_probe())
    write_probeinterface(folder / "probe.json", group)
    return folder


@pytest.fixture
def data(source, tmp_path):
    """a.bin and b.bin (sortable), broken.bin (size not a multiple of 8 channels x 2 bytes), probe.json."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(source / "rec.bin", folder / "a.bin")
    # b: the same traces shifted by 1 s, so the two recordings differ
    x = np.fromfile(source / "rec.bin", dtype=np.int16).reshape(-1, N_CHANNELS)
    np.roll(x, RATE, axis=0).tofile(folder / "b.bin")
    (folder / "broken.bin").write_bytes((source / "rec.bin").read_bytes()[:100001])
    shutil.copy(source / "probe.json", folder / "probe.json")
    return folder


TOML_GLOB = f"""
# every .bin beside this file, one probe for all
probe = "probe.json"
sampling_rate = {RATE}
n_channels = {N_CHANNELS}
dtype = "int16"
glob = "*.bin"
"""


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "batch_summary.csv", newline="", encoding="utf8") as fh:
        return {row["name"]: row for row in csv.DictReader(fh)}


def _log_interval(log: Path, name: str) -> tuple[float, float]:
    """When the worker started and finished ``name``, from the timestamps of its log."""

    def stamp(line):
        return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000

    lines = log.read_text().splitlines()
    start = [ln for ln in lines if f"batch: sorting {name} " in ln][-1]
    end = [ln for ln in lines if f"batch: {name} took" in ln][-1]
    return stamp(start), stamp(end)


# --------------------------------------------------------------------------- manifests


def test_toml_and_csv_manifests_read_the_same(data, tmp_path):
    out = tmp_path / "out"
    toml = data / "m.toml"
    toml.write_text(f"""
probe = "probe.json"
sampling_rate = {RATE}
n_channels = {N_CHANNELS}
dtype = "int16"
glob = "[ab].bin"

[[recording]]
name = "again"
path = "a.bin"
format = "binary"
offset = 0
probe = "tetrode"
n_channels = 4
""")
    csv_file = data / "m.csv"
    csv_file.write_text(f"""# a comment line
path,name,probe,sampling_rate,n_channels,dtype,format,offset
[ab].bin,,probe.json,{RATE},{N_CHANNELS},int16,,

a.bin,again,tetrode,{RATE},4,int16,binary,0
""")
    from_toml = read_manifest(toml, out_root=out)
    from_csv = read_manifest(csv_file, out_root=out)
    for jobs in (from_toml, from_csv):
        assert [j.name for j in jobs] == ["a", "b", "again"]
        a, b, again = jobs
        assert a.path == data / "a.bin" and b.path == data / "b.bin" and again.path == data / "a.bin"
        assert a.output == out / "a" and again.output == out / "again"
        assert a.probe == str(data / "probe.json")  # relative to the manifest
        assert again.probe == "tetrode"  # a bundled name stays a name
        assert (a.sampling_rate_hz, a.n_channels, a.dtype, a.fmt) == (RATE, N_CHANNELS, "int16", None)
        assert (again.n_channels, again.fmt, again.offset_bytes) == (4, "binary", 0)
    assert [dataclass_fields(j) for j in from_toml] == [dataclass_fields(j) for j in from_csv]


def dataclass_fields(job) -> tuple:
    return (
        job.name,
        job.path,
        job.output,
        job.probe,
        job.fmt,
        job.sampling_rate_hz,
        job.n_channels,
        job.dtype,
        job.offset_bytes,
    )


RAW = f'sampling_rate = {RATE}\nn_channels = {N_CHANNELS}\ndtype = "int16"\nprobe = "probe.json"\n'
CSV_HEAD = "path,probe,sampling_rate,n_channels,dtype\n"
CSV_ROW = f"probe.json,{RATE},{N_CHANNELS},int16"

MANIFEST_ERRORS = [
    ("missing.toml", None, "manifest not found"),
    ("m.txt", "path\na.bin\n", "must be a .toml or .csv file"),
    ("m.toml", "probe = [unclosed\n", "is not valid TOML"),
    ("m.toml", 'prob = "tetrode"\nglob = "*.bin"\n', "unknown key 'prob' (did you mean 'probe'?)"),
    ("m.toml", 'path = "a.bin"\n', "[[recording]]"),
    ("m.toml", RAW + '[[recording]]\npath = "a.bin"\nn_chanels = 8\n', "did you mean 'n_channels'?"),
    ("m.toml", RAW + '[[recording]]\nname = "x"\n', "recording 1: no path"),
    ("m.toml", RAW + '[[recording]]\npath = "nope.bin"\n', "recording not found"),
    ("m.toml", RAW + 'glob = "*.dat"\n', "matches no file"),
    (
        "m.toml",
        RAW.replace("n_channels = 8", 'n_channels = "eight"') + 'glob = "*.bin"\n',
        "n_channels must be a whole number",
    ),
    ("m.toml", RAW + 'format = "bin"\nglob = "*.bin"\n', "unknown format 'bin'"),
    ("m.toml", RAW.replace('"probe.json"', '"tetrod"') + 'glob = "*.bin"\n', "unknown probe 'tetrod'"),
    ("m.toml", RAW + '[[recording]]\npath = "a.bin"\nname = "x/y"\n', "cannot be a folder name"),
    ("m.toml", RAW + 'glob = "*.bin"\n[[recording]]\npath = "b.bin"\nname = "A"\n', "two recordings are named"),
    ("m.csv", "", "is empty"),
    ("m.csv", "path,sampling_rte\na.bin,30000\n", "unknown column 'sampling_rte' (did you mean 'sampling_rate'?)"),
    ("m.csv", "name,probe\nx,tetrode\n", "no 'path' column"),
    ("m.csv", "path,path\na.bin,b.bin\n", "column 'path' appears twice"),
    ("m.csv", CSV_HEAD + f"a.bin,{CSV_ROW},extra\n", "line 2: 6 cells but the header has 5 columns"),
    ("m.csv", CSV_HEAD + f"a.bin,{CSV_ROW}\nb.bin,{CSV_ROW}\n,{CSV_ROW}\n", "line 4: no path"),
    ("m.csv", "path,name\na.bin,same\nb.bin,Same\n", "two recordings are named 'Same'"),
    ("m.csv", "path,offset\na.bin,-1\n", "offset must be >= 0"),
    ("m.csv", "path,sampling_rate\na.bin,0\n", "sampling_rate must be > 0"),
]


@pytest.mark.parametrize(
    "filename,text,needle", MANIFEST_ERRORS, ids=[f"{i}-{e[2][:24]}" for i, e in enumerate(MANIFEST_ERRORS)]
)
def test_manifest_mistakes_are_one_line_and_exit_2(data, tmp_path, filename, text, needle):
    manifest = data / filename
    if text is not None:
        manifest.write_text(text)
    out = tmp_path / "out"
    r = _invoke("batch", manifest, "-o", out)
    _assert_user_error(r, needle)
    assert not out.exists()  # nothing is made (and no cluster started) before the manifest is right


def test_option_mistakes_are_one_line_and_exit_2(data, tmp_path):
    manifest = data / "m.toml"
    manifest.write_text(TOML_GLOB)
    _assert_user_error(
        _invoke("batch", manifest, "-o", tmp_path / "o", "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"),
        "--workers and --threads shape the local cluster",
    )
    _assert_user_error(
        _invoke("batch", manifest, "-o", tmp_path / "o", "--set", "detect_treshold=6"),
        "did you mean 'detect_threshold'",
    )
    # an output folder that holds an input would be resumed or overwritten: refused
    (tmp_path / "o" / "a").mkdir(parents=True)
    shutil.copy(data / "a.bin", tmp_path / "o" / "a" / "a.bin")
    inside = data / "inside.toml"
    inside.write_text(RAW + f'[[recording]]\npath = "{tmp_path / "o" / "a" / "a.bin"}"\n')
    _assert_user_error(_invoke("batch", inside, "-o", tmp_path / "o"), "contains the input")
    (tmp_path / "file").write_text("x")
    _assert_user_error(_invoke("batch", manifest, "-o", tmp_path / "file"), "is a file, not a folder")


def test_unreachable_scheduler_is_a_user_error(data, tmp_path):
    import dask

    manifest = data / "m.toml"
    manifest.write_text(TOML_GLOB)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        r = _invoke("batch", manifest, "-o", tmp_path / "o", "--scheduler", f"tcp://127.0.0.1:{_closed_port()}")
    _assert_user_error(r, "cannot connect to the dask scheduler at tcp://127.0.0.1:")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_user_error(result, needle: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("spikesort: error: "), lines
    assert sum("error" in line.lower() for line in lines) == 1, lines
    assert "Traceback" not in result.output + result.stderr
    assert needle in lines[-1], (needle, lines[-1])


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    "cores,n,memory_gb,expected",
    [
        (1, 4, None, (1, 1)),
        (2, 4, None, (1, 2)),  # few cores: one worker holds them all, as `spikesort run` would
        (4, 4, None, (1, 4)),
        (6, 4, None, (2, 3)),
        (8, 4, None, (2, 4)),
        (16, 4, None, (4, 4)),
        (16, 1, None, (1, 16)),  # one recording: one worker with every core
        (16, 4, 8, (2, 8)),  # memory for two recordings at a time
    ],
)
def test_default_cluster_layout(cores, n, memory_gb, expected):
    memory = memory_gb * 2**30 if memory_gb else None
    workers, threads = cluster_layout(cores=cores, n_recordings=n, memory_b=memory)
    assert (workers, threads) == expected
    assert workers * threads <= cores


def test_cluster_layout_options():
    assert cluster_layout(cores=2, n_recordings=4, workers=2) == (2, 1)
    assert cluster_layout(cores=8, n_recordings=4, threads=2) == (4, 2)
    assert cluster_layout(cores=8, n_recordings=2, threads=2) == (2, 2)
    assert cluster_layout(cores=2, n_recordings=4, workers=3, threads=3) == (3, 3)  # the user's word


@pytest.mark.parametrize("sample", [False, True])
def test_peak_memory_is_per_task(sample):
    """The figure of one task is not inflated by an earlier, larger one in the same process."""

    def task(mb):
        peak = _PeakRss(sample=sample)
        x = np.ones(mb * 2**20 // 8)
        time.sleep(0.2)  # let the sampler see it
        del x
        return peak.stop()

    big = task(400)
    small = task(40)
    if sys.platform.startswith("linux"):
        assert big is not None and small is not None
        assert big - small > 250, (big, small)


# --------------------------------------------------------------------------- overhead


def _worker_settings() -> dict:
    """What a task sees of its worker (runs inside the worker)."""
    import dask
    from distributed import get_worker

    worker = get_worker()
    return dict(
        malloc_trim=os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        callbacks=sorted(worker.periodic_callbacks),
        tick_ms=worker.periodic_callbacks["tick"].callback_time,
        monitor_ms=worker.periodic_callbacks["monitor"].callback_time,
        profile=dask.config.get("distributed.worker.profile.enabled"),
    )


def test_local_workers_drop_the_dask_defaults_that_slow_a_sort(monkeypatch):
    """Each of these was measured to slow a recording in a default worker (batch.local_cluster_config)."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # as in a fresh `spikesort batch`
    cluster = _Cluster(scheduler=None, workers=1, threads=1, n_recordings=1)
    try:
        seen = cluster.client.submit(_worker_settings, pure=False).result()
    finally:
        cluster.close()
    assert seen["malloc_trim"] is None  # glibc keeps its adaptive mmap threshold: no page fault storm
    assert not seen["profile"] and "profile" not in seen["callbacks"]  # no 10 ms stack sampling
    assert "memory_monitor" not in seen["callbacks"]  # no spill/pause polling every 100 ms
    assert seen["tick_ms"] >= 1000 and seen["monitor_ms"] >= 1000
    assert {"heartbeat", "tick"} <= set(seen["callbacks"])  # the worker itself is intact


def test_the_batch_driver_never_imports_the_sorter(data, tmp_path):
    """The driver (manifest checks, skip checks, the cluster) leaves the pipeline and its
    imports (scipy.signal, spikeinterface, numba kernels: seconds) to the workers."""
    manifest = data / "batch.toml"
    manifest.write_text(TOML_GLOB)
    out = tmp_path / "sorted"
    for name in ("a", "b"):  # existing, unfinished folders: the skip check reads them
        (out / name).mkdir(parents=True)
    code = (
        "import sys\n"
        "from spikesort import cli\n"
        "from spikesort.batch import _is_finished, read_manifest\n"
        "from spikesort.params import Params\n"
        "jobs = read_manifest(sys.argv[1], out_root=sys.argv[2])\n"
        "assert not any(_is_finished(j.output, Params()) for j in jobs)\n"
        "print(' '.join(m for m in ('spikesort.pipeline.run', 'scipy.signal', 'spikeinterface', 'numba') "
        "if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(manifest), str(out)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


# --------------------------------------------------------------------------- real clusters


def test_batch_on_a_local_cluster(data, tmp_path, monkeypatch):
    manifest = data / "batch.toml"
    manifest.write_text(TOML_GLOB)
    out = tmp_path / "sorted"

    # 1. two workers x one thread; the broken recording fails, the others are sorted
    r = _invoke("batch", manifest, "-o", out, "--workers", "2", "--threads", "1", "--quiet")
    assert r.exit_code == 1, (r.output, r.stderr)
    assert "Traceback" not in r.output + r.stderr
    rows = _rows(out)
    assert list(rows) == ["a", "b", "broken"]
    for name in ("a", "b"):
        row = rows[name]
        assert row["status"] == "done", row
        assert int(row["units"]) > 0 and 0 <= int(row["good_units"]) <= int(row["units"])
        assert float(row["wall_s"]) > 0 and float(row["peak_rss_mb"]) > 50
        assert row["n_jobs"] == "1"  # the worker's one thread
        assert int(row["pid"]) != os.getpid()  # sorted in a worker process
        assert (out / name / "spike_times.npy").is_file()
        assert f"batch: {name} done" in (out / name / "spikesort.log").read_text()
        assert json.loads((out / name / "spikesort_run.json").read_text())["params"]["n_jobs"] == 1
    broken = rows["broken"]
    assert broken["status"] == "failed" and broken["units"] == ""
    assert broken["error"].startswith("error: recording file") and "not a multiple of the frame size" in broken["error"]
    assert broken["error"] in (out / "broken" / "spikesort.log").read_text()
    assert any("broken failed: error: recording file" in line for line in r.stderr.splitlines())
    assert r.stderr.strip().splitlines()[-1].startswith("spikesort: 1 of 3 recordings failed")
    table = r.stdout.splitlines()
    assert table[0].split()[:6] == ["recording", "status", "units", "good", "wall", "s"]
    assert re.match(r"broken\s+failed\s+-\s+-\s+[\d.]+\s+\d+\s+error: recording file", table[3])
    assert "2 sorted, 0 finished earlier, 1 failed" in r.stdout
    finished = {n: (out / n / "spike_times.npy").stat().st_mtime_ns for n in ("a", "b")}

    # 2. the broken file is repaired, and the worker sorting it is killed after detection
    shutil.copy(data / "b.bin", data / "broken.bin")
    monkeypatch.setenv(KILL_ENV, "detect")
    r = _invoke("batch", manifest, "-o", out, "--workers", "1", "--quiet")
    assert r.exit_code == 1, (r.output, r.stderr)
    rows2 = _rows(out)
    for name in ("a", "b"):  # finished earlier: skipped, with their figures kept
        assert rows2[name]["status"] == "skipped"
        assert {k: rows2[name][k] for k in ("units", "good_units", "wall_s", "pid")} == {
            k: rows[name][k] for k in ("units", "good_units", "wall_s", "pid")
        }
    assert rows2["broken"]["status"] == "failed" and "worker sorting it died" in rows2["broken"]["error"]
    assert is_unfinished(out / "broken")

    # 3. the same command again: the unfinished recording resumes after its detect checkpoint
    monkeypatch.delenv(KILL_ENV)
    r = _invoke("batch", manifest, "-o", out, "--quiet")
    assert r.exit_code == 0, (r.output, r.stderr)
    rows3 = _rows(out)
    assert [rows3[n]["status"] for n in ("a", "b", "broken")] == ["skipped", "skipped", "done"]
    run = json.loads((out / "broken" / "spikesort_run.json").read_text())
    assert {"preprocess", "detect"} <= set(run["reused_stages"])
    # one log holds the three attempts: the size error, the killed run, the resumed run
    log = (out / "broken" / "spikesort.log").read_text()
    assert log.count("batch: sorting broken ") == 3 and "not a multiple of the frame size" in log
    assert {n: (out / n / "spike_times.npy").stat().st_mtime_ns for n in ("a", "b")} == finished
    assert not (out / ".spikesort-batch").exists()
    # a finished folder counts as finished for the same parameters only (threads do not matter)
    assert _is_finished(out / "a", Params()) and _is_finished(out / "a", Params(n_jobs=2))
    assert not _is_finished(out / "a", Params(detect_threshold=6.0))


def _wait_for(predicate, *, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process {p.args[:3]} exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_batch_on_a_separately_started_cluster(data, tmp_path):
    """`dask scheduler` and `dask worker` started apart (as on SLURM); spikesort only connects."""
    scheduler_file = tmp_path / "scheduler.json"
    logs = tmp_path / "dask_logs"
    logs.mkdir()
    # random free ports (--port 0); the address is read back from the scheduler file; the
    # timeouts end both processes by themselves should this test die before stopping them
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
            "--idle-timeout",
            "60",
        ],
        stdout=open(logs / "scheduler.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        _wait_for(
            lambda: scheduler_file.is_file() and scheduler_file.stat().st_size > 0,
            timeout=60,
            what="the scheduler file",
            procs=[scheduler],
        )
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        # no nanny: the worker is this very process, so its pid identifies it
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--host",
                "127.0.0.1",
                "--nthreads",
                "2",
                "--no-nanny",
                "--no-dashboard",
                "--death-timeout",
                "60",
            ],
            stdout=open(logs / "worker.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        manifest = data / "batch.csv"
        manifest.write_text(
            f"name,path,probe,sampling_rate,n_channels,dtype\n"
            f"first,a.bin,probe.json,{RATE},{N_CHANNELS},int16\n"
            f"second,b.bin,probe.json,{RATE},{N_CHANNELS},int16\n"
        )
        out = tmp_path / "sorted"
        r = _invoke("batch", manifest, "-o", out, "--scheduler", address)
        assert r.exit_code == 0, (r.output, r.stderr, (logs / "worker.log").read_text()[-3000:])
        rows = _rows(out)
        for name in ("first", "second"):
            row = rows[name]
            assert row["status"] == "done", row
            assert int(row["pid"]) == worker.pid  # sorted by the worker this test started
            assert row["worker"].startswith("tcp://127.0.0.1:") and row["worker"] != address
            assert row["n_jobs"] == "2"  # the worker's threads, all given to the one recording
            assert (out / name / "spike_times.npy").is_file()
        assert f"the cluster at {address}" in r.stdout
        # the worker has two threads but sorts one recording at a time (spikesort's resource)
        (s1, e1), (s2, e2) = (_log_interval(out / n / "spikesort.log", n) for n in ("first", "second"))
        assert e1 <= s2 or e2 <= s1, ((s1, e1), (s2, e2))
    finally:
        if worker is not None:
            _stop(worker)
        _stop(scheduler)


def test_a_worker_opens_its_log_though_another_removed_the_emptied_scratch_folder_meanwhile(tmp_path, monkeypatch):
    # a dask worker finishing its recording removes the shared scratch folder once it is empty;
    # another worker that had just made it must make it again (CI, 2026-12-05: FileNotFoundError)
    import logging

    from spikesort.batch import task

    scratch = tmp_path / ".spikesort-batch" / "b.log"
    real = logging.FileHandler
    calls = []

    def racing(path, *a, **kw):
        calls.append(path)
        if len(calls) == 1:
            Path(path).parent.rmdir()  # the other worker, between mkdir and open
        return real(path, *a, **kw)

    monkeypatch.setattr(task.logging, "FileHandler", racing)
    handler = task._open_scratch(scratch)
    try:
        assert len(calls) == 2 and scratch.is_file()
    finally:
        handler.close()

    # a folder that cannot be made is still an error, after the tries
    def never(path, *a, **kw):
        calls.append(path)
        raise FileNotFoundError(path)

    monkeypatch.setattr(task.logging, "FileHandler", never)
    with pytest.raises(FileNotFoundError):
        task._open_scratch(scratch, tries=3)
    assert len(calls) == 5
