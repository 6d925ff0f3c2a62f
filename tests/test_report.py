"""The report: figures made from an output folder alone.

Most tests use a small Phy folder written with spikesort's own writer from known arrays, so the
plotted values can be checked against the data: whitening is the identity and the gain 1, so
templates are in µV and a spike's amplitude in µV is its scale times its template's |peak|.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

from spikesort import cli  # noqa: E402
from spikesort.errors import SpikesortError  # noqa: E402
from spikesort.io.phy import PhyData, write_phy_folder  # noqa: E402
from spikesort.outputs.figures import (autocorrelogram, figure_drift_map, figure_overview, figure_unit,  # noqa: E402
                                       load_folder)
from spikesort.outputs.report import make_report  # noqa: E402

FS = 30000.0
DURATION_S = 20.0
N_CH = 8
NT = 41
POSITIONS = np.column_stack([np.tile([0.0, 20.0], N_CH // 2), 20.0 * np.arange(N_CH)])
LABELS = ["good", "mua", "noise", "good"]


def _templates_uv(n_units: int) -> np.ndarray:
    """A negative spike on channel 2u (wrapped), smaller on its neighbours."""
    t = np.zeros((n_units, NT, N_CH), np.float32)
    shape = -np.exp(-0.5 * ((np.arange(NT) - NT // 2) / 2.0) ** 2)
    for u in range(n_units):
        peak = (2 * u) % N_CH
        for c in range(N_CH):
            t[u, :, c] = (60.0 + 30 * u) * shape * 0.5 ** abs(c - peak)
    return t


def write_folder(folder: Path, *, n_units: int, seed: int = 0, spikes_per_unit: int = 150) -> Path:
    """A Phy folder plus spikesort_run.json with ``n_units`` units of Poisson-like trains that keep
    a 2 ms refractory gap; every spike at a known position near its unit's peak channel."""
    rng = np.random.default_rng(seed)
    times, units = [], []
    for u in range(n_units):
        isi = rng.exponential(DURATION_S * FS / spikes_per_unit, size=spikes_per_unit) + 0.002 * FS
        t = np.cumsum(isi).astype(np.int64)
        t = t[t < DURATION_S * FS]
        times.append(t)
        units.append(np.full(len(t), u))
    times, units = np.concatenate(times), np.concatenate(units)
    order = np.argsort(times, kind="stable")
    times, units = times[order], units[order]
    n = len(times)
    peak_ch = (2 * units) % N_CH
    positions = POSITIONS[peak_ch] + rng.normal(0, 3.0, size=(n, 2))
    k = max(n_units, 1)
    data = PhyData(
        spike_times=times, spike_templates=units, amplitudes=rng.uniform(0.8, 1.2, n),
        templates=_templates_uv(k), whitening_mat=np.eye(N_CH), whitening_mat_inv=np.eye(N_CH),
        channel_map=np.arange(N_CH), channel_positions=POSITIONS,
        pc_features=rng.normal(size=(n, 3, 4)), pc_feature_ind=np.tile(np.arange(4), (k, 1)),
        template_features=rng.normal(size=(n, 1)), template_feature_ind=np.arange(k)[:, None],
        similar_templates=np.eye(k), spike_positions=positions,
        cluster_tables={"KSLabel": LABELS[:n_units], "ContamPct": [1.5] * n_units,
                        "Amplitude": [60.0 + 30 * u for u in range(n_units)],
                        "fr": [float(np.sum(units == u)) / DURATION_S for u in range(n_units)],
                        "snr": [8.0 + u for u in range(n_units)]},
        dat_path=None, n_channels_dat=N_CH, dtype="int16", sample_rate=FS)
    write_phy_folder(folder, data)
    write_run_file(folder, n_units=n_units, n_spikes=n)
    return folder


def write_run_file(folder: Path, *, n_units: int, n_spikes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spikesort_run.json").write_text(json.dumps(
        {"version": "test", "params": {}, "timings_s": {},
         "recording": {"sampling_rate_hz": FS, "n_channels": N_CH, "n_samples": int(DURATION_S * FS),
                       "duration_s": DURATION_S, "has_gain": True},
         "n_units": n_units, "n_spikes": n_spikes, "bad_channels": {}}))


@pytest.fixture(scope="module")
def folder4(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("rep") / "out", n_units=4)


def assert_real_image(path: Path, *, min_h: int = 200, min_w: int = 300, min_ink: float = 0.01) -> None:
    """A PNG that decodes, is of a reasonable size and is not one flat colour."""
    assert path.is_file(), path
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] >= min_h and img.shape[1] >= min_w, (path, img.shape)
    flat = img.reshape(-1, img.shape[2])
    packed = (np.round(flat[:, :3] * 255).astype(np.int64) * [65536, 256, 1]).sum(axis=1)
    assert len(np.unique(packed)) > 10, f"{path} is nearly one colour"
    # the drawing covers a real part of the image, not a few stray pixels
    assert np.mean(np.any(flat[:, :3] < 0.9, axis=1)) > min_ink, f"{path} is nearly empty"


def _scatter(ax, label: str):
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0]


# --------------------------------------------------------------------------- files


def test_report_files_are_images(folder4):
    page = make_report(folder4)
    assert page == folder4 / "report" / "summary.html"
    report = page.parent
    for name in ["drift_map.png", "overview.png"] + [f"unit_{u}.png" for u in range(4)]:
        assert_real_image(report / name)
    text = page.read_text()
    for name in ["drift_map.png", "overview.png", "unit_0.png", "unit_3.png"]:
        assert f'"{name}"' in text
    assert "4 units" in text and "good" in text


def test_page_limit_and_good_only(folder4, tmp_path):
    make_report(folder4, max_unit_pages=2)
    # pages of the earlier report are replaced, not left behind
    assert sorted(p.name for p in (folder4 / "report").glob("unit_*.png")) == ["unit_0.png", "unit_1.png"]
    make_report(folder4, good_only=True)
    assert sorted(p.name for p in (folder4 / "report").glob("unit_*.png")) == ["unit_0.png", "unit_3.png"]
    with pytest.raises(SpikesortError, match="max_unit_pages"):
        make_report(folder4, max_unit_pages=-1)


# --------------------------------------------------------------------------- plotted values


def test_drift_map_plots_every_spike_at_its_depth_and_amplitude(folder4):
    data = load_folder(folder4)
    fig = figure_drift_map(data)
    sc = _scatter(fig.axes[0], "spikes")
    plotted = np.column_stack([sc.get_offsets(), sc.get_array()])
    times = np.load(folder4 / "spike_times.npy") / FS
    depth = np.load(folder4 / "spike_positions.npy")[:, 1]
    # µV amplitude = scale x |peak| of the spike's template (templates are in µV here)
    peak_uv = np.abs(np.load(folder4 / "templates.npy")).max(axis=(1, 2))
    amp_uv = np.load(folder4 / "amplitudes.npy") * peak_uv[np.load(folder4 / "spike_templates.npy")]
    expected = np.column_stack([times, depth, amp_uv])
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731 - order-free comparison
    np.testing.assert_allclose(key(plotted), key(expected), rtol=1e-5)


def test_drift_map_shows_the_recorded_depths_when_there_is_a_motion_estimate(tmp_path):
    motion_mod = pytest.importorskip("spikesort.stages.drift.estimate")
    if not hasattr(motion_mod, "Motion"):
        pytest.skip("spikesort.motion has no Motion class")
    folder = write_folder(tmp_path / "out", n_units=2)
    # rigid drift: the tissue moves from 0 to +20 µm over the recording
    motion_mod.Motion(displacement_um=np.array([[0.0], [20.0]], np.float32), time_bins_s=np.array([0.0, DURATION_S]),
                      depth_bins_um=np.array([70.0]), block_shanks=np.array([0])).save(folder)
    fig = figure_drift_map(load_folder(folder))
    recorded = _scatter(fig.axes[0], "spikes as recorded").get_offsets()
    corrected = _scatter(fig.axes[1], "spikes").get_offsets()
    t = np.asarray(recorded[:, 0])
    np.testing.assert_allclose(recorded[:, 0], corrected[:, 0])
    np.testing.assert_allclose(recorded[:, 1] - corrected[:, 1], 20.0 * t / DURATION_S, atol=1e-3)
    assert_real_image(Path(make_report(folder)).parent / "drift_map.png")


def test_drift_map_subsamples_a_big_sort(folder4):
    data = load_folder(folder4)
    sc = _scatter(figure_drift_map(data, max_spikes=100).axes[0], "spikes")
    assert len(sc.get_offsets()) == 100
    assert "100 of" in figure_drift_map(data, max_spikes=100).axes[0].get_title()


def test_overview_has_one_point_per_unit_at_its_median_position(folder4):
    data = load_folder(folder4)
    sc = _scatter(figure_overview(data).axes[0], "units")
    offsets = np.asarray(sc.get_offsets())
    clusters = np.load(folder4 / "spike_clusters.npy")
    positions = np.load(folder4 / "spike_positions.npy")
    assert len(offsets) == len(np.unique(clusters)) == 4
    for u in range(4):
        np.testing.assert_allclose(offsets[u], np.median(positions[clusters == u], axis=0), rtol=1e-5)


def test_acg_bars_equal_a_histogram_of_all_spike_pairs(folder4):
    data = load_folder(folder4)
    unit = 2
    fig = figure_unit(data, unit)
    (ax,) = [a for a in fig.axes if a.get_title() == "auto-correlogram"]
    (bars,) = [p for p in ax.patches if p.get_label() == "acg"]
    heights, edges = bars.get_data().values, bars.get_data().edges
    np.testing.assert_allclose(edges, np.arange(-50, 51, 1.0))
    t_ms = np.load(folder4 / "spike_times.npy")[np.load(folder4 / "spike_clusters.npy") == unit] / FS * 1000
    diffs = np.subtract.outer(t_ms, t_ms)[~np.eye(len(t_ms), dtype=bool)]
    expected = np.histogram(diffs, bins=np.arange(-50, 51, 1.0))[0]
    assert expected.sum() > 0, "the test train has no pair within 50 ms"
    np.testing.assert_array_equal(heights, expected)
    # the trains keep a 2 ms refractory gap: the two central bins are empty
    assert heights[48] == heights[49] == heights[50] == heights[51] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_autocorrelogram_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 30000 * 2, size=300))
    t[5] = t[4]  # two spikes on one sample: a pair at lag 0
    counts, edges = autocorrelogram(t, sampling_rate_hz=FS, window_ms=20.0, bin_ms=0.5)
    d = np.subtract.outer(t, t)[~np.eye(len(t), dtype=bool)] / FS * 1000
    np.testing.assert_array_equal(counts, np.histogram(d, bins=edges)[0])
    assert edges[0] == -20.0 and edges[-1] == 20.0 and len(edges) == 81
    assert autocorrelogram(t[:1], sampling_rate_hz=FS)[0].sum() == 0


def test_unit_page_shows_the_metrics(folder4):
    fig = figure_unit(load_folder(folder4), 1)
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "SNR: 9.0" in texts and "amplitude: 90.0 µV" in texts and "contamination: 1.5 %" in texts
    assert "unit 1 (mua)" in fig.texts[0].get_text()


# --------------------------------------------------------------------------- odd folders


def test_one_unit(tmp_path):
    folder = write_folder(tmp_path / "one", n_units=1)
    # the writer pads a lone template with an empty one for phylib: still one unit
    assert np.load(folder / "templates.npy").shape[0] == 2
    page = make_report(folder)
    assert sorted(p.name for p in page.parent.glob("unit_*.png")) == ["unit_0.png"]
    assert_real_image(page.parent / "unit_0.png")
    assert len(_scatter(figure_overview(load_folder(folder)).axes[0], "units").get_offsets()) == 1


@pytest.mark.parametrize("with_phy_files", [False, True])
def test_nothing_found(tmp_path, with_phy_files):
    # what a sort leaves when no unit survives: the run record, and no Phy files or empty ones
    folder = tmp_path / "empty"
    write_run_file(folder, n_units=0, n_spikes=0)
    if with_phy_files:
        for name, arr in {"spike_times": np.zeros(0, np.int64), "spike_templates": np.zeros(0, np.int32),
                          "spike_clusters": np.zeros(0, np.int32), "amplitudes": np.zeros(0, np.float32),
                          "templates": np.zeros((0, NT, N_CH), np.float32), "whitening_mat_inv": np.eye(N_CH),
                          "channel_positions": POSITIONS, "spike_positions": np.zeros((0, 2))}.items():
            np.save(folder / f"{name}.npy", arr)
        (folder / "cluster_KSLabel.tsv").write_text("cluster_id\tKSLabel\n")
        (folder / "params.py").write_text(f"sample_rate = {FS}\n")
    page = make_report(folder)
    # axes, titles and a "no units" note: little ink, but a real image
    assert_real_image(page.parent / "drift_map.png", min_ink=0.002)
    assert_real_image(page.parent / "overview.png", min_ink=0.002)
    assert not list(page.parent.glob("unit_*.png"))
    assert "0 units" in page.read_text()


def test_not_an_output_folder(tmp_path):
    with pytest.raises(SpikesortError, match="not a finished spikesort output folder"):
        make_report(tmp_path)
    with pytest.raises(SpikesortError, match="not found"):
        make_report(tmp_path / "nope")


# --------------------------------------------------------------------------- the command


def _invoke(*args):
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click 8.2
        runner = CliRunner()
    return runner.invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def test_report_command(tmp_path):
    folder = write_folder(tmp_path / "out", n_units=3)
    r = _invoke("report", folder, "--max-unit-pages", "1")
    assert r.exit_code == 0, r.output
    assert str(folder / "report" / "summary.html") in r.stdout and "1 unit pages" in r.stdout
    r = _invoke("report", folder, "--all-units")
    assert r.exit_code == 0, r.output
    assert len(list((folder / "report").glob("unit_*.png"))) == 3

    r = _invoke("report", tmp_path / "nope")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spikesort: error: ") and "not found" in lines[0]
