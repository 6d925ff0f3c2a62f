"""The Phy folder writer, checked by loading its output with phylib itself."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from spikesort.errors import SpikesortError
from spikesort.io import phy
from spikesort.io.phy import (
    PhyData,
    inverse_whitening_uv,
    pad_templates_to_center,
    read_params_py,
    read_phy_folder,
    whitened_templates_from_uv,
    write_phy_folder,
)

load_model = pytest.importorskip("phylib.io.model").load_model

FS = 30000.0
NT = 41  # spike sample at row NT // 2, where phylib centres raw waveforms
C = 8
N_DAT = 9  # one extra (sync) column in the data file that is not sorted
CHANNEL_MAP = np.array([3, 0, 1, 2, 7, 4, 5, 6])  # sorted channel c is data column CHANNEL_MAP[c]


def _templates_uv(peak_channels, peaks_uv, positions):
    t = np.arange(NT) - NT // 2
    shape = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.35 * np.exp(-0.5 * ((t - 7) / 4.0) ** 2)
    shape /= np.abs(shape).max()
    out = np.empty((len(peak_channels), NT, C))
    for k, (ch, peak) in enumerate(zip(peak_channels, peaks_uv)):
        d = np.linalg.norm(positions - positions[ch], axis=1)
        out[k] = peak * shape[:, None] * np.exp(-0.5 * (d / 25.0) ** 2)[None, :]
    return out


def make_dataset(tmp_path: Path, *, peak_channels=(1, 4, 6), n_spikes=300, n_tf=None, seed=0):
    """A small consistent sorting plus the int16 data file it came from.

    Returns (PhyData, extras) where extras holds the µV templates and the gains.
    """
    rng = np.random.default_rng(seed)
    k = len(peak_channels)
    positions = np.column_stack([20.0 * (np.arange(C) % 2), 20.0 * (np.arange(C) // 2)])
    gain = 0.195 * (1 + 0.1 * np.arange(C) / C)  # µV per raw unit, per sorted channel
    templates_uv = _templates_uv(peak_channels, [-150.0, -100.0, -80.0][:k], positions)

    a = rng.normal(size=(C, C))
    cov = a @ a.T / C + np.eye(C)
    evals, evecs = np.linalg.eigh(cov)
    whitening = evecs @ np.diag(1 / np.sqrt(evals)) @ evecs.T  # ZCA, x_w = x_raw @ W
    wmi = inverse_whitening_uv(whitening_mat=whitening, gain_uv=gain)
    templates_w = whitened_templates_from_uv(templates_uv=templates_uv, whitening_mat_inv=wmi)

    # isolated spikes (100 samples apart) so raw windows hold exactly one spike each
    spike_times = 50 + np.arange(n_spikes) * 100 + rng.integers(0, 20, n_spikes)
    spike_templates = rng.integers(0, k, n_spikes)
    amplitudes = rng.uniform(0.8, 1.2, n_spikes)
    n_samples = int(spike_times[-1]) + 100
    raw = np.zeros((n_samples, N_DAT))
    raw[::1000, N_DAT - 1] = 1  # sync pulses on the unsorted column
    for t, kk, amp in zip(spike_times, spike_templates, amplitudes):
        raw[t - NT // 2 : t - NT // 2 + NT, CHANNEL_MAP] += amp * templates_uv[kk] / gain
    dat = tmp_path / "rec.dat"
    np.round(raw).astype(np.int16).tofile(dat)

    n_pc, nch = 3, 4
    pc_feature_ind = np.array(
        [np.argsort(np.linalg.norm(positions - positions[ch], axis=1))[:nch] for ch in peak_channels]
    )
    n_tf = k if n_tf is None else n_tf
    template_feature_ind = np.array([[(kk + j) % k for j in range(n_tf)] for kk in range(k)])
    flat = templates_w.reshape(k, -1)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    data = PhyData(
        spike_times=spike_times,
        spike_templates=spike_templates,
        amplitudes=amplitudes,
        templates=templates_w,
        whitening_mat=whitening,
        whitening_mat_inv=wmi,
        channel_map=CHANNEL_MAP,
        channel_positions=positions,
        pc_features=rng.normal(size=(n_spikes, n_pc, nch)),
        pc_feature_ind=pc_feature_ind,
        template_features=rng.uniform(0.5, 1.5, size=(n_spikes, n_tf)),
        template_feature_ind=template_feature_ind,
        similar_templates=flat @ flat.T,
        spike_positions=positions[np.array(peak_channels)[spike_templates]] + rng.normal(size=(n_spikes, 2)),
        cluster_tables={
            "KSLabel": ["good", "mua", "good"][:k],
            "ContamPct": [1.5, 20.0, float("nan")][:k],
            "Amplitude": [150.0, 100.0, 80.0][:k],
            "snr": [10.5, 7.25, 5.0][:k],
        },
        dat_path=str(dat),
        n_channels_dat=N_DAT,
        dtype="int16",
        sample_rate=FS,
        hp_filtered=False,
        channel_shanks=np.zeros(C, dtype=np.int64),
    )
    return data, dict(templates_uv=templates_uv, gain=gain)


@pytest.fixture
def written(tmp_path):
    data, extras = make_dataset(tmp_path)
    folder = tmp_path / "phy"
    write_phy_folder(folder, data)
    return folder, data, extras


def test_phylib_loads_the_folder(written):
    folder, data, _ = written
    model = load_model(folder / "params.py")
    try:
        assert model.n_spikes == 300
        assert model.n_templates == 3
        assert model.n_samples_waveforms == NT
        assert model.n_channels == C
        assert model.sample_rate == FS
        np.testing.assert_array_equal(model.spike_samples, data.spike_times)
        np.testing.assert_array_equal(model.spike_templates, data.spike_templates)
        np.testing.assert_array_equal(model.spike_clusters, data.spike_templates)
        np.testing.assert_array_equal(model.channel_mapping, CHANNEL_MAP)
        np.testing.assert_allclose(model.channel_positions, data.channel_positions)
        np.testing.assert_allclose(model.amplitudes, data.amplitudes, rtol=1e-6)
        assert model.spike_attributes.positions.shape == (300, 2)
        assert model.traces is not None and model.traces.shape[0] == data.spike_times[-1] + 100
    finally:
        model.close()


def test_templates_and_template_amplitudes_are_in_uv(written):
    folder, data, extras = written
    templates_uv = extras["templates_uv"]
    model = load_model(folder / "params.py")
    try:
        for k in range(3):
            b = model.get_template(k)
            # what phy's Template view draws
            np.testing.assert_allclose(b.template, templates_uv[k][:, b.channel_ids], atol=1e-3)
            assert b.best_channel == np.abs(templates_uv[k]).max(axis=0).argmax()
            # phy's cluster-view "amp" column: max over channels of peak-to-peak
            amp = (b.template.max(axis=0) - b.template.min(axis=0)).max()
            np.testing.assert_allclose(amp, np.ptp(templates_uv[k], axis=0).max(), rtol=1e-5)
        # phylib's spike = amplitude * template model gives spike peak-to-peak in µV
        spike_amps, _, _ = model.get_amplitudes_true(1.0)
        ptp_uv = np.ptp(templates_uv, axis=1).max(axis=1)
        np.testing.assert_allclose(spike_amps, data.amplitudes * ptp_uv[data.spike_templates], rtol=1e-5)
    finally:
        model.close()


def test_raw_waveforms_line_up_with_uv_templates(written):
    folder, data, extras = written
    model = load_model(folder / "params.py")
    try:
        spikes = np.arange(0, 300, 15)
        raw = model.get_waveforms(spikes, np.arange(C)).astype(np.float64)
        uv = raw * extras["gain"][None, None, :]
        expected = data.amplitudes[spikes, None, None] * extras["templates_uv"][data.spike_templates[spikes]]
        # only int16 rounding separates them
        np.testing.assert_allclose(uv, expected, atol=0.5 * extras["gain"].max() + 1e-9)
    finally:
        model.close()


def test_features_load_through_the_model(written):
    folder, data, _ = written
    model = load_model(folder / "params.py")
    try:
        spikes = np.arange(0, 300, 7)
        for kk in range(3):
            sel = spikes[data.spike_templates[spikes] == kk]
            channels = data.pc_feature_ind[kk]
            f = model.get_features(sel, channels)  # (ns, nch, nPC)
            np.testing.assert_allclose(f, data.pc_features[sel].transpose(0, 2, 1), rtol=1e-6)
        tf = model.get_template_features(spikes)  # (ns, K) dense
        assert tf.shape == (len(spikes), 3)
        for row, s in enumerate(spikes):
            cols = data.template_feature_ind[data.spike_templates[s]]
            np.testing.assert_allclose(tf[row, cols], data.template_features[s], rtol=1e-6)
        assert model.template_features is not None  # so phy creates TemplateFeatureView
        np.testing.assert_allclose(model.similar_templates, data.similar_templates, rtol=1e-6)
    finally:
        model.close()


def test_cluster_tables_load_as_metadata(written):
    folder, _, _ = written
    model = load_model(folder / "params.py")
    try:
        md = model.metadata
        assert md["KSLabel"] == {0: "good", 1: "mua", 2: "good"}
        assert md["group"] == {0: "good", 1: "mua", 2: "good"}
        assert md["ContamPct"] == {0: 1.5, 1: 20.0}  # NaN is an empty cell: no value
        assert md["Amplitude"] == {0: 150.0, 1: 100.0, 2: 80.0}
        assert md["snr"] == {0: 10.5, 1: 7.25, 2: 5.0}
    finally:
        model.close()
    header = (folder / "cluster_snr.tsv").read_text().splitlines()[0]
    assert header == "cluster_id\tsnr"


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_every_file_is_written_and_loading_changes_nothing(written):
    folder, _, _ = written
    names = set(os.listdir(folder))
    expected = {
        "params.py",
        "spike_times.npy",
        "spike_templates.npy",
        "spike_clusters.npy",
        "amplitudes.npy",
        "templates.npy",
        "whitening_mat.npy",
        "whitening_mat_inv.npy",
        "channel_map.npy",
        "channel_positions.npy",
        "channel_shanks.npy",
        "pc_features.npy",
        "pc_feature_ind.npy",
        "template_features.npy",
        "template_feature_ind.npy",
        "similar_templates.npy",
        "spike_positions.npy",
        "cluster_KSLabel.tsv",
        "cluster_group.tsv",
        "cluster_ContamPct.tsv",
        "cluster_Amplitude.tsv",
        "cluster_snr.tsv",
    }
    assert names == expected  # no temporary file left, no template_ind.npy (dense templates)
    dtypes = {p.stem: np.load(p, mmap_mode="r").dtype for p in folder.glob("*.npy")}
    assert dtypes["spike_times"] == np.int64
    assert dtypes["spike_templates"] == dtypes["spike_clusters"] == dtypes["channel_map"] == np.int32
    assert dtypes["templates"] == dtypes["amplitudes"] == dtypes["pc_features"] == np.float32
    assert dtypes["pc_feature_ind"] == dtypes["template_feature_ind"] == np.uint32
    before = _snapshot(folder)
    load_model(folder / "params.py").close()
    assert _snapshot(folder) == before  # phylib found everything it would otherwise write


def test_params_py_is_literal_and_dat_path_rule(tmp_path):
    data, _ = make_dataset(tmp_path)
    # beside the folder: relative
    write_phy_folder(tmp_path / "phy", data)
    params = read_params_py(tmp_path / "phy" / "params.py")
    assert params == dict(
        dat_path=["../rec.dat"], n_channels_dat=N_DAT, dtype="int16", offset=0, sample_rate=FS, hp_filtered=False
    )
    assert type(params["sample_rate"]) is float
    # inside the folder: relative
    inside = tmp_path / "phy"
    os.replace(tmp_path / "rec.dat", inside / "rec.dat")
    write_phy_folder(inside, dataclasses.replace(data, dat_path=[str(inside / "rec.dat")]))
    assert read_params_py(inside / "params.py")["dat_path"] == ["rec.dat"]
    model = load_model(inside / "params.py")
    assert model.traces is not None
    model.close()
    # elsewhere: absolute
    far = tmp_path / "a" / "b" / "phy"
    write_phy_folder(far, dataclasses.replace(data, dat_path=[str(inside / "rec.dat")]))
    assert read_params_py(far / "params.py")["dat_path"] == [str(inside / "rec.dat")]
    model = load_model(far / "params.py")
    assert model.traces is not None
    model.close()
    # no raw data
    write_phy_folder(tmp_path / "nodat", dataclasses.replace(data, dat_path=None))
    assert read_params_py(tmp_path / "nodat" / "params.py")["dat_path"] == []
    model = load_model(tmp_path / "nodat" / "params.py")
    assert model.traces is None
    model.close()


def test_read_phy_folder_round_trip(written):
    folder, data, _ = written
    back = read_phy_folder(folder)
    np.testing.assert_array_equal(back["spike_times"], data.spike_times)
    np.testing.assert_allclose(back["templates"], data.templates, rtol=1e-6)
    assert back["cluster_tables"]["ContamPct"] == {0: 1.5, 1: 20.0}
    assert back["cluster_tables"]["group"] == {0: "good", 1: "mua", 2: "good"}
    assert back["params"]["n_channels_dat"] == N_DAT


def test_one_template_is_padded_so_phylib_loads_it(tmp_path):
    data, extras = make_dataset(tmp_path, peak_channels=(4,), n_spikes=20, n_tf=1)
    write_phy_folder(tmp_path / "phy", data)
    model = load_model(tmp_path / "phy" / "params.py")
    try:
        assert model.n_templates == 2 and model.n_spikes == 20
        b = model.get_template(0)
        np.testing.assert_allclose(b.template, extras["templates_uv"][0][:, b.channel_ids], atol=1e-3)
        tf = model.get_template_features(np.arange(20))
        np.testing.assert_allclose(tf[:, 0], data.template_features[:, 0], rtol=1e-6)
    finally:
        model.close()


def _bad(data: PhyData, **changes) -> PhyData:
    return dataclasses.replace(data, **changes)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: dict(amplitudes=d.amplitudes[:-1]), "amplitudes"),
        (lambda d: dict(templates=d.templates[:, :, :-1]), "whitening_mat"),
        (lambda d: dict(pc_feature_ind=d.pc_feature_ind[:-1]), "pc_feature_ind"),
        (lambda d: dict(pc_features=d.pc_features[:, :1]), "pc_features"),
        (lambda d: dict(template_feature_ind=d.template_feature_ind + 5), "template_feature_ind"),
        (lambda d: dict(spike_templates=d.spike_templates.astype(float)), "spike_templates"),
        (lambda d: dict(spike_times=d.spike_times[::-1].copy()), "sorted"),
        (
            lambda d: dict(whitening_mat_inv=np.linalg.inv(d.whitening_mat) @ np.diag(np.arange(1.0, C + 1)) + 0.1),
            "diagonal",
        ),
        (lambda d: dict(channel_positions=np.zeros((C, 2))), "repeated"),
        (lambda d: dict(channel_map=np.arange(C) + N_DAT), "channel_map"),
        (lambda d: dict(cluster_tables={"ContamPct": [0, 0, 0], "Amplitude": [1, 1, 1]}), "KSLabel"),
        (lambda d: dict(cluster_tables={**d.cluster_tables, "KSLabel": ["good", "great", "mua"]}), "KSLabel"),
        (lambda d: dict(cluster_tables={**d.cluster_tables, "snr": [1.0]}), "snr"),
        (lambda d: dict(cluster_tables={**d.cluster_tables, "group": ["good"] * 3}), "group"),
    ],
)
def test_bad_input_raises_before_writing(tmp_path, change, message):
    data, _ = make_dataset(tmp_path, n_spikes=30)
    with pytest.raises(ValueError, match=message):
        write_phy_folder(tmp_path / "phy", _bad(data, **change(data)))
    assert not (tmp_path / "phy").exists()


def test_too_few_spikes_is_a_user_error(tmp_path):
    data, _ = make_dataset(tmp_path, n_spikes=30)
    one = _bad(
        data,
        spike_times=data.spike_times[:1],
        spike_templates=data.spike_templates[:1],
        amplitudes=data.amplitudes[:1],
        pc_features=data.pc_features[:1],
        template_features=data.template_features[:1],
        spike_positions=data.spike_positions[:1],
    )
    with pytest.raises(SpikesortError, match="at least 2 spikes"):
        write_phy_folder(tmp_path / "phy", one)


def test_a_crash_leaves_no_half_file(tmp_path, monkeypatch):
    data, _ = make_dataset(tmp_path, n_spikes=30)
    real_save = np.save
    calls = []

    def failing_save(f, arr, **kw):
        calls.append(1)
        if len(calls) == 5:
            f.write(b"\x93NUMPY partial")
            raise OSError("disk full")
        real_save(f, arr, **kw)

    monkeypatch.setattr(phy.np, "save", failing_save)
    folder = tmp_path / "phy"
    with pytest.raises(OSError, match="disk full"):
        write_phy_folder(folder, data)
    names = os.listdir(folder)
    assert len(names) == 4  # the four files finished before the crash, complete
    assert not any(n.startswith(".") or n.endswith(".tmp") for n in names)
    assert "params.py" not in names
    for n in names:
        np.load(folder / n)


def test_helpers():
    t = np.arange(2 * 5 * 3, dtype=float).reshape(2, 5, 3)
    padded = pad_templates_to_center(t, n_before=1)
    assert padded.shape == (2, 7, 3)
    np.testing.assert_array_equal(padded[:, 7 // 2], t[:, 1])
    np.testing.assert_array_equal(pad_templates_to_center(t, n_before=2), t)
    w = np.array([[2.0, 0.5], [0.5, 1.0]])
    wmi = inverse_whitening_uv(whitening_mat=w, gain_uv=np.array([0.5, 2.0]))
    np.testing.assert_allclose(w @ wmi, np.diag([0.5, 2.0]))
    x_uv = np.ones((1, 4, 2))
    np.testing.assert_allclose(
        whitened_templates_from_uv(templates_uv=x_uv, whitening_mat_inv=wmi) @ wmi, x_uv, rtol=1e-6
    )
    with pytest.raises(ValueError, match="gain"):
        inverse_whitening_uv(whitening_mat=w, gain_uv=0.0)
