"""Opening recordings read-only: raw binary, SpikeGLX, Open Ephys, NWB, HDF5, spikeinterface."""

import hashlib
import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from spikeinterface.core import NumpyRecording, load

from spikesort.errors import SpikesortError
from spikesort.io.probes import attach_probe, load_probe
from spikesort.io.recordings import (
    SUPPORTED_FORMATS,
    Hdf5Recording,
    check_recording,
    detect_format,
    open_recording,
    recording_fingerprint,
)


def _traces(n_samples=50, n_channels=4, dtype="int16"):
    # distinct values everywhere so a transposed or shifted read cannot pass
    return (np.arange(n_samples * n_channels).reshape(n_samples, n_channels) % 3000 - 1500).astype(dtype)


def _write_binary(path, traces, offset_bytes=0):
    path.write_bytes(b"\x07" * offset_bytes + traces.tobytes())
    return path


def _state(path):
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _read_all(recording):
    return recording.get_traces(segment_index=0, start_frame=0, end_frame=recording.get_num_samples(0))


# --------------------------------------------------------------------------- raw binary


@pytest.mark.parametrize("dtype,offset", [("int16", 0), ("int16", 128), ("float32", 12), ("uint16", 0)])
def test_binary_roundtrip_exact_values(tmp_path, dtype, offset):
    traces = _traces(dtype=dtype)
    path = _write_binary(tmp_path / "x.dat", traces, offset)
    before = _state(path)
    recording = open_recording(path, sampling_rate_hz=20000, n_channels=4, dtype=dtype, offset_bytes=offset)
    assert recording.get_num_segments() == 1
    assert recording.get_sampling_frequency() == 20000
    read = _read_all(recording)
    assert read.dtype == np.dtype(dtype)
    assert np.array_equal(read, traces)
    assert np.array_equal(recording.get_traces(start_frame=7, end_frame=9, channel_ids=[2]), traces[7:9, [2]])
    assert not read.flags.writeable  # a read-only map: the data cannot be changed through it
    del recording, read
    assert _state(path) == before


@pytest.mark.parametrize("suffix", [".bin", ".raw", ".dat"])
def test_binary_suffixes_are_detected(tmp_path, suffix):
    path = _write_binary(tmp_path / f"x{suffix}", _traces())
    assert detect_format(path) == "binary"
    assert open_recording(path, sampling_rate_hz=1000, n_channels=4, dtype="int16").get_num_samples(0) == 50


def test_missing_recording(tmp_path):
    with pytest.raises(SpikesortError, match=r"^recording not found: .*nope\.bin$"):
        open_recording(tmp_path / "nope.bin", sampling_rate_hz=1000, n_channels=4, dtype="int16")


def test_size_not_a_multiple_of_the_frame(tmp_path):
    path = _write_binary(tmp_path / "x.bin", _traces(n_samples=10, n_channels=4))  # 80 bytes
    with pytest.raises(SpikesortError) as err:
        open_recording(path, sampling_rate_hz=1000, n_channels=3, dtype="int16")
    message = str(err.value)
    assert "80 bytes" in message and "frame size 6 bytes" in message and "2 bytes left over" in message
    assert "\n" not in message


def test_size_check_accounts_for_the_offset(tmp_path):
    path = _write_binary(tmp_path / "x.bin", _traces(n_samples=10, n_channels=4), offset_bytes=3)
    with pytest.raises(SpikesortError, match=r"83 bytes \(81 after the 2-byte offset\).*1 bytes left over"):
        open_recording(path, sampling_rate_hz=1000, n_channels=4, dtype="int16", offset_bytes=2)


@pytest.mark.parametrize("dtype", ["foo", "complex64", "bool", "object", "U4", "int128"])
def test_bad_dtype(tmp_path, dtype):
    path = _write_binary(tmp_path / "x.bin", _traces())
    with pytest.raises(SpikesortError, match="unsupported dtype"):
        open_recording(path, sampling_rate_hz=1000, n_channels=4, dtype=dtype)


def test_missing_flags_are_named(tmp_path):
    path = _write_binary(tmp_path / "x.bin", _traces())
    with pytest.raises(SpikesortError, match=r"missing: sampling_rate_hz, dtype\)"):
        open_recording(path, n_channels=4)
    with pytest.raises(SpikesortError, match=r"missing: sampling_rate_hz, n_channels, dtype\)"):
        open_recording(path)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_channels": 0}, "n_channels must be"),
        ({"n_channels": 2.5}, "n_channels must be"),
        ({"sampling_rate_hz": -1}, "sampling_rate_hz must be"),
        ({"sampling_rate_hz": float("nan")}, "sampling_rate_hz must be"),
        ({"offset_bytes": -4}, "offset_bytes must be"),
        ({"offset_bytes": 400}, "offset_bytes 400 is not smaller"),
    ],
)
def test_bad_binary_flags(tmp_path, kwargs, match):
    path = _write_binary(tmp_path / "x.bin", _traces())
    args = {"sampling_rate_hz": 1000, "n_channels": 4, "dtype": "int16", **kwargs}
    with pytest.raises(SpikesortError, match=match):
        open_recording(path, **args)


def test_empty_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"")
    with pytest.raises(SpikesortError, match="is empty"):
        open_recording(path, sampling_rate_hz=1000, n_channels=4, dtype="int16")


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    path = _write_binary(tmp_path / "x.bin", _traces())
    path.chmod(0)
    try:
        with pytest.raises(SpikesortError, match="cannot read recording"):
            open_recording(path, sampling_rate_hz=1000, n_channels=4, dtype="int16")
    finally:
        path.chmod(0o600)


# --------------------------------------------------------------------------- formats


def test_unknown_file_type_lists_formats(tmp_path):
    path = tmp_path / "x.xyz"
    path.write_bytes(b"1234")
    with pytest.raises(SpikesortError) as err:
        open_recording(path)
    for fmt in SUPPORTED_FORMATS:
        assert fmt in str(err.value)


def test_unrecognised_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SpikesortError, match="cannot tell the format"):
        open_recording(tmp_path)


def test_unknown_fmt_name(tmp_path):
    path = _write_binary(tmp_path / "x.bin", _traces())
    with pytest.raises(SpikesortError, match="unknown recording format 'maxwell': choose one of binary"):
        open_recording(path, fmt="maxwell")


def test_extractor_errors_become_one_line(tmp_path):
    path = tmp_path / "x.rhd"
    path.write_bytes(b"not an intan file" * 10)
    assert detect_format(path) == "intan"
    with pytest.raises(SpikesortError) as err:
        open_recording(path)
    assert str(err.value).startswith(f"could not open {path} as Intan")
    assert "\n" not in str(err.value)


def test_forced_format_mismatch_is_a_spikesort_error(tmp_path):
    path = _write_binary(tmp_path / "x.bin", _traces())
    for fmt in ("nwb", "hdf5", "spikeinterface", "spikeglx"):
        with pytest.raises(SpikesortError):
            open_recording(path, fmt=fmt)


# --------------------------------------------------------------------------- SpikeGLX


def _write_spikeglx(bin_path, traces_ap, fs=30000.0):
    """A minimal NP1.0 AP file pair: the saved AP channels plus the sync channel."""
    n_samples, n_ap = traces_ap.shape
    sync = np.zeros((n_samples, 1), dtype="int16")
    np.hstack([traces_ap, sync]).astype("int16").tofile(bin_path)
    imro = "(0,384)" + "".join(f"({c} 0 0 500 250 1)" for c in range(384))
    chan_map = "(384,384,1)" + "".join(f"(AP{c};{c}:{c})" for c in range(n_ap)) + "(SY0;768:768)"
    meta = {
        "fileName": str(bin_path),
        "fileSizeBytes": n_samples * (n_ap + 1) * 2,
        "firstSample": 0,
        "imAiRangeMax": 0.6,
        "imAiRangeMin": -0.6,
        "imMaxInt": 512,
        "imDatPrb_pn": "NP1000",
        "imDatPrb_type": 0,
        "imDatPrb_sn": 1,
        "imDatPrb_port": 1,
        "imDatPrb_slot": 2,
        "imSampRate": fs,
        "nSavedChans": n_ap + 1,
        "snsApLfSy": f"{n_ap},0,1",
        "snsSaveChanSubset": f"0:{n_ap - 1},768",
        "typeThis": "imec",
        "~imroTbl": imro,
        "~snsChanMap": chan_map,
    }
    meta_path = Path(bin_path).with_suffix(".meta")
    meta_path.write_text("".join(f"{k}={v}\n" for k, v in meta.items()))
    return meta_path


def test_spikeglx_meta_beside_bin(tmp_path, caplog):
    traces = _traces(n_samples=60, n_channels=4)
    bin_path = tmp_path / "run_g0_t0.imec0.ap.bin"
    meta_path = _write_spikeglx(bin_path, traces)
    before = _state(bin_path), _state(meta_path)
    assert detect_format(bin_path) == "spikeglx"
    with caplog.at_level("WARNING"):
        recording = open_recording(bin_path, sampling_rate_hz=1)  # flag ignored: the .meta wins
    assert "ignored" in caplog.text
    assert recording.get_num_channels() == 4  # the sync channel is not a neural channel
    assert recording.get_sampling_frequency() == 30000.0
    assert np.array_equal(_read_all(recording), traces)
    assert np.allclose(recording.get_channel_gains(), 0.6 / 512 / 500 * 1e6)
    assert np.array_equal(recording.get_channel_locations(), [[16, 0], [48, 0], [0, 20], [32, 20]])
    # the folder and the .meta lead to the same recording
    assert np.array_equal(_read_all(open_recording(tmp_path)), traces)
    assert np.array_equal(_read_all(open_recording(meta_path)), traces)
    del recording
    assert (_state(bin_path), _state(meta_path)) == before


def test_spikeglx_forced_binary_reads_the_raw_file(tmp_path):
    traces = _traces(n_samples=60, n_channels=4)
    bin_path = tmp_path / "run_g0_t0.imec0.ap.bin"
    _write_spikeglx(bin_path, traces)
    recording = open_recording(bin_path, fmt="binary", sampling_rate_hz=30000, n_channels=5, dtype="int16")
    assert np.array_equal(_read_all(recording)[:, :4], traces)


def test_spikeglx_folder_with_two_probes_is_ambiguous(tmp_path):
    for i in range(2):
        _write_spikeglx(tmp_path / f"run_g0_t0.imec{i}.ap.bin", _traces(n_samples=10, n_channels=4))
    with pytest.raises(SpikesortError, match="holds 2 SpikeGLX AP files"):
        open_recording(tmp_path)
    # naming the file picks one
    assert open_recording(tmp_path / "run_g0_t0.imec1.ap.bin").get_num_channels() == 4


def test_spikeglx_forced_without_meta(tmp_path):
    path = _write_binary(tmp_path / "x.ap.bin", _traces())
    with pytest.raises(SpikesortError, match="no SpikeGLX .meta file beside"):
        open_recording(path, fmt="spikeglx")


# --------------------------------------------------------------------------- Open Ephys


def _write_openephys(root, streams, traces):
    recording_dir = root / "Record Node 101" / "experiment1" / "recording1"
    structure = {"GUI version": "0.6.7", "continuous": [], "events": [], "spikes": []}
    for name in streams:
        folder = recording_dir / "continuous" / name
        folder.mkdir(parents=True)
        traces.astype("int16").tofile(folder / "continuous.dat")
        np.save(folder / "sample_numbers.npy", np.arange(len(traces), dtype="int64"))
        np.save(folder / "timestamps.npy", np.arange(len(traces)) / 30000.0)
        structure["continuous"].append(
            {
                "folder_name": name + "/",
                "sample_rate": 30000.0,
                "source_processor_name": "Acquisition Board",
                "source_processor_id": 100,
                "stream_name": name.split(".")[-1],
                "recorded_processor": "Record Node",
                "recorded_processor_id": 101,
                "num_channels": traces.shape[1],
                "channels": [
                    {
                        "channel_name": f"CH{i + 1}",
                        "description": "",
                        "identifier": "",
                        "history": "",
                        "bit_volts": 0.195,
                        "units": "uV",
                    }
                    for i in range(traces.shape[1])
                ],
            }
        )
    (recording_dir / "structure.oebin").write_text(json.dumps(structure))
    return recording_dir


def test_openephys_binary_folder(tmp_path):
    traces = _traces(n_samples=40, n_channels=4)
    recording_dir = _write_openephys(tmp_path, ["Acquisition_Board-100.Rhythm Data"], traces)
    dat = next(recording_dir.rglob("continuous.dat"))
    before = _state(dat)
    assert detect_format(tmp_path) == "openephys"
    recording = open_recording(tmp_path)
    assert np.array_equal(_read_all(recording), traces)
    assert np.allclose(recording.get_channel_gains(), 0.195)
    # the oebin file itself also works
    assert open_recording(recording_dir / "structure.oebin").get_num_channels() == 4
    del recording
    assert _state(dat) == before


def test_openephys_picks_the_ap_stream(tmp_path):
    traces = _traces(n_samples=40, n_channels=4)
    _write_openephys(tmp_path, ["Neuropix-PXI-100.ProbeA-AP", "Neuropix-PXI-100.ProbeA-LFP"], traces)
    recording = open_recording(tmp_path)
    assert recording.stream_name.endswith("ProbeA-AP")


def test_openephys_ambiguous_streams(tmp_path):
    _write_openephys(tmp_path, ["Board-100.A", "Board-100.B"], _traces(n_samples=20))
    with pytest.raises(SpikesortError, match="has 2 streams"):
        open_recording(tmp_path)


# --------------------------------------------------------------------------- NWB


def test_nwb_file(tmp_path):
    pynwb = pytest.importorskip("pynwb")
    import datetime

    from pynwb.ecephys import ElectricalSeries

    traces = _traces(n_samples=30, n_channels=4)
    nwb = pynwb.NWBFile(
        session_description="t",
        identifier="t",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    )
    group = nwb.create_electrode_group(name="g", description="g", location="x", device=nwb.create_device(name="p"))
    for i in range(4):
        nwb.add_electrode(group=group, location="x", rel_x=0.0, rel_y=20.0 * i)
    region = nwb.create_electrode_table_region(list(range(4)), "all")
    nwb.add_acquisition(ElectricalSeries(name="es", data=traces, electrodes=region, rate=1000.0))
    path = tmp_path / "x.nwb"
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    before = _state(path)
    recording = open_recording(path)
    assert np.array_equal(_read_all(recording), traces)
    assert recording.get_sampling_frequency() == 1000.0
    del recording
    assert _state(path) == before


# --------------------------------------------------------------------------- HDF5 layout


def _write_h5(path, traces, rate=1000.0, **extra):
    with h5py.File(path, "w") as f:
        f.create_dataset("traces", data=traces, chunks=(16, traces.shape[1]))
        if rate is not None:
            f.attrs["sampling_rate_hz"] = rate
        for key, value in extra.items():
            if key == "channel_positions_um":
                f[key] = value
            else:
                f.attrs[key] = value
    return path


def test_hdf5_layout(tmp_path):
    traces = _traces(n_samples=40, n_channels=3, dtype="float32")
    positions = np.array([[0.0, 0.0], [0.0, 20.0], [16.0, 40.0]])
    path = _write_h5(tmp_path / "x.h5", traces, gain_to_uv=[0.5, 1.0, 2.0], channel_positions_um=positions)
    before = _state(path)
    assert detect_format(path) == "hdf5"
    recording = open_recording(path)
    assert isinstance(recording, Hdf5Recording)
    assert np.array_equal(_read_all(recording), traces)
    assert np.array_equal(recording.get_traces(start_frame=5, end_frame=7, channel_ids=[2, 0]), traces[5:7][:, [2, 0]])
    assert np.array_equal(recording.get_channel_gains(), [0.5, 1.0, 2.0])
    assert np.array_equal(recording.get_channel_locations(), positions)
    # lazy and re-openable in worker processes: rebuilt from the file path, not from data
    assert recording.to_dict()["kwargs"] == {"file_path": str(path.absolute())}
    assert np.array_equal(_read_all(load(recording.to_dict())), traces)
    assert np.array_equal(_read_all(pickle.loads(pickle.dumps(recording))), traces)
    del recording
    assert _state(path) == before


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: _write_h5(p, _traces(), rate=None), "no 'sampling_rate_hz'"),
        (lambda p: _write_h5(p, _traces(), rate=-5.0), "sampling_rate_hz must be one positive number"),
        (lambda p: _write_h5(p, _traces(), gain_to_uv=[1.0, 2.0]), "gain_to_uv must be one number or 4"),
        (lambda p: _write_h5(p, _traces(), channel_positions_um=np.zeros((3, 2))), "channel_positions_um must be"),
        (lambda p: h5py.File(p, "w").close(), "no 'traces' dataset"),
        (lambda p: p.write_bytes(b"not hdf5" * 20), "could not open HDF5 recording"),
    ],
)
def test_bad_hdf5_files(tmp_path, make, match):
    path = tmp_path / "x.h5"
    make(path)
    with pytest.raises(SpikesortError, match=match):
        open_recording(path)


# --------------------------------------------------------------------------- spikeinterface folders


def test_spikeinterface_folder(tmp_path):
    traces = _traces(dtype="float32")
    NumpyRecording([traces], sampling_frequency=1000.0).save(folder=tmp_path / "si", verbose=False)
    assert detect_format(tmp_path / "si") == "spikeinterface"
    assert np.array_equal(_read_all(open_recording(tmp_path / "si")), traces)


def test_multi_segment_recording_is_refused(tmp_path):
    traces = _traces(dtype="float32")
    NumpyRecording([traces, traces], sampling_frequency=1000.0).save(folder=tmp_path / "si", verbose=False)
    with pytest.raises(SpikesortError, match="2 segments.*concatenate_recordings"):
        open_recording(tmp_path / "si")


def test_check_recording_on_objects():
    traces = _traces(dtype="float32")
    with pytest.raises(SpikesortError, match="single-segment"):
        check_recording(NumpyRecording([traces, traces], sampling_frequency=1000.0))
    recording = NumpyRecording([traces], sampling_frequency=1000.0)
    assert check_recording(recording) is recording


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_tracks_the_file(tmp_path):
    path = _write_binary(tmp_path / "x.bin", _traces())
    flags = {"sampling_rate_hz": 1000, "n_channels": 4, "dtype": "int16"}
    first = recording_fingerprint(open_recording(path, **flags))
    assert first == recording_fingerprint(open_recording(path, **flags))
    assert len(first) == 16
    # another reading of the same bytes is another input
    assert first != recording_fingerprint(open_recording(path, **{**flags, "n_channels": 2}))
    assert first != recording_fingerprint(open_recording(path, **{**flags, "sampling_rate_hz": 2000}))
    # attaching a probe keeps the files but adds positions
    with_probe = attach_probe(open_recording(path, **flags), load_probe("tetrode"))
    assert recording_fingerprint(with_probe) == recording_fingerprint(
        attach_probe(open_recording(path, **flags), load_probe("tetrode"))
    )
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert first != recording_fingerprint(open_recording(path, **flags))


def test_fingerprint_of_in_memory_data():
    traces = _traces(dtype="float32")
    a = recording_fingerprint(NumpyRecording([traces], sampling_frequency=1000.0))
    assert a == recording_fingerprint(NumpyRecording([traces.copy()], sampling_frequency=1000.0))
    assert a != recording_fingerprint(NumpyRecording([traces + 1], sampling_frequency=1000.0))


def test_fingerprint_of_spikeglx_and_hdf5(tmp_path):
    bin_path = tmp_path / "run_g0_t0.imec0.ap.bin"
    _write_spikeglx(bin_path, _traces(n_samples=20))
    assert recording_fingerprint(open_recording(bin_path)) == recording_fingerprint(open_recording(tmp_path))
    h5 = _write_h5(tmp_path / "x.h5", _traces(dtype="float32"))
    assert recording_fingerprint(open_recording(h5)) == recording_fingerprint(open_recording(h5))
