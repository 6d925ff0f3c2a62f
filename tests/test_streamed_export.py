"""The export's per-spike features go to their .npy files as they are computed: the files are what
np.save writes, never seen half-written, and the export's memory does not hold them."""

from __future__ import annotations

import dataclasses
import os
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_phy import make_dataset

from spikesort.io import npy_stream
from spikesort.io.npy_stream import NpyRowWriter, StreamedNpy, npy_header, save_streamed
from spikesort.io.phy import write_phy_folder

# ------------------------------------------------------------------------------ the row writer


@pytest.mark.parametrize(
    "array",
    [
        np.arange(1000 * 3 * 12, dtype=np.float32).reshape(1000, 3, 12) / 7,
        np.zeros((0, 3, 12), np.float32),
        np.arange(17, dtype=np.int64),
        np.linspace(0, 1, 14).reshape(7, 2).astype(">f4"),
        np.ones((5, 1), np.uint32),
    ],
    ids=["3d", "empty", "1d", "big-endian", "one-column"],
)
def test_rows_written_by_blocks_are_what_np_save_writes(tmp_path, array):
    np.save(tmp_path / "whole.npy", array)
    streamed = save_streamed(tmp_path / "rows.npy", array, block_rows=3)
    assert not (tmp_path / "rows.npy").exists()  # under its temporary name until committed
    assert streamed.path.name.startswith(".") and streamed.path.name.endswith(".tmp")
    assert streamed.shape == array.shape and streamed.dtype == array.dtype
    np.testing.assert_array_equal(streamed.read_rows(0, len(array)), array)
    streamed.commit(tmp_path / "rows.npy")
    assert (tmp_path / "rows.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["rows.npy", "whole.npy"]


def test_rows_are_converted_to_the_file_dtype(tmp_path):
    rows = np.random.default_rng(0).normal(size=(40, 3))
    with NpyRowWriter(tmp_path / "x.npy", shape=(40, 3), dtype=np.float32, count_nonfinite=True) as w:
        w.write(rows[:25])
        w.write(rows[25:])
        w.finish().commit(tmp_path / "x.npy")
    np.save(tmp_path / "y.npy", rows.astype(np.float32))
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "y.npy").read_bytes()


def test_a_failure_mid_write_leaves_no_file(tmp_path):
    with pytest.raises(OSError, match="disk full"):
        with NpyRowWriter(tmp_path / "x.npy", shape=(10, 2), dtype=np.float32) as w:
            w.write(np.zeros((4, 2)))
            raise OSError("disk full")
    assert os.listdir(tmp_path) == []
    # too few rows: finish refuses, and removes what was written
    w = NpyRowWriter(tmp_path / "x.npy", shape=(10, 2), dtype=np.float32)
    w.write(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="4 rows written of the 10"):
        w.finish()
    assert os.listdir(tmp_path) == []


def test_a_run_killed_while_writing_leaves_one_file_the_next_overwrites(tmp_path):
    w = NpyRowWriter(tmp_path / "x.npy", shape=(10, 2), dtype=np.float32)
    w.write(np.ones((4, 2)))
    w._file.close()  # as a SIGKILL would leave it: no cleanup
    again = save_streamed(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    assert os.listdir(tmp_path) == [again.path.name]
    again.commit(tmp_path / "x.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.zeros((3, 2)))


@pytest.mark.parametrize(
    "rows, message",
    [
        (np.zeros((2, 3)), r"rows of shape \(2, 3\) do not fit an array of shape \(10, 2\)"),
        (np.zeros(2), r"rows of shape \(2,\) do not fit"),
        (np.zeros((11, 2)), "11 rows written for an array of 10"),
        (np.array([["a", "b"]]), "must hold numbers"),
    ],
)
def test_bad_rows_raise(tmp_path, rows, message):
    with NpyRowWriter(tmp_path / "x.npy", shape=(10, 2), dtype=np.float32) as w:
        with pytest.raises(ValueError, match=message):
            w.write(rows)
        w.discard()
    assert os.listdir(tmp_path) == []


def test_bad_writer_use_raises(tmp_path):
    with pytest.raises(ValueError, match="at least one axis"):
        NpyRowWriter(tmp_path / "x.npy", shape=(), dtype=np.float32)
    with pytest.raises(ValueError, match="negative"):
        NpyRowWriter(tmp_path / "x.npy", shape=(-1, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="cannot be streamed"):
        npy_header(shape=(3,), dtype=object)
    done = save_streamed(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="outside the 3 rows"):
        done.read_rows(2, 5)
    w = NpyRowWriter(tmp_path / "y.npy", shape=(0, 2), dtype=np.float32)
    w.finish()
    with pytest.raises(ValueError, match="after the file was finished"):
        w.write(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="finished twice"):
        w.finish()


# ------------------------------------------------------------------------------ the Phy writer


def _streamed_copy(data, folder: Path):
    """``data`` with its three per-spike feature arrays written by rows into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {"pc_features": "pc_features.npy", "template_features": "template_features.npy"}
    names["spike_positions"] = "spike_positions.npy"
    files = {
        field: save_streamed(folder / name, np.asarray(getattr(data, field), np.float32), block_rows=7)
        for field, name in names.items()
    }
    return dataclasses.replace(data, **files)


@pytest.mark.parametrize("case", [dict(), dict(peak_channels=(4,), n_spikes=20, n_tf=1)], ids=["three", "one-unit"])
def test_phy_folder_from_streamed_features_is_byte_identical(tmp_path, case):
    data, _ = make_dataset(tmp_path, **case)
    write_phy_folder(tmp_path / "whole", data)
    write_phy_folder(tmp_path / "rows", _streamed_copy(data, tmp_path / "rows"))
    names = sorted(os.listdir(tmp_path / "whole"))
    assert sorted(os.listdir(tmp_path / "rows")) == names  # no temporary file left
    for name in names:
        assert (tmp_path / "rows" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: dict(pc_features=d.pc_features[:-1]), r"pc_features must have shape \(n, nPC, nch\) with n = 300"),
        (lambda d: dict(spike_positions=d.spike_positions[:, :1]), r"spike_positions must have shape \(n, 2\)"),
        (lambda d: dict(template_features=np.where(d.template_features > 1.4, np.nan, 1.0)), "non-finite"),
    ],
)
def test_bad_streamed_features_raise_and_leave_nothing(tmp_path, change, message):
    data, _ = make_dataset(tmp_path)
    folder = tmp_path / "phy"
    bad = _streamed_copy(dataclasses.replace(data, **change(data)), folder)
    with pytest.raises(ValueError, match=message):
        write_phy_folder(folder, bad)
    assert os.listdir(folder) == []  # the temporary files are removed, nothing else was written


def test_streamed_features_must_be_float32(tmp_path):
    data, _ = make_dataset(tmp_path)
    (tmp_path / "phy").mkdir()
    wrong = save_streamed(tmp_path / "phy" / "spike_positions.npy", np.asarray(data.spike_positions, np.float64))
    with pytest.raises(ValueError, match="spike_positions must be written as float32, got float64"):
        write_phy_folder(tmp_path / "phy", dataclasses.replace(data, spike_positions=wrong))
    assert not wrong.path.exists()


def test_a_crash_while_renaming_leaves_no_temporary_file(tmp_path, monkeypatch):
    data, _ = make_dataset(tmp_path)
    folder = tmp_path / "phy"
    streamed = _streamed_copy(data, folder)
    real = StreamedNpy.commit
    calls = []

    def failing(self, dest):
        calls.append(dest)
        if len(calls) == 2:
            raise OSError("disk full")
        real(self, dest)

    monkeypatch.setattr(npy_stream.StreamedNpy, "commit", failing)
    with pytest.raises(OSError, match="disk full"):
        write_phy_folder(folder, streamed)
    names = os.listdir(folder)
    assert not any(n.startswith(".") for n in names) and "params.py" not in names
    assert "pc_features.npy" in names and "template_features.npy" not in names


# ------------------------------------------------------------------------------ the export step

N_SPIKES = 200_000
C = 16


def _export_case(tmp_path: Path):
    """The export step's inputs for 200 000 spikes of 4 units on 16 channels x 40 s of noise."""
    from spikesort.params import Params
    from spikesort.pipeline import checkpoints
    from spikesort.pipeline.run import make_run
    from spikesort.pipeline.state import Curated, Detected, Preprocessed, RecordingInfo
    from spikesort.stages.detect import Detections
    from spikesort.stages.match import MatchedSpikes
    from spikesort.stages.templates import sparsify

    rng = np.random.default_rng(0)
    fs, n_samples = 30000.0, 1_200_000
    positions = np.column_stack([20.0 * (np.arange(C) % 2), 20.0 * (np.arange(C) // 2)])
    info = RecordingInfo(fs, n_samples, C, positions, np.zeros(C, np.int64), np.full(C, 0.195), True)
    params = checkpoints.ParamReads(Params(chunk_s=0.5, n_jobs=2))
    run = make_run(SimpleNamespace(), params=params, store_path=tmp_path / "traces.dat", progress=False, info=info)
    run.store.create()
    for start in range(0, n_samples, 100_000):
        run.store.write(start, rng.normal(size=(100_000, C)).astype(np.float32))
    t = np.arange(run.nt) - run.pre
    shape = -np.exp(-0.5 * (t / 3.0) ** 2)
    dense = np.stack([5 * shape[:, None] * np.exp(-0.5 * ((np.arange(C) - 3 * k) / 2.0) ** 2) for k in range(4)])
    bases = np.linalg.qr(rng.normal(size=(run.nt, 3)))[0].T.astype(np.float32)
    times = np.sort(rng.integers(run.nt, n_samples - run.nt, N_SPIKES))
    spikes = MatchedSpikes(times, rng.integers(0, 4, N_SPIKES), np.ones(N_SPIKES, np.float32), np.ones(N_SPIKES))
    model = SimpleNamespace(whitening=np.eye(C), noise_sd=np.ones(C))
    det = Detected(sign=-1, bases=bases, filter_sd=np.ones(3), spikes=Detections.empty(1, 3), n_spikes=0)
    cur = Curated(spikes=spikes, templates=sparsify(dense.astype(np.float32), pre=run.pre))
    params.start("export")
    return run, dict(prep=Preprocessed(model=model, saturated=np.zeros((0, 2), np.int64)), det=det, cur=cur)


def test_export_memory_does_not_hold_the_features(tmp_path):
    """Phy's per-spike features are 168 bytes a spike here (3 PCs x 12 channels, 4 template
    features, a position), 32 MB. Held until the folder was written, as they were, the export's
    tracemalloc peak was 44 MB; streamed, 12 MB (mostly the unit metrics' per-spike temporaries,
    and the chunks in flight)."""
    from spikesort.pipeline.phy_export import _export

    run, inputs = _export_case(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = _export(run, out, **inputs)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    features_mb = N_SPIKES * (3 * 12 + 4 + 2) * 4 / 2**20
    assert peak / 2**20 < 0.8 * features_mb, (peak / 2**20, features_mb)
    assert len(result.spike_times) == N_SPIKES
    pcf = np.load(out / "pc_features.npy", mmap_mode="r")
    assert pcf.shape == (N_SPIKES, 3, 12) and pcf.dtype == np.float32
    np.testing.assert_array_equal(np.load(out / "amplitudes.npy"), np.load(out / "template_features.npy")[:, 0])
    assert not any(n.startswith(".") for n in os.listdir(out))


def test_export_that_fails_mid_features_leaves_no_feature_file(tmp_path, monkeypatch):
    import spikesort.pipeline.phy_export as phy_export

    run, inputs = _export_case(tmp_path)
    real, calls = phy_export.features_block, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise OSError("store unreadable")
        return real(*a, **kw)

    monkeypatch.setattr(phy_export, "features_block", failing)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="store unreadable"):
        phy_export._export(run, out, **inputs)
    assert os.listdir(out) == []
