"""Never lose a run, never touch the data (issue 6).

* Checkpoints and --resume: real ``spikesort run`` processes killed (SIGKILL) or interrupted
  (SIGINT) at named points, resumed, and compared byte for byte with an uninterrupted run.
  The named points come from the pipeline's test hook ``SPIKESORT_TEST_KILL_AT`` (see
  spikesort/checkpoints.py); one kill lands at whatever point the run has reached in preprocessing.
* Determinism over threads and chunk sizes.
* Bad input: one line on stderr, exit 2, no traceback, the input untouched, no complete-looking
  output; and the data conditions that must not stop a run (dead/noisy channels, clipping, a
  recording shorter than a chunk, no spikes at all).

Every test that reads a recording checks that its bytes and mtime are unchanged afterwards.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from clitools import AS_32_CHANNELS, PHY_FILES
from clitools import file_state as _state
from clitools import invoke as _invoke

from spikesort.errors import SpikesortError
from spikesort.pipeline import checkpoints

FS = 30000.0
N_CH = 8
RAW = ["--sampling-rate", "30000", "--n-channels", str(N_CH), "--dtype", "int16"]
# the kill tests stream 1 s chunks so every streamed stage has several of them
KILL_ARGS = ["--chunk-s", "1", "-q"]
ALL_STAGES = ["preprocess", "detect", "cluster", "match", "curate"]


# --------------------------------------------------------------------------- helpers


def _assert_user_error(result, *needles: str):
    """Exit 2, the last stderr line is the one error line, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("spikesort: error: "), lines
    assert sum("spikesort: error" in line for line in lines) == 1, lines
    assert "Traceback" not in result.output + result.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def _assert_no_result(out: Path) -> None:
    """Nothing there, or nothing that looks like a finished run."""
    if out.exists():
        assert not checkpoints.is_complete(out)
        assert not (out / checkpoints.MARKER_FILE).exists()


def _write_probe(path: Path, n_channels: int = N_CH) -> Path:
    from probeinterface import ProbeGroup, generate_multi_columns_probe, write_probeinterface

    probe = generate_multi_columns_probe(num_columns=2, num_contact_per_column=n_channels // 2, xpitch=20, ypitch=20)
    probe.set_device_channel_indices(np.arange(n_channels))
    group = ProbeGroup()
    group.add_probe(probe)
    write_probeinterface(path, group)
    return path


def _run_record(folder: Path) -> dict:
    return json.loads((folder / "spikesort_run.json").read_text())


def _assert_same_folder(got: Path, want: Path) -> None:
    """Byte for byte, except the log and the timings (and which stages were reused)."""
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names
    assert checkpoints.STATE_DIR not in names and checkpoints.MARKER_FILE in names
    for name in names:
        if name == checkpoints.LOG_FILE or name == "report":  # the figures are drawn from the files compared here
            continue
        if name == "spikesort_run.json":
            a, b = _run_record(got), _run_record(want)
            for key in ("timings_s", "peak_rss_mb", "store_read_s", "reused_stages"):
                a.pop(key), b.pop(key)
            a["params"].pop("n_jobs"), b["params"].pop("n_jobs")  # a resume may use other threads
            assert a == b
            continue
        assert (got / name).read_bytes() == (want / name).read_bytes(), name


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """8 channels x 8 s of simulated units, as an int16 binary file with a probe JSON."""
    from probeinterface import ProbeGroup, write_probeinterface

    from spikesort.demo import make_demo_recording

    folder = tmp_path_factory.mktemp("rec")
    recording, _ = make_demo_recording(duration_s=8.0, n_channels=N_CH, n_units=4, seed=1)
    traces = np.round(recording.get_traces() / 0.195).astype(np.int16)
    traces.tofile(folder / "rec.bin")
    group = ProbeGroup()
    group.add_probe(recording.get_probe())
    write_probeinterface(folder / "probe.json", group)
    data, probe = folder / "rec.bin", folder / "probe.json"
    return SimpleNamespace(
        data=data,
        probe=probe,
        traces=traces,
        folder=folder,
        args=[data, "--probe", probe, *RAW],
        before=(_state(data), _state(probe)),
    )


def _untouched(rec) -> None:
    assert (_state(rec.data), _state(rec.probe)) == rec.before


def _open(rec, data: Path | None = None):
    from spikesort.io.probes import attach_probe, load_probe
    from spikesort.io.recordings import open_recording

    recording = open_recording(data or rec.data, sampling_rate_hz=FS, n_channels=N_CH, dtype="int16")
    return attach_probe(recording, load_probe(rec.probe))


@pytest.fixture(scope="module")
def reference(rec, tmp_path_factory):
    """An uninterrupted run with the kill tests' arguments."""
    out = tmp_path_factory.mktemp("reference") / "out"
    r = _invoke("run", *rec.args, "-o", out, *KILL_ARGS)
    assert r.exit_code == 0, r.output + r.stderr
    assert checkpoints.is_complete(out) and len(np.load(out / "spike_times.npy")) > 50
    _untouched(rec)
    return out


def _spawn(rec, out: Path, *, kill_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop(checkpoints.KILL_ENV, None)
    if kill_at:
        env[checkpoints.KILL_ENV] = kill_at
    cmd = [
        sys.executable,
        "-c",
        "from spikesort.cli import main; main()",
        "run",
        *[str(a) for a in rec.args],
        "-o",
        str(out),
        *KILL_ARGS,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {path.name} appeared: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def _resume_and_compare(rec, out: Path, reference: Path, *, reused: list[str] | None, extra=()) -> None:
    # an unfinished folder says so, and is not mistaken for a result
    assert not checkpoints.is_complete(out)
    _assert_user_error(_invoke("info", out), "unfinished", "--resume")
    _assert_user_error(_invoke("run", *rec.args, "-o", out, *KILL_ARGS), "unfinished run", "--resume", "--overwrite")
    r = _invoke("run", *rec.args, "-o", out, *KILL_ARGS, "--resume", *extra)
    assert r.exit_code == 0, r.output + r.stderr
    _assert_same_folder(out, reference)
    if reused is not None:
        assert _run_record(out)["reused_stages"] == reused
    # the log of the killed attempt is kept, the resumed one goes on after it
    assert (out / checkpoints.LOG_FILE).read_text().count("spikesort.cli: spikesort ") == 2
    _untouched(rec)


# --------------------------------------------------------------------------- kill tests

# (kill point, the stages the resumed run must reuse)
FAST_KILLS = [
    ("match:2", ["preprocess", "detect", "cluster"]),  # during matching
    ("export", ALL_STAGES),
]  # the Phy files are written, the completion marker is not
SLOW_KILLS = [
    ("preprocess:3", []),  # during preprocessing, after 3 of its 4 chunks (2 s each)
    ("preprocess", ["preprocess"]),
    ("cluster:start", ["preprocess", "detect"]),  # during clustering
    ("match", ["preprocess", "detect", "cluster", "match"]),
    ("curate:start", ["preprocess", "detect", "cluster", "match"]),
    ("export:2", ALL_STAGES),
]  # during export (features of chunk 3 on)


def _kill_and_resume(rec, reference, tmp_path, point, reused, extra=()):
    out = tmp_path / "out"
    proc = _spawn(rec, out, kill_at=point)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, stderr)
    if point == "export":
        # every Phy file is in place, and still the folder is not complete
        assert all((out / f).is_file() for f in PHY_FILES)
    _resume_and_compare(rec, out, reference, reused=reused, extra=extra)


@pytest.mark.parametrize("point, reused", FAST_KILLS)
def test_kill_and_resume(rec, reference, tmp_path, point, reused):
    # threads never change a result, so a resume may use another count and still reuse everything
    _kill_and_resume(rec, reference, tmp_path, point, reused, extra=["--n-jobs", "1"])


@pytest.mark.slow
@pytest.mark.parametrize("point, reused", SLOW_KILLS)
def test_kill_and_resume_more_points(rec, reference, tmp_path, point, reused):
    _kill_and_resume(rec, reference, tmp_path, point, reused)


@pytest.mark.slow
def test_kill_at_a_moment_during_preprocessing(rec, reference, tmp_path):
    """SIGKILL at whatever point preprocessing has reached once the scratch traces exist."""
    out = tmp_path / "out"
    proc = _spawn(rec, out)
    _wait_for(out / checkpoints.STATE_DIR / checkpoints.TRACES_FILE, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _resume_and_compare(rec, out, reference, reused=None)


@pytest.mark.parametrize("when", [pytest.param("preprocessing", marks=pytest.mark.slow), "after preprocessing"])
def test_ctrl_c_exits_cleanly_and_resumes(rec, reference, tmp_path, when):
    out = tmp_path / "out"
    proc = _spawn(rec, out)
    state = out / checkpoints.STATE_DIR
    _wait_for(state / (checkpoints.TRACES_FILE if when == "preprocessing" else "preprocess.json"), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, (proc.returncode, stderr)
    lines = stderr.strip().splitlines()
    assert lines[-1] == "spikesort: interrupted", lines
    assert any("--resume" in line for line in lines[:-1]), lines
    assert "Traceback" not in stdout + stderr
    if when == "after preprocessing":
        assert (state / checkpoints.TRACES_FILE).is_file()  # kept for the resume
    _resume_and_compare(rec, out, reference, reused=None)
    if when == "after preprocessing":
        assert _run_record(out)["reused_stages"][:1] == ["preprocess"]


# --------------------------------------------------------------------------- resume semantics


def test_resume_reuses_what_matches_and_recomputes_the_rest(rec, tmp_path, monkeypatch):
    from spikesort.pipeline import sort

    recording = _open(rec)
    out = tmp_path / "out"
    # an interrupt (the hook sends SIGINT to this process) in the middle of matching
    monkeypatch.setenv(checkpoints.KILL_ENV, "match:2@SIGINT")
    with pytest.raises(KeyboardInterrupt):
        sort(recording, out, chunk_s=1.0)
    monkeypatch.delenv(checkpoints.KILL_ENV)
    assert checkpoints.finished_stages(out) == ["preprocess", "detect", "cluster"]
    assert (out / checkpoints.STATE_DIR / checkpoints.TRACES_FILE).is_file()  # kept for the resume

    # another matching threshold: clustering and before are reused, matching on is recomputed
    resumed = sort(recording, out, resume=True, chunk_s=1.0, match_threshold=6.0)
    assert _run_record(out)["reused_stages"] == ["preprocess", "detect", "cluster"]
    assert checkpoints.is_complete(out) and not (out / checkpoints.STATE_DIR).exists()
    fresh = sort(recording, tmp_path / "fresh", chunk_s=1.0, match_threshold=6.0)
    for name in ("spike_times.npy", "spike_clusters.npy", "templates.npy", "amplitudes.npy"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    np.testing.assert_array_equal(resumed.spike_times, fresh.spike_times)

    # a finished folder of the same inputs is read back, not sorted again nor touched
    files = {p.name: _state(p) for p in out.iterdir()}
    again = sort(recording, out, resume=True, chunk_s=1.0, match_threshold=6.0, n_jobs=1)
    assert {p.name: _state(p) for p in out.iterdir()} == files
    np.testing.assert_array_equal(again.spike_times, fresh.spike_times)
    np.testing.assert_array_equal(again.spike_clusters, fresh.spike_clusters)
    np.testing.assert_array_equal(again.amplitudes, fresh.amplitudes)
    assert list(again.labels) == list(fresh.labels) and again.n_units == fresh.n_units
    # ... and one of other parameters is never replaced by a resume
    with pytest.raises(SpikesortError, match=r"other parameters \(match_threshold: 6.0 -> 5.0\).*--overwrite"):
        sort(recording, out, resume=True, chunk_s=1.0)
    assert {p.name: _state(p) for p in out.iterdir()} == files
    with pytest.raises(SpikesortError, match="exclude each other"):
        sort(recording, out, resume=True, overwrite=True)
    _untouched(rec)


def test_resume_with_a_compressed_trace_store(rec, tmp_path, monkeypatch):
    """Interrupted after preprocessing, a run on the compressed scratch copy resumes from its
    blocks and index and gives the files of an uninterrupted one."""
    from spikesort.pipeline import sort

    recording = _open(rec)
    out = tmp_path / "out"
    monkeypatch.setenv(checkpoints.KILL_ENV, "match:2@SIGINT")
    with pytest.raises(KeyboardInterrupt):
        sort(recording, out, chunk_s=1.0, trace_store="compressed")
    monkeypatch.delenv(checkpoints.KILL_ENV)
    state = out / checkpoints.STATE_DIR
    assert sorted(p.name for p in state.glob("temp_wh*")) == ["temp_wh.blosc", "temp_wh.blosc.index.npy"]
    sort(recording, out, resume=True, chunk_s=1.0, trace_store="compressed")
    assert _run_record(out)["reused_stages"] == ["preprocess", "detect", "cluster"]
    assert checkpoints.is_complete(out) and not state.exists()
    sort(recording, tmp_path / "fresh", chunk_s=1.0, trace_store="compressed")
    for name in ("spike_times.npy", "spike_clusters.npy", "templates.npy", "amplitudes.npy", "pc_features.npy"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    _untouched(rec)


def test_a_changed_recording_invalidates_every_checkpoint(rec, tmp_path, monkeypatch):
    from spikesort.pipeline import sort

    copy = tmp_path / "copy.bin"
    copy.write_bytes(rec.data.read_bytes())
    out = tmp_path / "out"
    monkeypatch.setenv(checkpoints.KILL_ENV, "detect@SIGINT")
    with pytest.raises(KeyboardInterrupt):
        sort(_open(rec, copy), out)
    monkeypatch.delenv(checkpoints.KILL_ENV)
    assert checkpoints.finished_stages(out) == ["preprocess", "detect"]
    os.utime(copy, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file was rewritten (same bytes)
    sort(_open(rec, copy), out, resume=True)
    assert _run_record(out)["reused_stages"] == []
    _untouched(rec)


def test_a_damaged_checkpoint_is_recomputed(rec, reference, tmp_path, monkeypatch):
    from spikesort.pipeline import sort

    out = tmp_path / "out"
    monkeypatch.setenv(checkpoints.KILL_ENV, "match:start@SIGINT")
    with pytest.raises(KeyboardInterrupt):
        sort(_open(rec), out, chunk_s=1.0)
    monkeypatch.delenv(checkpoints.KILL_ENV)
    state = out / checkpoints.STATE_DIR
    damaged = bytearray((state / "detect.npz").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte inside the saved arrays
    (state / "detect.npz").write_bytes(bytes(damaged))
    sort(_open(rec), out, resume=True, chunk_s=1.0)
    assert _run_record(out)["reused_stages"] == ["preprocess"]
    for name in ("spike_times.npy", "spike_clusters.npy", "templates.npy", "pc_features.npy"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    _untouched(rec)


def test_resume_refuses_a_foreign_folder(rec, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    _assert_user_error(_invoke("run", *rec.args, "-o", out, "--resume"), "no spikesort run to resume")
    _assert_user_error(_invoke("run", *rec.args, "-o", out, "--resume", "--overwrite"), "exclude each other")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    _untouched(rec)


# --------------------------------------------------------------------------- determinism


def test_same_result_for_any_thread_count_and_chunk_size(rec, tmp_path):
    """spike_times.npy and spike_clusters.npy are byte-identical for 1 and 2 threads and two chunk
    sizes (the chunk size changes every chunk boundary of every streamed stage)."""
    from spikesort.pipeline import sort

    recording = _open(rec)
    files = {}
    for n_jobs, chunk_s in itertools.product((1, 2), (1.0, 2.5)):
        out = tmp_path / f"j{n_jobs}_c{chunk_s}"
        sort(recording, out, n_jobs=n_jobs, chunk_s=chunk_s)
        files[n_jobs, chunk_s] = tuple((out / f).read_bytes() for f in ("spike_times.npy", "spike_clusters.npy"))
    assert len(np.load(tmp_path / "j1_c1.0" / "spike_times.npy")) > 50
    first = files[1, 1.0]
    for key, value in files.items():
        assert value == first, key
    _untouched(rec)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def noise_bin(tmp_path):
    path = tmp_path / "noise.bin"
    np.random.default_rng(0).integers(-50, 50, size=(3000, N_CH)).astype(np.int16).tofile(path)
    return path


def test_unreadable_recording(noise_bin, tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = _state(noise_bin)
    if os.geteuid() != 0:
        noise_bin.chmod(0)
    else:  # root reads everything: the reader's open() is refused instead, as the OS would
        import builtins

        import spikesort.io.recordings as recordings

        def refusing_open(file, *a, **kw):
            if isinstance(file, (str, os.PathLike)) and Path(file) == noise_bin:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return builtins.open(file, *a, **kw)

        monkeypatch.setattr(recordings, "open", refusing_open, raising=False)
    try:
        r = _invoke("run", noise_bin, "-o", out, "--probe", "linear-32", *RAW)
    finally:
        noise_bin.chmod(0o644)
    _assert_user_error(r, "cannot read recording", "Permission denied")
    assert not out.exists()
    assert _state(noise_bin) == before


@pytest.mark.parametrize("dtype", ["foo", "complex64", "bool", "int128"])
def test_wrong_dtype_flag(noise_bin, tmp_path, dtype):
    out = tmp_path / "out"
    before = _state(noise_bin)
    r = _invoke(
        "run",
        noise_bin,
        "-o",
        out,
        "--probe",
        "linear-32",
        "--sampling-rate",
        "30000",
        "--n-channels",
        str(N_CH),
        "--dtype",
        dtype,
    )
    _assert_user_error(r, "unsupported --dtype", repr(dtype))
    assert not out.exists() and _state(noise_bin) == before


def _probe_file(tmp_path, change) -> Path:
    path = _write_probe(tmp_path / "probe.json")
    data = json.loads(path.read_text())
    change(data["probes"][0])
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "change, needles",
    [
        (lambda p: p["contact_positions"].__setitem__(5, p["contact_positions"][2]), ["same position", "2 and 5"]),
        (lambda p: p.pop("contact_positions"), ["no contact positions", "no geometry"]),
    ],
)
def test_bad_probe_files(noise_bin, tmp_path, change, needles):
    out = tmp_path / "out"
    probe = _probe_file(tmp_path, change)
    before, probe_before = _state(noise_bin), _state(probe)
    r = _invoke("run", noise_bin, "-o", out, "--probe", probe, *RAW)
    _assert_user_error(r, *needles)
    assert not out.exists()
    assert _state(noise_bin) == before and _state(probe) == probe_before


def test_prb_probe_without_geometry(noise_bin, tmp_path):
    out = tmp_path / "out"
    probe = tmp_path / "p.prb"
    probe.write_text("channel_groups = {0: {'channels': list(range(8))}}\n")
    r = _invoke("run", noise_bin, "-o", out, "--probe", probe, *RAW)
    _assert_user_error(r, "no geometry")
    assert not out.exists()


def test_out_of_range_parameter_in_config(noise_bin, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "p.toml"
    config.write_text("detect_threshold = 500.0\n")
    r = _invoke("run", noise_bin, "-o", out, "--config", config, "--probe", "linear-32", *RAW)
    _assert_user_error(r, "config file", "detect_threshold", "out of range")
    assert not out.exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_float_data(tmp_path, bad):
    data = tmp_path / "x.bin"
    x = np.random.default_rng(0).normal(0, 20, size=(60000, N_CH)).astype(np.float32)
    x[45000, 3] = bad  # outside the first blocks that fit the whitening: found while streaming
    x.tofile(data)
    probe = _write_probe(tmp_path / "probe.json")
    before = _state(data)
    out = tmp_path / "out"
    r = _invoke(
        "run",
        data,
        "--probe",
        probe,
        "-o",
        out,
        "--sampling-rate",
        "30000",
        "--n-channels",
        str(N_CH),
        "--dtype",
        "float32",
        "-q",
    )
    _assert_user_error(r, "NaN or infinite")
    _assert_no_result(out)
    assert not (out / checkpoints.STATE_DIR / checkpoints.TRACES_FILE).exists()  # half a scratch copy is useless
    assert _state(data) == before


def test_output_not_writable(noise_bin, tmp_path):
    if os.geteuid() != 0:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
    else:  # root writes anywhere but in /sys
        parent = Path("/sys")
        try:
            (parent / "spikesort-probe").mkdir()
        except OSError:
            pass
        else:
            (parent / "spikesort-probe").rmdir()
            pytest.skip("no unwritable folder on this machine")
    out = parent / "spikesort-test-out"
    before = _state(noise_bin)
    try:
        r = _invoke("run", noise_bin, "-o", out, *AS_32_CHANNELS)
    finally:
        if parent != Path("/sys"):
            parent.chmod(0o755)
    _assert_user_error(r, str(out))
    assert not out.exists() and _state(noise_bin) == before


def test_output_inside_a_file(noise_bin, tmp_path):
    r = _invoke("run", noise_bin, "-o", noise_bin / "out", "--probe", "linear-32", *RAW)
    _assert_user_error(r, "is a file")


def test_disk_full_while_preprocessing(rec, tmp_path, monkeypatch):
    from spikesort.pipeline.traces import TraceStore

    calls = itertools.count()
    real_write = TraceStore.write

    def filling_write(self, start, block):
        if next(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_write(self, start, block)

    monkeypatch.setattr(TraceStore, "write", filling_write)
    out = tmp_path / "out"
    r = _invoke("run", *rec.args, "-o", out, *KILL_ARGS)
    _assert_user_error(r, "No space left on device", checkpoints.TRACES_FILE, "--resume")
    _assert_no_result(out)
    assert not (out / checkpoints.STATE_DIR / checkpoints.TRACES_FILE).exists()  # disk space back
    _untouched(rec)


def test_disk_full_while_writing_phy_files(rec, reference, tmp_path, monkeypatch):
    import spikesort.io.phy as phy

    calls = itertools.count()
    real = phy._write_atomic

    def filling(path, write):
        if next(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(phy, "_write_atomic", filling)
    out = tmp_path / "out"
    r = _invoke("run", *rec.args, "-o", out, *KILL_ARGS)
    _assert_user_error(r, "No space left on device", "--resume")
    assert (out / "spike_times.npy").is_file() and not (out / "params.py").exists()
    monkeypatch.setattr(phy, "_write_atomic", real)  # space was freed
    _resume_and_compare(rec, out, reference, reused=ALL_STAGES)


# --------------------------------------------------------------------------- data that must not stop a run


def _sort_variant(rec, tmp_path, traces: np.ndarray, *extra):
    data = tmp_path / "variant.bin"
    traces.astype(np.int16).tofile(data)
    before = _state(data)
    out = tmp_path / "out"
    r = _invoke("run", data, "--probe", rec.probe, *RAW, "-o", out, "-q", *extra)
    assert r.exit_code == 0, r.output + r.stderr
    assert "Traceback" not in r.output + r.stderr
    assert checkpoints.is_complete(out) and not (out / checkpoints.STATE_DIR).exists()
    assert _state(data) == before
    return out, r


def test_dead_and_noisy_channels_are_left_out_and_reported(rec, tmp_path):
    traces = rec.traces.copy()
    traces[:, 2] = 0  # a dead channel
    traces[:, 5] = np.random.default_rng(0).normal(0, 40 * traces[:, 5].std(), len(traces)).clip(-30000, 30000)
    out, r = _sort_variant(rec, tmp_path, traces)
    assert "channel 2 looks dead" in r.stderr and "channel 5 looks noisy" in r.stderr
    assert _run_record(out)["bad_channels"] == {"2": "dead", "5": "noisy"}
    # no template has anything on the channels left out
    assert np.abs(np.load(out / "templates.npy")[:, :, [2, 5]]).max() == 0
    assert len(np.load(out / "spike_times.npy")) > 50
    _untouched(rec)


def test_clipped_stretch_is_left_out_and_reported(rec, tmp_path):
    traces = rec.traces.copy()
    start, stop = int(3.0 * FS), int(3.4 * FS)
    traces[start:stop, :4] = 32767  # the amplifier saturates: half the channels at each rail
    traces[start:stop, 4:] = -32768
    out, r = _sort_variant(rec, tmp_path, traces)
    assert "saturated" in r.stderr
    ((a, b),) = _run_record(out)["saturated_s"]
    assert a == pytest.approx(3.0 - 0.005, abs=1e-3) and b == pytest.approx(3.4 + 0.005, abs=1e-3)
    # no spike found in the clipped stretch, nor in the filter's ringing around it
    times = np.load(out / "spike_times.npy")
    assert not np.any((times > start - 0.005 * FS) & (times < stop + 0.005 * FS)), times
    assert len(times) > 50
    _untouched(rec)


def test_recording_shorter_than_one_chunk(rec, tmp_path):
    out, _ = _sort_variant(rec, tmp_path, rec.traces[: int(0.5 * FS)])  # chunks are 2 s
    assert all((out / f).is_file() for f in PHY_FILES)
    assert _run_record(out)["recording"]["n_samples"] == int(0.5 * FS)
    _untouched(rec)


def test_no_spikes_gives_an_empty_phy_folder(rec, tmp_path):
    noise = np.random.default_rng(1).normal(0, 30, size=(int(3 * FS), N_CH)).round()
    out, r = _sort_variant(rec, tmp_path, noise, "--detect-threshold", "20")
    assert "no spikes found" in r.stderr
    assert "0 units, 0 spikes" in r.stdout
    shapes = {f: np.load(out / f).shape for f in PHY_FILES if f.endswith(".npy")}
    nt = shapes["templates.npy"][1]
    assert nt > 2 and shapes["templates.npy"] == (0, nt, N_CH)
    for f in ("spike_times.npy", "spike_templates.npy", "spike_clusters.npy", "amplitudes.npy"):
        assert shapes[f] == (0,), f
    assert shapes["spike_positions.npy"] == (0, 2) and shapes["similar_templates.npy"] == (0, 0)
    assert shapes["whitening_mat.npy"] == (N_CH, N_CH) and shapes["channel_positions.npy"] == (N_CH, 2)
    assert shapes["pc_features.npy"][0] == 0 and shapes["pc_feature_ind.npy"] == (0, shapes["pc_features.npy"][2])
    assert shapes["template_features.npy"][0] == 0
    assert shapes["template_feature_ind.npy"] == (0, shapes["template_features.npy"][1])
    for f in ("cluster_KSLabel.tsv", "cluster_group.tsv"):
        assert len((out / f).read_text().splitlines()) == 1  # the header only
    r = _invoke("info", out)
    assert r.exit_code == 0 and "units:      0" in r.stdout and "spikes:     0" in r.stdout
    _untouched(rec)


def test_background_save_is_loadable_after_wait_and_reports_its_error(tmp_path):
    """The preprocess checkpoint is written on a thread while the next stages run: it is there
    once wait() returns, and a failure on that thread surfaces in the sorting thread."""
    from dataclasses import dataclass

    @dataclass
    class Value:
        x: np.ndarray

    params = checkpoints.ParamReads(__import__("spikesort").Params())
    state = checkpoints.Checkpoints(tmp_path, identity={"recording": "r"})
    big = tmp_path / checkpoints.STATE_DIR / "big.dat"
    big.parent.mkdir(parents=True)
    big.write_bytes(b"\0" * 1000)
    state.save("preprocess", Value(np.arange(5)), reads={}, files=[big], background=True)
    state.wait()
    again = checkpoints.Checkpoints(tmp_path, identity={"recording": "r"})
    np.testing.assert_array_equal(again.load("preprocess", Value, params).x, np.arange(5))

    state.save("detect", Value(np.arange(3)), reads={}, files=[tmp_path / "missing.dat"], background=True)
    with pytest.raises(FileNotFoundError):
        state.wait()
    assert not state.has("detect")


def test_ctrl_c_while_numba_compiles_is_deferred_to_the_next_chunk():
    # raised while the main thread holds numba's compiler lock, KeyboardInterrupt can leave the lock
    # held (it lands before the block that releases it): workers loading a kernel then wait for ever
    from numba.core.compiler_lock import global_compiler_lock

    from spikesort.cli.app import _on_sigint
    from spikesort.errors import clear_stop
    from spikesort.pipeline.state import _Run

    run = SimpleNamespace(n_jobs=1, tq=lambda total, desc: None)
    clear_stop()
    try:
        with global_compiler_lock:
            _on_sigint(signal.SIGINT, None)  # recorded, not raised
        done = []
        with pytest.raises(KeyboardInterrupt):
            for x in _Run.map(run, lambda ch: ch, [1, 2, 3], "chunks", "test"):
                done.append(x)
        assert done == []  # stopped at the first chunk's end
        clear_stop()
        with pytest.raises(KeyboardInterrupt):  # outside a compile: at once, as before
            _on_sigint(signal.SIGINT, None)
    finally:
        clear_stop()
