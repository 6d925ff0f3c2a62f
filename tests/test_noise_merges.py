"""Merges of a neuron's pieces too small for the refractory test (spikesort.stages.merges.noise)."""

import numpy as np
import pytest
from spikestore import SpikeStore

from spikesort.stages.merges import excess_distance, noise_merges

NT, PRE, C = 40, 12, 16
FS = 30_000
DURATION = 300 * FS
REFRACTORY, DOUBLE_FIT = 45, 15


def _waveform(centre: float, *, width: float = 2.0, peak: int = PRE, amplitude: float = 4.0) -> np.ndarray:
    """(NT, C) a biphasic spike whose size falls off with distance from channel ``centre``."""
    t = np.arange(NT) - peak
    shape = -np.exp(-0.5 * (t / width) ** 2) + 0.4 * np.exp(-0.5 * ((t - 3 * width) / (2 * width)) ** 2)
    footprint = np.exp(-0.5 * ((np.arange(C) - centre) / 4.0) ** 2)
    return amplitude * shape[:, None] * footprint[None, :]


def _trains(rng, rates_hz):
    """Spike trains that never come within the refractory period of each other (one neuron's)."""
    step = REFRACTORY + 5
    n = int(sum(rates_hz) * 300)
    t = np.sort(rng.choice(np.arange(10, DURATION // step - 10), size=n, replace=False)) * step
    owner = rng.choice(len(rates_hz), size=n, p=np.array(rates_hz) / sum(rates_hz))
    return [t[owner == k] for k in range(len(rates_hz))]


def _recording(rng, units):
    """The store of (times, waveform) units, their dense templates and their times."""
    store = SpikeStore(units, seed=int(rng.integers(1 << 30)), peak=PRE)
    return store, np.stack([w for _, w in units]).astype(np.float32), [np.asarray(t) for t, _ in units]


def _merge(store, dense, times, **kw):
    uv = dense * 10.0  # µV: a footprint is the same at any scale
    args = dict(pre=PRE, nt=NT, refractory=REFRACTORY, double_fit=DOUBLE_FIT, duration=DURATION)
    return noise_merges(store, dense, uv, times, seed=0, **args, **kw)


def test_excess_distance_near_one_for_one_population_and_large_for_two():
    rng = np.random.default_rng(1)
    w = _waveform(7.5)
    a = w + rng.normal(size=(300, NT, C))
    b = w + rng.normal(size=(40, NT, C))
    assert 0.7 < excess_distance(a, b) < 1.3
    other = _waveform(7.5, width=2.6)  # another neuron at the same place, a little wider
    c = other + rng.normal(size=(300, NT, C))
    assert excess_distance(a, c) > 3.0
    with pytest.raises(ValueError, match="at least 2"):
        excess_distance(a, b[:1])


def test_pieces_of_one_neuron_merge_and_a_neighbour_does_not():
    rng = np.random.default_rng(2)
    w = _waveform(7.5, amplitude=4.0)
    big, piece, piece2 = _trains(rng, [3.0, 0.15, 0.12])
    other = _trains(rng, [0.5])[0]  # a sparse narrow neighbour (an interneuron): its own train
    units = [(big, w), (piece, w), (piece2, w), (other, _waveform(7.5, width=1.2, amplitude=4.0))]
    store, dense, times = _recording(rng, units)
    groups = _merge(store, dense, times)
    joined = sorted(sorted(u for u, _ in g) for g in groups)
    assert joined == [[0, 1, 2], [3]]


def test_a_pair_the_trains_can_test_is_left_to_the_refractory_merges():
    rng = np.random.default_rng(3)
    w = _waveform(7.5, amplitude=1.2)
    a, b = _trains(rng, [3.0, 2.0])  # one neuron, thousands of spikes: the refractory test decides
    store, dense, times = _recording(rng, [(a, w), (b, w)])
    assert len(_merge(store, dense, times)) == 2


def test_spikes_in_each_others_refractory_period_keep_two_units():
    rng = np.random.default_rng(4)
    w = _waveform(7.5, amplitude=1.2)
    a = _trains(rng, [3.0])[0]
    b = np.sort(rng.choice(a[10:-10], 40, replace=False)) + REFRACTORY - 5  # 40 pairs within the period
    store, dense, times = _recording(rng, [(a, w), (b, w)])
    assert len(_merge(store, dense, times)) == 2


def test_a_footprint_on_few_channels_says_nothing():
    rng = np.random.default_rng(5)
    w = _waveform(7.5, amplitude=1.2)
    a, b = _trains(rng, [3.0, 0.15])
    store, dense, times = _recording(rng, [(a, w), (b, w)])
    assert len(_merge(store, dense, times)) == 1
    # on a tetrode every neuron's footprint agrees: the same units are not merged there
    assert len(_merge(store, dense, times, min_channels=C + 1)) == 2


def test_offsets_align_a_lagged_piece_on_its_unit():
    rng = np.random.default_rng(6)
    w = _waveform(7.5, amplitude=1.2)
    a, b = _trains(rng, [3.0, 0.15])
    store, dense, times = _recording(rng, [(a, w), (b, w)])
    times[1] = b + 2  # the piece's spikes reported 2 samples late: its template is the spike 2 early
    dense[1] = np.roll(dense[1], -2, axis=0)
    (group,) = _merge(store, dense, times)
    assert dict(group) == {0: 0, 1: -2}


def test_a_few_dozen_spikes_piece_joins_though_its_median_footprint_is_rough():
    # the template of a 30-45 spike piece is the median of so few spikes that its footprint can
    # agree with its neuron's to 0.93-0.96 only (static32 seed 1, MEArec's SqMEA seed 3); the
    # spikes themselves are one population (excess distance 1.1-3.8). A neighbour whose footprint
    # agrees as well differs in its spikes and stays apart
    rng = np.random.default_rng(7)
    w = _waveform(7.5, amplitude=4.0)
    a, b = _trains(rng, [3.0, 0.15])
    other = _trains(rng, [0.5])[0]  # a sparse narrow neighbour
    neighbour = _waveform(7.5, width=1.2, amplitude=4.0) * (1.0 + 0.4 * np.sin(np.arange(C) / 2.0))[None, :]
    store, dense, times = _recording(rng, [(a, w), (b, w), (other, neighbour)])
    rough = 1.0 + 0.5 * np.cos(1.3 * np.arange(C))  # the piece's median footprint, off channel by channel
    dense[1] = dense[1] * rough[None, :]
    from spikesort.stages.merges.footprint import footprint_cosine

    ptp = np.ptp(dense * 10.0, axis=1)
    assert 0.9 < footprint_cosine(ptp[0], ptp[1])[0] < 0.95
    assert 0.9 < footprint_cosine(ptp[0], ptp[2])[0] < 0.97
    joined = sorted(sorted(u for u, _ in g) for g in _merge(store, dense, times))
    assert joined == [[0, 1], [2]]
    # as the gate stood before (0.97), the piece stayed a unit of its own
    assert len(_merge(store, dense, times, min_cosine=0.97)) == 3
