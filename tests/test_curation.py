"""Reading a Phy folder back after a curation, checked against phylib (Phy's own loader).

One small ground-truth recording (12 channels, 6 units, 20 s, int16 with a gain) is sorted once
per session and shared with tests/test_export_formats.py. A curation is simulated the way Phy
saves one: a merge gives the merged spikes a new cluster id above every existing one, a split
gives each part a new id, ``cluster_group.tsv`` gets 'good'/'mua'/'noise' for labelled clusters
and no row for unlabelled ones, and the other cluster_*.tsv columns are rewritten with values
copied from a parent (so they are stale for the new clusters).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

load_model = pytest.importorskip("phylib.io.model").load_model
pytest.importorskip("spikeinterface.generation")

import spikesort  # noqa: E402
from spikesort.errors import SpikesortError  # noqa: E402
from spikesort.outputs.curated import (  # noqa: E402
    CuratedResult,
    load_result,
    parse_labels,
    read_cluster_table,
    select_units,
)

FS = 30000.0
GAIN_UV = 0.195
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# the shared sorting (made once per session, also used by test_export_formats.py)
# ------------------------------------------------------------------------------------------


def shared_sorting(tmp_path_factory) -> SimpleNamespace:
    """A sorted folder and its ground truth, laid out like a benchmark cache folder
    (``bench/recording``, ``bench/gt_sorting.npz``). Made on first use in the session."""
    from spikeinterface.generation import generate_ground_truth_recording
    from spikeinterface.preprocessing import scale

    from spikesort.io.recordings import open_recording
    from spikesort.pipeline import sort

    base = tmp_path_factory.getbasetemp() / "curation_shared"
    done = base / "done.json"
    if not done.is_file():
        shutil.rmtree(base, ignore_errors=True)
        simulated, gt = generate_ground_truth_recording(
            durations=[20.0],
            sampling_frequency=FS,
            num_channels=12,
            num_units=6,
            seed=1,
            generate_probe_kwargs=dict(
                num_columns=2, xpitch=20, ypitch=20, contact_shapes="circle", contact_shape_params={"radius": 6}
            ),
            noise_kwargs=dict(noise_levels=5.0, strategy="on_the_fly"),
        )
        as_int16 = scale(simulated, gain=1.0 / GAIN_UV, offset=0.0, dtype="int16")
        as_int16.set_channel_gains(GAIN_UV)
        as_int16.set_channel_offsets(0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the simulated source has no provenance to save
            as_int16.save(
                folder=base / "bench" / "recording", format="binary", n_jobs=1, chunk_duration="1s", progress_bar=False
            )
        spikes = gt.to_spike_vector()
        np.savez(
            base / "bench" / "gt_sorting.npz",
            sample_index=spikes["sample_index"].astype(np.int64),
            unit_index=spikes["unit_index"].astype(np.int64),
            segment_index=spikes["segment_index"].astype(np.int64),
            unit_ids=np.asarray(gt.unit_ids),
            sampling_frequency=np.float64(FS),
        )
        sort(open_recording(base / "bench" / "recording"), base / "sorted")
        done.write_text(json.dumps({"ok": True}))
    return SimpleNamespace(
        folder=base / "sorted", bench=base / "bench", recording=open_recording(base / "bench" / "recording")
    )


def simulate_phy_curation(source: Path, dest: Path) -> SimpleNamespace:
    """Copy ``source`` to ``dest`` and curate it as Phy would save it: merge the two most similar
    clusters, split the largest other one in two (by amplitude), label one more 'noise'."""
    shutil.copytree(source, dest)
    clusters = np.load(dest / "spike_clusters.npy")
    amplitudes = np.load(dest / "amplitudes.npy")
    ids = np.unique(clusters)
    assert len(ids) >= 4, ids
    sim = np.load(dest / "similar_templates.npy").astype(float)
    np.fill_diagonal(sim, -np.inf)
    a, b = (int(i) for i in np.unravel_index(np.argmax(sim), sim.shape))
    counts = {int(c): int(np.sum(clusters == c)) for c in ids}
    c = max((u for u in counts if u not in (a, b)), key=counts.get)
    n = next(int(u) for u in ids if int(u) not in (a, b, c))
    merged, part1, part2 = int(ids.max()) + 1, int(ids.max()) + 2, int(ids.max()) + 3
    new = clusters.copy()
    new[np.isin(clusters, [a, b])] = merged
    in_c = clusters == c
    low = in_c & (amplitudes < np.median(amplitudes[in_c]))
    new[low] = part1
    new[in_c & ~low] = part2
    np.save(dest / "spike_clusters.npy", new.astype(np.int32))

    current = [int(u) for u in np.unique(new)]
    groups = read_cluster_table(dest / "cluster_group.tsv")
    ks = read_cluster_table(dest / "cluster_KSLabel.tsv")
    fr = read_cluster_table(dest / "cluster_fr.tsv")
    groups = {u: groups[u] for u in current if u in groups}
    groups.update({merged: "good", part1: "mua", n: "noise"})  # part2: left unlabelled
    largest = a if counts[a] >= counts[b] else b
    parent = {merged: largest, part1: c, part2: c}
    # phy copies a parent's value to new clusters in every other column
    ks = {u: ks[parent.get(u, u)] for u in current}
    fr = {u: fr[parent.get(u, u)] for u in current}

    def write(name, table):
        lines = [f"cluster_id\t{name}"] + [f"{u}\t{v}" for u, v in sorted(table.items())]
        (dest / f"cluster_{name}.tsv").write_text("\n".join(lines) + "\n")

    write("group", groups)
    write("KSLabel", ks)
    write("fr", fr)
    # phy also saves its whole cluster view
    rows = ["cluster_id\tgroup\tn_spikes"] + [f"{u}\t{groups.get(u, '')}\t{np.sum(new == u)}" for u in current]
    (dest / "cluster_info.tsv").write_text("\n".join(rows) + "\n")
    return SimpleNamespace(
        folder=dest,
        a=a,
        b=b,
        c=c,
        n=n,
        merged=merged,
        part1=part1,
        part2=part2,
        old_clusters=clusters,
        new_clusters=new,
        groups=groups,
        ks=ks,
        counts=counts,
    )


def folder_state(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_sorting(tmp_path_factory)


@pytest.fixture(scope="module")
def curated(shared, tmp_path_factory):
    return simulate_phy_curation(shared.folder, tmp_path_factory.mktemp("curated") / "sorted")


# ------------------------------------------------------------------------------------------
# phylib loads every array of the sorter's folder, with the right shapes and scale
# ------------------------------------------------------------------------------------------


def test_phylib_loads_every_array_with_the_right_shapes_and_scale(shared, tmp_path):
    folder = tmp_path / "sorted"
    shutil.copytree(shared.folder, folder)  # phylib may write into a folder it loads
    result = load_result(folder)
    model = load_model(folder / "params.py")
    try:
        n, k, nt, c = model.n_spikes, model.n_templates, model.n_samples_waveforms, model.n_channels
        assert n == len(result.spike_times) and k == result.n_units and c == 12
        assert model.amplitudes.shape == (n,)
        assert model.features.ndim == 3 and model.features.shape[0] == n and model.features.shape[2] >= 2
        assert model.template_features.ndim == 2 and model.template_features.shape[0] == n
        assert model.similar_templates.shape == (k, k)
        assert model.spike_attributes.positions.shape == (n, 2)
        assert model.traces is not None and model.traces.shape == (shared.recording.get_num_samples(), c)

        # raw waveforms: phylib's window around each spike is exactly the recording there
        spikes = np.linspace(0, n - 1, 40).astype(np.int64)
        spikes = spikes[(model.spike_samples[spikes] > nt) & (model.spike_samples[spikes] < model.traces.shape[0] - nt)]
        w = model.get_waveforms(spikes, np.arange(c))
        assert w.shape == (len(spikes), nt, c)
        for i, s in enumerate(spikes[:10]):
            t = int(model.spike_samples[s])
            uv = shared.recording.get_traces(start_frame=t - nt // 2, end_frame=t - nt // 2 + nt, return_in_uV=True)
            np.testing.assert_allclose(w[i] * GAIN_UV, uv, atol=1e-3)

        # templates in µV: phylib's unwhitened template peak is the sorter's Amplitude column
        amp_table = read_cluster_table(folder / "cluster_Amplitude.tsv")
        for u in range(k):
            b = model.get_template(u, channel_ids=np.arange(c))
            assert b.template.shape == (nt, c)
            assert np.abs(b.template).max() == pytest.approx(float(amp_table[u]), abs=0.01)
            np.testing.assert_allclose(b.template, result.templates_uv[u], atol=1e-3)
        # spike = amplitude x template: amplitudes are scale factors near 1, and phylib's
        # "true" amplitudes are the template's peak-to-peak in µV times that factor
        assert 0.8 < float(np.median(model.amplitudes)) < 1.2
        true_amps, _, _ = model.get_amplitudes_true(1.0)
        ptp = np.array([np.ptp(result.templates_uv[u], axis=0).max() for u in range(k)])
        np.testing.assert_allclose(true_amps, ptp[model.spike_templates] * model.amplitudes, rtol=1e-4)

        # features: each spike has finite PCs on its template's channels, well above the
        # whitened noise (sd 1) on the first of them
        f = model.get_features(spikes, np.arange(c))
        assert f.shape == (len(spikes), c, model.features.shape[2])
        cols = np.load(folder / "pc_feature_ind.npy")
        own = cols[model.spike_templates[spikes], 0]
        assert np.all(np.isfinite(f[np.arange(len(spikes)), own]))
        assert np.median(np.abs(f[np.arange(len(spikes)), own, 0])) > 5
        # template features: dense (spikes, templates), the own template's column is the amplitude
        tf = model.get_template_features(spikes)
        assert tf.shape == (len(spikes), k)
        np.testing.assert_allclose(
            tf[np.arange(len(spikes)), model.spike_templates[spikes]], model.amplitudes[spikes], rtol=1e-5
        )
    finally:
        model.close()


def test_phy_check_script_matches_ground_truth_in_microvolts(shared, tmp_path):
    """scripts/phy_check.py on this folder: phylib's mean waveforms of the well-detected units
    correlate with the ground-truth templates in µV and have the same peak."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import phy_check
    finally:
        sys.path.remove(str(REPO / "scripts"))
    folder = tmp_path / "sorted"
    shutil.copytree(shared.folder, folder)
    rows, summary = phy_check.check(phy_folder=folder, gt_folder=shared.bench, min_corr=0.9, max_ratio=1.25)
    assert summary["n_well_detected"] >= 4, rows
    assert summary["n_well_detected_failing"] == 0, rows
    assert 0.9 <= summary["median_template_ratio"] <= 1.1, summary
    assert summary["median_raw_corr"] >= 0.95, summary


# ------------------------------------------------------------------------------------------
# load_result
# ------------------------------------------------------------------------------------------


def test_uncurated_folder_reads_back_as_the_sorter_wrote_it(shared):
    before = folder_state(shared.folder)
    r = spikesort.load_result(shared.folder)
    assert folder_state(shared.folder) == before  # read only
    assert isinstance(r, CuratedResult) and isinstance(r, spikesort.SortingResult)
    ks = read_cluster_table(shared.folder / "cluster_KSLabel.tsv")
    assert r.unit_ids.tolist() == sorted(ks)
    assert r.labels.tolist() == [ks[u] for u in r.unit_ids]
    assert r.properties["ks_label"].tolist() == r.labels.tolist()
    assert r.n_samples == shared.recording.get_num_samples() and r.sampling_rate_hz == FS
    # the recomputed metrics are the sorter's own for unchanged units
    for name, column, tol in (
        ("snr", "snr", 0.011),
        ("Amplitude", "amplitude_uv", 0.006),
        ("fr", "firing_rate_hz", 0.0006),
        ("depth_um", "depth_um", 0.051),
    ):
        table = read_cluster_table(shared.folder / f"cluster_{name}.tsv")
        np.testing.assert_allclose(r.properties[column], [float(table[u]) for u in r.unit_ids], atol=tol)
    # the params.py path works too
    assert load_result(shared.folder / "params.py").n_units == r.n_units


def test_curated_units_labels_and_metrics(curated):
    cur = curated
    before = folder_state(cur.folder)
    r = load_result(cur.folder)
    assert folder_state(cur.folder) == before
    expected_ids = sorted(
        set(np.unique(cur.old_clusters).tolist()) - {cur.a, cur.b, cur.c} | {cur.merged, cur.part1, cur.part2}
    )
    assert r.unit_ids.tolist() == expected_ids
    np.testing.assert_array_equal(r.spike_clusters, cur.new_clusters)
    labels = dict(zip(r.unit_ids.tolist(), r.labels.tolist()))
    assert labels[cur.merged] == "good" and labels[cur.part1] == "mua" and labels[cur.n] == "noise"
    assert labels[cur.part2] == "unsorted"  # no row in cluster_group.tsv
    ks = dict(zip(r.unit_ids.tolist(), r.properties["ks_label"].tolist()))
    assert ks[cur.merged] == cur.ks[cur.merged]

    i = {u: j for j, u in enumerate(r.unit_ids.tolist())}
    n_merged = cur.counts[cur.a] + cur.counts[cur.b]
    assert r.properties["n_spikes"][i[cur.merged]] == n_merged
    assert r.properties["n_spikes"][i[cur.part1]] + r.properties["n_spikes"][i[cur.part2]] == cur.counts[cur.c]
    # recomputed, not the stale value phy copied from a parent
    assert r.properties["firing_rate_hz"][i[cur.merged]] == pytest.approx(n_merged / r.duration_s)
    stale = float(read_cluster_table(cur.folder / "cluster_fr.tsv")[cur.merged])
    assert abs(stale - n_merged / r.duration_s) > 0.01

    # the merged unit's waveform is the spike-count-weighted mean of its parents' µV templates
    templates_uv = np.load(cur.folder / "templates.npy") @ np.load(cur.folder / "whitening_mat_inv.npy")
    expected = (cur.counts[cur.a] * templates_uv[cur.a] + cur.counts[cur.b] * templates_uv[cur.b]) / n_merged
    np.testing.assert_allclose(r.templates_uv[i[cur.merged]], expected, atol=1e-3)
    # a split part keeps its parent's template (both halves were fitted with it)
    np.testing.assert_allclose(r.templates_uv[i[cur.part1]], templates_uv[cur.c], atol=1e-3)
    depths = np.load(cur.folder / "channel_positions.npy")[:, 1]
    lo, hi = depths.min(), depths.max()
    assert np.all((r.depth_um >= lo) & (r.depth_um <= hi))
    # SNR of a new cluster uses the noise recovered on its parent's peak channel
    assert np.isfinite(r.properties["snr"][i[cur.part1]])


def test_phylib_agrees_on_the_curated_units(curated, tmp_path):
    folder = tmp_path / "curated"
    shutil.copytree(curated.folder, folder)
    r = load_result(folder)
    model = load_model(folder / "params.py")
    try:
        assert model.cluster_ids.tolist() == r.unit_ids.tolist()
        for j, u in enumerate(r.unit_ids):
            assert len(model.get_cluster_spikes(u)) == r.properties["n_spikes"][j]
        # phylib's cluster mean waveform (what Phy draws for the merged cluster) is ours
        mean = model.get_cluster_mean_waveforms(curated.merged)
        j = int(np.flatnonzero(r.unit_ids == curated.merged)[0])
        np.testing.assert_allclose(mean.mean_waveforms, r.templates_uv[j][:, mean.channel_ids], atol=1e-3)
        assert model.metadata["group"][curated.n] == "noise"
    finally:
        model.close()


def test_label_selection(curated):
    r = load_result(curated.folder)
    good = load_result(curated.folder, labels=("good",))
    assert load_result(curated.folder, labels="good").unit_ids.tolist() == good.unit_ids.tolist()
    assert "noise" not in select_units(r, labels="").labels.tolist()
    assert set(good.labels.tolist()) == {"good"}
    assert set(good.spike_clusters.tolist()) == set(good.unit_ids.tolist())
    assert len(good.spike_times) == int(np.sum(np.isin(r.spike_clusters, good.unit_ids)))
    kept = select_units(r, labels=("mua", "unsorted"))
    expected = [u for u, lab in zip(r.unit_ids.tolist(), r.labels.tolist()) if lab in ("mua", "unsorted")]
    assert kept.unit_ids.tolist() == expected and {curated.part1, curated.part2} <= set(expected)
    assert kept.templates_uv.shape[0] == len(expected) and kept.properties["snr"].shape == (len(expected),)
    assert getattr(kept, "metrics", None) is None or len(kept.metrics) == len(expected)
    assert parse_labels(None) is None and parse_labels(" ") is None
    assert parse_labels("good, mua") == ("good", "mua")
    assert set(parse_labels("all")) == {"good", "mua", "noise", "unsorted"}
    assert parse_labels("interesting", available=("interesting",)) == ("interesting",)
    with pytest.raises(SpikesortError, match="unknown label 'god'"):
        parse_labels("good,god")


def test_without_cluster_group_the_automatic_labels_are_used(shared, tmp_path):
    folder = tmp_path / "nogroup"
    shutil.copytree(shared.folder, folder)
    (folder / "cluster_group.tsv").unlink()
    ks = read_cluster_table(folder / "cluster_KSLabel.tsv")
    r = load_result(folder)
    assert r.labels.tolist() == [ks[u] for u in r.unit_ids]


def test_a_sorting_without_spikes_reads_as_no_units(shared, tmp_path):
    from spikesort.outputs.convert import export

    folder = tmp_path / "empty"
    shutil.copytree(shared.folder, folder)
    templates = np.load(folder / "templates.npy")
    for name in ("spike_times", "spike_templates", "spike_clusters", "amplitudes"):
        np.save(folder / f"{name}.npy", np.load(folder / f"{name}.npy")[:0])
    np.save(folder / "templates.npy", templates[:0])
    for name in ("KSLabel", "group", "snr", "Amplitude"):
        (folder / f"cluster_{name}.tsv").write_text(f"cluster_id\t{name}\n")
    r = load_result(folder)
    assert r.n_units == 0 and len(r.spike_times) == 0 and r.templates_uv.shape == (0,) + templates.shape[1:]
    with pytest.raises(SpikesortError, match="holds no units"):
        export(folder, to="npz", output=tmp_path / "x.npz")


def test_bad_folders_are_user_errors(shared, tmp_path):
    with pytest.raises(SpikesortError, match="not found"):
        load_result(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpikesortError, match="no params.py"):
        load_result(tmp_path / "empty")
    folder = tmp_path / "broken"
    shutil.copytree(shared.folder, folder)
    np.save(folder / "spike_clusters.npy", np.zeros(5, dtype=np.int32))
    with pytest.raises(SpikesortError, match="spike_clusters.npy has 5 entries"):
        load_result(folder)
    (folder / "spike_clusters.npy").unlink()
    (folder / "templates.npy").unlink()
    with pytest.raises(SpikesortError, match="lacks templates.npy"):
        load_result(folder)
    bad_tsv = tmp_path / "cluster_x.tsv"
    bad_tsv.write_text("cluster_id\tx\nseven\tgood\n")
    with pytest.raises(SpikesortError, match="not an integer"):
        read_cluster_table(bad_tsv)
