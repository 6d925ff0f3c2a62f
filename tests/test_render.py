"""The report without matplotlib (spikesort.outputs.render): PNG encoder, SVG figures, HTML pages.

A small synthetic FolderData (8 channels in two columns, 4 units, known spike trains and positions;
whitening is the identity so templates are in µV) stands in for a folder read by load_folder.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from spikesort.outputs.render import figures, write_report
from spikesort.outputs.render.png import (
    GREYS,
    VIRIDIS,
    encode_png,
    palette_indices,
    palette_of,
)
from spikesort.outputs.render.stats import (
    UnitIndex,
    autocorrelogram,
    recorded_depths,
    spike_amplitudes_uv,
    template_peaks,
    unit_medians,
    unit_positions,
    unit_templates,
)
from spikesort.outputs.render.svg import nice_ticks, tick_labels
from spikesort.outputs.report import FolderData

FS = 30000.0
DURATION_S = 20.0
N_CH = 8
NT = 41
POSITIONS = np.column_stack([np.tile([0.0, 20.0], N_CH // 2), 20.0 * np.arange(N_CH)])
LABELS = ["good", "mua", "noise", "good"]
SVG_NS = "{http://www.w3.org/2000/svg}"


def _templates_uv(n_units: int) -> np.ndarray:
    """A negative spike on channel 2u+1 (wrapped), smaller on its neighbours."""
    t = np.zeros((max(n_units, 1), NT, N_CH), np.float32)
    shape = -np.exp(-0.5 * ((np.arange(NT) - NT // 2) / 2.0) ** 2)
    for u in range(n_units):
        peak = (2 * u + 1) % N_CH
        for c in range(N_CH):
            t[u, :, c] = (60.0 + 30 * u) * shape * 0.5 ** abs(c - peak)
    return t


def make_data(folder: Path, *, n_units: int = 4, seed: int = 0, spikes_per_unit: int = 150) -> FolderData:
    """Units of Poisson-like trains that keep a 2 ms refractory gap, each spike near its unit's peak channel."""
    rng = np.random.default_rng(seed)
    times, units = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for u in range(n_units):
        isi = rng.exponential(DURATION_S * FS / spikes_per_unit, size=spikes_per_unit) + 0.002 * FS
        t = np.cumsum(isi).astype(np.int64)
        t = t[t < DURATION_S * FS]
        times.append(t)
        units.append(np.full(len(t), u, np.int64))
    times, units = np.concatenate(times), np.concatenate(units)
    order = np.argsort(times, kind="stable")
    times, units = times[order], units[order]
    n = len(times)
    positions = POSITIONS[(2 * units + 1) % N_CH] + rng.normal(0, 3.0, size=(n, 2))
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.unique(units)
    tables = {
        "KSLabel": {u: LABELS[u] for u in range(n_units)},
        "snr": {u: f"{8.0 + u}" for u in range(n_units)},
        "Amplitude": {u: f"{60.0 + 30 * u}" for u in range(n_units)},
    }
    return FolderData(
        folder=folder,
        sampling_rate_hz=FS,
        duration_s=DURATION_S,
        spike_times=times,
        spike_clusters=units,
        spike_templates=units.copy(),
        amplitudes=rng.uniform(0.8, 1.2, n),
        spike_positions=positions,
        templates=_templates_uv(n_units),
        whitening_mat_inv=np.eye(N_CH, dtype=np.float32),
        channel_positions=POSITIONS,
        channel_shanks=np.zeros(N_CH, np.int64),
        unit_ids=ids,
        labels={u: LABELS[u] for u in range(n_units)},
        tables=tables,
    )


@pytest.fixture(scope="module")
def data4(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("render") / "out")


def svgs(text: str) -> list[ET.Element]:
    """Every inline SVG of a page, parsed (a malformed one raises)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg .*?</svg>", text, flags=re.DOTALL)]


def find(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(SVG_NS + tag) if cls in (e.get("class") or "").split()]


# --------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("channels", [None, 3, 4])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (120, 301)])
def test_png_round_trips_exactly(channels, shape):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, size=shape + ((channels,) if channels else ()), dtype=np.uint8)
    png = encode_png(img)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), img)
    imread = pytest.importorskip("matplotlib.image").imread
    back = imread(io.BytesIO(png), format="png")
    np.testing.assert_array_equal(np.round(np.asarray(back) * 255).astype(np.uint8), img)


def test_indexed_png_round_trips_to_its_palette_colours():
    Image = pytest.importorskip("PIL.Image")
    pal = palette_of(VIRIDIS)
    assert pal.shape == (256, 3) and tuple(pal[0]) == (255, 255, 255)
    idx = np.random.default_rng(1).integers(0, 256, size=(50, 70), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_png(idx, palette=pal)))
    np.testing.assert_array_equal(np.asarray(decoded), idx)
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), pal[idx])
    small = palette_of(GREYS)[:4]
    with pytest.raises(ValueError, match="outside the palette"):
        encode_png(idx, palette=small)


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros((3, 3, 2), np.uint8), np.zeros((0, 3), np.uint8)])
def test_png_rejects_what_it_cannot_encode(bad):
    with pytest.raises(ValueError):
        encode_png(bad)


def test_palette_indices_scale_and_mark_empty_pixels():
    v = np.array([[0.0, 5.0, 10.0, 20.0, -3.0]])
    idx = palette_indices(v, lo=0.0, hi=10.0, empty=np.array([[False, False, False, False, True]]))
    np.testing.assert_array_equal(idx, [[1, 128, 255, 255, 0]])


# --------------------------------------------------------------------------- pieces


def test_nice_ticks():
    np.testing.assert_allclose(nice_ticks(0, 20), [0, 5, 10, 15, 20])
    np.testing.assert_allclose(nice_ticks(-50, 50), [-40, -20, 0, 20, 40])
    assert tick_labels(nice_ticks(0, 1)) == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert tick_labels(nice_ticks(-50, 50)) == ["-40", "-20", "0", "20", "40"]
    assert tick_labels(nice_ticks(0, 10, n=4)) == ["0.0", "2.5", "5.0", "7.5", "10.0"]
    assert tick_labels(nice_ticks(0, 100, n=4)) == ["0", "25", "50", "75", "100"]
    assert tick_labels(nice_ticks(-0.5, 0.5, n=2)) == ["-0.5", "0.0", "0.5"]


def test_unit_medians_equal_numpy_medians(data4):
    index = UnitIndex.build(data4.spike_clusters, data4.unit_ids)
    got = unit_medians(data4.spike_positions, index, data4.spike_clusters)
    for i, u in enumerate(data4.unit_ids):
        np.testing.assert_array_equal(got[i], np.median(data4.spike_positions[data4.spike_clusters == u], axis=0))
    # an even and an odd count, and a unit without spikes
    clusters = np.array([0, 0, 2, 2, 2, 0, 0])
    values = np.array([4.0, 1.0, 9.0, 7.0, 8.0, 3.0, 2.0])
    got = unit_medians(values, UnitIndex.build(clusters, np.array([0, 1, 2])), clusters)
    np.testing.assert_array_equal(got, [2.5, np.nan, 8.0])


def test_max_image_keeps_the_largest_value_of_each_pixel():
    img, empty = figures.max_image(
        [0.5, 0.5, 9.5], [0.5, 0.5, 9.5], [3.0, 7.0, 1.0], xlim=(0, 10), ylim=(0, 10), shape=(10, 10), dot=1
    )
    assert img[9, 0] == 7.0 and img[0, 9] == 1.0  # the top row is the top of ylim
    assert empty.sum() == 98


def test_acg_bars_equal_a_histogram_of_all_spike_pairs(data4):
    t = data4.spike_times[data4.spike_clusters == 2]
    root = ET.fromstring(figures.acg(t, sampling_rate_hz=FS))
    bars = find(root, "rect", "bar")
    assert len(bars) == 100
    t_ms = t / FS * 1000
    diffs = np.subtract.outer(t_ms, t_ms)[~np.eye(len(t_ms), dtype=bool)]
    expected = np.histogram(diffs, bins=np.arange(-50, 51, 1.0))[0]
    assert expected.sum() > 0, "the test train has no pair within 50 ms"
    np.testing.assert_array_equal([int(b.get("data-count")) for b in bars], expected)
    # bars stand left to right in lag order; the tallest count is the tallest bar
    xs = [float(b.get("x")) for b in bars]
    assert xs == sorted(xs)
    heights = np.array([float(b.get("height")) for b in bars])
    assert heights[np.argmax(expected)] == heights.max() > 0
    assert heights[48] == heights[49] == heights[50] == heights[51] == 0  # 2 ms refractory gap


@pytest.mark.parametrize("seed", [0, 1])
def test_autocorrelogram_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 30000 * 2, size=300))
    t[5] = t[4]
    counts, edges = autocorrelogram(t, sampling_rate_hz=FS, window_ms=20.0, bin_ms=0.5)
    d = np.subtract.outer(t, t)[~np.eye(len(t), dtype=bool)] / FS * 1000
    np.testing.assert_array_equal(counts, np.histogram(d, bins=edges)[0])


def test_overview_has_one_circle_per_unit_at_its_median_position(data4):
    root = ET.fromstring(figures.overview(data4, *_unit_stats(data4), pages={0, 1}))
    circles = find(root, "circle", "unit")
    assert [int(c.get("data-id")) for c in circles] == [0, 1, 2, 3]
    for c in circles:
        u = int(c.get("data-id"))
        med = np.median(data4.spike_positions[data4.spike_clusters == u], axis=0)
        np.testing.assert_allclose([float(c.get("data-x")), float(c.get("data-y"))], med, atol=0.006)
        assert c.get("fill") == figures.LABEL_COLORS[LABELS[u]]
    # pixel positions follow the data: deeper units are higher up
    cy = {int(c.get("data-id")): float(c.get("cy")) for c in circles}
    assert cy[0] > cy[1] > cy[2] > cy[3]
    # sized by amplitude: unit 3 is the largest
    r = [float(c.get("r")) for c in circles]
    assert r == sorted(r)
    assert len(find(root, "rect", "ch")) == N_CH
    # units with a page link to it
    links = [a.get("href") for a in root.iter(SVG_NS + "a")]
    assert sorted(set(links)) == ["unit_0.html", "unit_1.html"]


def _unit_stats(data):
    index = UnitIndex.build(data.spike_clusters, data.unit_ids)
    peaks = template_peaks(data)
    positions = unit_positions(data, index, templates=unit_templates(data, index), peaks=peaks)
    return positions, unit_medians(spike_amplitudes_uv(data, peaks), index, data.spike_clusters)


def test_template_peaks_units_templates_and_amplitudes(data4):
    peaks = template_peaks(data4)
    uv = np.asarray(data4.templates) @ data4.whitening_mat_inv
    np.testing.assert_allclose(peaks.peak_uv, np.abs(uv).max(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(peaks.channel, [1, 3, 5, 7])
    np.testing.assert_allclose(
        spike_amplitudes_uv(data4, peaks), data4.amplitudes * peaks.peak_uv[data4.spike_templates], rtol=1e-12
    )
    # a curated merge: unit 0 holds spikes of templates 0 and 2, most of template 2
    clusters = np.array([0, 0, 0, 1, 5])
    templates = np.array([2, 0, 2, 1, 1])
    data = FolderData(
        **{
            **vars(data4),
            "spike_times": np.arange(5),
            "spike_clusters": clusters,
            "spike_templates": templates,
            "unit_ids": np.array([0, 1, 3, 5]),
        }
    )
    got = unit_templates(data, UnitIndex.build(clusters, data.unit_ids))
    np.testing.assert_array_equal(got, [2, 1, -1, 1])
    # without spike positions a unit sits on its template's peak channel
    data = FolderData(**{**vars(data4), "spike_positions": None})
    positions, _ = _unit_stats(data)
    np.testing.assert_array_equal(positions, POSITIONS[[1, 3, 5, 7]])


def test_waveforms_draw_each_channel_with_the_peak_in_colour(data4):
    spikes = np.flatnonzero(data4.spike_clusters == 1)
    root = ET.fromstring(figures.waveforms(data4, spikes, template=1, peak_channel=3))
    paths = find(root, "path", "wf")
    assert len(paths) == N_CH  # fewer channels than the 16 shown
    (peak,) = find(root, "path", "peak")
    assert int(peak.get("data-channel")) == 3 and peak.get("stroke") == figures.PEAK_COLOR
    # one point per sample, in tenths of a pixel inside a scale(0.1) group
    xy = np.array(peak.get("d")[1:].split(), dtype=float).reshape(-1, 2) / 10
    assert len(xy) == NT
    # the trough (a negative spike) is the lowest point on screen: the largest y in pixels
    assert np.argmax(xy[:, 1]) == NT // 2
    scale = np.median(data4.amplitudes[spikes]) * 90.0
    texts = [t.text for t in root.iter(SVG_NS + "text")]
    assert f"{scale:.0f} µV" in texts
    assert len(find(root, "path", "scalebar")) == 1


def test_recorded_depths_add_the_motion(tmp_path):
    motion_mod = pytest.importorskip("spikesort.stages.drift.stage")
    data = make_data(tmp_path / "out", n_units=2)
    assert recorded_depths(data, times_s=np.array([1.0]), depths_um=np.array([5.0]), x_um=np.zeros(1)) is None
    motion_mod.Motion(
        displacement_um=np.array([[0.0], [20.0]], np.float32),
        time_bins_s=np.array([0.0, DURATION_S]),
        depth_bins_um=np.array([70.0]),
        block_shanks=np.array([0]),
    ).save(data.folder)
    t = data.spike_times / FS
    raw = recorded_depths(data, times_s=t, depths_um=data.spike_positions[:, 1], x_um=data.spike_positions[:, 0])
    np.testing.assert_allclose(raw - data.spike_positions[:, 1], 20.0 * t / DURATION_S, atol=1e-3)
    page = write_report(data, tmp_path / "report")
    text = page.read_text()
    assert "as recorded" in text and "drift corrected" in text
    for name in ("drift_map.png", "drift_map_recorded.png"):
        assert f'href="{name}"' in text and (page.parent / name).is_file()
    # without the estimate the recorded panel goes, and its old file with it
    for f in motion_mod.MOTION_FILES:
        (data.folder / f).unlink()
    page = write_report(data, tmp_path / "report")
    assert not (page.parent / "drift_map_recorded.png").exists() and "as recorded" not in page.read_text()


# --------------------------------------------------------------------------- the report


def test_every_unit_gets_a_page_linked_from_the_summary(data4, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    page = write_report(data4, tmp_path / "report")
    assert page == tmp_path / "report" / "summary.html"
    text = page.read_text(encoding="utf8")
    for root in svgs(text):
        assert root.tag == SVG_NS + "svg"
    assert len(svgs(text)) == 2  # overview and drift map
    table = text[text.index('<table class="units">') :]
    for u in data4.unit_ids:
        assert f'<a href="unit_{u}.html">{u}</a>' in table
        unit_page = (page.parent / f"unit_{u}.html").read_text(encoding="utf8")
        assert f"unit {u} ({LABELS[u]})" in unit_page and 'href="summary.html"' in unit_page
        assert len(svgs(unit_page)) == 3  # waveforms, ACG, amplitudes
        png = page.parent / f"unit_{u}_amplitudes.png"
        assert f'href="{png.name}"' in unit_page
        img = np.asarray(Image.open(png).convert("RGB"))
        n_spikes = int(np.sum(data4.spike_clusters == u))
        assert f"<th>spikes</th><td>{n_spikes}</td>" in unit_page
        # every spike is in some dark pixel (a 2-D histogram: fewer pixels than spikes when they share one)
        assert 0 < np.sum(np.any(img < 250, axis=2)) <= n_spikes
    assert "SNR</th>" in text and ">9.0<" in text
    drift = np.asarray(Image.open(page.parent / "drift_map.png").convert("RGB"))
    assert drift.shape[0] > 300 and np.sum(np.any(drift < 250, axis=2)) > 100
    # neighbour links between unit pages
    assert 'href="unit_2.html"' in (page.parent / "unit_1.html").read_text(encoding="utf8")


def test_pages_for_chosen_units_and_stale_pages_go(data4, tmp_path):
    out = tmp_path / "report"
    write_report(data4, out)
    (out / "unit_99.png").write_bytes(b"old report")
    write_report(data4, out, unit_ids=[0, 3])
    assert sorted(p.name for p in out.glob("unit_*")) == [
        "unit_0.html",
        "unit_0_amplitudes.png",
        "unit_3.html",
        "unit_3_amplitudes.png",
    ]
    text = (out / "summary.html").read_text(encoding="utf8")
    assert 'href="unit_1.html"' not in text and "<td>1</td>" in text  # unit 1 still in the table
    from spikesort.errors import SpikesortError

    with pytest.raises(SpikesortError, match="no unit 7"):
        write_report(data4, out, unit_ids=[7])


def test_deterministic(data4, tmp_path):
    a, b = write_report(data4, tmp_path / "a").parent, write_report(data4, tmp_path / "b").parent
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) == 2 + 2 * 4
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_folder_read_by_load_folder(tmp_path):
    """What load_folder gives (memory-mapped templates, int32 ids from the Phy writer) renders too."""
    from spikesort.io.phy import PhyData, write_phy_folder
    from spikesort.outputs.report import load_folder

    d = make_data(tmp_path / "src", n_units=3)
    n, k = len(d.spike_times), 3
    rng = np.random.default_rng(0)
    write_phy_folder(
        tmp_path / "out",
        PhyData(
            spike_times=d.spike_times,
            spike_templates=d.spike_templates,
            amplitudes=d.amplitudes,
            templates=d.templates,
            whitening_mat=np.eye(N_CH),
            whitening_mat_inv=np.eye(N_CH),
            channel_map=np.arange(N_CH),
            channel_positions=POSITIONS,
            pc_features=rng.normal(size=(n, 3, 4)),
            pc_feature_ind=np.tile(np.arange(4), (k, 1)),
            template_features=rng.normal(size=(n, 1)),
            template_feature_ind=np.arange(k)[:, None],
            similar_templates=np.eye(k),
            spike_positions=d.spike_positions,
            dat_path=None,
            cluster_tables={"KSLabel": LABELS[:k], "ContamPct": [1.5] * k, "Amplitude": [60.0, 90.0, 120.0]},
            n_channels_dat=N_CH,
            dtype="int16",
            sample_rate=FS,
        ),
    )
    data = load_folder(tmp_path / "out")
    page = write_report(data, tmp_path / "out" / "report")
    assert sorted(p.name for p in page.parent.glob("unit_*.html")) == ["unit_0.html", "unit_1.html", "unit_2.html"]
    assert f"{n} spikes" in page.read_text(encoding="utf8")


def test_one_unit(tmp_path):
    data = make_data(tmp_path / "out", n_units=1)
    page = write_report(data, tmp_path / "report")
    assert sorted(p.name for p in page.parent.glob("unit_*.html")) == ["unit_0.html"]
    (overview, _) = svgs(page.read_text(encoding="utf8"))
    assert len(find(overview, "circle", "unit")) == 1
    for root in svgs((page.parent / "unit_0.html").read_text(encoding="utf8")):
        assert root.tag == SVG_NS + "svg"


def test_no_spikes(tmp_path):
    data = make_data(tmp_path / "out", n_units=0)
    assert len(data.spike_times) == 0 and data.n_units == 0
    page = write_report(data, tmp_path / "report")
    text = page.read_text(encoding="utf8")
    assert "0 units" in text and "no spikes" in text and "no units" in text
    assert len(svgs(text)) == 2 and not list(page.parent.glob("unit_*"))


def test_no_templates_no_positions(data4, tmp_path):
    from dataclasses import replace

    data = replace(data4, templates=None, whitening_mat_inv=None, spike_positions=None, channel_positions=None)
    page = write_report(data, tmp_path / "report")
    assert "no spike_positions.npy" in page.read_text(encoding="utf8")
    assert "no template" in (page.parent / "unit_0.html").read_text(encoding="utf8")
