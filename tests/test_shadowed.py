"""The units between larger ones (spikesort.stages.curate.shadowed_units): other neurons' spikes,
shrunken and mixed, are dropped; a small neuron of its own shape, and a neuron shaped like a
larger one but firing apart from it, stay."""

import numpy as np
from spikestore import SpikeStore

from spikesort.stages.curate import shadowed_units
from spikesort.stages.match import MatchedSpikes
from spikesort.stages.merges import independence_test

NT, PRE, C = 40, 12, 4
FS = 30_000
DURATION = 300 * FS
REFRACTORY, DOUBLE_FIT = 45, 15


def _waveform(footprint, *, width: float = 2.0, amplitude: float = 8.0) -> np.ndarray:
    t = np.arange(NT) - PRE
    shape = -np.exp(-0.5 * (t / width) ** 2) + 0.4 * np.exp(-0.5 * ((t - 3 * width) / (2 * width)) ** 2)
    return amplitude * shape[:, None] * np.asarray(footprint, dtype=float)[None, :]


def _neuron(rng, n):
    """About ``n`` spike times of one neuron: Poisson, but never two within the refractory period."""
    isi = REFRACTORY + 1 + rng.exponential(DURATION / n - REFRACTORY - 1, size=n)
    t = (NT + np.cumsum(isi)).astype(np.int64)
    return t[t < DURATION - NT]


def _case(seed: int):
    rng = np.random.default_rng(seed)
    wa, wb = _waveform([1.0, 0.7, 0.3, 0.1]), _waveform([0.1, 0.3, 0.7, 1.0])
    wc = _waveform([0.2, 1.0, 1.0, 0.2], width=4.0)  # a broad spike of its own
    a, b, d = _neuron(rng, 3000), _neuron(rng, 2500), _neuron(rng, 1200)
    c = _neuron(rng, 300)
    a_small, b_small = a[::12], b[::40]  # each neuron's spikes shrunken late in its bursts
    store = SpikeStore(
        [
            (np.setdiff1d(a, a_small), wa),
            (np.setdiff1d(b, b_small), wb),
            (a_small, 0.45 * wa),
            (b_small, 0.45 * wb),
            (c, wc),
            (d, 0.9 * wa),
        ],
        seed=seed,
        peak=PRE,
    )
    units = [np.setdiff1d(a, a_small), np.setdiff1d(b, b_small), np.concatenate([a_small, b_small]), c, d]
    dense = np.stack(
        [wa, wb, (len(a_small) * 0.45 * wa + len(b_small) * 0.45 * wb) / (len(a_small) + len(b_small)), wc, 0.9 * wa]
    ).astype(np.float32)
    times = np.concatenate(units)
    labels = np.concatenate([np.full(len(t), k) for k, t in enumerate(units)])
    order = np.argsort(times, kind="stable")
    n = len(times)
    spikes = MatchedSpikes(times[order], labels[order], np.ones(n, np.float32), np.ones(n, np.float32))
    return store, spikes, dense


def _shadowed(store, spikes, dense, **kw):
    independent = independence_test(spikes, refractory=REFRACTORY, double_fit=DOUBLE_FIT, duration=DURATION)
    args = dict(pre=PRE, nt=NT, seed=0, max_fraction=0.1, independent=independent)
    return shadowed_units(store, spikes, dense, **{**args, **kw}).tolist()


def test_a_mixture_of_two_neurons_shrunken_spikes_is_dropped_but_not_a_small_neuron_or_a_look_alike_firing_apart():
    for seed in range(3):
        store, spikes, dense = _case(seed)
        # unit 2: 250 of neuron a's shrunken spikes and 60 of b's; unit 3: a neuron of its own
        # shape; unit 4: a neuron shaped like a (0.9 of it), whose train shows it fires apart
        assert _shadowed(store, spikes, dense) == [2]
        # kept when asked to (1: every unit stays)
        assert _shadowed(store, spikes, dense, max_fraction=1.0) == []


def test_a_look_alike_whose_train_cannot_show_a_neuron_apart_goes_with_the_mixture():
    store, spikes, dense = _case(0)
    # without the trains' say, the neuron shaped like a larger one goes as well: the trains keep it
    assert _shadowed(store, spikes, dense, independent=lambda i, j: False) == [2, 4]


def test_a_mixture_stays_only_when_its_train_shows_a_neuron_apart_from_every_unit_claiming_its_spikes():
    store, spikes, dense = _case(0)
    # a's template (and d's, a's shape) claims most of the mixture's spikes, b's a fifth: a train
    # apart from a's and d's does not keep it, apart from b's too does; c, smaller, claims none
    assert _shadowed(store, spikes, dense, independent=lambda i, j: j != 1) == [2]
    assert _shadowed(store, spikes, dense, independent=lambda i, j: j != 3) == []
