"""Quality metrics on hand-made spike trains with known answers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.stats import norm

from spikesort.errors import SpikesortError
from spikesort.stages import labels as lb
from spikesort.stages import metrics as m

FS = 30000.0


def _samples(times_s):
    return np.round(np.asarray(times_s) * FS).astype(np.int64)


def _train():
    """Unit 7: 10 spikes 100 ms apart plus 2 intruders 1 ms after two of them, and a burst of
    three spikes 0.5 ms apart (2 interval violations, 3 pair violations) in 1 s.
    Unit 3: 5 clean spikes. Cluster 99 is not asked for."""
    u7 = np.concatenate([np.arange(10) * 0.1 + 0.01, [0.011 + 0.1, 0.011 + 0.5], [0.9501, 0.9506, 0.9511]])
    u3 = np.array([0.05, 0.25, 0.45, 0.65, 0.85])
    u99 = np.array([0.3, 0.3001])
    times = np.concatenate([u7, u3, u99])
    clusters = np.concatenate([np.full(u7.size, 7), np.full(u3.size, 3), np.full(u99.size, 99)])
    order = np.argsort(times, kind="stable")
    return _samples(times[order]), clusters[order]


def test_refractory_violations_counts_intervals_and_pairs():
    t, c = _train()
    v = m.refractory_violations(
        spike_times=t, spike_clusters=c, unit_ids=np.array([7, 3, 5]), sampling_rate_hz=FS, refractory_ms=1.5
    )
    np.testing.assert_array_equal(v.n_spikes, [15, 5, 0])
    np.testing.assert_array_equal(v.n_isi, [4, 0, 0])  # 2 intruders + 2 in the burst
    np.testing.assert_array_equal(v.n_pairs, [5, 0, 0])  # 2 intruders + 3 pairs in the burst
    # a difference of exactly the period is not a violation
    exact = m.refractory_violations(
        spike_times=np.array([0, 45]),
        spike_clusters=np.array([1, 1]),
        unit_ids=np.array([1]),
        sampling_rate_hz=FS,
        refractory_ms=1.5,
    )
    assert exact.n_isi[0] == 0 and exact.n_pairs[0] == 0


def test_isi_violation_ratio_formula_and_spikeinterface_agree():
    t, c = _train()
    ratio = m.isi_violation_ratio(
        spike_times=t,
        spike_clusters=c,
        unit_ids=np.array([7, 3, 5]),
        sampling_rate_hz=FS,
        duration_s=1.0,
        refractory_ms=1.5,
        censored_ms=0.0,
    )
    expected = 4 * 1.0 / (2 * 15**2 * 0.0015)
    np.testing.assert_allclose(ratio[:2], [expected, 0.0])
    assert math.isnan(ratio[2])
    misc = pytest.importorskip("spikeinterface.metrics.quality.misc_metrics")
    si_ratio, _, si_count = misc.isi_violations([t[c == 7] / FS], 1.0, isi_threshold_s=0.0015)
    assert si_count == 4
    np.testing.assert_allclose(ratio[0], si_ratio)


def test_contamination_llobet():
    t, c = _train()
    kw = dict(spike_times=t, spike_clusters=c, sampling_rate_hz=FS, duration_s=1.0, refractory_ms=1.5)
    # unit 7: 5 violating pairs among 15 spikes in 1 s is more than the model allows: clipped to 1
    cont = m.contamination(unit_ids=np.array([7, 3]), censored_ms=0.0, **kw)
    np.testing.assert_array_equal(cont, [1.0, 0.0])
    # 98 regular spikes 10 ms apart plus 2 intruders 1 ms after two of them: 2 pairs, N = 100
    regular = 0.005 + np.arange(98) * 0.01
    times = np.sort(np.concatenate([regular, regular[[10, 60]] + 0.001]))
    kw = dict(
        spike_times=_samples(times),
        spike_clusters=np.zeros(100, int),
        unit_ids=np.array([0]),
        sampling_rate_hz=FS,
        duration_s=1.0,
        refractory_ms=1.5,
    )
    n, n_v, t_r = 100, 2, 0.0015
    np.testing.assert_allclose(m.contamination(**kw, censored_ms=0.0), [1 - math.sqrt(1 - n_v * 1.0 / (n**2 * t_r))])
    # a censored period shortens the usable time and the window
    t_c = 0.00025
    np.testing.assert_allclose(
        m.contamination(**kw, censored_ms=0.25), [1 - math.sqrt(1 - n_v * (1.0 - 2 * n * t_c) / (n**2 * (t_r - t_c)))]
    )
    # one spike: undefined
    one = m.contamination(
        spike_times=np.array([5]),
        spike_clusters=np.array([0]),
        unit_ids=np.array([0]),
        sampling_rate_hz=FS,
        duration_s=1.0,
        refractory_ms=1.5,
    )
    assert math.isnan(one[0])


def test_contamination_recovers_a_known_poisson_fraction():
    rng = np.random.default_rng(1)
    duration, t_r = 600.0, 0.002
    # a perfectly refractory unit (gamma-like ISIs > t_r) plus 10 % Poisson intruders
    isi = t_r + rng.exponential(0.1, size=5400)
    true = np.cumsum(isi)
    true = true[true < duration]
    intruders = rng.uniform(0, duration, size=int(round(true.size / 9)))
    times = np.sort(np.concatenate([true, intruders]))
    c = m.contamination(
        spike_times=_samples(times),
        spike_clusters=np.zeros(times.size, int),
        unit_ids=np.array([0]),
        sampling_rate_hz=FS,
        duration_s=duration,
        refractory_ms=2.0,
    )
    assert abs(c[0] - 0.1) < 0.04


def test_firing_rate_and_presence_ratio():
    t, c = _train()
    np.testing.assert_allclose(
        m.firing_rate_hz(spike_clusters=c, unit_ids=np.array([7, 3, 5]), duration_s=2.0), [7.5, 2.5, 0.0]
    )
    # 100 s recording: default bins min(60, 100/10) = 10 s, ten of them
    times = _samples([1.0, 5.0, 15.0, 25.0, 99.99, 3.0])
    clusters = np.array([1, 1, 1, 1, 2, 2])
    pr = m.presence_ratio(
        spike_times=times, spike_clusters=clusters, unit_ids=np.array([1, 2, 3]), sampling_rate_hz=FS, duration_s=100.0
    )
    np.testing.assert_allclose(pr, [0.3, 0.2, 0.0])
    # a 20-minute recording keeps 60 s bins: 20 bins
    long = _samples([10.0, 70.0, 1199.0])
    pr = m.presence_ratio(
        spike_times=long,
        spike_clusters=np.zeros(3, int),
        unit_ids=np.array([0]),
        sampling_rate_hz=FS,
        duration_s=1200.0,
    )
    np.testing.assert_allclose(pr, [3 / 20])
    pr = m.presence_ratio(
        spike_times=long,
        spike_clusters=np.zeros(3, int),
        unit_ids=np.array([0]),
        sampling_rate_hz=FS,
        duration_s=1200.0,
        bin_s=600.0,
    )
    np.testing.assert_allclose(pr, [1.0])


@pytest.mark.parametrize("missing", [0.0, 0.1, 0.25])
def test_amplitude_cutoff_close_to_the_truth(missing):
    rng = np.random.default_rng(2)
    amps = rng.normal(1.0, 0.15, size=40000)
    cut = norm.ppf(missing, loc=1.0, scale=0.15) if missing > 0 else -np.inf
    kept = amps[amps > cut]
    est = m.amplitude_cutoff(amplitudes=kept, spike_clusters=np.zeros(kept.size, int), unit_ids=np.array([0]))
    assert abs(est[0] - missing) < 0.03
    # negative-going amplitudes in µV give the same estimate
    neg = m.amplitude_cutoff(amplitudes=-80 * kept, spike_clusters=np.zeros(kept.size, int), unit_ids=np.array([0]))
    np.testing.assert_allclose(neg, est, atol=0.01)


def test_amplitude_cutoff_matches_spikeinterface_and_needs_enough_spikes():
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 0.2, size=3000)
    a = a[a > 0.85]
    b = rng.normal(1.0, 0.2, size=100)
    amps = np.concatenate([a, b])
    clusters = np.concatenate([np.zeros(a.size, int), np.ones(b.size, int)])
    est = m.amplitude_cutoff(amplitudes=amps, spike_clusters=clusters, unit_ids=np.array([0, 1]))
    misc = pytest.importorskip("spikeinterface.metrics.quality.misc_metrics")
    # SpikeInterface smooths the integer histogram into integers (truncating); we keep floats
    si = misc.amplitude_cutoff(a, num_histogram_bins=100, histogram_smoothing_value=3, amplitudes_bins_min_ratio=5)
    assert abs(est[0] - si) < 0.02
    assert abs(est[0] - norm.cdf(0.85, loc=1.0, scale=0.2)) < 0.03
    assert math.isnan(est[1])  # 100 spikes < 100 bins * 5


def test_snr_peak_and_depth():
    templates = np.zeros((2, 5, 3))
    templates[0, 2, 1] = -60.0
    templates[0, 2, 2] = -40.0
    templates[0, 3, 1] = 20.0
    templates[1, 1, 0] = 30.0
    noise = np.array([10.0, 5.0, 4.0])
    pos = np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 40.0]])
    peak = m.template_peak(templates_uv=templates)
    np.testing.assert_array_equal(peak.channel, [1, 0])
    np.testing.assert_allclose(peak.amplitude_uv, [60.0, 30.0])
    np.testing.assert_allclose(m.snr(templates_uv=templates, noise_uv=noise), [12.0, 3.0])
    # channels 1 (60) and 2 (40 >= 30) count, weighted by |peak|
    np.testing.assert_allclose(
        m.template_depth_um(templates_uv=templates, channel_positions=pos), [(60 * 20 + 40 * 40) / 100, 0.0]
    )
    assert math.isnan(m.snr(templates_uv=templates, noise_uv=np.array([0.0, 0.0, 1.0]))[0])


def _unit_metrics(contamination, snr, presence, n_spikes=None):
    n = len(snr)
    z = np.zeros(n)
    return m.UnitMetrics(
        unit_id=np.arange(n),
        n_spikes=z if n_spikes is None else np.asarray(n_spikes, float),
        firing_rate_hz=z,
        isi_violation_ratio=z,
        contamination=np.asarray(contamination, float),
        presence_ratio=np.asarray(presence, float),
        amplitude_cutoff=z,
        snr=np.asarray(snr, float),
        amplitude_uv=z,
        peak_channel=z,
        depth_um=z,
    )


def test_label_thresholds():
    um = _unit_metrics(
        contamination=[0.05, 0.10, 0.05, 0.05, 0.05, 0.5, float("nan"), 0.0],
        snr=[5.0, 5.0, 4.99, 2.0, 1.99, 9.0, 9.0, float("nan")],
        presence=[0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
    )
    labels = lb.label_units(um, good_max_contamination=0.1, good_min_snr=5.0, good_min_presence=0.8, noise_max_snr=2.0)
    assert labels.tolist() == ["good", "mua", "mua", "mua", "noise", "mua", "mua", "noise"]
    low_presence = _unit_metrics(contamination=[0.0], snr=[10.0], presence=[0.79])
    assert lb.label_units(
        low_presence, good_max_contamination=0.1, good_min_snr=5.0, good_min_presence=0.8, noise_max_snr=2.0
    ).tolist() == ["mua"]
    with pytest.raises(SpikesortError):
        lb.label_units(um, good_max_contamination=10.0, good_min_snr=5.0, good_min_presence=0.8, noise_max_snr=2.0)


def test_a_unit_of_a_few_dozen_spikes_is_not_good_whatever_its_train_shows():
    from spikesort.params import Params

    # mearec_nn32 seed 60: 31 spikes of no neuron at SNR 5.2 with no refractory violation, which
    # even a train of pure noise that short would show (0.01 expected in 300 s)
    um = _unit_metrics(contamination=[0.0] * 3, snr=[5.2, 8.0, 8.0], presence=[1.0] * 3, n_spikes=[31, 49, 50])
    kw = dict(good_max_contamination=0.1, good_min_snr=5.0, good_min_presence=0.8, noise_max_snr=2.0)
    floor = Params().good_min_spikes
    assert floor == 50
    assert lb.label_units(um, **kw, good_min_spikes=floor).tolist() == ["mua", "mua", "good"]
    assert lb.label_units(um, **kw, good_min_spikes=0).tolist() == ["good"] * 3


def test_a_unit_with_a_fifth_of_a_larger_ones_spikes_and_its_footprint_is_not_good():
    from spikesort.params import Params

    # mearec_tetrode seeds 3, 5, 7: slivers and pieces of 38-368 spikes (0.8-8 % of their
    # neuron's unit), footprints agreeing to 0.991-0.9997, all labelled 'good' before; mearec_nn32
    # seed 22: a burst's spikes fitted 0.8 ms late, 0.17 of their unit's
    t = np.arange(40, dtype=np.float64)
    wave = -np.exp(-0.5 * ((t - 15) / 2.0) ** 2)
    footprint = np.array([1.0, 0.8, 0.5, 0.3])
    other = np.array([0.3, 0.5, 0.8, 1.0])
    templates = np.stack(
        [
            100 * wave[:, None] * footprint,  # a neuron's unit
            40 * wave[:, None] * footprint,  # its piece: smaller, same footprint
            40 * wave[:, None] * other,  # a small neuron elsewhere on the probe
            40 * wave[:, None] * footprint,  # a small neuron of that footprint, firing a third as often
            # a burst's stretched spikes: the footprint agrees to 0.962 only (mearec_nn32: 0.946-0.963)
            40 * wave[:, None] * np.array([0.7, 1.0, 0.6, 0.2]),
            30 * wave[:, None] * footprint,  # a piece with a sixth of its unit's spikes
        ]
    )
    counts = np.array([1000, 60, 60, 300, 60, 170])
    piece = lb.possible_pieces(
        templates_uv=templates, spike_counts=counts, max_fraction=Params().good_max_piece_fraction
    )
    assert piece.tolist() == [False, True, False, False, True, True]
    assert lb.possible_pieces(templates_uv=templates, spike_counts=counts, max_fraction=0.1).tolist()[5] is False
    um = _unit_metrics(contamination=[0.0] * 6, snr=[20.0] + [8.0] * 5, presence=[1.0] * 6)
    kw = dict(good_max_contamination=0.1, good_min_snr=5.0, good_min_presence=0.8, noise_max_snr=2.0)
    assert lb.label_units(um, **kw, possible_piece=piece).tolist() == ["good", "mua", "good", "good", "mua", "mua"]
    assert lb.label_units(um, **kw).tolist() == ["good"] * 6
    # 0 switches the rule off
    assert not lb.possible_pieces(templates_uv=templates, spike_counts=counts, max_fraction=0.0).any()


def test_a_rare_shrunken_piece_whose_few_spikes_blur_its_footprint_to_0_93_is_not_good():
    # mearec_nn32 seed 80: 95 spikes at 0.3 of a 1088-spike neuron's size, footprint 0.928 (its
    # few spikes' noise); a footprint at 0.90 is another neuron's
    t = np.arange(40, dtype=np.float64)
    wave = -np.exp(-0.5 * ((t - 15) / 2.0) ** 2)
    footprint = np.array([1.0, 0.8, 0.5, 0.3])
    blurred = np.array([0.7, 1.0, 0.2, 0.1])  # 0.934
    other = np.array([0.6, 1.0, 0.1, 0.1])  # 0.895
    templates = np.stack([190 * wave[:, None] * footprint, 57 * wave[:, None] * blurred, 57 * wave[:, None] * other])
    counts = np.array([1088, 95, 95])
    assert lb.possible_pieces(templates_uv=templates, spike_counts=counts, max_fraction=0.2).tolist() == [
        False,
        True,
        False,
    ]


def test_a_few_dozen_spikes_with_a_frequent_units_footprint_are_a_possible_piece_whatever_their_size():
    # mearec_nn32_crowded seed 6: 30 of a 4693-spike neuron's spikes, their template's peak-to-peak
    # 88 µV against its unit's 60, labelled 'good'
    t = np.arange(40, dtype=np.float64)
    wave = -np.exp(-0.5 * ((t - 15) / 2.0) ** 2)
    footprint = np.array([1.0, 0.8, 0.5, 0.3])
    templates = np.stack(
        [60 * wave[:, None] * footprint, 88 * wave[:, None] * footprint, 88 * wave[:, None] * footprint]
    )
    counts = np.array([4693, 30, 900])  # the rare one, and a larger neuron firing a fifth as often
    piece = lb.possible_pieces(templates_uv=templates, spike_counts=counts, max_fraction=0.2)
    assert piece.tolist() == [False, True, False]
    assert not lb.possible_pieces(templates_uv=templates, spike_counts=counts, max_fraction=0.0).any()


def test_size_overlap_counts_the_spikes_on_the_wrong_side_of_the_best_size():
    assert lb.size_overlap(np.array([10.0, 11, 12]), np.array([1.0, 2, 3, 4])) == 0.0
    # one of the large set's spikes (2.5) among the small set's: one wrong whatever the threshold
    assert lb.size_overlap(np.array([2.5, 11, 12]), np.array([1.0, 2, 3, 4])) == pytest.approx(1 / 3)
    # the order of the two sets does not matter
    assert lb.size_overlap(np.array([1.0, 2, 3, 4]), np.array([2.5, 11, 12])) == pytest.approx(1 / 3)
    assert lb.size_overlap(np.array([]), np.array([1.0])) == 0.0


def test_two_units_on_one_ray_whose_sizes_overlap_are_not_good():
    # mearec_tetrode_wire seeds 0 and 4, _cells2 seed 2: pairs sharing a footprint to 0.999-1.000
    # and a whitened shape to 0.85-0.95, whose sizes overlapped, each 'good' unit matching its
    # neuron at 0.66-0.77; spikeinterface's steady neurons on one ray (static32, tetrode seeds 2
    # and 4) kept a gap between their sizes and were sorted at 0.99-1.00; MEArec's neurons of one
    # size on one ray differed in shape (0.73-0.78) and were sorted at 0.77-0.96
    t = np.arange(40, dtype=np.float64)
    wave = -np.exp(-0.5 * ((t - 15) / 2.0) ** 2)
    wide = -np.exp(-0.5 * ((t - 15) / 4.0) ** 2) + 0.8 * np.exp(-0.5 * ((t - 24) / 4.0) ** 2)
    footprint = np.array([1.0, 0.8, 0.5, 0.3])
    templates = np.stack(
        [
            100 * wave[:, None] * footprint,  # a large neuron
            50 * wave[:, None] * footprint,  # half its size on its ray: sizes overlap
            100 * wave[:, None] * np.array([0.3, 0.5, 0.8, 1.0]),  # elsewhere on the probe
            30 * wave[:, None] * np.array([0.3, 0.5, 0.8, 1.0]),  # on that one's ray, sizes apart
            # on the first ray at the second's size, but of another shape (a wide, biphasic cell)
            50 * wide[:, None] * footprint,
        ]
    )
    rng = np.random.default_rng(0)
    n = [1000, 800, 1000, 600, 800]
    clusters = np.repeat(np.arange(5), n)
    # template scales: the large neuron's spikes shrink in bursts down into the second's sizes
    scale = np.concatenate(
        [
            np.where(rng.random(n[0]) < 0.2, rng.uniform(0.3, 0.7, n[0]), rng.normal(1.0, 0.08, n[0])),
            rng.normal(1.0, 0.15, n[1]),
            rng.normal(1.0, 0.08, n[2]),
            rng.normal(1.0, 0.08, n[3]),
            rng.normal(1.0, 0.15, n[4]),
        ]
    )
    kw = dict(templates_uv=templates, templates_white=templates, spike_clusters=clusters, amplitudes=scale)
    assert lb.same_ray_units(**kw, min_fraction=0.2).tolist() == [True, True, False, False, False]
    # the shape is what keeps the fifth unit out: sizes alone would not
    assert lb.same_ray_units(**kw, min_fraction=0.2, min_shape=0.0).tolist() == [True, True, False, False, True]
    # a sibling with under a fifth of a unit's spikes says nothing about it
    few = np.concatenate([np.arange(1000), np.arange(1000, 1100)])
    kw_few = dict(templates_uv=templates[:2], templates_white=templates[:2], spike_clusters=clusters[few])
    assert lb.same_ray_units(**kw_few, amplitudes=scale[few], min_fraction=0.2).tolist() == [False, True]
    # 0 switches the rule off; no unit or a lone one has no sibling
    assert not lb.same_ray_units(**kw, min_fraction=0.0).any()
    empty = dict(spike_clusters=np.zeros(0, np.int64), amplitudes=np.zeros(0), min_fraction=0.2)
    none = np.zeros((0, 40, 4))
    assert lb.same_ray_units(templates_uv=none, templates_white=none, **empty).tolist() == []
    one = templates[:1]
    assert lb.same_ray_units(templates_uv=one, templates_white=one, **empty).tolist() == [False]
    um = _unit_metrics(contamination=[0.0] * 5, snr=[20.0, 10.0, 20.0, 6.0, 10.0], presence=[1.0] * 5)
    labels = lb.label_units(
        um,
        good_max_contamination=0.1,
        good_min_snr=5.0,
        good_min_presence=0.8,
        noise_max_snr=2.0,
        possible_piece=lb.same_ray_units(**kw, min_fraction=0.2),
    )
    assert labels.tolist() == ["mua", "mua", "good", "good", "good"]


def test_compute_unit_metrics_end_to_end():
    t, c = _train()
    templates = np.zeros((3, 5, 2))
    templates[0, 2, 0] = -50.0
    templates[2, 2, 1] = -100.0
    table = m.compute_unit_metrics(
        spike_times=t,
        spike_clusters=c,
        amplitudes=np.ones(t.size),
        templates_uv=templates,
        template_of_unit=np.array([2, 0, 1]),
        unit_ids=np.array([7, 3, 5]),
        noise_uv=np.array([5.0, 10.0]),
        channel_positions=np.array([[0.0, 0.0], [0.0, 25.0]]),
        sampling_rate_hz=FS,
        duration_s=1.0,
        refractory_ms=1.5,
        censored_ms=0.0,
    ).to_table()
    assert table["unit_id"] == [7, 3, 5]
    assert table["n_spikes"] == [15, 5, 0]
    assert table["firing_rate_hz"] == [15.0, 5.0, 0.0]
    assert table["peak_channel"] == [1, 0, 0]
    assert table["amplitude_uv"] == [100.0, 50.0, 0.0]
    assert table["snr"] == [10.0, 10.0, 0.0]
    assert table["depth_um"] == [25.0, 0.0, 0.0]
    assert table["contamination"][1] == 0.0 and math.isnan(table["contamination"][2])
    assert all(math.isnan(x) for x in table["amplitude_cutoff"])  # too few spikes
    assert list(table) == [f.name for f in dataclasses.fields(m.UnitMetrics)]


def test_bad_parameters():
    t, c = _train()
    kw = dict(spike_times=t, spike_clusters=c, unit_ids=np.array([7]), sampling_rate_hz=FS, duration_s=1.0)
    with pytest.raises(SpikesortError, match="censored_ms"):
        m.contamination(refractory_ms=1.0, censored_ms=1.0, **kw)
    with pytest.raises(SpikesortError, match="duration_s"):
        m.isi_violation_ratio(**{**kw, "duration_s": 0.0}, refractory_ms=1.5)
    with pytest.raises(ValueError, match="integer"):
        m.presence_ratio(**{**kw, "spike_times": t / FS})
    with pytest.raises(ValueError, match="repeated"):
        m.firing_rate_hz(spike_clusters=c, unit_ids=np.array([7, 7]), duration_s=1.0)
