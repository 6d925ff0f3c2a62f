"""The benchmark's scenario families (issue 15): the registry, the probes, the dirt and the
multi-shank drift, and a cache key that leaves the older scenarios' recordings where they are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import catalog, cli, families, scenarios
from benchmarks.dirt import DirtyRecording, artefact_waveform, dirt_traces, draw_dirt


def test_older_scenarios_keep_their_cache_key():
    """Adding fields to Scenario must not regenerate static64 (nor re-run its cached peers)."""
    spec = scenarios.scenario_spec(scenario=catalog.SCENARIOS["static64"], seed=0)
    assert set(spec) == {
        "drift",
        "duration_s",
        "generator_version",
        "name",
        "num_units",
        "probe",
        "seed",
        "spikeinterface",
        "storage_gain_uv",
    }
    assert (spec["name"], spec["probe"], spec["num_units"], spec["duration_s"]) == ("static64", "np1_64", 50, 300.0)
    # the optional fields count when they are set, and the spec reads back from JSON unchanged
    spec = scenarios.scenario_spec(scenario=catalog.SCENARIOS["crowded64"], seed=0)
    assert spec["options"] == [["unit_min_distance_um", 8.0]] and "family" not in spec
    assert json.loads(json.dumps(spec)) == spec
    rate = scenarios.scenario_spec(scenario=catalog.SCENARIOS["linear32_20k"], seed=0)
    assert rate["sampling_rate_hz"] == 20000.0 and "kind" not in rate


def test_families_are_registered():
    assert {"generated", "crowded", "multishank", "dirty", "rates", "tetrode", "long"} <= set(catalog.FAMILIES)
    for family, names in catalog.FAMILIES.items():
        for name in names:
            scenario = catalog.SCENARIOS[name]
            assert scenario.family == family and scenario.kind in scenarios.GENERATORS
    assert catalog.FAMILIES["rates"] == ["static16", "linear32_20k", "np64_25k"]
    with pytest.raises(ValueError, match="registered twice"):
        scenarios.register(dataclasses.replace(catalog.SCENARIOS["tetrode"], num_units=7))


def test_family_flag_selects_its_scenarios(monkeypatch):
    seen = {}

    def fake_run(**kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(cli, "run_benchmark", fake_run)
    assert (
        cli.main(["--family", "rates", "tetrode", "--scenarios", "tetrode", "--quiet", "--sorters", "spikesort"]) == 0
    )
    assert seen["scenarios"] == ["tetrode", "static16", "linear32_20k", "np64_25k"]
    with pytest.raises(SystemExit):
        cli.main(["--family", "nosuchfamily"])


def test_probes():
    shanks = scenarios.build_probe(kind="np2x4_24")
    assert shanks.get_contact_count() == 96
    ids = np.asarray(shanks.shank_ids).astype(int)
    assert np.bincount(ids).tolist() == [24, 24, 24, 24]
    pos = np.asarray(shanks.contact_positions)
    assert np.ptp(pos[ids == 0, 1]) == pytest.approx(165.0)  # 12 rows of 15 µm
    assert np.diff(sorted({round(pos[ids == s, 0].min()) for s in range(4)})).tolist() == [250, 250, 250]
    linear = np.asarray(scenarios.build_probe(kind="linear32_50um").contact_positions)
    assert len(linear) == 32 and np.allclose(np.diff(linear[:, 1]), 50.0) and np.ptp(linear[:, 0]) == 0
    assert scenarios.build_probe(kind="tetrode").get_contact_count() == 4
    with pytest.raises(ValueError, match="unknown probe kind"):
        scenarios.build_probe(kind="linear32")


def test_each_shank_drifts_its_own_way():
    unit_shank = np.array([0, 0, 1, 2, 3, 3])
    unit_disp, vectors, factor, fs, steps = families.shank_displacements(
        unit_shank=unit_shank, duration_s=300.0, seed=0
    )
    assert unit_disp.shape == (1500, 6, 2) and vectors.shape == (1500, 2, 4) and fs == 5.0
    assert np.array_equal(factor.argmax(axis=1), unit_shank) and np.all(factor.sum(axis=1) == 1)
    y = unit_disp[:, :, 1]
    assert np.array_equal(y[:, 0], y[:, 1])  # one shank, one motion
    assert np.abs(y).max() <= families.SHANK_DRIFT_UM + 1e-9
    # every shank moves, each differently from the others
    assert all(np.ptp(y[:, u]) > 5 for u in (0, 2, 3, 4))
    for a, b in ((0, 2), (0, 3), (0, 4), (2, 3), (2, 4), (3, 4)):
        assert np.abs(y[:, a] - y[:, b]).max() > 5
    assert np.all(unit_disp[:, :, 0] == 0)


def test_multishank_recording(tmp_path):
    """A short multi-shank recording keeps its shanks as channel groups and saves its truth."""
    scenario = dataclasses.replace(catalog.SCENARIOS["shanks4"], name="shanks_test", duration_s=4.0, num_units=8)
    folder = scenarios.ensure_recording(cache_dir=tmp_path, scenario=scenario, seed=3, n_jobs=1)
    rec = scenarios.load_recording(folder=folder)
    assert rec.get_num_channels() == 96 and sorted(set(rec.get_channel_groups())) == [0, 1, 2, 3]
    truth = scenarios.ensure_true_displacement(folder=folder, scenario=scenario, seed=3)
    with np.load(truth) as t:
        disp, unit_shank = t["displacement_um"], t["unit_shank"]
    assert disp.shape == (20, 8) and np.bincount(unit_shank).tolist() == [2, 2, 2, 2]
    locations = np.load(folder / "gt_unit_locations.npy")
    # every unit sits near its own shank (shank x offsets 0, 250, 500, 750; contacts at 0 and 32)
    assert np.all(np.abs(locations[:, 0] - (250 * unit_shank + 16)) <= 36 + 1e-6)


def test_dirt_is_chunk_independent():
    dirt = draw_dirt(num_channels=8, duration_s=20.0, seed=1, rail_uv=6000.0)
    fs = 30000.0
    whole, sat = dirt_traces(dirt, start=100_000, end=200_000, fs=fs)
    parts = [dirt_traces(dirt, start=a, end=b, fs=fs) for a, b in ((100_000, 131_234), (131_234, 200_000))]
    assert np.array_equal(whole, np.concatenate([p[0] for p in parts]))
    assert np.array_equal(sat, np.concatenate([p[1] for p in parts]))


def test_dirty_recording():
    from spikeinterface.core import NumpyRecording

    fs, n = 30000.0, 300_000
    clean = NumpyRecording(np.zeros((n, 8), dtype=np.float32), fs)
    dirt = draw_dirt(num_channels=8, duration_s=n / fs, seed=2, rail_uv=6000.0, artefacts_per_min=60, saturations=2)
    rec = DirtyRecording(clean, dirt=dirt.to_dict())
    x = rec.get_traces()
    assert x.dtype == np.float32 and x.shape == (n, 8)
    _, saturation = dirt_traces(dirt, start=0, end=n, fs=fs)
    assert np.all(x[saturation == 0, dirt.dead_channel] == 0)  # flat, but where the amplifier saturates
    others = [c for c in range(8) if c not in (dirt.dead_channel, dirt.noisy_channel)]
    # saturations: every channel pinned at one rail for 20-150 ms, and nothing beyond the rails
    assert np.abs(x).max() <= 6000.0
    t0, dur, sign = dirt.saturation_times_s[0], dirt.saturation_durations_s[0], dirt.saturation_signs[0]
    inside = slice(int(np.ceil(t0 * fs)), int(np.floor((t0 + dur) * fs)))
    assert np.all(x[inside] == sign * 6000.0)
    # the hum: 50 Hz and harmonics, differing in size between channels
    quiet = x[: int(dirt.artefact_times_s[0] * fs) - 10, others[0]]
    spectrum = np.abs(np.fft.rfft(quiet))
    freqs = np.fft.rfftfreq(len(quiet), 1 / fs)
    assert abs(freqs[spectrum.argmax()] - 50.0) < 1.0
    assert spectrum[np.argmin(np.abs(freqs - 150.0))] > 100 * np.median(spectrum)
    # the noisy channel, far above the hum-only ones once the hum is filtered away
    from scipy import signal

    hp = signal.sosfiltfilt(signal.butter(3, 2000.0, "highpass", fs=fs, output="sos"), x[:30_000], axis=0)
    assert hp[:, dirt.noisy_channel].std() > 10 * hp[:, others].std(axis=0).max()
    # the same frames read in another chunking are the same
    assert np.array_equal(rec.get_traces(start_frame=12_345, end_frame=54_321), x[12_345:54_321])


def test_dirt_without_bad_channels_is_the_same_dirt_on_every_contact():
    """``bad_channels=False`` (the dirty tetrode: two bad contacts of four would leave two): no dead
    or noisy channel, and the hum, artefacts and saturations drawn as with them."""
    from spikeinterface.core import NumpyRecording

    kw = dict(num_channels=4, duration_s=10.0, seed=3, rail_uv=6000.0, artefacts_per_min=60)
    with_bad, without = draw_dirt(**kw), draw_dirt(**kw, bad_channels=False)
    assert (without.dead_channel, without.noisy_channel) == (-1, -1) and with_bad.dead_channel >= 0
    same = ("line_phases", "line_gains", "artefact_times_s", "artefact_gains", "saturation_times_s")
    assert all(getattr(with_bad, f) == getattr(without, f) for f in same)
    x = DirtyRecording(NumpyRecording(np.zeros((300_000, 4), np.float32), 30000.0), dirt=without.to_dict()).get_traces()
    added, saturation = dirt_traces(without, start=0, end=300_000, fs=30000.0)
    free = saturation == 0
    np.testing.assert_allclose(x[free], np.clip(added[free], -6000, 6000).astype(np.float32), atol=1e-3)
    sd = x[:30_000].std(axis=0)
    assert np.all(sd > 10) and sd.max() < 2 * sd.min()  # every contact live, none far noisier


def test_artefact_waveform():
    t = np.arange(-10, 1000) / 30000.0
    w = artefact_waveform(t, rise_ms=0.5, decay_ms=5.0)
    assert w[t < 0].max() == 0 and w.max() == pytest.approx(1.0, abs=0.01)
    assert w[np.argmin(np.abs(t - 0.0055))] == pytest.approx(np.exp(-1), abs=0.02)


def test_common_reference_from_geometry():
    """auto: the median reference, but not where one spike reaches most of the channels."""
    from spikesort.stages.preprocess import resolve_reference

    def probe(kind):
        return np.asarray(scenarios.build_probe(kind=kind).contact_positions)

    assert resolve_reference("auto", positions_um=probe("tetrode")) == "none"
    for kind in ("np1_64", "multi32", "linear32_50um", "np2x4_24", "np1_16"):
        assert resolve_reference("auto", positions_um=probe(kind)) == "median", kind
    # four contacts 25 µm apart in a line (MEArec's tetrode): a spike reaches them all
    assert resolve_reference("auto", positions_um=np.c_[np.zeros(4), 25.0 * np.arange(4)]) == "none"
    # 2 x 8 contacts at 20 µm: a spike reaches 10 of 16, and the median still works
    assert (
        resolve_reference("auto", positions_um=np.c_[np.tile([0.0, 20.0], 8), np.repeat(20.0 * np.arange(8), 2)])
        == "median"
    )
    assert resolve_reference("median", positions_um=probe("tetrode")) == "median"


def test_noisy_channel_is_judged_after_the_reference():
    """Hum every channel shares inflates the unreferenced sd of all: a noisy channel must still show."""
    from spikesort.stages.preprocess import find_bad_channels

    raw = np.array([30.0, 31.0, 0.0, 57.0, 29.0, 30.0])  # hum-dominated; channel 3 carries 50 extra
    referenced = np.array([8.0, 8.5, 1.0, 50.0, 7.5, 8.0])
    assert find_bad_channels(raw) == {2: "dead"}
    assert find_bad_channels(raw, referenced_sd=referenced) == {2: "dead", 3: "noisy"}


def test_artefact_mask():
    from spikesort.stages.preprocess import ARTEFACT_LOW_SDS, ARTEFACT_SDS, artefact_mask

    ref = np.zeros(1000)
    ref[100:110] = 0.5 * ARTEFACT_LOW_SDS  # below the low level: nothing
    ref[300:340] = 2 * ARTEFACT_LOW_SDS  # above low but never high: a spike, kept
    ref[600:620] = 2 * ARTEFACT_LOW_SDS  # the shoulders of an artefact ...
    ref[620:625] = 1.5 * ARTEFACT_SDS  # ... and its peak
    ref[625:660] = -2 * ARTEFACT_LOW_SDS
    mask = artefact_mask(ref, threshold=ARTEFACT_SDS, pad=5)
    assert np.flatnonzero(mask).tolist() == list(range(595, 665))
    assert not artefact_mask(ref[:500], threshold=ARTEFACT_SDS, pad=5).any()


def test_artefacts_are_blanked():
    """A transient on every channel is blanked in the whitened traces; spikes are not."""
    from spikesort.stages.preprocess import fit_preprocessing, preprocess_chunk

    fs, n_ch = 30000.0, 16
    rng = np.random.default_rng(0)
    pos = np.c_[np.zeros(n_ch), 25.0 * np.arange(n_ch)]
    blocks = [rng.normal(0, 10, (30000, n_ch)).astype(np.float32) for _ in range(4)]
    model = fit_preprocessing(
        blocks,
        sampling_rate_hz=fs,
        positions_um=pos,
        highpass_hz=300.0,
        lowpass_hz=0.0,
        reference="median",
        whitening_radius_um=100.0,
        detect_bad_channels=True,
    )
    assert model.artefact_threshold == pytest.approx(20 * 10, rel=0.1) and model.artefact_pad == 60
    x = rng.normal(0, 10, (30000, n_ch)).astype(np.float32)
    x[10_000:10_030, 3] -= np.hanning(30) * 400  # a spike on one channel
    t = np.arange(30000 - 20_000) / fs
    x[20_000:] += (2000 * np.exp(-t / 0.01) * (t > 0))[:, None] * rng.uniform(0.7, 1.3, n_ch)  # a movement artefact
    w = preprocess_chunk(x, model=model)
    assert np.all(w[20_000:20_060] == 0) and np.abs(w[10_000:10_030, 3]).max() > 10
    assert not np.any(w[:19_900] == 0)


def test_symmetric_clipping_is_saturation():
    """The dirty family clips at ±32767, as many systems do: both rails count as saturated."""
    from spikesort.stages.saturation import rails, saturated_mask

    raw = np.zeros((100, 3), np.int16)
    raw[10, 1] = -32767
    raw[50, 2] = 32767
    raw[80, 0] = 32765  # a large sample, not a rail
    mask = saturated_mask(raw, rails=rails(np.int16), channels=np.arange(3), pad=0)
    assert np.flatnonzero(mask).tolist() == [10, 50]
    assert rails(np.float32) is None


def test_hum_at_channel_gains_is_subtracted():
    """A common signal the channels see at different sizes (the dirty family's hum) is removed at
    each channel's own gain; on noise alone the reference is subtracted as it is."""
    import dataclasses as dc

    from spikesort.stages.preprocess import fit_preprocessing, preprocess_chunk

    fs, n_ch = 30000.0, 16
    rng = np.random.default_rng(1)
    pos = np.c_[np.zeros(n_ch), 50.0 * np.arange(n_ch)]  # sparse enough that spikes stay out of the reference
    t = np.arange(30000) / fs
    hum = sum(150.0 / k * np.sin(2 * np.pi * 50 * k * t + k) for k in range(1, 11))
    gain = rng.uniform(0.7, 1.3, n_ch)

    def fit(blocks):
        return fit_preprocessing(
            blocks,
            sampling_rate_hz=fs,
            positions_um=pos,
            highpass_hz=300.0,
            lowpass_hz=0.0,
            reference="median",
            whitening_radius_um=100.0,
            detect_bad_channels=True,
        )

    noise = [rng.normal(0, 10, (30000, n_ch)).astype(np.float32) for _ in range(4)]
    assert fit(noise).reference_gains is None
    model = fit([(b + hum[:, None] * gain[None, :]).astype(np.float32) for b in noise])
    assert model.reference_gains is not None
    # the fitted extra gain follows each channel's gain over the median's
    assert np.corrcoef(model.reference_gains, gain)[0, 1] > 0.95

    def line_400hz(m):
        w = preprocess_chunk(
            (rng.normal(0, 10, (30000, n_ch)) + hum[:, None] * gain[None, :]).astype(np.float32), model=m
        )
        spectrum = np.abs(np.fft.rfft(w[1000:-1000], axis=0))
        freqs = np.fft.rfftfreq(28000, 1 / fs)
        near = (freqs > 350) & (freqs < 450)
        return np.median(spectrum[np.argmin(np.abs(freqs - 400.0))] / np.median(spectrum[near], axis=0))

    # the hum's 400 Hz line: at the noise floor with the gains, far above it with the plain median
    assert line_400hz(model) < 3 < 10 < line_400hz(dc.replace(model, reference_gains=None))

    # the noise that SNRs are measured against is the traces' once the hum is gone: measured
    # before the gains it held each channel's share of the hum, and neurons there fell under the
    # template SNR floor (the dirty family's seed 95 lost two of 50)
    clean = fit(noise).noise_sd
    assert np.abs(model.noise_sd / clean - 1).max() < 0.05


def test_mearec_template_simulation_leaves_the_working_directory_clean(tmp_path, monkeypatch):
    """MEArec writes ``tmp_params_path.yaml`` into the working directory it runs in (its worker
    processes read it back): the benchmark runs it in its own temporary folder instead."""
    import sys
    import types

    from benchmarks import mearec

    seen = {}

    def gen_templates(*, cell_models_folder, params, templates_tmp_folder, n_jobs, joblib_backend, verbose):
        Path("tmp_params_path.yaml").write_text("probe: tetrode\n")  # what MEArec does, relative
        seen["cwd"] = Path.cwd()
        seen["tmp"] = Path(templates_tmp_folder)
        seen["backend"] = joblib_backend
        return "generator"

    def save_template_generator(gen, *, filename):
        Path(filename).write_bytes(b"h5")

    fake = types.SimpleNamespace(
        __version__="0.0-test",
        get_default_templates_params=dict,
        get_default_cell_models_folder=lambda: str(tmp_path / "cells"),
        gen_templates=gen_templates,
        save_template_generator=save_template_generator,
    )
    monkeypatch.setitem(sys.modules, "MEArec", fake)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = mearec.ensure_templates(cache_dir=Path("cache"), probe="tetrode", templates_per_cell=2, seed=0, n_jobs=1)
    assert not (work / "tmp_params_path.yaml").exists()
    assert seen["cwd"] == seen["tmp"] and seen["tmp"].is_absolute()
    # the workers that read that file must start there too: a fresh pool per library (loky's
    # reusable workers stay in the folder of the first library simulated in the process)
    assert seen["backend"] == "multiprocessing"
    assert Path.cwd() == work  # back where it was
    assert (work / path).read_bytes() == b"h5"


def test_drifting_mearec_scenario_asks_for_drifting_templates_and_recording(tmp_path, monkeypatch):
    """The drifting MEArec scenario keeps a template library of its own (every path the same
    length along the probe, as MEArec's drifting recordings require) and asks MEArec for a rigid
    drift over that span; the static scenarios' libraries and cache keys are as before."""
    import sys
    import types

    from benchmarks import mearec

    made = {}

    def gen_templates(*, cell_models_folder, params, templates_tmp_folder, n_jobs, joblib_backend, verbose):
        made.update(params)
        return "generator"

    recordings = {"spiketrains": {}, "recordings": {}}
    fake = types.SimpleNamespace(
        __version__="0.0-test",
        get_default_templates_params=dict,
        get_default_recordings_params=lambda: {k: dict(v) for k, v in recordings.items()},
        get_default_cell_models_folder=lambda: str(tmp_path / "cells"),
        gen_templates=gen_templates,
        save_template_generator=lambda gen, *, filename: Path(filename).write_bytes(b"h5"),
    )
    monkeypatch.setitem(sys.modules, "MEArec", fake)
    monkeypatch.chdir(tmp_path)
    scenario = catalog.SCENARIOS["mearec_np64_drift"]
    assert scenario.drift != "none"  # the peers run their motion correction, the motion is scored
    o = scenario.option
    drifting = dict(probe=scenario.probe, templates_per_cell=o["templates_per_cell"], seed=0, n_jobs=1)
    path = mearec.ensure_templates(cache_dir=Path("cache"), drift_um=o["drift_um"], **drifting)
    static = mearec.ensure_templates(
        cache_dir=Path("cache"), probe=scenario.probe, templates_per_cell=40, seed=0, n_jobs=1
    )
    assert path != static and static.name == "Neuropixels-64_n40_seed0.h5"
    assert made["drifting"] is False  # the last library made was the static one
    mearec.ensure_templates(cache_dir=Path("cache2"), drift_um=o["drift_um"], **drifting)
    assert made["drifting"] is True and made["min_drift"] == made["max_drift"] == o["drift_um"]
    assert made["drift_zlim"] == [o["drift_um"]] * 2 and made["drift_xlim"] == made["drift_ylim"] == [0, 0]
    assert "drift_um" not in mearec.templates_spec(probe="tetrode", templates_per_cell=40, seed=0)
    rec = mearec.recording_params(scenario=scenario, seed=1)["recordings"]
    assert rec["drifting"] is True and rec["drift_mode_probe"] == "rigid"
    assert rec["slow_drift_amplitude"] < o["drift_um"] and rec["chunk_duration"] == 0
    assert "drifting" not in mearec.recording_params(scenario=catalog.SCENARIOS["mearec_np64"], seed=1)["recordings"]


def test_the_other_cells_scenarios_draw_their_own_template_library(tmp_path, monkeypatch):
    """A check scenario of other cells simulates its probe's template library with another seed;
    the scenarios before it keep library 0 and their cache keys."""
    import sys
    import types

    from benchmarks import mearec
    from benchmarks.scenarios import scenario_spec

    class Drawn(Exception):
        pass

    def ensure_templates(**kw):
        raise Drawn(kw["seed"])

    monkeypatch.setitem(sys.modules, "MEArec", types.SimpleNamespace(__version__="0.0-test"))
    monkeypatch.setattr(mearec, "ensure_templates", ensure_templates)
    drawn_from = (
        ("mearec_tetrode", 0),
        ("mearec_tetrode_cells1", 1),
        ("mearec_nn32_cells1", 1),
        ("mearec_np64_cells1", 1),
    )
    for name, seed in drawn_from + (("mearec_tetrode_cells2", 2), ("mearec_tetrode_bursts_cells2", 2)):
        with pytest.raises(Drawn) as drawn:
            mearec.generate_mearec(scenario=catalog.SCENARIOS[name], seed=3, cache_dir=tmp_path)
        assert drawn.value.args == (seed,)
    options = scenario_spec(scenario=catalog.SCENARIOS["mearec_tetrode"], seed=0)["options"]
    assert "cells_seed" not in [key for key, _ in options] and "templates_version" in [key for key, _ in options]
    same = dict(catalog.SCENARIOS["mearec_tetrode"].options)
    assert dict(catalog.SCENARIOS["mearec_tetrode_cells1"].options) == {**same, "cells_seed": 1}
    assert dict(catalog.SCENARIOS["mearec_tetrode_cells2"].options) == {**same, "cells_seed": 2}
    np64 = dict(catalog.SCENARIOS["mearec_np64"].options)
    assert dict(catalog.SCENARIOS["mearec_np64_cells1"].options) == {**np64, "cells_seed": 1}
    bursts = dict(catalog.SCENARIOS["mearec_tetrode_bursts"].options)
    assert dict(catalog.SCENARIOS["mearec_tetrode_bursts_cells2"].options) == {**bursts, "cells_seed": 2}


def test_a_run_kept_compressed_by_a_short_disk_is_named_in_its_row(tmp_path):
    from benchmarks.runner import _store_kind

    said = []
    assert _store_kind(tmp_path, label="[x seed 0]", log=said.append) == {}  # no run record
    record = {"recording": {"n_samples": 9_000_000, "n_channels": 64}, "trace_store": "plain"}
    (tmp_path / "spikesort_run.json").write_text(json.dumps(record))
    assert _store_kind(tmp_path, label="[x seed 0]", log=said.append) == {"trace_store": "plain"} and not said
    record["trace_store"] = "compressed"  # 1.2 GB plain: only a short disk compresses it
    (tmp_path / "spikesort_run.json").write_text(json.dumps(record))
    assert _store_kind(tmp_path, label="[x seed 0]", log=said.append) == {"trace_store": "compressed"}
    assert len(said) == 1 and "[x seed 0]" in said[0] and "disk was short" in said[0]
    record["recording"]["n_samples"] = 30_000 * 3600 * 2  # 2 h of 64 channels, 27.6 GB: compressed by design
    (tmp_path / "spikesort_run.json").write_text(json.dumps(record))
    assert _store_kind(tmp_path, label="[x seed 0]", log=said.append) == {"trace_store": "compressed"}
    assert len(said) == 1


def test_injected_recording_is_the_other_generator_on_the_scenario_s_probe_and_rate(tmp_path):
    """The injected family reads spikeinterface's generate_ground_truth_recording (not the
    drifting generator) on the scenario's own probe, rate and units."""
    assert catalog.FAMILIES["injected"] == ["injected_tetrode", "injected32", "injected64"]
    scenario = dataclasses.replace(catalog.SCENARIOS["injected32"], name="injected_test", duration_s=3.0, num_units=5)
    folder = scenarios.ensure_recording(cache_dir=tmp_path, scenario=scenario, seed=1, n_jobs=1)
    rec = scenarios.load_recording(folder=folder)
    assert rec.get_num_channels() == 32 and rec.sampling_frequency == 25000.0
    assert np.allclose(rec.get_channel_locations(), scenarios.build_probe(kind="multi32").contact_positions)
    gt = scenarios.load_sorting_npz(path=folder / "gt_sorting.npz")
    assert gt.get_num_units() == 5
    # Poisson trains at the generator's 15 Hz with its 4 ms refractory period
    trains = [gt.get_unit_spike_train(u) for u in gt.unit_ids]
    assert 20 <= np.mean([len(t) for t in trains]) <= 70
    assert min(np.diff(t).min() for t in trains) >= 0.004 * 25000.0 - 1
