"""The Python API an acquisition script uses: spikesort.sort, its result, progress, config.

One small simulated recording (8 channels, 10 s, 4 units) is sorted once, through a lazy
spikeinterface preprocessing chain, with parameters read from an edited TOML template and a
progress callback; the tests then look at what came back.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("spikeinterface.generation")
import spikesort  # noqa: E402
from spikesort.errors import SpikesortError  # noqa: E402
from spikesort.outputs.result import UNIT_COLUMNS, SortingResult  # noqa: E402
from spikesort.params import Params  # noqa: E402
from spikesort.pipeline.progress import stage_progress  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STREAMED_STAGES = ["preprocess", "detect", "match", "features"]


def _demo(duration_s=10.0, **kw):
    from spikesort.demo import make_demo_recording

    return make_demo_recording(duration_s=duration_s, n_channels=8, n_units=4, seed=1, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from spikeinterface.preprocessing import common_reference, highpass_filter

    base = tmp_path_factory.mktemp("api")
    recording, gt = _demo()
    # a lazy chain, as a lab's acquisition code hands it over: nothing is computed before sorting
    chain = common_reference(highpass_filter(recording, freq_min=250.0), operator="median")
    config = base / "lab.toml"
    config.write_text(Params().to_toml().replace("seed = 0", "seed = 7").replace("chunk_s = 2.0", "chunk_s = 1.5"))
    params = Params.from_toml(config)
    calls = []
    result = spikesort.sort(chain, base / "out", params=params, progress=lambda *a: calls.append(a))
    return SimpleNamespace(
        result=result,
        folder=base / "out",
        calls=calls,
        params=params,
        gt=gt,
        base=base,
        n_samples=recording.get_num_samples(),
    )


# --------------------------------------------------------------------------- sort and its result


def test_sort_a_lazy_chain_with_a_config(run):
    r = run.result
    assert isinstance(r, SortingResult)
    assert r.n_units >= 2, r.units
    stored = json.loads((run.folder / "spikesort_run.json").read_text())
    assert stored["params"] == run.params.to_dict()
    assert stored["params"]["seed"] == 7 and stored["params"]["chunk_s"] == 1.5


def test_progress_callback_counts_up_per_stage(run):
    stages = [c[0] for c in run.calls]
    assert list(dict.fromkeys(stages)) == STREAMED_STAGES
    from spikesort.pipeline.run import PREPROCESS_CHUNK_S

    for stage in STREAMED_STAGES:
        # preprocessing streams on its own grid, whatever chunk_s (see spikesort.pipeline)
        n_chunks = -(-run.n_samples // int((PREPROCESS_CHUNK_S if stage == "preprocess" else 1.5) * 30000))
        seen = [(done, total) for s, done, total in run.calls if s == stage]
        assert [d for d, _ in seen] == list(range(n_chunks + 1)), (stage, seen)
        assert {t for _, t in seen} == {n_chunks}


def test_units_table(run):
    r = run.result
    units = r.units
    assert list(units.columns) == list(UNIT_COLUMNS)
    assert units.index.name == "unit_id" and list(units.index) == list(r.unit_ids)
    assert list(units["label"]) == list(r.labels)
    counts = [int(np.sum(r.spike_clusters == u)) for u in r.unit_ids]
    assert list(units["n_spikes"]) == counts and sum(counts) == len(r.spike_times)
    # firing rate is spikes over the recording's duration (the table holds it rounded to 1e-3)
    np.testing.assert_allclose(units["firing_rate_hz"], np.array(counts) / 10.0, atol=1e-3)
    # the table holds what Phy shows in cluster_*.tsv (there rounded)
    from spikesort.io.phy import read_phy_folder

    phy = read_phy_folder(run.folder)["cluster_tables"]
    for u in r.unit_ids:
        assert units.loc[u, "snr"] == pytest.approx(phy["snr"][u], abs=0.006)
        assert units.loc[u, "amplitude_uv"] == pytest.approx(phy["Amplitude"][u], abs=0.006)
        assert units.loc[u, "contamination"] == pytest.approx(phy["ContamPct"][u] / 100, abs=1e-4)
        assert units.loc[u, "depth_um"] == pytest.approx(phy["depth_um"][u], abs=0.06)
    # the peak channel of each unit is where its template is largest, at the unit's depth
    pos = np.load(run.folder / "channel_positions.npy")
    assert (units["peak_channel"] >= 0).all()
    assert np.all(np.abs(pos[units["peak_channel"], 1] - units["depth_um"]) <= 50.0)


def test_units_table_read_back_from_the_folder(run):
    # a result rebuilt without its metrics in memory (e.g. after --resume) reads the cluster_*.tsv
    r = run.result
    assert r.metrics is not None
    from_files = dataclasses.replace(r, metrics=None).units
    in_memory = r.units
    assert list(from_files.columns) == list(in_memory.columns)
    for name in UNIT_COLUMNS:
        if name == "label":
            assert list(from_files[name]) == list(in_memory[name])
            continue
        # the files round: µV and SNR to 0.01, depth to 0.1 µm, contamination to 0.01 %
        np.testing.assert_allclose(
            from_files[name], in_memory[name], atol=0.06 if name == "depth_um" else 0.006, err_msg=name
        )


def test_units_table_prefers_the_metrics_in_memory(run):
    from spikesort.stages.metrics import UnitMetrics

    r = run.result
    k = r.n_units
    fields = {
        name: np.arange(k, dtype=float) + 0.123456
        for name in (
            "firing_rate_hz",
            "isi_violation_ratio",
            "contamination",
            "presence_ratio",
            "amplitude_cutoff",
            "snr",
            "amplitude_uv",
            "depth_um",
        )
    }
    m = UnitMetrics(unit_id=r.unit_ids, n_spikes=np.zeros(k, int), peak_channel=np.arange(k), **fields)
    with_metrics = SortingResult(
        output_folder=r.output_folder,
        spike_times=r.spike_times,
        spike_clusters=r.spike_clusters,
        amplitudes=r.amplitudes,
        unit_ids=r.unit_ids,
        sampling_rate_hz=r.sampling_rate_hz,
        labels=r.labels,
        metrics=m,
    )
    units = with_metrics.units
    np.testing.assert_array_equal(units["snr"], fields["snr"])  # full precision, not the tsv's rounding
    np.testing.assert_array_equal(units["peak_channel"], np.arange(k))
    assert list(units["n_spikes"]) == list(r.units["n_spikes"])  # always counted from the spikes


def test_to_spikeinterface_carries_the_table(run):
    r = run.result
    sorting = r.to_spikeinterface()
    units = r.units
    assert list(sorting.unit_ids) == list(r.unit_ids)
    assert sorting.get_sampling_frequency() == r.sampling_rate_hz
    for u in r.unit_ids:
        np.testing.assert_array_equal(sorting.get_unit_spike_train(u), r.spike_times[r.spike_clusters == u])
    for name in UNIT_COLUMNS:
        np.testing.assert_array_equal(sorting.get_property(name), units[name].to_numpy(), err_msg=name)
    # it is a real spikeinterface sorting: the comparison tools take it
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    comp = compare_sorter_to_ground_truth(run.gt, sorting, exhaustive_gt=True, delta_time=0.4)
    assert len(comp.get_well_detected_units(0.8)) >= 2, comp.get_performance()


def test_output_paths_and_report(run):
    r = run.result
    assert r.params_py == run.folder / "params.py" and r.phy_folder == run.folder
    assert r.run_file == run.folder / "spikesort_run.json"
    log_file = run.folder / "spikesort.log"
    assert r.log_file == (log_file if log_file.is_file() else None)
    page = r.make_report()
    assert r.report_html == page == run.folder / "report" / "summary.html"
    pages = sorted(p.name for p in page.parent.glob("unit_*.html"))
    assert pages == sorted(f"unit_{u}.html" for u in r.unit_ids)


def test_empty_result_table_and_sorting(tmp_path):
    r = SortingResult(
        output_folder=tmp_path,
        spike_times=np.zeros(0, np.int64),
        spike_clusters=np.zeros(0, np.int64),
        amplitudes=np.zeros(0),
        unit_ids=np.arange(0),
        sampling_rate_hz=30000.0,
        labels=np.zeros(0, dtype=str),
    )
    assert len(r.units) == 0 and list(r.units.columns) == list(UNIT_COLUMNS)
    sorting = r.to_spikeinterface()
    assert sorting.get_num_units() == 0 and "label" in sorting.get_property_keys()
    assert r.params_py is None and r.phy_folder is None and r.report_html is None


# --------------------------------------------------------------------------- refusals


def test_multi_segment_is_refused_with_the_fix(tmp_path):
    from spikeinterface.core import generate_ground_truth_recording

    two, _ = generate_ground_truth_recording(num_channels=4, durations=[1.0, 1.0], seed=0)
    with pytest.raises(SpikesortError, match="single-segment.*concatenate_recordings"):
        spikesort.sort(two, tmp_path / "out")


def test_progress_callback_can_cancel_the_sort(tmp_path):
    class Cancelled(Exception):
        pass

    def cancel(stage, done, total):
        if stage == "detect":
            raise Cancelled()

    recording, _ = _demo(duration_s=5.0)
    with pytest.raises(Cancelled):
        spikesort.sort(recording, tmp_path / "out", progress=cancel)
    assert not (tmp_path / "out" / "params.py").exists()


def test_a_ctrl_c_that_a_finalizer_swallowed_still_stops_the_sort_at_the_next_stage(tmp_path):
    from spikesort.errors import clear_stop, request_stop

    seen = []

    def swallowed(stage, done, total):
        # what the command's SIGINT handler leaves when its KeyboardInterrupt is raised, and
        # dropped, inside a __del__: the request, and no exception
        seen.append(stage)
        if stage == "preprocess" and done == total:
            request_stop()

    recording, _ = _demo(duration_s=5.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            spikesort.sort(recording, tmp_path / "out", progress=swallowed)
    finally:
        clear_stop()
    assert "match" not in seen
    assert not (tmp_path / "out" / "params.py").exists()


def test_bad_progress_argument(tmp_path):
    with pytest.raises(SpikesortError, match="progress must be"):
        stage_progress("yes", total=3, desc="x")


def test_progress_true_draws_tqdm_bars_on_stderr(capsys):
    bar = stage_progress(True, total=3, desc="detect")
    for _ in range(3):
        bar.update(1)
    assert bar.n == 3 and bar.total == 3
    bar.close()
    err = capsys.readouterr().err
    assert "detect" in err and "/3 [" in err  # tqdm's "n/total [elapsed...]" line
    silent = stage_progress(False, total=3, desc="detect")
    silent.update(1)
    silent.close()
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- config and probes


def test_toml_template_round_trip_and_typos(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(Params().to_toml())
    assert Params.from_toml(path) == Params()
    path.write_text(Params().to_toml().replace("detect_threshold = 5.0", "detect_threshold = 6.5"))
    assert Params.from_toml(path).detect_threshold == 6.5
    path.write_text("match_treshold = 4.0\n")
    with pytest.raises(SpikesortError, match="did you mean 'match_threshold'"):
        Params.from_toml(path)


def test_probe_plot_is_a_real_image(tmp_path):
    from click.testing import CliRunner
    from matplotlib.image import imread

    from spikesort import cli

    png = tmp_path / "np1.png"
    r = CliRunner().invoke(cli.main, ["probes", "show", "neuropixels-1.0", "--plot", str(png)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    img = imread(png)
    assert img.shape[0] >= 200 and img.shape[1] >= 200
    rgb = img[..., :3].reshape(-1, 3)
    # the contacts are drawn: several colours and a real share of non-white pixels
    assert len(np.unique((rgb * 255).astype(int) @ [65536, 256, 1])) > 10
    assert np.mean(rgb.min(axis=1) < 0.9) > 0.01


# --------------------------------------------------------------------------- the README example


def test_example_acquisition_script_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("example_acquisition", REPO / "scripts" / "example_acquisition.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = tmp_path / "lab.toml"
    config.write_text(Params().to_toml().replace("seed = 0", "seed = 1"))
    out = tmp_path / "session1"
    assert module.main([str(out), "--duration", "5", "--config", str(config)]) == 0
    printed = capsys.readouterr()
    assert "units" in printed.out and "report:" in printed.out
    assert "sorting: features" in printed.err  # the progress hook reached the last streamed stage
    assert (out / "report" / "summary.html").is_file()
    assert json.loads((out / "spikesort_run.json").read_text())["params"]["seed"] == 1
    # a mistake is one line and exit code 2
    assert module.main([str(out), "--duration", "5"]) == 2
    assert "exists" in capsys.readouterr().err
