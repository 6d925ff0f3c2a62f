"""The report: made from an output folder alone. What each figure shows is checked against the data
in tests/test_render.py; here, the files make_report and `spikesort report` write.

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
        spike_times=times,
        spike_templates=units,
        amplitudes=rng.uniform(0.8, 1.2, n),
        templates=_templates_uv(k),
        whitening_mat=np.eye(N_CH),
        whitening_mat_inv=np.eye(N_CH),
        channel_map=np.arange(N_CH),
        channel_positions=POSITIONS,
        pc_features=rng.normal(size=(n, 3, 4)),
        pc_feature_ind=np.tile(np.arange(4), (k, 1)),
        template_features=rng.normal(size=(n, 1)),
        template_feature_ind=np.arange(k)[:, None],
        similar_templates=np.eye(k),
        spike_positions=positions,
        cluster_tables={
            "KSLabel": LABELS[:n_units],
            "ContamPct": [1.5] * n_units,
            "Amplitude": [60.0 + 30 * u for u in range(n_units)],
            "fr": [float(np.sum(units == u)) / DURATION_S for u in range(n_units)],
            "snr": [8.0 + u for u in range(n_units)],
        },
        dat_path=None,
        n_channels_dat=N_CH,
        dtype="int16",
        sample_rate=FS,
    )
    write_phy_folder(folder, data)
    write_run_file(folder, n_units=n_units, n_spikes=n)
    return folder


def write_run_file(folder: Path, *, n_units: int, n_spikes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spikesort_run.json").write_text(
        json.dumps(
            {
                "version": "test",
                "params": {},
                "timings_s": {},
                "recording": {
                    "sampling_rate_hz": FS,
                    "n_channels": N_CH,
                    "n_samples": int(DURATION_S * FS),
                    "duration_s": DURATION_S,
                    "has_gain": True,
                },
                "n_units": n_units,
                "n_spikes": n_spikes,
                "bad_channels": {},
            }
        )
    )


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


# --------------------------------------------------------------------------- files


def test_report_files(folder4):
    page = make_report(folder4)
    assert page == folder4 / "report" / "summary.html"
    report = page.parent
    assert_real_image(report / "drift_map.png", min_h=100, min_w=200, min_ink=0.002)  # 600 spikes: sparse
    text = page.read_text()
    assert '"drift_map.png"' in text and "4 units" in text and "good" in text
    # every unit has a page, linked from the summary, with its amplitude raster
    for u in range(4):
        assert f'"unit_{u}.html"' in text
        unit_page = (report / f"unit_{u}.html").read_text()
        assert f'"unit_{u}_amplitudes.png"' in unit_page and "<svg" in unit_page
        raster = imread(report / f"unit_{u}_amplitudes.png")  # a count image: few grey levels
        assert raster.shape[0] >= 50 and raster.shape[1] >= 100 and (raster[..., :3] < 0.9).any()


def test_page_limit_and_good_only(folder4, tmp_path):
    make_report(folder4, max_unit_pages=2)
    # pages of the earlier report are replaced, not left behind
    assert sorted(p.name for p in (folder4 / "report").glob("unit_*.html")) == ["unit_0.html", "unit_1.html"]
    make_report(folder4, good_only=True)
    assert sorted(p.name for p in (folder4 / "report").glob("unit_*.html")) == ["unit_0.html", "unit_3.html"]
    # the table still lists every unit
    text = (folder4 / "report" / "summary.html").read_text()
    assert all(f"<td>{u}</td>" in text or f">{u}</a>" in text for u in range(4))
    with pytest.raises(SpikesortError, match="max_unit_pages"):
        make_report(folder4, max_unit_pages=-1)


# --------------------------------------------------------------------------- odd folders


def test_one_unit(tmp_path):
    folder = write_folder(tmp_path / "one", n_units=1)
    # the writer pads a lone template with an empty one for phylib: still one unit
    assert np.load(folder / "templates.npy").shape[0] == 2
    page = make_report(folder)
    assert sorted(p.name for p in page.parent.glob("unit_*.html")) == ["unit_0.html"]
    assert "1 units" in page.read_text() or "1 unit" in page.read_text()


@pytest.mark.parametrize("with_phy_files", [False, True])
def test_nothing_found(tmp_path, with_phy_files):
    # what a sort leaves when no unit survives: the run record, and no Phy files or empty ones
    folder = tmp_path / "empty"
    write_run_file(folder, n_units=0, n_spikes=0)
    if with_phy_files:
        for name, arr in {
            "spike_times": np.zeros(0, np.int64),
            "spike_templates": np.zeros(0, np.int32),
            "spike_clusters": np.zeros(0, np.int32),
            "amplitudes": np.zeros(0, np.float32),
            "templates": np.zeros((0, NT, N_CH), np.float32),
            "whitening_mat_inv": np.eye(N_CH),
            "channel_positions": POSITIONS,
            "spike_positions": np.zeros((0, 2)),
        }.items():
            np.save(folder / f"{name}.npy", arr)
        (folder / "cluster_KSLabel.tsv").write_text("cluster_id\tKSLabel\n")
        (folder / "params.py").write_text(f"sample_rate = {FS}\n")
    page = make_report(folder)
    assert not list(page.parent.glob("unit_*"))
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
    assert len(list((folder / "report").glob("unit_*.html"))) == 1
    for flags in ([], ["--all-units"]):  # every unit has a page by default
        r = _invoke("report", folder, *flags)
        assert r.exit_code == 0, r.output
        assert len(list((folder / "report").glob("unit_*.html"))) == 3 and "3 unit pages" in r.stdout

    r = _invoke("report", tmp_path / "nope")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spikesort: error: ") and "not found" in lines[0]
