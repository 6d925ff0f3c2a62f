"""Units that hold two neurons, cut by their trains and shapes (spikesort.stages.mixtures)."""

import numpy as np
import pytest
from spikestore import SpikeStore

from spikesort.stages.match import MatchedSpikes
from spikesort.stages.mixtures import refractory_pairs, split_two_neuron_units

NT, PRE, C = 40, 12, 4
FS = 30_000
DURATION = 300 * FS
REFRACTORY, DOUBLE_FIT = 45, 15
ARGS = dict(pre=PRE, nt=NT, refractory=REFRACTORY, double_fit=DOUBLE_FIT, duration=DURATION, seed=0)


def _waveform(amplitude: float) -> np.ndarray:
    """(NT, C) one biphasic spike on a tetrode, the same footprint at any size."""
    t = np.arange(NT) - PRE
    shape = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.4 * np.exp(-0.5 * ((t - 6.0) / 4.0) ** 2)
    return amplitude * shape[:, None] * np.array([1.0, 0.6, 0.45, 0.3])[None, :]


def _neuron(rng, rate_hz: float, *, dead: int = 2 * REFRACTORY) -> np.ndarray:
    """A train that never fires twice within ``dead`` samples (an absolute refractory period)."""
    isi = dead + rng.exponential(FS / rate_hz - dead, size=int(rate_hz * 300 * 1.2) + 10)
    t = (100 + np.cumsum(isi)).astype(np.int64)
    return t[t < DURATION - 100]


def _one_unit(trains, waveforms, rng):
    """A store of the neurons and the matched spikes of all of them as unit 0 (and nothing else)."""
    store = SpikeStore(list(zip(trains, waveforms)), seed=int(rng.integers(1 << 30)), peak=PRE)
    t = np.concatenate(trains)
    owner = np.concatenate([np.full(len(x), k) for k, x in enumerate(trains)])
    order = np.argsort(t, kind="stable")
    n = len(t)
    spikes = MatchedSpikes(t[order], np.zeros(n, np.int64), np.ones(n, np.float32), np.ones(n, np.float32))
    dense = np.mean(waveforms, axis=0)[None].astype(np.float32)
    return store, spikes, dense, owner[order]


def _each_neuron_one_unit(out, owner, trains, share: float = 0.9) -> None:
    """Each neuron is one unit of ``out``: its spikes mostly in one, that unit mostly its spikes."""
    for k in range(len(trains)):
        held = np.bincount(out.templates[owner == k], minlength=len(trains))
        unit = int(np.argmax(held))
        assert held[unit] >= share * len(trains[k])
        assert np.mean(owner[out.templates == unit] == k) >= share


def _brute(ta, tb, lo, hi):
    d = np.abs(np.asarray(tb)[None, :] - np.asarray(ta)[:, None])
    return int(((d > lo) & (d <= hi)).sum())


def test_refractory_pairs_count_as_a_brute_force_count_does_and_leave_out_a_crowded_lag():
    rng = np.random.default_rng(0)
    ta = np.sort(rng.integers(0, 200_000, 400))
    tb = np.sort(rng.integers(0, 200_000, 300))
    observed, expected = refractory_pairs(ta, tb, lo=15, hi=45, duration=200_000)
    assert observed == _brute(ta, tb, 15, 45)
    assert expected == pytest.approx(400 * 300 / 200_000 * 60)
    # within one train: each pair once, chance at one train's rate
    observed, expected = refractory_pairs(ta, lo=15, hi=45, duration=200_000)
    assert observed == _brute(ta, ta, 15, 45) / 2
    assert expected == pytest.approx(400 * 400 / 200_000 * 30)
    # echoes of a third of a's spikes at one lag: those lags are left out
    echo = np.sort(np.r_[tb, ta[::3] + 30])
    observed, expected = refractory_pairs(ta, echo, lo=15, hi=45, duration=200_000)
    assert observed <= _brute(ta, echo, 15, 45) - 0.9 * len(ta[::3])
    assert expected < 400 * len(echo) / 200_000 * 60


def test_two_neighbours_at_two_sizes_in_one_unit_are_cut_apart_along_their_own_trains():
    rng = np.random.default_rng(1)
    trains = [_neuron(rng, 6.0), _neuron(rng, 4.0)]
    store, spikes, dense, owner = _one_unit(trains, [_waveform(5.0), _waveform(3.6)], rng)
    out, n_units = split_two_neuron_units(store, spikes, dense, **ARGS)
    assert n_units == 2
    _each_neuron_one_unit(out, owner, trains)
    assert np.array_equal(out.times, spikes.times)


def test_two_bursting_neighbours_whose_sizes_hide_their_shapes_are_cut_apart_by_shape_alone(monkeypatch):
    import spikesort.stages.mixtures as mixtures

    # mearec_nn32_crowded seed 80: two bursting neurons on one contact (2110 and 1828 spikes,
    # shapes 0.89 alike, sizes' CV 0.4-0.5) in one unit; cut by shape and size, the best cut's
    # halves met at 0.59 of chance in the refractory period, cut by shape alone at 0.62
    rng = np.random.default_rng(5)
    t = np.arange(NT) - PRE
    sharp = -np.exp(-0.5 * (t / 1.4) ** 2) + 0.5 * np.exp(-0.5 * ((t - 5.0) / 3.0) ** 2)
    other = sharp[:, None] * np.array([1.0, 0.6, 0.45, 0.3])[None, :]
    a, b = _waveform(5.0), 5.0 * other / np.abs(other).max()
    trains = [_neuron(rng, 8.0), _neuron(rng, 6.0)]
    sizes = [rng.lognormal(0.0, 0.45, len(x)) for x in trains]
    cos = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert 0.8 < cos < 0.95
    _, spikes, dense, owner = _one_unit(trains, [a, b], rng)
    store = SpikeStore(list(zip(trains, [a, b])), seed=6, peak=PRE, sizes=sizes)

    def cut(scale_free_too: bool):
        if not scale_free_too:
            plain = mixtures._features
            monkeypatch.setattr(mixtures, "_features", lambda *a, **kw: plain(*a, **{**kw, "scale_free": False}))
        out, n_units = split_two_neuron_units(store, spikes, dense, **ARGS)
        monkeypatch.undo()
        return out, n_units

    assert cut(False)[1] == 1  # sizes spread over every axis the shapes differ on
    out, n_units = cut(True)
    assert n_units == 2
    _each_neuron_one_unit(out, owner, trains)


def test_a_bursting_neuron_at_two_sizes_and_two_neurons_alike_in_everything_stay_whole():
    rng = np.random.default_rng(2)
    # one neuron whose spikes come at two sizes: its train holds no pair in the refractory period
    t = _neuron(rng, 10.0)
    late = rng.random(len(t)) < 0.4
    store, spikes, dense, _ = _one_unit([t[~late], t[late]], [_waveform(5.0), _waveform(2.2)], rng)
    out, n_units = split_two_neuron_units(store, spikes, dense, **ARGS)
    assert n_units == 1 and np.array_equal(out.templates, spikes.templates)
    # two neurons no shape tells apart: their unit has the pairs, but no cut clears them
    trains = [_neuron(rng, 6.0), _neuron(rng, 4.0)]
    store, spikes, dense, _ = _one_unit(trains, [_waveform(5.0), _waveform(5.0)], rng)
    out, n_units = split_two_neuron_units(store, spikes, dense, **ARGS)
    assert n_units == 1 and np.array_equal(out.templates, spikes.templates)


def test_a_unit_too_short_for_its_train_to_speak_is_left_alone():
    rng = np.random.default_rng(3)
    trains = [_neuron(rng, 1.0), _neuron(rng, 0.7)]  # about 1.5 pairs expected at their rate
    store, spikes, dense, _ = _one_unit(trains, [_waveform(5.0), _waveform(3.0)], rng)
    out, n_units = split_two_neuron_units(store, spikes, dense, **ARGS)
    assert n_units == 1 and np.array_equal(out.templates, spikes.templates)


def test_a_neuron_and_its_echoes_one_lag_after_its_spikes_stay_one_unit():
    rng = np.random.default_rng(4)
    t = _neuron(rng, 12.0)
    echoes = t[rng.random(len(t)) < 0.3] + 43  # a leftover fitted 43 samples (beyond a window) after a third
    store, spikes, dense, _ = _one_unit([t, echoes], [_waveform(5.0), -0.5 * _waveform(5.0)], rng)
    out, n_units = split_two_neuron_units(store, spikes, dense, **ARGS)
    assert n_units == 1 and np.array_equal(out.templates, spikes.templates)


def test_a_unit_firing_faster_than_one_spike_a_window_is_left_alone():
    # artefacts or noise crossings at random, every 10 samples on average: chance's pairs in the
    # refractory period, but no spike alone in its window to draw a cut on
    rng = np.random.default_rng(1)
    duration = 40_000
    t = np.sort(rng.choice(np.arange(100, duration - 100), 4000, replace=False))
    gaps = np.diff(t)
    assert not (np.r_[True, gaps > NT] & np.r_[gaps > NT, True]).any()
    store = SpikeStore([(t, _waveform(5.0))], seed=1, peak=PRE)
    n = len(t)
    spikes = MatchedSpikes(t, np.zeros(n, np.int64), np.ones(n, np.float32), np.ones(n, np.float32))
    out, n_units = split_two_neuron_units(store, spikes, _waveform(5.0)[None], **{**ARGS, "duration": duration})
    assert n_units == 1 and np.array_equal(out.templates, spikes.templates)
