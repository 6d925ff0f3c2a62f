"""Arrays written to their .npy files by blocks of rows: the files are what np.save writes, never
seen half-written, and the Phy writer checks and renames them like the arrays it writes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

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
