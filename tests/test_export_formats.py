"""`spikesort export`: the four formats read back with their own readers after a simulated Phy
curation, the destination rules, the command line, and the raw copy for Phy (--export-raw).

The sorted folder and the curation come from tests/test_curation.py (one sort per session).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

load_model = pytest.importorskip("phylib.io.model").load_model
pytest.importorskip("spikeinterface.generation")

from test_curation import GAIN_UV, folder_state, shared_sorting, simulate_phy_curation  # noqa: E402

from spikesort import cli  # noqa: E402
from spikesort.errors import SpikesortError  # noqa: E402
from spikesort.io.phy import read_params_py  # noqa: E402
from spikesort.io.raw_copy import RAW_FILE, export_raw_recording  # noqa: E402
from spikesort.outputs.convert import (  # noqa: E402
    bin_spikes,
    default_output,
    export,
)
from spikesort.outputs.curated import load_result  # noqa: E402


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_sorting(tmp_path_factory)


@pytest.fixture(scope="module")
def curated(shared, tmp_path_factory):
    return simulate_phy_curation(shared.folder, tmp_path_factory.mktemp("curated_export") / "sorted")


@pytest.fixture(scope="module")
def result(curated):
    return load_result(curated.folder)


def _not_noise(r):
    return r.labels != "noise"


def _trains(unit_ids, times, clusters) -> dict[int, np.ndarray]:
    return {int(u): np.sort(times[clusters == u]) for u in unit_ids}


# ------------------------------------------------------------------------------------------
# the formats
# ------------------------------------------------------------------------------------------


def test_npz(curated, result, tmp_path):
    before = folder_state(curated.folder)
    s = export(curated.folder, to="npz", output=tmp_path / "units.npz")
    assert folder_state(curated.folder) == before  # export never touches the Phy folder
    keep = _not_noise(result)
    assert s.n_units == keep.sum() and curated.n not in np.load(tmp_path / "units.npz")["unit_ids"]
    d = np.load(tmp_path / "units.npz")  # no pickle needed
    assert str(d["format"]) == "spikesort-npz-1"
    np.testing.assert_array_equal(d["unit_ids"], result.unit_ids[keep])
    np.testing.assert_array_equal(d["labels"], result.labels[keep])
    spikes = np.isin(result.spike_clusters, result.unit_ids[keep])
    np.testing.assert_array_equal(d["spike_times"], result.spike_times[spikes])
    np.testing.assert_array_equal(d["spike_clusters"], result.spike_clusters[spikes])
    np.testing.assert_allclose(d["spike_times_s"], result.spike_times[spikes] / result.sampling_rate_hz)
    assert s.n_spikes == spikes.sum()
    np.testing.assert_allclose(d["templates_uv"], result.templates_uv[keep], atol=1e-4)
    np.testing.assert_allclose(d["depth_um"], result.depth_um[keep])
    np.testing.assert_array_equal(d["ks_label"], result.properties["ks_label"][keep])
    assert float(d["sampling_rate_hz"]) == result.sampling_rate_hz
    assert int(d["n_samples"]) == result.n_samples and int(d["n_samples_before"]) == d["templates_uv"].shape[1] // 2
    assert d["channel_positions_um"].shape == (12, 2)


def test_binned(curated, result, tmp_path):
    export(curated.folder, to="binned", output=tmp_path / "b.npz", bin_ms=25.0, labels="all")
    d = np.load(tmp_path / "b.npz")
    assert str(d["format"]) == "spikesort-binned-1"
    width = 750  # 25 ms at 30 kHz
    n_bins = result.n_samples // width
    assert d["counts"].shape == (result.n_units, n_bins) and d["counts"].dtype == np.int32
    np.testing.assert_allclose(d["bin_edges_s"], np.arange(n_bins + 1) * width / result.sampling_rate_hz)
    np.testing.assert_allclose(d["bin_centers_s"], d["bin_edges_s"][:-1] + 0.0125)
    assert float(d["bin_s"]) == pytest.approx(0.025)
    np.testing.assert_array_equal(d["unit_ids"], result.unit_ids)
    np.testing.assert_array_equal(d["labels"], result.labels)
    np.testing.assert_allclose(d["depth_um"], result.depth_um)
    edges = np.arange(n_bins + 1) * width
    for row, u in enumerate(result.unit_ids):
        expected, _ = np.histogram(result.spike_times[result.spike_clusters == u], bins=edges)
        np.testing.assert_array_equal(d["counts"][row], expected)
    b = bin_spikes(result, bin_ms=25.0)
    assert d["counts"].sum() + b.n_left_out == len(result.spike_times)
    # a width that is not a whole number of samples is rounded, and the true width stored
    odd = bin_spikes(result, bin_ms=1.01)
    assert odd.bin_s == pytest.approx(30 / result.sampling_rate_hz)
    for bad, message in ((0.0, "> 0"), (0.001, "shorter than one sample"), (1e6, "longer than the recording")):
        with pytest.raises(SpikesortError, match=message):
            bin_spikes(result, bin_ms=bad)


def test_spikeinterface_folder(curated, result, tmp_path):
    import spikeinterface as si
    from spikeinterface.core import NumpyFolderSorting

    s = export(curated.folder, to="spikeinterface", output=tmp_path / "si")
    loaded = si.load(tmp_path / "si")
    assert isinstance(loaded, NumpyFolderSorting) and s.path == tmp_path / "si"
    assert isinstance(NumpyFolderSorting(tmp_path / "si"), NumpyFolderSorting)
    keep = _not_noise(result)
    assert loaded.unit_ids.tolist() == result.unit_ids[keep].tolist()
    assert loaded.sampling_frequency == result.sampling_rate_hz
    want = _trains(result.unit_ids[keep], result.spike_times, result.spike_clusters)
    for u in loaded.unit_ids:
        np.testing.assert_array_equal(loaded.get_unit_spike_train(u), want[int(u)])
    np.testing.assert_array_equal(loaded.get_property("label"), result.labels[keep])
    np.testing.assert_allclose(loaded.get_property("depth_um"), result.depth_um[keep])
    np.testing.assert_array_equal(loaded.get_property("ks_label"), result.properties["ks_label"][keep])
    np.testing.assert_allclose(loaded.get_property("firing_rate_hz"), result.properties["firing_rate_hz"][keep])


def test_nwb_units_table(curated, result, tmp_path):
    pynwb = pytest.importorskip("pynwb")
    export(curated.folder, to="nwb", output=tmp_path / "units.nwb", labels="good,mua,unsorted,noise")
    fs = result.sampling_rate_hz
    with pynwb.NWBHDF5IO(str(tmp_path / "units.nwb"), "r") as io:
        nwb = io.read()
        units = nwb.units
        assert units.id[:].tolist() == result.unit_ids.tolist()
        assert units.resolution == pytest.approx(1 / fs)
        assert len(nwb.electrodes) == 12
        np.testing.assert_allclose(nwb.electrodes["rel_y"][:], result.channel_positions_um[:, 1])
        frame = units.to_dataframe()
        assert frame["label"].tolist() == result.labels.tolist()
        np.testing.assert_allclose(frame["depth_um"].to_numpy(), result.depth_um)
        assert frame["phy_cluster_id"].tolist() == result.unit_ids.tolist()
        for j, u in enumerate(result.unit_ids):
            np.testing.assert_allclose(
                units.get_unit_spike_times(j), np.sort(result.spike_times[result.spike_clusters == u]) / fs
            )
        wf = np.asarray(units["waveform_mean"].data[:])
        assert units.waveform_unit == "volts"
        np.testing.assert_allclose(wf * 1e6, result.templates_uv, atol=1e-3)
    # spikeinterface reads it too (sampling rate from the Units table's resolution)
    from spikeinterface.extractors import read_nwb_sorting

    s = read_nwb_sorting(tmp_path / "units.nwb")
    assert s.sampling_frequency == pytest.approx(fs)
    u = int(result.unit_ids[0])
    np.testing.assert_array_equal(
        s.get_unit_spike_train(s.unit_ids[0]), np.sort(result.spike_times[result.spike_clusters == u])
    )


def test_label_choice(curated, result, tmp_path):
    s = export(curated.folder, to="npz", output=tmp_path / "good.npz", labels="good")
    assert set(np.load(tmp_path / "good.npz")["labels"].tolist()) == {"good"} == set(s.labels)
    s = export(curated.folder, to="npz", output=tmp_path / "noise.npz", labels=["noise"])
    assert np.load(tmp_path / "noise.npz")["unit_ids"].tolist() == [curated.n]
    s = export(curated.folder, to="npz", output=tmp_path / "all.npz", labels="all")
    assert s.n_units == result.n_units
    with pytest.raises(SpikesortError, match="unknown label"):
        export(curated.folder, to="npz", output=tmp_path / "x.npz", labels="goood")
    one = tmp_path / "onelabel"
    shutil.copytree(curated.folder, one)
    (one / "cluster_group.tsv").write_text("cluster_id\tgroup\n" + "".join(f"{u}\tnoise\n" for u in result.unit_ids))
    with pytest.raises(SpikesortError, match="no units labelled"):
        export(one, to="npz", output=tmp_path / "y.npz")
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "y.npz").exists()


def test_destination_rules(curated, shared, tmp_path):
    dest = tmp_path / "units.npz"
    export(curated.folder, to="npz", output=dest)
    first = dest.read_bytes()
    with pytest.raises(SpikesortError, match="exists"):
        export(curated.folder, to="npz", output=dest)
    assert dest.read_bytes() == first
    export(curated.folder, to="npz", output=dest, overwrite=True, labels="good")
    assert dest.read_bytes() != first
    si_dest = tmp_path / "si"
    export(curated.folder, to="spikeinterface", output=si_dest)
    export(curated.folder, to="spikeinterface", output=si_dest, overwrite=True)
    assert (si_dest / "spikes.npy").is_file()
    with pytest.raises(SpikesortError, match="is a folder"):
        export(curated.folder, to="npz", output=si_dest, overwrite=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "keep.txt").write_text("mine")
    with pytest.raises(SpikesortError, match="not a spikeinterface sorting"):
        export(curated.folder, to="spikeinterface", output=plain, overwrite=True)
    assert (plain / "keep.txt").read_text() == "mine"
    before = folder_state(curated.folder)
    for inside in (curated.folder / "units.npz", curated.folder):
        with pytest.raises(SpikesortError, match="inside the Phy folder"):
            export(curated.folder, to="npz", output=inside, overwrite=True)
    with pytest.raises(SpikesortError, match="contains the Phy folder"):
        export(curated.folder, to="spikeinterface", output=curated.folder.parent, overwrite=True)
    raw = Path(read_params_py(curated.folder / "params.py")["dat_path"][0])
    raw = raw if raw.is_absolute() else curated.folder / raw
    with pytest.raises(SpikesortError, match="raw recording"):
        export(curated.folder, to="npz", output=raw, overwrite=True)
    assert folder_state(curated.folder) == before
    with pytest.raises(SpikesortError, match="--bin-ms applies to --to binned"):
        export(curated.folder, to="nwb", output=tmp_path / "a.nwb", bin_ms=5.0)
    assert default_output(curated.folder, "binned") == curated.folder.parent / "sorted_binned.npz"
    si_default = default_output(curated.folder / "params.py", "spikeinterface")
    assert si_default == curated.folder.parent / "sorted_spikeinterface"
    # no temporary file is left anywhere
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------


def _invoke(*args):
    try:  # click 8.1 mixes stderr into stdout unless told otherwise; 8.2 dropped the argument
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def _assert_user_error(res, *needles):
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("spikesort: error: "), lines
    assert sum("error" in line.lower() for line in lines) == 1, lines
    assert "Traceback" not in res.output + res.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def test_cli_export(curated, tmp_path):
    out = tmp_path / "b.npz"
    res = _invoke("export", curated.folder, "--to", "binned", "--bin-ms", "50", "--labels", "good,mua", "-o", out)
    assert res.exit_code == 0, (res.output, res.stderr)
    assert "exported" in res.output and str(out) in res.output
    assert set(np.load(out)["labels"].tolist()) <= {"good", "mua"}
    _assert_user_error(_invoke("export", curated.folder, "--to", "binned", "-o", out), "exists", "--overwrite")
    assert _invoke("export", curated.folder, "--to", "binned", "-o", out, "--overwrite", "-q").exit_code == 0
    _assert_user_error(
        _invoke("export", curated.folder, "--to", "npz", "--labels", "god", "-o", tmp_path / "x.npz"),
        "unknown label 'god'",
    )
    _assert_user_error(_invoke("export", curated.folder, "--to", "nwb", "--bin-ms", "5"), "--bin-ms")
    _assert_user_error(_invoke("export", tmp_path / "missing", "--to", "npz"), "not found")
    _assert_user_error(_invoke("export", curated.folder, "--to", "csv"), "csv")
    _assert_user_error(_invoke("export", curated.folder), "--to")


# ------------------------------------------------------------------------------------------
# the raw copy Phy reads (spikesort run --export-raw)
# ------------------------------------------------------------------------------------------


def test_export_raw_writes_microvolts_and_points_phy_at_them(shared, tmp_path):
    folder = tmp_path / "sorted"
    shutil.copytree(shared.folder, folder)
    rec = shared.recording
    out = export_raw_recording(rec, folder, chunk_s=1.5)
    assert out.path == folder / RAW_FILE and out.uv_per_bit == 1.0 and out.n_clipped == 0
    n, c = rec.get_num_samples(), rec.get_num_channels()
    data = np.fromfile(folder / RAW_FILE, dtype=np.int16).reshape(n, c)
    for start in (0, 44990, n - 700):  # across the 1.5 s chunk boundaries, and the end
        uv = rec.get_traces(start_frame=start, end_frame=start + 700, return_in_uV=True)
        np.testing.assert_array_equal(data[start : start + 700], np.rint(uv).astype(np.int16))
    params = read_params_py(folder / "params.py")
    assert params["dat_path"] == [RAW_FILE] and params["dtype"] == "int16" and params["n_channels_dat"] == c
    assert params["offset"] == 0 and params["sample_rate"] == rec.get_sampling_frequency()
    assert "1 microvolt per bit" in (folder / "params.py").read_text()
    model = load_model(folder / "params.py")
    try:
        t = int(model.spike_samples[len(model.spike_samples) // 2])
        nt = model.n_samples_waveforms
        w = model.get_waveforms(np.array([len(model.spike_samples) // 2]), np.arange(c))[0]
        np.testing.assert_array_equal(w, data[t - nt // 2 : t - nt // 2 + nt])
        # the same µV as the original int16 file read through its gain
        original = rec.get_traces(start_frame=t - nt // 2, end_frame=t - nt // 2 + nt, return_in_uV=False) * GAIN_UV
        assert np.abs(w - original).max() <= 0.5 + 1e-6
    finally:
        model.close()
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_export_raw_without_gain_scales_into_int16(shared, tmp_path):
    from spikeinterface.core import NumpyRecording

    folder = tmp_path / "sorted"
    shutil.copytree(shared.folder, folder)
    x = (np.random.default_rng(0).normal(size=(9000, 12)) * 1e-5).astype(np.float32)  # volts, say
    rec = NumpyRecording([x], sampling_frequency=shared.recording.get_sampling_frequency())
    assert not rec.has_scaleable_traces()
    out = export_raw_recording(rec, folder, chunk_s=0.1)
    assert out.uv_per_bit is None and out.scale == pytest.approx(16384 / np.abs(x).max(), rel=1e-6)
    data = np.fromfile(folder / RAW_FILE, dtype=np.int16).reshape(x.shape)
    np.testing.assert_array_equal(data, np.rint(x.astype(np.float64) * out.scale).astype(np.int16))
    with pytest.raises(SpikesortError, match="not sorted from this recording"):
        export_raw_recording(NumpyRecording([x[:, :8]], sampling_frequency=30000.0), folder)
    assert export_raw_recording(rec, tmp_path / "no_phy_folder") is None


def test_cli_run_export_raw(shared, tmp_path, monkeypatch):
    """`spikesort run --export-raw`: the sort itself is replaced by a copy of the shared sorting
    (its wiring is what is tested here, the sorter has its own tests)."""
    import spikesort.pipeline

    def fake_sort(recording, output_folder, **kwargs):
        shutil.copytree(shared.folder, output_folder, dirs_exist_ok=True)
        return load_result(output_folder)

    monkeypatch.setattr(spikesort.pipeline, "sort", fake_sort)
    out = tmp_path / "sorted"
    res = _invoke("run", shared.bench / "recording", "-o", out, "--export-raw", "-q")
    assert res.exit_code == 0, (res.output, res.stderr)
    assert read_params_py(out / "params.py")["dat_path"] == [RAW_FILE]
    rec = shared.recording
    assert (out / RAW_FILE).stat().st_size == rec.get_num_samples() * rec.get_num_channels() * 2
    model = load_model(out / "params.py")
    try:
        assert model.traces is not None and model.traces.shape == (rec.get_num_samples(), rec.get_num_channels())
    finally:
        model.close()
