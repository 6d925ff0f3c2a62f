"""Refits: fits at a crowded lag that the recorded traces do not hold (stages/refits.py)."""

import numpy as np
from spikestore import SpikeStore

from spikesort.stages.match import MatchedSpikes
from spikesort.stages.refits import crowded_lag_spikes, refit_spikes
from spikesort.stages.templates import sparsify

FS = 30000
PRE, NT = 20, 60


def _unit(*, peak, center, n_channels=16):
    t = np.arange(NT)
    shape = -np.exp(-0.5 * ((t - PRE) / 2.0) ** 2) + 0.3 * np.exp(-0.5 * ((t - 30) / 5.0) ** 2)
    space = np.exp(-0.5 * ((np.arange(n_channels) - center) / 1.5) ** 2)
    return (peak * shape[:, None] * space[None, :]).astype(np.float32)


def _poisson(rng, rate_hz, duration, refractory=90):
    t = np.cumsum(rng.exponential(FS / rate_hz, int(2 * rate_hz * duration / FS) + 10)).astype(np.int64)
    t = t[np.concatenate([[True], np.diff(t) > refractory])]
    return t[(t > 500) & (t < duration - 500)]


def test_crowded_lags_are_found_in_a_train_against_another_and_against_itself():
    rng = np.random.default_rng(0)
    dur = FS * 300
    tb = _poisson(rng, 8, dur)
    ta = np.sort(np.concatenate([_poisson(rng, 5, dur), rng.choice(tb, 300, replace=False) + 64]))
    locked = np.isin(ta, tb + 64)
    got = crowded_lag_spikes(ta, tb, window=105, span=dur, same=False)
    assert got[locked].all()
    assert got[~locked].sum() <= 3  # chance spikes that fall in the box
    # the same against itself: a train's refits 64 samples after its own spikes
    own = np.sort(np.concatenate([tb, rng.choice(tb, 300, replace=False) + 64]))
    again = np.isin(own, tb + 64) & ~np.isin(own, tb)
    got = crowded_lag_spikes(own, own, window=105, span=dur, same=True)
    assert got[again].mean() > 0.97  # a few have another spike of the train nearer than their parent
    # the spikes the refits follow sit at the mirrored lag: candidates too, kept by their size
    parents = np.isin(own, own[again] - 64)
    assert got[parents].mean() > 0.97 and (got & ~again & ~parents).sum() <= 3
    # independent trains: nothing crowds
    assert not crowded_lag_spikes(_poisson(rng, 5, dur), tb, window=105, span=dur, same=False).any()


def test_refits_are_dropped_and_real_spikes_at_a_crowded_lag_kept():
    """Unit 0 is a neuron; unit 1 a neighbour that really fires 60 samples after unit 0's spikes
    (300 times) and on its own. The matching added fits the traces do not hold: 400 of unit 0's
    template 64 samples after its own spikes, and 300 of unit 1's 45 samples after unit 0's. Those
    go; every spike the recording holds stays, the neighbour's locked ones too."""
    rng = np.random.default_rng(1)
    dur = FS * 300
    dense = np.stack([_unit(peak=20.0, center=6), _unit(peak=14.0, center=8)])
    t0 = _poisson(rng, 8, dur)
    picks = rng.permutation(len(t0))
    locked = np.sort(t0[picks[:300]] + 60)
    t1 = np.sort(np.concatenate([_poisson(rng, 3, dur), locked]))
    store = SpikeStore([(t0, dense[0]), (t1, dense[1])], seed=3, peak=PRE)
    refit0 = np.sort(t0[picks[300:700]] + 64 + rng.integers(-1, 2, 400))
    refit1 = np.sort(t0[picks[700:1000]] + 45 + rng.integers(-1, 2, 300))
    times = np.concatenate([t0, refit0, t1, refit1])
    labels = np.concatenate([np.zeros(len(t0) + len(refit0)), np.ones(len(t1) + len(refit1))]).astype(np.int64)
    is_refit = np.concatenate(
        [np.zeros(len(t0), bool), np.ones(len(refit0), bool), np.zeros(len(t1), bool), np.ones(len(refit1), bool)]
    )
    ones = np.ones(len(times), np.float32)
    spikes = MatchedSpikes(times, labels, ones, ones)
    positions = np.stack([np.zeros(16), 20.0 * np.arange(16)], axis=1)
    templates = sparsify(dense, pre=PRE)
    drop = refit_spikes(spikes, templates, store, window=105, positions_um=positions)
    assert not drop[~is_refit].any()
    assert drop[is_refit].mean() > 0.98  # a few lie nearer another spike of their train than their parent
    # spikes of no crowded lag are not read, however small: the rule is about the peeling's leftovers
    small = MatchedSpikes(times[~is_refit], labels[~is_refit], ones[~is_refit], ones[~is_refit])
    assert not refit_spikes(small, templates, store, window=105, positions_um=positions).any()
