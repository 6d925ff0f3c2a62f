"""Probe loading (JSON, PRB without exec, Kilosort .mat, bundled names) and attach_probe."""

import json

import h5py
import numpy as np
import probeinterface
import pytest
import scipy.io
from probeinterface import Probe, ProbeGroup
from spikeinterface.core import NumpyRecording

from spikesort.errors import SpikesortError
from spikesort.io.probes import (
    attach_probe,
    bundled_probes_dir,
    list_bundled_probes,
    load_probe,
    probe_channel_count,
)

BUNDLED = {
    "neuropixels-1.0": 384,
    "neuropixels-2.0-1shank": 384,
    "neuropixels-2.0-4shank": 384,
    "linear-32": 32,
    "silicon-64-2col": 64,
    "tetrode": 4,
}


def _write_json_probe(path, positions, device_channel_indices=None):
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=np.asarray(positions, dtype=float), shapes="circle", shape_params={"radius": 5})
    if device_channel_indices is not None:
        probe.set_device_channel_indices(device_channel_indices)
    probeinterface.write_probeinterface(path, probe)
    return path


def _recording(n_channels, n_samples=20):
    traces = np.arange(n_samples * n_channels, dtype="float32").reshape(n_samples, n_channels)
    return NumpyRecording([traces], sampling_frequency=1000.0), traces


# --------------------------------------------------------------------------- bundled


def test_bundled_probe_list_matches_files():
    assert set(list_bundled_probes()) == set(BUNDLED)
    assert bundled_probes_dir().is_dir()


@pytest.mark.parametrize("name,n_channels", sorted(BUNDLED.items()))
def test_bundled_probes_load_with_their_channel_count(name, n_channels):
    group = load_probe(name)
    assert group.get_contact_count() == n_channels
    assert probe_channel_count(group) == n_channels
    dci = np.concatenate([p.device_channel_indices for p in group.probes])
    assert np.array_equal(np.sort(dci), np.arange(n_channels))


def test_bundled_probe_geometry():
    four = load_probe("neuropixels-2.0-4shank").probes[0]
    assert four.get_shank_count() == 4
    tetrode = load_probe("tetrode").probes[0].contact_positions
    assert sorted(map(tuple, tetrode)) == [(0, 0), (0, 20), (20, 0), (20, 20)]
    linear = load_probe("linear-32").probes[0].contact_positions
    assert np.allclose(np.diff(linear[:, 1]), 25) and np.allclose(linear[:, 0], 0)
    silicon = load_probe("silicon-64-2col").probes[0].contact_positions
    assert sorted(set(silicon[:, 0])) == [0, 32]


def test_bundled_name_is_case_insensitive():
    assert load_probe("Neuropixels-1.0").get_contact_count() == 384


def test_unknown_probe_name_suggests_close_names():
    with pytest.raises(SpikesortError) as err:
        load_probe("neuropixel-1.0")
    message = str(err.value)
    assert "neuropixels-1.0" in message
    assert "spikesort probes list" in message
    assert "\n" not in message


def test_unknown_probe_name_without_close_match():
    with pytest.raises(SpikesortError, match="spikesort probes list"):
        load_probe("zzzz")


# --------------------------------------------------------------------------- JSON


def test_missing_probe_file(tmp_path):
    with pytest.raises(SpikesortError, match="probe file not found"):
        load_probe(tmp_path / "nope.json")


def test_folder_is_not_a_probe(tmp_path):
    with pytest.raises(SpikesortError, match="is a folder"):
        load_probe(tmp_path)


def test_json_probe_roundtrip(tmp_path):
    path = _write_json_probe(tmp_path / "p.json", [[0, 0], [0, 20], [16, 40]], [2, 0, 1])
    group = load_probe(path)
    assert np.array_equal(group.probes[0].device_channel_indices, [2, 0, 1])
    assert np.array_equal(group.probes[0].contact_positions, [[0, 0], [0, 20], [16, 40]])


def test_json_without_wiring_gets_arange(tmp_path):
    path = _write_json_probe(tmp_path / "p.json", [[0, 0], [0, 20], [0, 40]])
    assert np.array_equal(load_probe(path).probes[0].device_channel_indices, [0, 1, 2])


@pytest.mark.parametrize(
    "content",
    [
        '{"probes": [',
        "not json at all",
        '{"a": 1}',
        '{"probes": []}',
        '{"probes": [{"contact_positions": [[0, 0]]}]}',
        "[1, 2]",
        '{"probes": [{"ndim": 2, "contact_positions": [[0, 0]], "contact_shapes": 3}]}',
    ],
)
def test_malformed_json_probe(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SpikesortError):
        load_probe(path)


def test_binary_garbage_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(SpikesortError, match="not valid JSON"):
        load_probe(path)


def test_json_probe_without_geometry(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"specification": "probeinterface", "probes": [{"ndim": 2, "si_units": "um"}]}))
    with pytest.raises(SpikesortError, match="no contact positions"):
        load_probe(path)


def test_duplicate_contact_positions_name_the_channels(tmp_path):
    # probeinterface refuses to build such a probe, so write the file by hand
    path = _write_json_probe(tmp_path / "p.json", [[0, 0], [0, 20], [0, 40], [0, 60]], [0, 1, 2, 3])
    data = json.loads(path.read_text())
    data["probes"][0]["contact_positions"][3] = [0, 20]
    path.write_text(json.dumps(data))
    with pytest.raises(SpikesortError) as err:
        load_probe(path)
    assert "channels 1 and 3" in str(err.value)
    assert "(0, 20)" in str(err.value)


def test_3d_probe_is_rejected(tmp_path):
    probe = Probe(ndim=3, si_units="um")
    probe.set_contacts(
        positions=np.array([[0, 0, 0], [0, 20, 0.0]]),
        plane_axes=np.tile(np.eye(3)[:2], (2, 1, 1)),
        shapes="circle",
        shape_params={"radius": 5},
    )
    probe.set_device_channel_indices([0, 1])
    probeinterface.write_probeinterface(tmp_path / "p.json", probe)
    with pytest.raises(SpikesortError, match="2D"):
        load_probe(tmp_path / "p.json")


def test_unknown_probe_file_type(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("0,0\n")
    with pytest.raises(SpikesortError, match="unknown type"):
        load_probe(path)


# --------------------------------------------------------------------------- PRB

PRB_PLAIN = """
total_nb_channels = 6
radius = 100
channel_groups = {
    0: {
        'channels': list(range(4)),
        'graph': [(0, 1), (1, 2), (2, 3)],
        'geometry': {0: (0, 0), 1: (0, 20), 2: (0, 40), 3: (0, 60)},
    },
    1: {
        'channels': [5, 4],
        'geometry': {4: (200, 0), 5: (200, -20 * 2)},
    },
}
"""


def test_prb_is_parsed(tmp_path):
    path = tmp_path / "p.prb"
    path.write_text(PRB_PLAIN)
    group = load_probe(path)
    assert len(group.probes) == 2
    assert np.array_equal(group.probes[0].device_channel_indices, [0, 1, 2, 3])
    assert np.array_equal(group.probes[1].device_channel_indices, [5, 4])
    assert np.array_equal(group.probes[1].contact_positions, [[200, -40], [200, 0]])
    assert probe_channel_count(group) == 6


def test_prb_code_is_never_executed(tmp_path, caplog):
    sentinel = tmp_path / "PWNED"
    path = tmp_path / "evil.prb"
    path.write_text(
        "import os\n"
        f"os.system('touch {sentinel}')\n"
        f"open('{sentinel}', 'w').write('x')\n"
        "geometry = {0: (0, 0), 1: (0, 25)}\n"
        "channel_groups = {0: {'channels': [0, 1], 'geometry': geometry}}\n"
    )
    with caplog.at_level("WARNING"):
        group = load_probe(path)
    assert not sentinel.exists()
    assert group.get_contact_count() == 2
    assert "never run" in caplog.text


def test_prb_with_code_in_channel_groups_is_rejected_unrun(tmp_path):
    sentinel = tmp_path / "PWNED"
    path = tmp_path / "evil.prb"
    path.write_text(
        f"channel_groups = {{0: {{'channels': [0, 1], 'geometry': __import__('os').system('touch {sentinel}')}}}}\n"
    )
    with pytest.raises(SpikesortError, match="not plain data"):
        load_probe(path)
    assert not sentinel.exists()


def test_prb_subscript_assignment_style(tmp_path):
    path = tmp_path / "p.prb"
    path.write_text(
        "channel_groups = {}\nchannel_groups[0] = {'channels': [0, 1], 'geometry': {0: (0, 0), 1: (0, 30)}}\n"
    )
    assert load_probe(path).get_contact_count() == 2


@pytest.mark.parametrize(
    "content,match",
    [
        ("channel_groups = {0: {'channels': [0, 1]\n", "syntax error"),
        ("radius = 100\n", "no `channel_groups"),
        ("channel_groups = {0: {'channels': [0, 1]}}\n", "no geometry"),
        ("channel_groups = {0: {'channels': [0, 1], 'geometry': {0: (0, 0)}}}\n", "channel 1 has no position"),
        ("channel_groups = {0: {'channels': [0, 1], 'geometry': {0: (0, 0), 1: (0, 0)}}}\n", "same position"),
        ("channel_groups = {0: {'channels': list(range(10**9)), 'geometry': {}}}\n", "not plain data"),
        ("channel_groups = {0: {'channels': [0, 0], 'geometry': {0: (0, 0)}}}\n", "more than once"),
        (
            "channel_groups = {0: {'channels': [0], 'geometry': {0: (0, 0)}},"
            " 1: {'channels': [0], 'geometry': {0: (50, 0)}}}\n",
            "more than once",
        ),
    ],
)
def test_bad_prb_files(tmp_path, content, match):
    path = tmp_path / "p.prb"
    path.write_text(content)
    with pytest.raises(SpikesortError, match=match):
        load_probe(path)


# --------------------------------------------------------------------------- Kilosort .mat

KS = {
    "chanMap": np.arange(1, 7).reshape(-1, 1).astype(float),
    "chanMap0ind": np.arange(6).reshape(-1, 1).astype(float),
    "xcoords": np.array([[0], [32], [0], [32], [0], [32]], dtype=float),
    "ycoords": np.array([[0], [0], [20], [20], [40], [40]], dtype=float),
    "kcoords": np.ones((6, 1)),
    "connected": np.array([[1], [1], [0], [1], [1], [1]], dtype=bool),
    "fs": 30000.0,
    "name": "tiny6",
}


def test_kilosort_mat_with_disconnected_channels(tmp_path):
    path = tmp_path / "chanMap.mat"
    scipy.io.savemat(path, KS)
    group = load_probe(path)
    probe = group.probes[0]
    assert np.array_equal(probe.device_channel_indices, [0, 1, 3, 4, 5])
    assert np.array_equal(probe.contact_positions[2], [32, 20])
    assert probe_channel_count(group) == 6

    recording, traces = _recording(6)
    attached = attach_probe(recording, group)
    assert attached.get_num_channels() == 5
    assert np.array_equal(attached.get_traces(), traces[:, [0, 1, 3, 4, 5]])
    assert np.array_equal(attached.get_channel_locations(), probe.contact_positions)
    assert not recording.has_probe()  # the input is left alone


def test_kilosort_mat_v73(tmp_path):
    path = tmp_path / "chanMap73.mat"
    # MATLAB v7.3 files are HDF5 with a 512-byte header and transposed (1, n) arrays
    with h5py.File(path, "w", userblock_size=512) as f:
        for key in ("chanMap", "xcoords", "ycoords", "kcoords"):
            f[key] = KS[key].T
        f["connected"] = KS["connected"].T.astype("uint8")
    probe = load_probe(path).probes[0]
    assert np.array_equal(probe.device_channel_indices, [0, 1, 3, 4, 5])


def test_kilosort_mat_without_geometry(tmp_path):
    path = tmp_path / "chanMap.mat"
    scipy.io.savemat(path, {"chanMap": KS["chanMap"], "connected": KS["connected"]})
    with pytest.raises(SpikesortError, match="no xcoords/ycoords"):
        load_probe(path)


def test_kilosort_mat_duplicate_positions(tmp_path):
    path = tmp_path / "chanMap.mat"
    scipy.io.savemat(path, {**KS, "ycoords": np.array([[0], [0], [20], [20], [40], [0]], dtype=float)})
    with pytest.raises(SpikesortError, match="channels 1 and 5 at"):
        load_probe(path)


def test_duplicate_positions_across_prb_groups(tmp_path):
    path = tmp_path / "p.prb"
    path.write_text(
        "channel_groups = {0: {'channels': [0, 1], 'geometry': {0: (0, 0), 1: (0, 20)}},"
        " 1: {'channels': [2, 3], 'geometry': {2: (0, 0), 3: (0, 20)}}}\n"
    )
    with pytest.raises(SpikesortError, match="channels 0 and 2 at"):
        load_probe(path)


def test_kilosort_mat_mismatched_lengths(tmp_path):
    path = tmp_path / "chanMap.mat"
    scipy.io.savemat(path, {**KS, "xcoords": np.zeros((5, 1))})
    with pytest.raises(SpikesortError, match="different lengths"):
        load_probe(path)


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file garbage" + bytes(200), bytes(range(256)) * 4])
def test_garbage_mat(tmp_path, content):
    path = tmp_path / "chanMap.mat"
    path.write_bytes(content)
    with pytest.raises(SpikesortError):
        load_probe(path)


# --------------------------------------------------------------------------- attach_probe


def test_attach_probe_channel_mismatch():
    recording, _ = _recording(4)
    with pytest.raises(SpikesortError, match="probe linear-32 has 32 channels but the recording has 4"):
        attach_probe(recording, load_probe("linear-32"))


def test_attach_probe_follows_the_channel_map(tmp_path):
    path = _write_json_probe(tmp_path / "p.json", [[0, 60], [0, 40], [0, 20], [0, 0]], [3, 2, 1, 0])
    recording, traces = _recording(4)
    attached = attach_probe(recording, load_probe(path))
    assert np.array_equal(attached.get_traces(), traces)
    # channel k of the recording sits where the contact wired to k sits
    assert np.array_equal(attached.get_channel_locations()[:, 1], [0, 20, 40, 60])


def test_attach_probe_accepts_a_probe():
    recording, _ = _recording(4)
    probe = load_probe("tetrode").probes[0]
    assert attach_probe(recording, probe).get_num_channels() == 4


def test_attach_probe_rejects_other_objects():
    recording, _ = _recording(4)
    with pytest.raises(SpikesortError, match="ProbeGroup"):
        attach_probe(recording, "tetrode")


def test_attach_probe_group_from_prb(tmp_path):
    path = tmp_path / "p.prb"
    path.write_text(PRB_PLAIN)
    recording, traces = _recording(6)
    attached = attach_probe(recording, load_probe(path))
    assert np.array_equal(attached.get_traces(), traces)
    assert isinstance(attached.get_probegroup(), ProbeGroup)
