"""spikesort online (issue 17): a writer process appends a simulated recording to a growing file
faster than real time while the online sorter follows it."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from spikesort.errors import SpikesortError
from spikesort.online.emit import decode_message, read_csv
from spikesort.online.source import GrowingSource, WriterRestarted, stream_info

ROOT = Path(__file__).resolve().parents[1]
FS = 20000.0
N_CH = 32
DURATION_S = 50.0
WARMUP_S = 15.0
LATE_UNIT_S = 28.0
N_UNITS = 8


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from benchmarks.online import _probe_json, make_recording

    folder = tmp_path_factory.mktemp("online_rec")
    made = make_recording(
        folder,
        duration_s=DURATION_S,
        n_channels=N_CH,
        n_units=N_UNITS,
        sampling_rate_hz=FS,
        late_unit_s=LATE_UNIT_S,
        seed=3,
    )
    made["probe"] = _probe_json(folder, N_CH)
    return made


def _writer(src, dst, *, speed, pause_at=None, pause=0.0, marks=None):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.online",
        "write",
        str(src),
        str(dst),
        "--n-channels",
        str(N_CH),
        "--rate",
        str(FS),
        "--speed",
        str(speed),
    ]
    if pause_at is not None:
        cmd += ["--pause-at", str(pause_at), "--pause", str(pause)]
    if marks is not None:
        cmd += ["--log", str(marks)]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _match(gt_samples, gt_labels, samples, units):
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting

    gt = NumpySorting.from_samples_and_labels([gt_samples], [gt_labels], FS)
    tested = NumpySorting.from_samples_and_labels([samples], [units], FS)
    return compare_sorter_to_ground_truth(gt, tested, exhaustive_gt=True, delta_time=0.4)


@pytest.fixture(scope="module")
def streamed(recording, tmp_path_factory):
    """One online run through the Python iterator, with a ZeroMQ subscriber and a writer that pauses."""
    import zmq

    import spikesort

    folder = tmp_path_factory.mktemp("online_run")
    dst, out = folder / "growing.dat", folder / "out"
    address = f"tcp://127.0.0.1:{_free_port()}"
    received, done = [], threading.Event()

    def subscribe():
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.connect(address)
        sub.setsockopt(zmq.SUBSCRIBE, b"spikes")
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        while not done.is_set() or poller.poll(200):
            if poller.poll(100):
                received.append(sub.recv_multipart())
        sub.close()

    listener = threading.Thread(target=subscribe, daemon=True)
    listener.start()
    records = logging.getLogger("spikesort")
    lines = []
    handler = logging.Handler()
    handler.emit = lambda r: lines.append((r.levelname, r.getMessage()))
    records.addHandler(handler)
    level = records.level
    records.setLevel(logging.INFO)
    writer = _writer(recording["path"], dst, speed=6.0)
    batches, writing = [], []
    paused = []
    try:
        for b in spikesort.online(
            dst,
            probe=recording["probe"],
            output_folder=out,
            sampling_rate_hz=FS,
            n_channels=N_CH,
            dtype="int16",
            publish=address,
            # the preprocessing fitted at 8 s of the 15 s warm-up (on 8 one-second blocks), the rest
            # of the stretch whitened and detected as it is written
            params={"whitening_n_chunks": 8},
            warmup_s=WARMUP_S,
            recluster_s=6.0,
            idle_stop_s=4.0,
            stall_s=1.0,
        ):
            batches.append(b)
            writing.append(writer.poll() is None)
            if not paused and b.index and writing[-1]:
                # the writer stalls for 2.5 s while the sorter streams (whatever the machine's load)
                writer.send_signal(signal.SIGSTOP)
                paused.append(threading.Timer(2.5, writer.send_signal, (signal.SIGCONT,)))
                paused[0].start()
    finally:
        for t in paused:
            t.join()
        writer.wait(timeout=60)
        records.removeHandler(handler)
        records.setLevel(level)
        time.sleep(0.3)
        done.set()
        listener.join(timeout=5)
    return dict(batches=batches, writing=writing, received=received, out=out, lines=lines)


def test_spikes_are_emitted_before_the_writer_ends(streamed):
    after_warmup = [
        w for b, w in zip(streamed["batches"], streamed["writing"]) if b.chunk_start >= WARMUP_S * FS / 2 and len(b)
    ]
    assert any(after_warmup), "no batch of streamed spikes came out while the writer was still writing"
    samples, units, amps, emitted = read_csv(streamed["out"] / "online" / "spikes.csv")
    assert samples.max() > (DURATION_S - 2) * FS  # the whole file was sorted
    assert np.all(np.diff(emitted) >= 0)


def test_a_unit_that_starts_after_the_warmup_gets_a_new_id(streamed, recording):
    warm_units = set(streamed["batches"][0].new_units)
    samples, units, _, _ = read_csv(streamed["out"] / "online" / "spikes.csv")
    cmp = _match(recording["samples"], recording["labels"], samples, units)
    late = cmp.hungarian_match_12[N_UNITS - 1]
    assert late != -1 and int(late) not in warm_units
    assert cmp.get_performance()["accuracy"][N_UNITS - 1] >= 0.8
    # reported within 60 s of recording time after its first spike
    first = recording["samples"][recording["labels"] == N_UNITS - 1].min()
    reported = [b for b in streamed["batches"] if int(late) in b.new_units]
    assert reported and reported[0].chunk_stop - first <= 60 * FS
    # its first template (from its pooled spikes) was rebuilt from the spikes it matched since
    assert any(m.startswith(f"unit {int(late)}: template rebuilt with") for _, m in streamed["lines"])
    assert any(m.startswith("warm-up: preprocessing fitted on 8.0 s") for _, m in streamed["lines"])
    # the ids of the warm-up's units kept their meaning: each still matches one ground-truth unit
    well = cmp.get_well_detected_units(0.8)
    assert len(well) >= N_UNITS - 2


def test_zeromq_stream_carries_the_csv_batches(streamed):
    samples, units, amps, emitted = read_csv(streamed["out"] / "online" / "spikes.csv")
    got = [decode_message(frames) for frames in streamed["received"]]
    assert [h["batch"] for h, _ in got] == [b.index for b in streamed["batches"]]
    rec = np.concatenate([r for _, r in got])
    np.testing.assert_array_equal(rec["sample"], samples)
    np.testing.assert_array_equal(rec["unit"], units)
    np.testing.assert_allclose(rec["amplitude"], amps, atol=1e-4)
    times = np.concatenate([np.full(h["n_spikes"], h["emitted_unix_s"]) for h, _ in got])
    np.testing.assert_allclose(times, emitted, atol=1e-5)


def test_writer_troubles_are_one_line_each(streamed):
    messages = [m for _, m in streamed["lines"]]
    # one line for the pause, one for the end of the recording (then the idle stop)
    assert sum("the writer has stalled" in m for m in messages) == 2
    assert sum("the writer resumed" in m for m in messages) == 1
    assert any("the sorter is behind the writer" in m for m in messages)  # the warm-up made a backlog
    assert any("no new data for" in m and "stopping" in m for m in messages)


def test_every_sample_is_sorted_once_and_the_newest_first(streamed):
    # the warm-up's sort left a backlog: the live lane jumped to the newest data and the skipped
    # stretch was sorted behind it; together the chunks still cover the file once, without overlap
    chunks = sorted((b.chunk_start, b.chunk_stop) for b in streamed["batches"] if b.chunk_stop > b.chunk_start)
    starts, stops = np.asarray(chunks).T
    assert starts[0] == 0 and stops[-1] == DURATION_S * FS
    np.testing.assert_array_equal(starts[1:], stops[:-1])
    order = [b.chunk_start for b in streamed["batches"][1:] if b.chunk_stop > b.chunk_start]
    assert any(np.diff(order) < 0), "no stretch was sorted behind the live lane"
    assert any("the newest data go first" in m for _, m in streamed["lines"])
    # the backlog each batch reports went back to about a chunk
    assert min(b.backlog_s for b in streamed["batches"][-10:]) < 1.5


def test_stop_leaves_a_phy_folder_phylib_loads(streamed):
    from clitools import PHY_FILES
    from phylib.io.model import load_model

    assert all((streamed["out"] / name).is_file() for name in PHY_FILES)
    model = load_model(streamed["out"] / "params.py")
    try:
        assert len(model.spike_times) > 1000
        assert model.n_templates >= N_UNITS - 1
        assert model.features is not None and model.template_features is not None
        assert set(model.metadata["KSLabel"].values()) <= {"good", "mua", "noise"}
    finally:
        model.close()


def _cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "spikesort.cli", "online", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_ctrl_c_leaves_a_phy_folder_and_resume_continues(recording, tmp_path):
    from phylib.io.model import load_model

    dst, out = tmp_path / "growing.dat", tmp_path / "out"
    common = [
        dst,
        "--probe",
        recording["probe"],
        "-o",
        out,
        "--sampling-rate",
        FS,
        "--n-channels",
        N_CH,
        "--dtype",
        "int16",
        "--warmup-s",
        WARMUP_S,
        "--recluster-s",
        8,
    ]
    # 2x real time: the interrupt must land while the writer still writes, even on a loaded machine
    writer = _writer(recording["path"], dst, speed=2.0)
    proc = _cli([*common, "--idle-stop-s", 30])
    csv = out / "online" / "spikes.csv"
    deadline = time.time() + 60
    while time.time() < deadline:
        if (
            csv.is_file()
            and len(csv.read_text().splitlines()) > 1
            and read_csv(csv)[0].max(initial=0) > (WARMUP_S + 5) * FS
        ):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    model = load_model(out / "params.py")
    n_first = len(model.spike_times)
    assert n_first > 100 and (out / "cluster_KSLabel.tsv").is_file()
    model.close()
    stopped = json.loads((out / "online" / "state" / "state.json").read_text())["done"]
    assert stopped < (DURATION_S - 5) * FS  # interrupted while the writer was still writing

    saved = json.loads((out / "online" / "state" / "state.json").read_text())
    assert saved["pool_records"] > 0  # unexplained spikes were pooled...

    proc = _cli([*common, "--idle-stop-s", 2, "--resume"])
    stdout, stderr = proc.communicate(timeout=90)
    writer.wait(timeout=30)
    assert proc.returncode == 0, stderr
    # ...and the resumed run starts with them (rows of the log after the saved state cut off)
    pooled = re.search(r"with \d+ units and (\d+) unexplained spikes in the pool", stderr)
    assert pooled and 0 < int(pooled.group(1)) <= saved["pool_records"], stderr
    samples, units, _, _ = read_csv(csv)
    assert samples.max() > (DURATION_S - 2) * FS
    # no spike twice across the resume point: the rows after the saved state were cut back
    pairs = samples * 1000 + units
    assert len(np.unique(pairs)) == len(pairs)
    assert np.any((samples >= stopped) & (samples < stopped + 2 * FS))  # sorted on from where it stopped
    model = load_model(out / "params.py")
    assert len(model.spike_times) > n_first
    model.close()


def test_growing_source_notices_a_shrunk_or_replaced_file(tmp_path):
    path = tmp_path / "x.dat"
    np.zeros((100, 4), "<i2").tofile(path)
    src = GrowingSource(stream_info(path, sampling_rate_hz=1000, n_channels=4, dtype="int16"))
    assert src.poll() == 100
    with open(path, "ab") as fh:
        fh.write(np.ones((50, 4), "<i2").tobytes() + b"\x01")  # a partial sample is not read yet
    assert src.poll() == 150
    np.testing.assert_array_equal(src.read(100, 150), 1)
    with open(path, "r+b") as fh:
        fh.truncate(80 * 8)
    with pytest.raises(WriterRestarted, match="shrank"):
        src.poll()
    src = GrowingSource(src.info)
    src.poll()
    other = tmp_path / "y.dat"
    np.zeros((200, 4), "<i2").tofile(other)
    os.replace(other, path)
    with pytest.raises(WriterRestarted, match="replaced"):
        src.poll()


def test_open_ephys_folder_gives_rate_channels_and_gain(tmp_path):
    oebin = {
        "continuous": [
            {
                "folder_name": "Acq-100.ProbeA-AP/",
                "sample_rate": 30000.0,
                "num_channels": 3,
                "channels": [{"bit_volts": 0.195}] * 3,
            }
        ]
    }
    (tmp_path / "structure.oebin").write_text(json.dumps(oebin))
    info = stream_info(tmp_path)
    assert (info.sampling_rate_hz, info.n_channels, info.gain_to_uv) == (30000.0, 3, 0.195)
    assert info.data_path == tmp_path / "continuous" / "Acq-100.ProbeA-AP" / "continuous.dat"
    with pytest.raises(SpikesortError, match="--sampling-rate"):
        stream_info(tmp_path / "raw.dat", n_channels=4, dtype="int16")


def test_cli_user_mistake_is_one_line(tmp_path):
    proc = _cli([tmp_path / "raw.dat", "--probe", "x", "-o", tmp_path / "out", "--n-channels", 4])
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert stderr.strip().count("\n") == 0 and "--sampling-rate" in stderr


def test_a_zigzag_drift_is_tracked_without_splitting_units(tmp_path):
    import spikesort
    from benchmarks.online import _probe_json, make_drifting_recording

    made = make_drifting_recording(
        tmp_path / "rec",
        duration_s=50.0,
        n_channels=N_CH,
        n_units=6,
        sampling_rate_hz=FS,
        drift_um=20.0,
        period_s=30.0,
        start_s=WARMUP_S,
        seed=2,
    )
    dst, out = tmp_path / "growing.dat", tmp_path / "out"
    writer = _writer(made["path"], dst, speed=8.0)
    try:
        shifts = []
        for b in spikesort.online(
            dst,
            probe=_probe_json(tmp_path, N_CH),
            output_folder=out,
            sampling_rate_hz=FS,
            n_channels=N_CH,
            dtype="int16",
            warmup_s=WARMUP_S,
            recluster_s=0,
            idle_stop_s=2.0,
        ):
            if b.index and b.chunk_stop > b.chunk_start:
                shifts.append((b.chunk_stop, b.drift_um))
    finally:
        writer.wait(timeout=60)
    # the tracked displacement follows the true one
    t, est = np.asarray(shifts).T
    truth = np.interp(t / FS, np.arange(len(made["displacement"])) / 5.0, made["displacement"])
    late = t > (WARMUP_S + 4) * FS
    # (a 2 s window: it lags a ±20 µm zigzag of 30 s by a second or two)
    assert np.corrcoef(est[late], truth[late])[0, 1] > 0.75
    assert np.median(np.abs(est[late] - truth[late])) < 8.0
    # each ground-truth unit keeps one id: no unit split in two over the drift
    samples, units, _, _ = read_csv(out / "online" / "spikes.csv")
    cmp = _match(made["samples"], made["labels"], samples, units)
    perf = cmp.get_performance()["accuracy"]
    # without tracking, the weakest unit drops to ~0.8 here (templates stay where the warm-up saw them)
    assert (perf >= 0.9).all(), perf
    assert len(np.unique(units)) == len(perf)


def test_sigterm_on_a_growing_open_ephys_folder_leaves_a_phy_folder(recording, tmp_path):
    """The acquisition writes an Open Ephys binary folder: structure.oebin from the start,
    continuous.dat growing. SIGTERM (a scheduler, `kill`) stops the run like Ctrl-C."""
    from clitools import PHY_FILES
    from phylib.io.model import load_model

    rec = tmp_path / "2026-12-02_10-00-00" / "Record Node 101" / "experiment1" / "recording1"
    cont = rec / "continuous" / "Acq-100.ProbeA-AP"
    cont.mkdir(parents=True)
    stream = {
        "folder_name": "Acq-100.ProbeA-AP/",
        "sample_rate": FS,
        "num_channels": N_CH,
        "channels": [{"channel_name": f"AP{i + 1}", "bit_volts": 0.195, "units": "uV"} for i in range(N_CH)],
    }
    (rec / "structure.oebin").write_text(json.dumps({"GUI version": "0.6.7", "continuous": [stream]}))
    writer = _writer(recording["path"], cont / "continuous.dat", speed=2.0)
    out = tmp_path / "out"
    proc = _cli(
        [tmp_path / "2026-12-02_10-00-00", "--probe", recording["probe"], "-o", out, "--warmup-s", WARMUP_S]
        + ["--recluster-s", 8, "--idle-stop-s", 30]
    )
    csv = out / "online" / "spikes.csv"
    deadline = time.time() + 60
    while time.time() < deadline and not (csv.is_file() and read_csv(csv)[0].max(initial=0) > (WARMUP_S + 5) * FS):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    writer.wait(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert all((out / name).is_file() for name in PHY_FILES)
    model = load_model(out / "params.py")
    try:
        assert model.sample_rate == FS and model.n_channels_dat == N_CH
        assert Path(model.dat_path[0]).resolve() == (cont / "continuous.dat").resolve()
        assert model.n_templates >= N_UNITS - 2 and len(model.spike_times) > 500
        # every view's data: waveforms from the raw file, features, template features, amplitudes
        assert model.features is not None and model.template_features is not None
        assert model.get_waveforms(np.arange(5), [0]).shape[0] == 5
        assert np.all(model.amplitudes > 0)
    finally:
        model.close()
    # the units' gain came from structure.oebin: templates in µV, a few tens to hundreds
    peak = np.abs(np.load(out / "online" / "units" / "templates.npy")).max(axis=(1, 2))
    assert 20 < np.median(peak) < 1000


def test_the_pool_log_restores_the_pool_at_the_saved_state(tmp_path):
    from spikesort.online.discover import Pool
    from spikesort.stages.detect import Detections

    def det(times):
        n = len(times)
        d = Detections.empty(4, 3)
        return Detections(
            np.asarray(times, np.int64),
            np.arange(n) % 4,
            np.ones(n, np.float32),
            np.full(n, 2.0, np.float32),
            np.zeros((n, 2), np.float32),
            np.random.default_rng(n).normal(size=(n, 4, 3)).astype(np.float32) + d.features.sum(),
        )

    pool = Pool(keep_samples=1000, folder=tmp_path)
    pool.add(det([10, 20, 30]))
    pool.add(det([400, 500]))
    saved = pool.state()
    pool.add(det([900, 950]))  # after the saved state: cut off on resume
    back = Pool.restore(keep_samples=1000, folder=tmp_path, state=saved)
    d = back.take(600)
    np.testing.assert_array_equal(d.times, [10, 20, 30, 400, 500])
    np.testing.assert_array_equal(d.features, Detections.concat([det([10, 20, 30]), det([400, 500])]).features)
    # spikes that became a unit's leave the pool, and the rewritten log on disk too
    back.drop(np.array([20, 400]))
    again = Pool.restore(keep_samples=1000, folder=tmp_path, state=back.state())
    np.testing.assert_array_equal(again.take(600).times, [10, 30, 500])
    back.forget_older_logs()
    assert [p.name for p in tmp_path.glob("pool-*.bin")] == [f"pool-{back.generation}.bin"]


def test_ring_store_reads_back_the_last_samples_across_the_wrap(tmp_path):
    from spikesort.online.store import RingStore
    from spikesort.pipeline.traces import SCALE

    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(250, 3)) * SCALE) / SCALE  # exact in the store's int16
    ring = RingStore(tmp_path / "ring.int16", capacity=100, n_channels=3)
    ring.create()
    for a in range(0, 250, 30):  # blocks that cross the wrap
        ring.write(a, x[a : a + 30])
        ring.n_samples = min(250, a + 30)
    np.testing.assert_allclose(ring.read(150, 250), x[150:250], atol=1e-6)
    np.testing.assert_allclose(ring.read(190, 230), x[190:230], atol=1e-6)
    with pytest.raises(ValueError, match="overwritten"):
        ring.read(100, 120)
    times = np.array([160, 198, 203, 246, 248])  # 198 and 203 cross the wrap at 200; 248 the end
    snip = ring.snippets(times, pre=2, nt=5, channels=np.array([2, 0]))
    for t, s in zip(times[:4], snip[:4]):
        np.testing.assert_allclose(s, x[t - 2 : t + 3][:, [2, 0]], atol=1e-6)
    assert not snip[4].any()


def test_whitened_from_the_raw_file_matches_the_stream(recording, tmp_path):
    """The Phy folder's features are computed from the raw file at the stop: the same whitened
    traces as the stream had (but near the edges of the read windows)."""
    from spikesort.online.source import GrowingSource
    from spikesort.online.store import RawWhitened, Whitener
    from spikesort.stages.preprocess import fit_preprocessing

    src = GrowingSource(stream_info(recording["path"], sampling_rate_hz=FS, n_channels=N_CH, dtype="int16"))
    n = src.poll()
    model = fit_preprocessing(
        [src.read(s, s + 20000) for s in (0, 100_000, 200_000)],
        sampling_rate_hz=FS,
        positions_um=np.column_stack([np.zeros(N_CH), 25.0 * np.arange(N_CH)]),
        highpass_hz=300.0,
        lowpass_hz=0.0,
        reference="median",
        whitening_radius_um=100.0,
        detect_bad_channels=False,
        n_jobs=1,
    )
    wh = Whitener(src, model=model, margin=400, n_jobs=2, min_piece=2000)
    try:
        w, rs = wh.whitened(50_000, 70_000, n)
        store = RawWhitened(wh, n_samples=n, n_channels=N_CH, max_read=20000)
        np.testing.assert_allclose(store.read(55_000, 65_000), w[5_000 + 400 : 15_000 + 400], atol=1e-3)
        times = np.array([60_000, 55_000, 60_020, 64_000])
        snip = store.snippets(times, pre=10, nt=30)
        for t, s in zip(times, snip):
            np.testing.assert_allclose(s, w[t - rs - 10 : t - rs + 20], atol=1e-3)
    finally:
        wh.close()


def test_benchmark_online_measures_latency_from_the_writers_marks(capsys):
    from benchmarks.cli import main
    from benchmarks.online import _looped_truth, latency_s, online_table

    # the writer flushed samples [0, 100) at t=10 s and [100, 200) at t=11 s
    marks = np.array([[10.0, 100], [11.0, 200]])
    lat = latency_s(np.array([5, 99, 100, 150, 250]), np.array([10.5, 10.5, 11.2, 12.0, 13.0]), marks)
    np.testing.assert_allclose(lat[:4], [0.5, 0.5, 0.2, 1.0])
    assert np.isnan(lat[4])  # never written: not a latency
    # a replay that loops over its source repeats the ground truth
    s, lab = _looped_truth({"n_samples": 100, "samples": np.array([3, 50]), "labels": np.array([0, 1])}, 230)
    np.testing.assert_array_equal(s, [3, 50, 103, 150, 203])
    np.testing.assert_array_equal(lab, [0, 1, 0, 1, 0])
    row = {
        "replay": "static64",
        "channels": 64,
        "duration_s": 300.0,
        "load_before": [1.2, 1, 1],
        "load_after": [1.9, 1, 1],
        "latency_all_s": [0.31, 0.9, 31.0],
        "latency_matched_s": [0.3, 0.6, 1.7],
        "latency_live_s": [0.29, 0.55, 1.1],
        "backlog_max_s": 5.2,
        "backlog_last_quarter_mean_s": 0.1,
        "backlog_growth_s_per_min": -0.001,
        "new_unit_delays": [(29, 31.5, 32.0)],
        "online_well": 28,
        "offline_well": 27,
        "n_gt": 30,
    }
    table = online_table(rows=[row])
    assert "| 0.31 / 0.90 / 31.00 | 0.30 / 0.60 / 1.70 | 0.29 / 0.55 / 1.10 | 5.2 |" in table
    assert "| 31.5 | 28/30 (–) | 27/30 | – |" in table
    with pytest.raises(SystemExit):
        main(["--online", "--online-speed", "0"])
    assert "--online-speed" in capsys.readouterr().err


def test_pool_clusters_are_realigned_on_their_trough():
    from spikesort.stages.templates import realigned

    pre, nt = 20, 60
    s = np.arange(nt) - pre
    trough = -np.exp(-0.5 * (s / 2.0) ** 2)
    dense = np.zeros((2, nt, 4), np.float32)
    # unit 0 detected on its rebound, 7 samples after its trough; unit 1 already aligned
    dense[0, :, 1] = np.roll(trough, -7) + 0.6 * np.roll(np.exp(-0.5 * (s / 3.0) ** 2), 0)
    dense[1, :, 2] = trough
    times, labels = np.array([100, 200, 300, 400]), np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(realigned(times, labels, dense=dense, pre=pre, sign=-1), [93, 200, 293, 400])
    # positive spikes are aligned on their peak
    np.testing.assert_array_equal(realigned(times, labels, dense=-dense, pre=pre, sign=1), [93, 200, 293, 400])


def test_pool_clusters_are_compared_over_the_probe_positions_of_the_pool():
    from spikesort.online.units import _shifts_since

    # no estimate yet: only where the probe is
    np.testing.assert_array_equal(_shifts_since([], 0, 0.0), [0.0])
    # the probe went from 0 to +12 µm and back to +4 within the pool's reach: every 5 µm or less of that
    hist = [(1000, 6.0), (2000, 12.0), (3000, 4.0)]
    got = _shifts_since(hist, 500, 4.0)
    assert got.min() == 0.0 and got.max() == 12.0 and np.diff(got).max() <= 5.0
    # estimates older than the reach count only as the position at its start
    np.testing.assert_array_equal(_shifts_since(hist, 2500, 4.0), [4.0, 8.0, 12.0])


def test_a_pool_cluster_locked_to_one_unit_is_its_echo():
    from spikesort.online.discover import MAX_LOCKED_SHARE, locked_to

    rng = np.random.default_rng(3)
    big = np.sort(rng.choice(3_000_000, 600, replace=False))
    other = np.sort(rng.choice(3_000_000, 600, replace=False))
    m_times = np.concatenate([big, other])
    m_units = np.concatenate([np.full(600, 4), np.full(600, 9)])
    order = np.argsort(m_times, kind="stable")
    m_times, m_units = m_times[order], m_units[order]
    # an echo: 45 samples after most of unit 4's spikes
    unit, share = locked_to(big[:200] + 45, m_times, m_units, window=91)
    assert unit == 4 and share >= MAX_LOCKED_SHARE
    # a neuron of its own, firing independently: only chance coincidences
    own = np.sort(rng.choice(3_000_000, 200, replace=False))
    assert locked_to(own, m_times, m_units, window=91)[1] < 0.2


def test_the_pool_keeps_one_detection_per_event():
    from spikesort.online.discover import strongest_per_event
    from spikesort.stages.detect import Detections

    times = np.array([1000, 1040, 1090, 1500, 1520, 3000])
    amps = np.array([20.0, 6.0, 5.0, 9.0, 8.0, 7.0], np.float32)
    # the second event's two detections are 150 µm apart: two neurons, both kept
    pos = np.array([[0, 100], [0, 110], [10, 95], [0, 300], [0, 450], [0, 100]], np.float32)
    det = Detections(times, np.zeros(6, np.int64), amps, amps, pos, np.zeros((6, 2, 3), np.float32))
    kept = strongest_per_event(det, window=91, radius_um=60.0)
    np.testing.assert_array_equal(kept.times, [1000, 1500, 1520, 3000])
