"""End to end: ``spikesort.sort`` on simulated ground truth, scored with spikeinterface and
loaded back with phylib.

The recordings are stored the way acquisition systems store them: int16 samples with a gain
to µV (GAIN_UV), saved as a spikeinterface binary folder and opened read-only with
``spikesort.io.recordings.open_recording``. Every sort uses the default parameters.

The thresholds were measured, not guessed: the comments next to them record what the sorter got
when they were set, and each threshold sits at (integers) or a little below the worst case seen.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("spikeinterface.generation")
load_model = pytest.importorskip("phylib.io.model").load_model

import spikeinterface.core as sic  # noqa: E402
from clitools import PHY_FILES
from spikeinterface.comparison import compare_sorter_to_ground_truth  # noqa: E402
from spikeinterface.generation import NoiseGeneratorRecording, generate_ground_truth_recording  # noqa: E402
from spikeinterface.preprocessing import common_reference, highpass_filter, scale  # noqa: E402

from spikesort.io.recordings import open_recording  # noqa: E402
from spikesort.params import Params  # noqa: E402
from spikesort.pipeline import sort  # noqa: E402
from spikesort.stages.preprocess import resolve_reference  # noqa: E402

FS = 30000.0
GAIN_UV = 0.195  # µV per int16 step (Intan-like): 5 µV noise is ~26 steps, the largest spikes ~2000
NOISE_UV = 5.0
PROBE_KWARGS = dict(num_columns=2, xpitch=20, ypitch=20, contact_shapes="circle", contact_shape_params={"radius": 6})
DELTA_MS = 0.4  # spike-time tolerance of the ground-truth comparison
WELL_DETECTED = 0.8  # accuracy that makes a ground-truth unit "well detected"
REDUNDANT_SCORE = 0.2  # a sorted unit agreeing less than this with every GT unit is a false positive

# the 16-channel, 8-unit, 40 s recording every fast test shares
SEED = 0
DURATION_S = 40.0
N_CHANNELS = 16
N_UNITS = 8

# Measured with the default parameters at commit 0a21d50, 16 ch x 8 units x 40 s:
#   seed                 0    1    2    3    4    5
#   well detected (/8)   7    6    5    7    7    7
#   false-positive units 0    0    0    2    0    0   (seed 3: 117 and 31 spikes)
# Every miss was a ground-truth unit at peak SNR <= 3.3 (seed 2 has two at 0.9 and 0.4, which no
# sorter can find, and one at 3.3 with accuracy 0.52), so 6 of 8 is out of reach on seed 2.
MIN_WELL_DETECTED = 5
MAX_FALSE_POSITIVES = 2
# Peak SNR = |peak| of the unit's filtered, median-referenced template on its best channel over
# that channel's noise sd. Every unit at SNR >= 3.9 was well detected on all six seeds (lowest
# found: 3.9, 4.4, 4.6, 4.8); the best missed one was at 3.3.
MIN_SNR_ALWAYS_FOUND = 4.5

# the run record, beside the Phy files
RUN_FILE = "spikesort_run.json"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def simulate(*, seed: int, duration_s: float, num_channels: int, num_units: int):
    """A lazy float32 µV ground-truth recording (probe attached) and its sorting."""
    return generate_ground_truth_recording(
        durations=[duration_s],
        sampling_frequency=FS,
        num_channels=num_channels,
        num_units=num_units,
        seed=seed,
        generate_probe_kwargs=PROBE_KWARGS,
        noise_kwargs=dict(noise_levels=NOISE_UV, strategy="on_the_fly"),
    )


def save_int16(recording, folder: Path):
    """Store ``recording`` (µV) as int16 with gain GAIN_UV and open the copy as users do."""
    as_int16 = scale(recording, gain=1.0 / GAIN_UV, offset=0.0, dtype="int16")
    as_int16.set_channel_gains(GAIN_UV)
    as_int16.set_channel_offsets(0.0)
    with warnings.catch_warnings():
        # the simulated source is rebuilt from its seed: its provenance does not matter
        warnings.simplefilter("ignore")
        as_int16.save(folder=folder, format="binary", n_jobs=1, chunk_duration="1s", progress_bar=False)
    saved = open_recording(folder)
    assert saved.get_dtype() == np.int16
    assert saved.has_scaleable_traces() and np.allclose(saved.get_channel_gains(), GAIN_UV)
    # the conversion must not clip: the largest simulated spikes stay far below the int16 range
    assert np.abs(saved.get_traces(return_in_uV=False)).max() < 20000
    return saved


def score(gt_sorting, sorting):
    comp = compare_sorter_to_ground_truth(gt_sorting, sorting, exhaustive_gt=True, delta_time=DELTA_MS)
    accuracy = comp.get_performance(method="by_unit")["accuracy"].astype(float)
    # GT units whose (Hungarian) match has accuracy >= WELL_DETECTED; note that
    # comp.get_well_detected_units returns the *sorted* units' ids, one per such GT unit
    well = [u for u in gt_sorting.unit_ids if accuracy[u] >= WELL_DETECTED]
    assert len(well) == len(comp.get_well_detected_units(WELL_DETECTED))
    return SimpleNamespace(
        comparison=comp,
        accuracy=accuracy,  # pandas Series indexed by GT unit id
        well_detected=well,  # GT unit ids
        false_positives=list(comp.get_false_positive_units(REDUNDANT_SCORE)),  # sorted unit ids
    )


def gt_templates_uv(recording, gt_sorting, *, n_before: int, n_after: int, preprocess: bool):
    """(templates (U, nt, C) in µV, noise sd (C,) in µV) of the ground-truth units, computed by
    spikeinterface on ``recording`` (the int16 copy, scaled by its gain). With ``preprocess`` the
    traces are first high-pass filtered and median-referenced like the sorter's defaults do, so
    the templates are what a correct sorter should report."""
    if preprocess:
        p = Params()
        recording = highpass_filter(recording, freq_min=p.highpass_hz, filter_order=3, dtype="float32")
        reference = resolve_reference(p.common_reference, positions_um=recording.get_channel_locations())
        if reference != "none":
            recording = common_reference(recording, operator=reference)
    analyzer = sic.create_sorting_analyzer(
        gt_sorting, recording, sparse=False, format="memory", return_in_uV=True, seed=0
    )
    analyzer.compute("random_spikes", max_spikes_per_unit=500, seed=0)
    # +0.25 sample keeps the ms -> samples conversion from rounding a sample away
    analyzer.compute("templates", ms_before=(n_before + 0.25) * 1000 / FS, ms_after=(n_after + 0.25) * 1000 / FS)
    analyzer.compute("noise_levels", random_slices_kwargs=dict(seed=0))
    templates = analyzer.get_extension("templates").get_data(operator="average")
    noise = analyzer.get_extension("noise_levels").get_data()
    assert templates.shape[1] == n_before + n_after
    return templates, noise


def peak_snr(templates_uv: np.ndarray, noise_uv: np.ndarray) -> np.ndarray:
    peak = np.abs(templates_uv).max(axis=1)  # (U, C)
    return (peak / noise_uv[None, :]).max(axis=1)


def best_lag_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Largest Pearson correlation of two (nt, C) waveforms over time shifts |lag| <= max_lag
    (the edges that a shift wraps around are left out)."""
    best = (-1.0, 0)
    core = slice(max_lag, a.shape[0] - max_lag)
    for lag in range(-max_lag, max_lag + 1):
        r = np.corrcoef(np.roll(a, lag, axis=0)[core].ravel(), b[core].ravel())[0, 1]
        if r > best[0]:
            best = (float(r), lag)
    return best


def matched_fraction(a: np.ndarray, b: np.ndarray, tol: int) -> float:
    """Fraction of the times in ``a`` with a time of ``b`` within ``tol`` samples (both sorted)."""
    if len(a) == 0:
        return 1.0
    if len(b) == 0:
        return 0.0
    j = np.clip(np.searchsorted(b, a), 1, len(b) - 1)
    d = np.minimum(np.abs(b[j] - a), np.abs(b[j - 1] - a))
    if len(b) == 1:
        d = np.abs(b[0] - a)
    return float(np.mean(d <= tol))


def read_tsv(path: Path) -> dict[int, str]:
    lines = path.read_text().splitlines()
    assert lines[0].split("\t")[0] == "cluster_id", lines[0]
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == 2 for r in rows), rows
    return {int(cid): value for cid, value in rows}


# ------------------------------------------------------------------------------------------
# the shared 16-channel run
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run16(tmp_path_factory):
    """16 channels, 8 units, 40 s, int16 with a gain, sorted once with the default parameters."""
    base = tmp_path_factory.mktemp("gt16")
    simulated, gt_sorting = simulate(seed=SEED, duration_s=DURATION_S, num_channels=N_CHANNELS, num_units=N_UNITS)
    recording = save_int16(simulated, base / "recording")
    result = sort(recording, base / "sorted")
    return SimpleNamespace(recording=recording, gt=gt_sorting, result=result, folder=base / "sorted", base=base)


@pytest.fixture(scope="module")
def phy16(run16):
    model = load_model(run16.folder / "params.py")
    yield model
    model.close()


@pytest.fixture(scope="module")
def scores16(run16):
    return score(run16.gt, run16.result.to_spikeinterface())


@pytest.fixture(scope="module")
def gt16_uv(run16, phy16):
    """Ground-truth templates (U, nt, C) in µV on Phy's time axis, and the noise sd (C,) in µV,
    of the filtered, median-referenced int16 recording."""
    nt = phy16.n_samples_waveforms
    return gt_templates_uv(run16.recording, run16.gt, n_before=nt // 2, n_after=nt - nt // 2, preprocess=True)


# ------------------------------------------------------------------------------------------
# 2. accuracy
# ------------------------------------------------------------------------------------------


def check_accuracy(gt_sorting, s, templates_uv, noise_uv, n_units: int) -> None:
    snr = peak_snr(templates_uv, noise_uv)
    summary = (
        f"accuracy by GT unit {s.accuracy.round(3).to_dict()}, GT peak SNR {snr.round(1).tolist()}, "
        f"well detected {len(s.well_detected)}, false-positive units {s.false_positives}, {n_units} units"
    )
    assert len(s.well_detected) >= MIN_WELL_DETECTED, summary
    assert len(s.false_positives) <= MAX_FALSE_POSITIVES, summary
    # every ground-truth unit clearly above the noise is found
    missed = [u for u, x in zip(gt_sorting.unit_ids, snr) if x >= MIN_SNR_ALWAYS_FOUND and u not in s.well_detected]
    assert not missed, f"missed {missed}; {summary}"


def test_accuracy_against_ground_truth(run16, scores16, gt16_uv):
    check_accuracy(run16.gt, scores16, *gt16_uv, n_units=run16.result.n_units)


def test_result_is_consistent(run16):
    r = run16.result
    n = len(r.spike_times)
    assert n > 0 and r.n_units > 0
    assert r.spike_times.dtype == np.int64 and np.all(np.diff(r.spike_times) >= 0)
    assert r.spike_times.min() >= 0 and r.spike_times.max() < run16.recording.get_num_samples(0)
    assert r.spike_clusters.shape == (n,) and r.amplitudes.shape == (n,)
    np.testing.assert_array_equal(r.unit_ids, np.arange(r.n_units))
    # every unit has spikes, every spike a unit
    np.testing.assert_array_equal(np.unique(r.spike_clusters), r.unit_ids)
    assert r.labels is not None and len(r.labels) == r.n_units
    assert set(r.labels) <= {"good", "mua", "noise"}
    # amplitudes are each spike's scale relative to its template (about 1)
    assert np.all(np.isfinite(r.amplitudes))
    assert np.mean(r.amplitudes > 0) >= 0.99, np.sort(r.amplitudes)[:20]
    for u in r.unit_ids:
        assert 0.8 <= np.median(r.amplitudes[r.spike_clusters == u]) <= 1.25, u
    sorting = r.to_spikeinterface()
    assert sorting.get_num_units() == r.n_units
    assert sum(len(sorting.get_unit_spike_train(u)) for u in sorting.unit_ids) == n


# ------------------------------------------------------------------------------------------
# 3. the Phy folder, through phylib
# ------------------------------------------------------------------------------------------


def test_phy_model_loads_the_sorting(run16, phy16):
    m, r = phy16, run16.result
    n = len(r.spike_times)
    assert m.n_spikes == n
    np.testing.assert_array_equal(m.spike_samples, r.spike_times)
    np.testing.assert_allclose(m.spike_times, r.spike_times / FS)
    np.testing.assert_array_equal(m.spike_clusters, r.spike_clusters)
    np.testing.assert_array_equal(m.spike_templates, r.spike_clusters)
    np.testing.assert_array_equal(m.cluster_ids, r.unit_ids)
    np.testing.assert_allclose(m.amplitudes, r.amplitudes, rtol=1e-6)
    assert m.sample_rate == FS
    assert m.n_channels == N_CHANNELS and m.n_channels_dat == N_CHANNELS
    assert np.dtype(m.dtype) == np.int16
    # Phy reads the raw int16 traces from the recording's own binary file
    assert m.traces is not None and m.traces.shape == (run16.recording.get_num_samples(0), N_CHANNELS)
    np.testing.assert_allclose(m.channel_positions, run16.recording.get_channel_locations(), atol=1e-4)

    k = r.n_units
    templates = np.load(run16.folder / "templates.npy")
    assert templates.ndim == 3 and templates.shape[0] == max(k, 2) and templates.shape[2] == N_CHANNELS
    assert m.n_templates == templates.shape[0] and m.n_samples_waveforms == templates.shape[1]
    assert m.wm.shape == (N_CHANNELS, N_CHANNELS) and m.wmi.shape == (N_CHANNELS, N_CHANNELS)


def test_phy_features_load(run16, phy16):
    m, r = phy16, run16.result
    n = len(r.spike_times)
    pcf = np.load(run16.folder / "pc_features.npy")
    n_pc, n_ch_loc = pcf.shape[1], pcf.shape[2]
    assert pcf.shape[0] == n and n_pc >= 2
    assert m.features.shape == (n, n_ch_loc, n_pc)  # phylib's own layout
    spikes = np.linspace(0, n - 1, 50).astype(np.int64)
    feats = m.get_features(spikes, np.arange(N_CHANNELS))
    assert feats.shape == (len(spikes), N_CHANNELS, n_pc)
    # each spike has finite features on its template's channels (NaN elsewhere)
    cols = np.load(run16.folder / "pc_feature_ind.npy")
    assert cols.shape == (m.n_templates, n_ch_loc)
    for i, s in enumerate(spikes):
        own = cols[r.spike_clusters[s]]
        assert np.all(np.isfinite(feats[i][own])), i

    tf = np.load(run16.folder / "template_features.npy")
    assert tf.shape[0] == n
    assert m.template_features.shape == tf.shape
    tfeats = m.get_template_features(spikes)
    assert tfeats.shape == (len(spikes), m.n_templates)
    # a spike's own template comes first (Kilosort's layout), with a scale close to 1 for most spikes
    ind = np.load(run16.folder / "template_feature_ind.npy")
    assert np.all(ind[r.spike_clusters[spikes], 0] == r.spike_clusters[spikes])
    own = tfeats[np.arange(len(spikes)), r.spike_clusters[spikes]]
    assert np.median(own) == pytest.approx(1.0, abs=0.2)


def test_phy_templates_in_microvolts(run16, phy16, scores16, gt16_uv):
    """Phy's unwhitened templates (templates @ whitening_mat_inv) are the units' waveforms in µV:
    same shape and peak as the ground-truth templates computed by spikeinterface from the same
    int16 recording, high-pass filtered and median-referenced as the sorter does.

    (Against templates of the unfiltered, unreferenced recording the same units correlate 0.45 to
    0.97: the median reference over 16 channels takes a large share out of spatially broad units,
    so that comparison would test the reference, not the µV scaling.)
    Measured on seeds 0..5: best-lag correlation 0.917-0.999, peak ratio 0.961-1.081."""
    m, s = phy16, scores16
    nt = m.n_samples_waveforms
    gt_uv, _ = gt16_uv
    checked = []
    for gt_index, gt_unit in enumerate(run16.gt.unit_ids):
        if gt_unit not in s.well_detected:
            continue
        k = int(s.comparison.hungarian_match_12[gt_unit])
        sorted_uv = m.get_template(k, channel_ids=np.arange(N_CHANNELS)).template
        assert sorted_uv.shape == (nt, N_CHANNELS)
        gt = gt_uv[gt_index]
        # the spike sample is row nt // 2 in both; allow the comparison's 0.2 ms of jitter
        r, lag = best_lag_correlation(sorted_uv, gt, max_lag=int(0.2e-3 * FS))
        ratio = np.abs(sorted_uv).max() / np.abs(gt).max()
        checked.append((gt_unit, k, round(r, 3), lag, round(float(ratio), 3)))
        assert r > 0.9, checked
        assert 0.7 <= ratio <= 1.3, checked
        # and phylib's best channel is one where the unit is (nearly) largest
        gt_ptp = np.ptp(gt, axis=0)
        assert gt_ptp[m.get_template(k).best_channel] >= 0.8 * gt_ptp.max(), checked
    assert len(checked) >= MIN_WELL_DETECTED, checked


def test_cluster_labels_table(run16, phy16):
    r = run16.result
    labels = read_tsv(run16.folder / "cluster_KSLabel.tsv")
    assert sorted(labels) == [int(u) for u in r.unit_ids]  # one row per cluster
    assert set(labels.values()) <= {"good", "mua", "noise"}
    assert [labels[int(u)] for u in r.unit_ids] == list(r.labels)
    # Phy's curation column starts from the automatic label
    assert read_tsv(run16.folder / "cluster_group.tsv") == labels
    for name in ("ContamPct", "Amplitude"):
        assert sorted(read_tsv(run16.folder / f"cluster_{name}.tsv")) == sorted(labels)
    # phylib reads the tables as cluster metadata
    assert phy16.metadata["KSLabel"] == labels


# ------------------------------------------------------------------------------------------
# 4. every file of the design, and the run record
# ------------------------------------------------------------------------------------------


def test_output_folder_holds_every_file(run16):
    folder, r = run16.folder, run16.result
    missing = [f for f in PHY_FILES + (RUN_FILE,) if not (folder / f).is_file()]
    assert not missing, missing
    assert not (folder / "temp_wh.dat").exists()  # the whitened scratch copy is removed
    assert not list(folder.glob(".*.tmp"))  # no half-written file

    n, k = len(r.spike_times), max(r.n_units, 2)
    arrays = {f: np.load(folder / f) for f in PHY_FILES if f.endswith(".npy")}
    expected = {
        "spike_times.npy": (np.int64, (n,)),
        "spike_templates.npy": (np.int32, (n,)),
        "spike_clusters.npy": (np.int32, (n,)),
        "amplitudes.npy": (np.float32, (n,)),
        "whitening_mat.npy": (np.float32, (N_CHANNELS, N_CHANNELS)),
        "whitening_mat_inv.npy": (np.float32, (N_CHANNELS, N_CHANNELS)),
        "channel_map.npy": (np.int32, (N_CHANNELS,)),
        "channel_positions.npy": (np.float32, (N_CHANNELS, 2)),
        "similar_templates.npy": (np.float32, (k, k)),
        "spike_positions.npy": (np.float32, (n, 2)),
    }
    for name, (dtype, shape) in expected.items():
        assert arrays[name].dtype == dtype and arrays[name].shape == shape, (
            name,
            arrays[name].dtype,
            arrays[name].shape,
        )
    assert arrays["templates.npy"].dtype == np.float32
    assert arrays["pc_features.npy"].dtype == np.float32 and arrays["pc_feature_ind.npy"].dtype == np.uint32
    assert arrays["template_feature_ind.npy"].dtype == np.uint32
    np.testing.assert_array_equal(arrays["spike_times.npy"], r.spike_times)
    # spike positions lie on (or near) the probe
    pos = run16.recording.get_channel_locations()
    sp = arrays["spike_positions.npy"]
    assert np.all(sp >= pos.min(axis=0) - 50) and np.all(sp <= pos.max(axis=0) + 50)

    run = json.loads((folder / RUN_FILE).read_text())
    assert run["n_units"] == r.n_units and run["n_spikes"] == n
    assert run["params"] == Params().to_dict()
    assert isinstance(run["version"], str) and run["version"]
    assert set(run["timings_s"]) >= {"preprocess", "detect", "cluster", "match", "curate", "export"}
    # every stage's peak memory: at least the interpreter with numpy and numba, at most this machine
    assert set(run["peak_rss_mb"]) == set(run["timings_s"])
    assert all(50 < mb < 24_000 for mb in run["peak_rss_mb"].values()), run["peak_rss_mb"]
    # the stages that read the whitened traces say how long their reads took, none longer than the stage
    reads = run["store_read_s"]
    assert set(reads) == set(run["timings_s"]) and all(reads[s] > 0 for s in ("detect", "match", "export"))
    assert all(reads[s] <= run["timings_s"][s] * (os.cpu_count() or 1) + 0.01 for s in reads)  # a thread a core
    # which scratch copy the run used: a compressed one rounds the traces, so two runs may differ
    assert run["trace_store"] == "plain"


# ------------------------------------------------------------------------------------------
# 5. determinism, 6. chunk size
# ------------------------------------------------------------------------------------------


def test_same_input_same_output(run16, tmp_path):
    again = sort(run16.recording, tmp_path / "again")
    np.testing.assert_array_equal(again.spike_times, run16.result.spike_times)
    np.testing.assert_array_equal(again.spike_clusters, run16.result.spike_clusters)
    np.testing.assert_array_equal(again.amplitudes, run16.result.amplitudes)
    for name in ("templates.npy", "spike_templates.npy", "pc_features.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "again" / name), np.load(run16.folder / name), name)


def test_compressed_trace_store_sorts_as_well(run16, scores16, gt16_uv, tmp_path):
    """The compressed scratch copy (values rounded to 1/8 of the noise sd) keeps the accuracy."""
    res = sort(run16.recording, tmp_path / "compressed", trace_store="compressed")
    s = score(run16.gt, res.to_spikeinterface())
    check_accuracy(run16.gt, s, *gt16_uv, n_units=res.n_units)
    assert len(s.well_detected) >= len(scores16.well_detected)
    tol = int(round(DELTA_MS * FS / 1000))
    assert matched_fraction(run16.result.spike_times, res.spike_times, tol) >= 0.97


def test_units_firing_below_the_rate_floor_are_dropped_and_the_rest_kept(run16, tmp_path):
    counts = np.bincount(run16.result.spike_clusters)
    duration_s = run16.recording.get_duration()
    floor_hz = (np.sort(counts)[len(counts) // 2] - 0.5) / duration_s  # half the units fire below it
    fewer = sort(run16.recording, tmp_path / "floor", min_rate_hz=floor_hz)
    kept = np.flatnonzero(counts >= floor_hz * duration_s)
    assert 0 < len(kept) < len(counts) and fewer.n_units == len(kept)
    # the units kept are the same units with the same spikes
    for new, old in enumerate(kept):
        np.testing.assert_array_equal(
            fewer.spike_times[fewer.spike_clusters == new], run16.result.spike_times[run16.result.spike_clusters == old]
        )


def test_faint_units_firing_rarely_are_dropped_and_bright_ones_kept(run16, tmp_path):
    """Below good_min_snr a unit must fire at faint_min_rate_hz; above it, the rate floor alone holds."""
    counts = np.bincount(run16.result.spike_clusters)
    duration_s = run16.recording.get_duration()
    floor_hz = (np.sort(counts)[len(counts) // 2] - 0.5) / duration_s  # half the units fire below it
    above_all = float(np.nanmax(run16.result.metrics.snr)) + 1.0  # every unit is faint
    fewer = sort(run16.recording, tmp_path / "faint", faint_min_rate_hz=floor_hz, good_min_snr=above_all)
    kept = np.flatnonzero(counts >= floor_hz * duration_s)
    assert 0 < len(kept) < len(counts) and fewer.n_units == len(kept)
    for new, old in enumerate(kept):
        np.testing.assert_array_equal(
            fewer.spike_times[fewer.spike_clusters == new], run16.result.spike_times[run16.result.spike_clusters == old]
        )
    # no unit is faint: the same rate keeps them all
    bright = sort(run16.recording, tmp_path / "bright", faint_min_rate_hz=floor_hz, good_min_snr=0.0)
    assert bright.n_units == run16.result.n_units


def test_chunk_size_does_not_change_the_result_much(run16, tmp_path):
    default = run16.result
    short = sort(run16.recording, tmp_path / "chunk1s", chunk_s=1.0)
    assert Params().chunk_s != 1.0
    assert abs(short.n_units - default.n_units) <= 1, (short.n_units, default.n_units)
    tol = int(round(DELTA_MS * FS / 1000))
    both_ways = (
        matched_fraction(default.spike_times, short.spike_times, tol),
        matched_fraction(short.spike_times, default.spike_times, tol),
    )
    assert min(both_ways) >= 0.95, both_ways


# ------------------------------------------------------------------------------------------
# 7. tetrode, 8. no spikes at all
# ------------------------------------------------------------------------------------------

# Measured with the common reference off on compact probes (auto), 4 ch x 3 units x 20 s:
#   seed                 0    1    2    3    4
#   well detected (/3)   2    3    3    2    3
#   false-positive units 0    0    0    0    0
# With the median reference of the four channels (the default before) it was 2 1 3 1 2 with 2
# false positives on seed 4: the median of a tetrode is mostly the spike itself. The two misses
# (seeds 0 and 3) are units at peak SNR <= 4.1.
TETRODE_MIN_WELL_DETECTED = 2
TETRODE_MAX_FALSE_POSITIVES = 1


def check_tetrode(seed: int, folder: Path) -> None:
    simulated, gt_sorting = simulate(seed=seed, duration_s=20.0, num_channels=4, num_units=3)
    pos = simulated.get_channel_locations()
    # a 20 µm square
    assert sorted(map(tuple, pos.tolist())) == [(0.0, 0.0), (0.0, 20.0), (20.0, 0.0), (20.0, 20.0)]
    recording = save_int16(simulated, folder / "recording")
    result = sort(recording, folder / "sorted")
    s = score(gt_sorting, result.to_spikeinterface())
    summary = f"seed {seed}: accuracy {s.accuracy.round(3).to_dict()}, false-positive units {s.false_positives}"
    assert len(s.well_detected) >= TETRODE_MIN_WELL_DETECTED, summary
    assert len(s.false_positives) <= TETRODE_MAX_FALSE_POSITIVES, summary
    model = load_model(folder / "sorted" / "params.py")
    try:
        assert model.n_spikes == len(result.spike_times)
        assert model.n_channels == 4
        np.testing.assert_array_equal(model.spike_clusters, result.spike_clusters)
    finally:
        model.close()


def test_tetrode(tmp_path):
    check_tetrode(SEED, tmp_path)


def test_noise_only_recording(tmp_path):
    from probeinterface import generate_multi_columns_probe

    probe = generate_multi_columns_probe(
        num_columns=2,
        num_contact_per_column=N_CHANNELS // 2,
        xpitch=20,
        ypitch=20,
        contact_shapes="circle",
        contact_shape_params={"radius": 6},
    )
    probe.set_device_channel_indices(np.arange(N_CHANNELS))
    noise = NoiseGeneratorRecording(
        num_channels=N_CHANNELS,
        sampling_frequency=FS,
        durations=[10.0],
        noise_levels=NOISE_UV,
        seed=SEED,
        strategy="on_the_fly",
    )
    noise.set_probe(probe)  # in place
    recording = save_int16(noise, tmp_path / "recording")
    out = tmp_path / "sorted"
    result = sort(recording, out)

    assert result.n_units <= 1, (result.n_units, len(result.spike_times))
    assert len(result.unit_ids) == result.n_units and len(result.labels) == result.n_units
    assert result.to_spikeinterface().get_num_units() == result.n_units
    run = json.loads((out / RUN_FILE).read_text())
    assert run["n_units"] == result.n_units and run["n_spikes"] == len(result.spike_times)
    assert not (out / "temp_wh.dat").exists()
    # a Phy folder with every file, even when nothing was found (phylib cannot open 0 spikes)
    assert all((out / f).is_file() for f in PHY_FILES)
    if len(result.spike_times) >= 2:
        model = load_model(out / "params.py")
        try:
            assert model.n_spikes == len(result.spike_times)
        finally:
            model.close()
    else:
        assert len(result.spike_times) == 0 and np.load(out / "spike_times.npy").shape == (0,)


def test_blas_held_to_one_thread_whatever_n_jobs(tmp_path, monkeypatch):
    # BLAS's own threads beside busy workers oversubscribe the cores, and waking them for the
    # clustering's small covariances cost more than the product: one thread, also with n_jobs=2
    from threadpoolctl import threadpool_info

    import spikesort.pipeline.steps as pipeline

    seen = []
    real = pipeline.cluster_spikes

    def spy(**kw):
        seen.append(max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1))
        return real(**kw)

    monkeypatch.setattr(pipeline, "cluster_spikes", spy)
    simulated, _ = simulate(seed=SEED, duration_s=10.0, num_channels=N_CHANNELS, num_units=4)
    recording = save_int16(simulated, tmp_path / "recording")
    sort(recording, tmp_path / "sorted", n_jobs=2)
    assert seen == [1]


# ------------------------------------------------------------------------------------------
# slow: the same checks on more seeds
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_accuracy_on_more_seeds(seed, tmp_path):
    simulated, gt_sorting = simulate(seed=seed, duration_s=DURATION_S, num_channels=N_CHANNELS, num_units=N_UNITS)
    recording = save_int16(simulated, tmp_path / "recording")
    result = sort(recording, tmp_path / "sorted")
    model = load_model(tmp_path / "sorted" / "params.py")
    try:
        nt = model.n_samples_waveforms
    finally:
        model.close()
    templates, noise = gt_templates_uv(recording, gt_sorting, n_before=nt // 2, n_after=nt - nt // 2, preprocess=True)
    check_accuracy(gt_sorting, score(gt_sorting, result.to_spikeinterface()), templates, noise, n_units=result.n_units)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_tetrode_on_more_seeds(seed, tmp_path):
    check_tetrode(seed, tmp_path)
