"""The command line: one clear error line for every user mistake, a real run, the helpers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clitools import AS_32_CHANNELS
from clitools import file_state as _state
from clitools import invoke as _invoke

from spikesort import cli
from spikesort.params import Params

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def noise_bin(tmp_path):
    """8 channels x 3000 int16 samples of noise: enough for every check before sorting."""
    path = tmp_path / "noise.bin"
    np.random.default_rng(0).integers(-50, 50, size=(3000, 8)).astype(np.int16).tofile(path)
    return path


RAW = ["--sampling-rate", "30000", "--n-channels", "8", "--dtype", "int16"]


def _assert_user_error(result, out: Path | None, *needles: str):
    """Exit 2, the last stderr line is the one error line, no traceback, no finished output."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    assert lines[-1].startswith("spikesort: error: "), lines
    assert sum("spikesort: error" in line or "Error" in line for line in lines) == 1, lines
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    if out is not None:
        assert not (out / "spike_times.npy").exists()


# --------------------------------------------------------------------------- user mistakes


def test_missing_recording(tmp_path):
    out = tmp_path / "out"
    r = _invoke("run", tmp_path / "nope.bin", "-o", out, "--probe", "tetrode", *RAW)
    _assert_user_error(r, out, "recording not found")
    assert not out.exists()


def test_size_not_multiple_of_frame(noise_bin, tmp_path):
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, "--sampling-rate", "30000", "--n-channels", "7", "--dtype", "int16")
    _assert_user_error(r, out, "not a multiple", "--n-channels")
    assert not out.exists()


def test_probe_channel_count_mismatch(noise_bin, tmp_path):
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, "--probe", "tetrode", *RAW)
    _assert_user_error(r, out, "4 channels", "has 8")
    assert not out.exists()


def test_unknown_probe_name_suggests(noise_bin, tmp_path):
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, "--probe", "neuropixels-1", *RAW)
    _assert_user_error(r, out, "unknown probe", "did you mean", "neuropixels-1.0")
    assert not out.exists()


def test_missing_probe(noise_bin, tmp_path):
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, *RAW)
    _assert_user_error(r, out, "--probe")
    assert not out.exists()


def test_unknown_format(noise_bin, tmp_path):
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, "--format", "abf", "--probe", "linear-32", *RAW)
    _assert_user_error(r, out, "unknown recording format", "spikeglx")
    assert not out.exists()


def test_unknown_parameter_in_config(noise_bin, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "p.toml"
    config.write_text("detect_treshold = 6.0\n")
    r = _invoke("run", noise_bin, "-o", out, "--config", config, "--probe", "linear-32", *RAW)
    _assert_user_error(r, out, "detect_treshold", "did you mean 'detect_threshold'")
    assert not out.exists()


def test_out_of_range_parameter_flag(noise_bin, tmp_path):
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, "--detect-threshold", "500", "--probe", "linear-32", *RAW)
    _assert_user_error(r, out, "detect_threshold", "out of range")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--detect-treshold", "4"], "--detect-threshold"),  # click names the close option
        (["--detect-threshold", "abc"], "not a valid float"),
        (["--set", "detect_treshold=4"], "did you mean 'detect_threshold'"),
        (["--set", "novalue"], "KEY=VALUE"),
        (["--common-reference", "average"], "median"),
    ],
)
def test_bad_flags(noise_bin, tmp_path, args, needle):
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, "--probe", "linear-32", *RAW, *args)
    _assert_user_error(r, out, needle)
    assert not out.exists()


def test_existing_output_folder_is_left_alone(noise_bin, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    r = _invoke("run", noise_bin, "-o", out, "--probe", "linear-32", *RAW)
    _assert_user_error(r, None, "exists", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_overwrite_never_deletes_the_input(noise_bin, tmp_path):
    before = _state(noise_bin)
    r = _invoke("run", noise_bin, "-o", noise_bin.parent, "--overwrite", "--probe", "linear-32", *RAW)
    _assert_user_error(r, None, "contains the input")
    assert _state(noise_bin) == before


def test_raw_file_missing_flags(noise_bin, tmp_path):
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, "--probe", "linear-32", "--n-channels", "8")
    _assert_user_error(r, out, "--sampling-rate", "--dtype")
    assert not out.exists()


def test_missing_argument_is_one_line(tmp_path):
    r = _invoke("run", "-o", tmp_path / "out")
    _assert_user_error(r, None, "Missing argument")


def test_no_traceback_from_the_console_script(tmp_path):
    """A real process: the installed console script, a user mistake, one line on stderr."""
    script = Path(sys.executable).with_name("spikesort")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from spikesort.cli import main; main()"]
    out = tmp_path / "out"
    proc = subprocess.run(
        cmd + ["run", str(tmp_path / "missing.bin"), "--probe", "tetrode", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("spikesort: error: recording not found")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


# --------------------------------------------------------------------------- unexpected failures


def test_internal_error_goes_to_the_log(noise_bin, tmp_path, monkeypatch):
    import spikesort.pipeline

    def broken_sort(recording, output_folder, **kw):
        Path(output_folder).mkdir(exist_ok=True)  # the CLI makes it first, for its log
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(spikesort.pipeline, "sort", broken_sort)
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, *AS_32_CHANNELS)
    # 3000 x 8 int16 read as 32 channels is 750 samples: a valid file for the reader
    assert r.exit_code == 1, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("spikesort: internal error: RuntimeError: boom second line (details in ")
    assert str(out / "spikesort.log") in last
    assert "Traceback" not in r.output + r.stderr
    text = (out / "spikesort.log").read_text()
    assert "Traceback" in text and "broken_sort" in text


def test_internal_error_before_the_output_exists(noise_bin, tmp_path, monkeypatch):
    import spikesort.io.recordings

    def broken_open(*a, **kw):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(spikesort.io.recordings, "open_recording", broken_open)
    r = _invoke("run", noise_bin, "-o", tmp_path / "out", "--probe", "tetrode", *RAW)
    assert r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("spikesort: internal error: ZeroDivisionError: oops (details in ")
    log = Path(last.rsplit("(details in ", 1)[1].rstrip(")"))
    try:
        assert "Traceback" in log.read_text()
    finally:
        log.unlink()
    assert not (tmp_path / "out").exists()


def test_keyboard_interrupt(noise_bin, tmp_path, monkeypatch):
    import spikesort.pipeline

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(spikesort.pipeline, "sort", interrupted)
    r = _invoke("run", noise_bin, "-o", tmp_path / "out", *AS_32_CHANNELS)
    assert r.exit_code == 130
    assert r.stderr.strip().splitlines()[-1] == "spikesort: interrupted"
    assert "Traceback" not in r.output + r.stderr


def test_ctrl_c_inside_a_compiled_kernel_is_an_interrupt(noise_bin, tmp_path, monkeypatch):
    # numba hands a Ctrl-C that lands inside a kernel back as a SystemError caused by the KeyboardInterrupt
    import spikesort.pipeline

    def interrupted_in_kernel(*a, **kw):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("CPUDispatcher(detect_peaks_rows) returned a result with an exception set") from exc

    monkeypatch.setattr(spikesort.pipeline, "sort", interrupted_in_kernel)
    r = _invoke("run", noise_bin, "-o", tmp_path / "out", *AS_32_CHANNELS)
    assert r.exit_code == 130
    assert r.stderr.strip().splitlines()[-1] == "spikesort: interrupted"
    assert "internal error" not in r.stderr


def test_a_system_error_of_our_own_stays_an_internal_error(noise_bin, tmp_path, monkeypatch):
    import spikesort.pipeline

    def broken(*a, **kw):
        raise SystemError("a real bug")

    monkeypatch.setattr(spikesort.pipeline, "sort", broken)
    r = _invoke("run", noise_bin, "-o", tmp_path / "out", *AS_32_CHANNELS)
    assert r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("spikesort: internal error: SystemError: a real bug")
    Path(last.rsplit("(details in ", 1)[1].rstrip(")")).unlink(missing_ok=True)


def test_disk_full_is_a_user_error(noise_bin, tmp_path, monkeypatch):
    import errno

    import spikesort.pipeline

    def full(recording, output_folder, **kw):
        Path(output_folder).mkdir(exist_ok=True)  # the CLI makes it first, for its log
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_folder) / "temp_wh.dat"))

    monkeypatch.setattr(spikesort.pipeline, "sort", full)
    out = tmp_path / "out"
    r = _invoke("run", noise_bin, "-o", out, *AS_32_CHANNELS)
    _assert_user_error(r, out, "No space left on device", "temp_wh.dat")


def test_bare_command_shows_help():
    r = _invoke()
    assert r.exit_code == 0
    assert "Commands:" in r.stdout and "run" in r.stdout


# --------------------------------------------------------------------------- params, probes, helpers


def test_params_prints_toml_that_round_trips(tmp_path):
    r = _invoke("params")
    assert r.exit_code == 0
    values = tomllib.loads(r.stdout)
    assert set(values) == set(Params.names())
    config = tmp_path / "p.toml"
    config.write_text(r.stdout.replace("detect_threshold = 5.0", "detect_threshold = 6.5"))
    params = cli.resolve_params(config=str(config))
    assert params.detect_threshold == 6.5
    assert Params.from_dict(values) == Params()


def test_parameter_precedence(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text("detect_threshold = 6.0\nmatch_threshold = 7.0\nchunk_s = 3.0\n")
    p = cli.resolve_params(
        config=str(config), set_values=["match-threshold=8", "chunk_s=4"], flags={"p_chunk_s": 5.0, "p_seed": None}
    )
    assert (p.detect_threshold, p.match_threshold, p.chunk_s, p.seed) == (6.0, 8.0, 5.0, 0)


def test_every_parameter_has_a_flag():
    r = _invoke("run", "--help")
    assert r.exit_code == 0
    for name in Params.names():
        assert "--" + name.replace("_", "-") in r.stdout, name


def test_cli_format_list_matches_the_reader():
    from spikesort.io.recordings import SUPPORTED_FORMATS

    assert tuple(cli.FORMATS) == tuple(SUPPORTED_FORMATS)


def test_probes_list_and_show(tmp_path):
    from spikesort.io.probes import list_bundled_probes

    r = _invoke("probes", "list")
    assert r.exit_code == 0
    listed = [line.split()[0] for line in r.stdout.splitlines()]
    assert listed == list_bundled_probes()
    assert {"neuropixels-1.0", "tetrode"} <= set(listed)

    r = _invoke("probes", "show", "tetrode")
    assert r.exit_code == 0
    assert "channels:   4" in r.stdout and "pitch:" in r.stdout

    png = tmp_path / "tetrode.png"
    r = _invoke("probes", "show", "tetrode", "--plot", png)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _assert_user_error(r, None, "matplotlib")
    else:
        assert r.exit_code == 0, r.output
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    _assert_user_error(_invoke("probes", "show", "tetrod"), None, "did you mean tetrode")


def test_info_on_a_folder_that_is_not_a_result(tmp_path):
    _assert_user_error(_invoke("info", tmp_path), None, "not a finished")
    _assert_user_error(_invoke("info", tmp_path / "nope"), None, "not found")


def test_pyproject_ships_every_package_and_the_probes():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = set(config["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "spikesort").rglob("__init__.py")}
    assert on_disk <= declared, f"add to [tool.setuptools] packages: {sorted(on_disk - declared)}"
    assert config["tool"]["setuptools"]["package-dir"]["spikesort.probes"] == "probes"


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def tiny_recording(tmp_path_factory):
    """8 channels x 10 s of simulated units, as an int16 binary file and a probe JSON."""
    from probeinterface import ProbeGroup, write_probeinterface

    from spikesort.demo import make_demo_recording

    folder = tmp_path_factory.mktemp("tiny")
    recording, _ = make_demo_recording(duration_s=10.0, n_channels=8, n_units=4, seed=1)
    traces = recording.get_traces()
    np.round(traces / 0.195).astype(np.int16).tofile(folder / "tiny.bin")
    group = ProbeGroup()
    group.add_probe(recording.get_probe())
    write_probeinterface(folder / "tiny_probe.json", group)
    return folder / "tiny.bin", folder / "tiny_probe.json"


def test_run_happy_path(tiny_recording, tmp_path):
    data, probe = tiny_recording
    before, probe_before = _state(data), _state(probe)
    config = tmp_path / "p.toml"
    config.write_text(_invoke("params").stdout.replace("seed = 0", "seed = 3"))
    out = tmp_path / "sorted"
    r = _invoke("run", data, "--probe", probe, "-o", out, "--config", config, "--quiet", *RAW)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output + r.stderr
    assert (out / "spike_times.npy").is_file()
    assert (out / "spikesort.log").is_file()
    assert "units" in r.stdout and str(out) in r.stdout
    run = json.loads((out / "spikesort_run.json").read_text())
    assert run["params"]["seed"] == 3
    # the input is read-only: same bytes, same modification time
    assert _state(data) == before and _state(probe) == probe_before

    r = _invoke("info", out)
    assert r.exit_code == 0, r.output
    n_spikes = len(np.load(out / "spike_times.npy"))
    assert f"spikes:     {n_spikes}" in r.stdout

    # a second run into the same folder needs --overwrite, then replaces it
    _assert_user_error(_invoke("run", data, "--probe", probe, "-o", out, "--quiet", *RAW), None, "exists")
    r = _invoke("run", data, "--probe", probe, "-o", out, "--quiet", "--overwrite", *RAW)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "spikesort_run.json").read_text())["params"]["seed"] == 0


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    r = _invoke("demo", "-o", tmp_path, "--overwrite", "--duration", "10", "--channels", "8", "--units", "4")
    _assert_user_error(r, None, "does not look like a spikesort demo folder")
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_too_little_disk_for_the_whitened_traces_fails_before_sorting(tiny_recording, tmp_path, monkeypatch):
    import shutil

    data, probe = tiny_recording
    before = _state(data)
    real = shutil.disk_usage

    def nearly_full(path):
        usage = real(path)
        return usage._replace(free=1000)

    monkeypatch.setattr("spikesort.pipeline.traces.shutil.disk_usage", nearly_full)
    out = tmp_path / "sorted"
    r = _invoke("run", data, "--probe", probe, "-o", out, "--quiet", *RAW)
    _assert_user_error(r, out, "not enough disk space", "GB needed", str(out))
    from spikesort.layout import STATE_DIR, TRACES_FILE

    assert not (out / STATE_DIR / TRACES_FILE).exists()  # checked before the file is made
    assert _state(data) == before
