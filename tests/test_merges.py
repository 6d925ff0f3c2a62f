"""Template similarity and the merge rules of curation, on hand-made templates."""

import numpy as np

from spikesort.stages.match import MatchedSpikes
from spikesort.stages.merges import lagged_similarity, refractory_merges
from spikesort.stages.merges.refractory import cross_refractory_ratio, makes_way


def _unit(n_channels=32, nt=60, peak=20.0, center=12, width=1.5):
    t = np.arange(nt)
    shape = -np.exp(-0.5 * ((t - 20) / 2.0) ** 2) + 0.3 * np.exp(-0.5 * ((t - 30) / 5.0) ** 2)
    space = np.exp(-0.5 * ((np.arange(n_channels) - center) / width) ** 2)
    return (peak * shape[:, None] * space[None, :]).astype(np.float32)


def test_similarity_ignores_noise_on_channels_without_signal():
    rng = np.random.default_rng(0)
    u = _unit(peak=6.0)
    # two halves of one sparse unit: the same waveform, each averaged over ~40 spikes of noise
    a = u + rng.normal(0, 1 / np.sqrt(40), u.shape).astype(np.float32)
    b = u + rng.normal(0, 1 / np.sqrt(40), u.shape).astype(np.float32)
    s_all, _ = lagged_similarity(a, b, max_lag=3, signal_fraction=0.0)
    s_sig, lag = lagged_similarity(a, b, max_lag=3)
    assert s_all < 0.9 < s_sig and lag == 0
    # a neighbour with another footprint stays dissimilar
    c = _unit(center=16)
    assert lagged_similarity(u, c, max_lag=3)[0] < 0.5


def test_lag_is_found():
    u = _unit()
    shifted = np.roll(u, 2, axis=0)
    s, lag = lagged_similarity(u, shifted, max_lag=3)
    assert s > 0.99 and lag == -2  # b delayed by -2 samples (advanced by 2) matches a


def test_small_slice_of_a_unit_is_absorbed_but_a_distinct_unit_is_not():
    rng = np.random.default_rng(1)
    big, twin, other = _unit(peak=40), np.roll(_unit(peak=40), 1, axis=0), _unit(peak=40, center=20)
    dense = np.stack([big, twin, other])
    fs, dur = 30000, 30000 * 300
    tb = np.sort(rng.choice(dur, 1800, replace=False))
    tt = np.sort(rng.choice(dur, 60, replace=False))
    to = np.sort(rng.choice(dur, 60, replace=False))
    times = np.concatenate([tb, tt, to])
    units = np.concatenate([np.zeros(1800, int), np.ones(60, int), np.full(60, 2)])
    order = np.argsort(times, kind="stable")
    spikes = MatchedSpikes(times[order], units[order], np.ones(len(times), np.float32), np.ones(len(times), np.float32))
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    groups = refractory_merges(
        spikes,
        dense,
        positions_um=positions,
        duration=dur,
        refractory=int(0.0015 * fs),
        similarity=0.7,
        same_unit=lambda i, j, lag: False,
    )
    members = sorted(sorted(k for k, _ in g) for g in groups)
    assert members == [[0, 1], [2]]
    lag_of = {k: lag for g in groups for k, lag in g}
    assert lag_of[1] - lag_of[0] == 1  # the twin peaks a sample late: its spike times move one sample on


def _poisson_times(rng, rate_hz, duration, fs=30000, refractory=60):
    t = np.cumsum(rng.exponential(fs / rate_hz, int(2 * rate_hz * duration / fs) + 10)).astype(np.int64)
    t = t[np.concatenate([[True], np.diff(t) > refractory])]
    return t[(t > 100) & (t < duration - 100)]


def test_residue_spikes_dropped_but_the_small_unit_kept():
    from spikesort.stages.curate import residue_spikes

    rng = np.random.default_rng(2)
    dur = 30000 * 300
    big, small = _unit(peak=40, center=12), _unit(peak=4, center=14)
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    tb = _poisson_times(rng, 10, dur)
    own = _poisson_times(rng, 3, dur)
    # a third of the big unit's spikes leave a residue matched to the small template 10 samples on
    ghost = np.sort(rng.choice(tb, len(tb) // 3, replace=False)) + 10 + rng.integers(-1, 2, len(tb) // 3)
    times = np.concatenate([tb, own, ghost])
    labels = np.concatenate([np.zeros(len(tb)), np.ones(len(own) + len(ghost))]).astype(np.int64)
    spikes = MatchedSpikes(times, labels, np.ones(len(times), np.float32), np.ones(len(times), np.float32))
    drop = residue_spikes(spikes, np.stack([big, small]), window=45, positions_um=positions)
    is_ghost = np.concatenate([np.zeros(len(tb) + len(own), bool), np.ones(len(ghost), bool)])
    assert drop[is_ghost].mean() > 0.97
    # the small unit's own spikes: only those that happen to fall at the residue lag go
    assert drop[~is_ghost].mean() < 0.01
    # a unit that is residue and nothing else is dropped whole
    only = np.concatenate([tb, ghost])
    lab2 = np.concatenate([np.zeros(len(tb)), np.ones(len(ghost))]).astype(np.int64)
    spikes2 = MatchedSpikes(only, lab2, np.ones(len(only), np.float32), np.ones(len(only), np.float32))
    drop2 = residue_spikes(spikes2, np.stack([big, small]), window=45, positions_um=positions)
    assert drop2[lab2 == 1].all() and not drop2[lab2 == 0].any()


def test_independent_units_lose_no_residue_spikes():
    from spikesort.stages.curate import residue_spikes

    rng = np.random.default_rng(3)
    dur = 30000 * 300
    big, small = _unit(peak=40, center=12), _unit(peak=4, center=14)
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    ta, tb = _poisson_times(rng, 20, dur), _poisson_times(rng, 5, dur)
    times = np.concatenate([ta, tb])
    labels = np.concatenate([np.zeros(len(ta)), np.ones(len(tb))]).astype(np.int64)
    spikes = MatchedSpikes(times, labels, np.ones(len(times), np.float32), np.ones(len(times), np.float32))
    assert not residue_spikes(spikes, np.stack([big, small]), window=45, positions_um=positions).any()


def _spikes(*trains):
    times = np.concatenate(trains)
    units = np.concatenate([np.full(len(t), i) for i, t in enumerate(trains)])
    order = np.argsort(times, kind="stable")
    ones = np.ones(len(times), np.float32)
    return MatchedSpikes(times[order].astype(np.int64), units[order].astype(np.int64), ones, ones)


def test_units_firing_in_different_stretches_are_not_merged_on_an_empty_correlogram():
    # two neurons with look-alike templates, one seen before a drift step and one after: they
    # never fire together, so their correlogram is empty; that is no evidence of one neuron
    rng = np.random.default_rng(4)
    fs, dur = 30000, 30000 * 300
    a = _poisson_times(rng, 8, dur // 2)
    b = _poisson_times(rng, 8, dur // 2) + dur // 2
    dense = np.stack([_unit(peak=30, center=12), _unit(peak=30, center=13)])
    assert 0.7 < lagged_similarity(dense[0], dense[1], max_lag=3)[0] < 0.9
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    kw = dict(positions_um=positions, duration=dur, refractory=45, similarity=0.7, same_unit=lambda i, j, lag: True)
    # the whole-recording rate expects ~60 coincidences and sees none: it called them one neuron
    assert len(refractory_merges(_spikes(a, b), dense, **kw)) == 1
    assert len(refractory_merges(_spikes(a, b), dense, rate_bin=10 * fs, **kw)) == 2


def test_a_small_unit_does_not_chain_two_neurons_into_one():
    # A and B fire independently all along (no refractory gap between them); C, a dozen spikes,
    # looks like both and passes every pair test: the groups {A, C} and {B} must stay apart
    rng = np.random.default_rng(5)
    fs, dur = 30000, 30000 * 300
    a, b = _poisson_times(rng, 8, dur), _poisson_times(rng, 8, dur)
    c = np.sort(rng.choice(dur, 12, replace=False))
    dense = np.stack([_unit(peak=30, center=12), _unit(peak=30, center=13), _unit(peak=30, center=12.5)])
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    groups = refractory_merges(
        _spikes(a, b, c),
        dense,
        positions_um=positions,
        duration=dur,
        refractory=45,
        similarity=0.7,
        rate_bin=10 * fs,
        same_unit=lambda i, j, lag: True,
    )
    members = [sorted(k for k, _ in g) for g in groups]
    assert not any(0 in m and 1 in m for m in members)
    assert any(2 in m and len(m) == 2 for m in members)  # C joins one of them


def _with_pairs(rng, a: np.ndarray, b: np.ndarray, *, keep: int, refractory: int) -> np.ndarray:
    """b without its spikes within ``refractory`` of a's, but for ``keep`` of them."""
    lo = np.searchsorted(a, b - refractory)
    hi = np.searchsorted(a, b + refractory, side="right")
    close = np.flatnonzero(hi > lo)
    drop = rng.permutation(close)[keep:]
    return np.delete(b, drop)


def _in_stretches(t: np.ndarray, *, period: int, on: bool = True) -> np.ndarray:
    """The spikes of t in the first (``on``) or second half of every ``period`` samples."""
    return t[((t // (period // 2)) % 2 == 0) == on]


def test_a_unit_firing_in_stretches_beside_one_that_keeps_its_rate_there_is_another_neuron():
    # A fires all along. B fires only in every other 30 s (a neuron beyond the end of the probe,
    # seen apart only where the probe moved up), and collisions cost the pair coincidences: 2 left
    # where about 8 are expected (independent neurons leave that few 1.4 % of the time)
    rng = np.random.default_rng(6)
    fs, dur, period = 30000, 30000 * 300, 30000 * 60
    dense = np.stack([_unit(peak=30, center=12), _unit(peak=30, center=13)])
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    kw = dict(positions_um=positions, duration=dur, refractory=45, similarity=0.7, rate_bin=10 * fs)
    a = _poisson_times(rng, 3, dur)
    b = _with_pairs(rng, a, _in_stretches(_poisson_times(rng, 6, dur), period=period), keep=2, refractory=45)
    ratio, expected = cross_refractory_ratio(a, b, refractory=45, duration=dur, rate_bin=10 * fs)
    assert 6 < expected < 10 and ratio < 0.25
    assert not makes_way(a, b, duration=dur, rate_bin=10 * fs)
    assert len(refractory_merges(_spikes(a, b), dense, **kw)) == 2
    # B in the same stretches where A makes way (fires less there): pieces of one neuron, joined
    off = _in_stretches(_poisson_times(rng, 6, dur), period=period, on=False)
    a2 = np.sort(np.concatenate([off, _in_stretches(_poisson_times(rng, 4, dur), period=period)]))
    b2 = _with_pairs(rng, a2, _in_stretches(_poisson_times(rng, 4, dur), period=period), keep=1, refractory=45)
    ratio, expected = cross_refractory_ratio(a2, b2, refractory=45, duration=dur, rate_bin=10 * fs)
    assert 5 < expected < 10 and ratio < 0.25
    assert makes_way(a2, b2, duration=dur, rate_bin=10 * fs)
    assert len(refractory_merges(_spikes(a2, b2), dense, **kw)) == 1
    # B firing steadily with the same weak gap (bursts' shrunken spikes): joined, as before
    b3 = _with_pairs(rng, a, _poisson_times(rng, 3, dur), keep=2, refractory=45)
    assert makes_way(a, b3, duration=dur, rate_bin=10 * fs)
    assert len(refractory_merges(_spikes(a, b3), dense, **kw)) == 1
    # a gap that independent neurons would almost never leave joins them whatever the stretches
    a4 = _poisson_times(rng, 10, dur)
    b4 = _with_pairs(rng, a4, _in_stretches(_poisson_times(rng, 10, dur), period=period), keep=0, refractory=45)
    assert cross_refractory_ratio(a4, b4, refractory=45, duration=dur, rate_bin=10 * fs)[1] > 30
    assert len(refractory_merges(_spikes(a4, b4), dense, **kw)) == 1


def test_a_weak_gap_joins_only_templates_alike_as_one_neurons_pieces():
    # two steady neurons whose templates agree to 0.71 (neighbours on a crowded probe), the
    # matching having lost most of their coincidences: 2 pairs where about 8 are expected, which
    # independent neurons leave 1.4 % of the time, and some 30 such pairs are tested per recording
    rng = np.random.default_rng(7)
    fs, dur = 30000, 30000 * 300
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    kw = dict(positions_um=positions, duration=dur, refractory=45, similarity=0.7, rate_bin=10 * fs)
    neighbours = np.stack([_unit(peak=30, center=12), _unit(peak=30, center=14, width=2.0)])
    pieces = np.stack([_unit(peak=30, center=12), _unit(peak=30, center=13)])
    assert 0.7 < lagged_similarity(neighbours[0], neighbours[1], max_lag=3)[0] < 0.75
    assert lagged_similarity(pieces[0], pieces[1], max_lag=3)[0] > 0.85
    a = _poisson_times(rng, 3, dur)
    b = _with_pairs(rng, a, _poisson_times(rng, 3, dur), keep=2, refractory=45)
    ratio, expected = cross_refractory_ratio(a, b, refractory=45, duration=dur, rate_bin=10 * fs)
    assert 6 < expected < 10 and ratio < 0.25 and makes_way(a, b, duration=dur, rate_bin=10 * fs)
    assert len(refractory_merges(_spikes(a, b), neighbours, **kw)) == 2
    # the same trains with templates alike as a neuron's pieces: joined
    assert len(refractory_merges(_spikes(a, b), pieces, **kw)) == 1
    # an empty refractory period where 30 pairs are expected joins even the less alike templates
    a2 = _poisson_times(rng, 10, dur)
    b2 = _with_pairs(rng, a2, _poisson_times(rng, 10, dur), keep=0, refractory=45)
    assert cross_refractory_ratio(a2, b2, refractory=45, duration=dur, rate_bin=10 * fs)[1] > 30
    assert len(refractory_merges(_spikes(a2, b2), neighbours, **kw)) == 1


def test_a_weak_gap_between_two_modes_is_two_neurons():
    # two large neurons on one contact, templates alike to 0.9 (crowded64 seed 90: neurons 10 and
    # 49, 8 µm apart, 0.92 alike at 320 µV): one pair of theirs in the refractory period where 6.5
    # are expected happens 1 % of the time; their spikes fall in two modes, and that says two neurons
    rng = np.random.default_rng(8)
    fs, dur = 30000, 30000 * 300
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    kw = dict(positions_um=positions, duration=dur, refractory=45, similarity=0.7, rate_bin=10 * fs)
    dense = np.stack([_unit(peak=30, center=12), _unit(peak=30, center=13)])
    assert lagged_similarity(dense[0], dense[1], max_lag=3)[0] > 0.85
    a = _poisson_times(rng, 3, dur)
    b = _with_pairs(rng, a, _poisson_times(rng, 3, dur), keep=1, refractory=45)
    ratio, expected = cross_refractory_ratio(a, b, refractory=45, duration=dur, rate_bin=10 * fs)
    assert 6 < expected < 10 and ratio < 0.25 and makes_way(a, b, duration=dur, rate_bin=10 * fs)
    asked = []

    def two_modes(i, j, lag):
        asked.append((i, j))
        return False

    assert len(refractory_merges(_spikes(a, b), dense, same_shape=two_modes, **kw)) == 2 and asked == [(0, 1)]
    # one mode once each spike is divided by its size (a neuron's pieces, its bursts' shrunken spikes)
    assert len(refractory_merges(_spikes(a, b), dense, same_shape=lambda i, j, lag: True, **kw)) == 1
    # a gap that independent neurons would almost never leave needs no mode test
    a2 = _poisson_times(rng, 10, dur)
    b2 = _with_pairs(rng, a2, _poisson_times(rng, 10, dur), keep=0, refractory=45)
    assert len(refractory_merges(_spikes(a2, b2), dense, same_shape=two_modes, **kw)) == 1


def _stretched(u: np.ndarray, factor: float) -> np.ndarray:
    """``u`` widened in time by ``factor`` about its trough (a spike late in a burst)."""
    t = np.arange(u.shape[0], dtype=np.float64)
    src = 20 + (t - 20) / factor
    return np.stack([np.interp(src, t, u[:, c]) for c in range(u.shape[1])], axis=1).astype(np.float32)


def test_pieces_of_a_bursting_neuron_merge_but_neighbours_and_tetrode_units_do_not():
    from spikesort.stages.merges import footprint_merges

    # footprints over a dozen channels, as on a dense probe
    full = _unit(peak=40, center=12, width=3.0)
    late = 0.4 * _stretched(full, 1.15)  # the same neuron in a burst: smaller and wider
    other = _unit(peak=40, center=15, width=3.0)  # a neighbour 3 channels away
    dense = np.stack([full, late, other])
    sizes = np.array([1000, 300, 800])
    groups = footprint_merges(dense, dense, sizes, max_lag=3)
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1], [2]]
    # on four channels every unit has nearly the same footprint: the rule does not apply
    tet = np.ascontiguousarray(dense[:, :, 10:14])
    assert len(footprint_merges(tet, tet, sizes, max_lag=3)) == 3
    # an echo (the same footprint, another shape) is not a piece
    echo = 0.3 * np.roll(full, 25, axis=0)
    dense2 = np.stack([full, echo])
    assert len(footprint_merges(dense2, dense2, sizes[:2], max_lag=3)) == 2


def test_tetrode_pieces_merge_on_their_refractory_gap_but_an_independent_smaller_unit_does_not():
    from spikesort.stages.merges import footprint_merges

    rng = np.random.default_rng(0)
    full = _unit(peak=40, center=12, width=3.0)
    late = 0.4 * _stretched(full, 1.15)
    small = 0.5 * full  # another neuron of the same footprint, firing on its own
    tet = np.ascontiguousarray(np.stack([full, late, small])[:, :, 10:14])
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 4300, size=4400))  # never two spikes within 3 ms
    piece = rng.random(len(neuron)) < 0.1
    # a few spikes fitted twice, a piece a few samples off the full-size fit: inside the inner half
    doubles = neuron[~piece][:10] + 8
    times = [neuron[~piece], np.sort(np.r_[neuron[piece], doubles]), np.sort(rng.integers(0, duration, size=1300))]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, times=times, refractory=refractory, duration=duration)
    groups = footprint_merges(tet, tet, sizes, **kw)
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1], [2]]
    # without spike trains nothing merges
    assert len(footprint_merges(tet, tet, sizes, max_lag=3)) == 3
    # too few spikes to show a gap: a piece of under a tenth of its unit's spikes, alike in
    # footprint and shape, joins it (a wrong merge costs little) ...
    few = [times[0], times[1][:20], times[2]]
    groups = footprint_merges(tet, tet, sizes, **{**kw, "times": few})
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1], [2]]
    # ... a larger share stays apart, and so does a tiny unit of another shape
    share = [times[0][:300], times[1][:40], times[2][:300]]
    assert len(footprint_merges(tet, tet, sizes, **{**kw, "times": share})) == 3
    spike = np.ascontiguousarray(np.roll(late, 12, axis=0)[:, 10:14])
    odd = np.stack([tet[0], spike, tet[2]])
    assert len(footprint_merges(odd, odd, sizes, **{**kw, "times": few})) == 3


def _tetrode_piece(rng, full: np.ndarray, *, scale: float, stretch: float, n_spikes: int, fraction: float):
    """A tetrode neuron (``full`` on channels 10-13) and its spikes' smaller, stretched piece: the two
    templates, the neuron's train (never two spikes within 3 ms) and which of its spikes are the piece's."""
    tet = np.ascontiguousarray(np.stack([full, scale * _stretched(full, stretch)])[:, :, 10:14])
    neuron = np.cumsum(rng.integers(96, 10_000, size=n_spikes))
    return tet, neuron, rng.random(len(neuron)) < fraction


def _split_neuron(rng, *, n_spikes: int, max_isi: int, fraction: float) -> list[np.ndarray]:
    """One neuron's train (never two spikes within 3 ms at 32 kHz) as two units: the rest, and a
    random ``fraction`` of its spikes."""
    neuron = np.cumsum(rng.integers(96, max_isi, size=n_spikes))
    piece = rng.random(len(neuron)) < fraction
    return [neuron[~piece], neuron[piece]]


def _tetrode_merged(dense: np.ndarray, trains, *, refractory=48, duration=9_600_000, double_fit=16) -> bool:
    """The two units of ``dense`` (a 300 s tetrode recording at 32 kHz) merge on their ``trains``,
    judged with the independence test."""
    from spikesort.stages.merges import fire_independently, footprint_merges

    def independent(i, j):
        return fire_independently(trains[i], trains[j], refractory=refractory, double_fit=double_fit, duration=duration)

    sizes = np.array([len(t) for t in trains])
    kw = dict(max_lag=3, refractory=refractory, duration=duration, double_fit=double_fit)
    return len(footprint_merges(dense, dense, sizes, **kw, times=trains, independent=independent)) == 1


def test_on_a_tetrode_a_piece_too_small_to_test_joins_on_a_strict_footprint_unless_the_trains_show_two():
    from spikesort.stages.merges import fire_independently, footprint_merges
    from spikesort.stages.merges.footprint import footprint_cosine

    # mearec_tetrode seed 1: a neuron at 72 uV and a 272-spike unit of its spikes at half the size
    # (20 % of them), footprints agreeing to 0.9999; 1.8 pairs expected in the refractory period's
    # outer half, too few for the test, too many spikes to absorb as a sliver
    rng = np.random.default_rng(11)
    full = _unit(peak=40, center=12, width=3.0)
    tet, neuron, piece = _tetrode_piece(rng, full, scale=0.45, stretch=1.15, n_spikes=1600, fraction=0.2)
    duration, refractory, double_fit = 9_600_000, 48, 16
    times = [neuron[~piece], neuron[piece]]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, refractory=refractory, duration=duration, double_fit=double_fit)

    def independent_of(trains):
        return lambda i, j: fire_independently(
            trains[i], trains[j], refractory=refractory, double_fit=double_fit, duration=duration
        )

    groups = footprint_merges(tet, tet, sizes, **kw, times=times, independent=independent_of(times))
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1]]
    # without the independence test the footprint alone does not merge them
    assert len(footprint_merges(tet, tet, sizes, **kw, times=times)) == 2
    # a neuron of that footprint firing on its own, with enough spikes to show it, stays apart
    busy = [np.cumsum(rng.integers(96, 2000, size=4000)), np.sort(rng.integers(0, duration, size=2000))]
    busy_sizes = np.array([len(t) for t in busy])
    assert len(footprint_merges(tet, tet, busy_sizes, **kw, times=busy, independent=independent_of(busy))) == 2
    # a footprint that agrees as the closest distinct neurons on MEArec tetrodes did (0.993) stays apart
    shifted = _unit(peak=40, center=13.0, width=3.0)
    loose = np.ascontiguousarray(np.stack([full, 0.45 * _stretched(shifted, 1.15)])[:, :, 10:14])
    cos, _ = footprint_cosine(np.ptp(loose[0], axis=0), np.ptp(loose[1], axis=0))
    assert 0.99 < cos < 0.995
    # (with more than a quarter of the unit's spikes: a fainter share joins on shapes alike, below)
    _, neuron, piece = _tetrode_piece(rng, full, scale=0.45, stretch=1.15, n_spikes=1300, fraction=0.23)
    times = [neuron[~piece], neuron[piece]]
    assert len(times[1]) > 0.25 * len(times[0])
    sizes = np.array([len(t) for t in times])
    assert len(footprint_merges(tet, tet, sizes, **kw, times=times, independent=independent_of(times))) == 1
    assert len(footprint_merges(loose, loose, sizes, **kw, times=times, independent=independent_of(times))) == 2


def test_on_a_tetrode_a_smaller_piece_whose_few_stray_pairs_show_no_gap_joins_on_a_strict_footprint():
    # mearec_tetrode seed 0: 366 spikes at 0.49 of a 2001-spike unit's size, 93 % of them its
    # neuron's, footprints 0.999, shapes 0.85; three stray fits 0.8-1.1 ms from the unit's spikes
    # put 3 pairs in the refractory period's outer half where chance gives 3.7: no gap, but too
    # little evidence to show two neurons firing on their own
    rng = np.random.default_rng(3)
    full = _unit(peak=40, center=12, width=3.0)
    tet, neuron, piece = _tetrode_piece(rng, full, scale=0.49, stretch=1.15, n_spikes=2370, fraction=0.155)
    unit = neuron[~piece]
    strays = unit[[100, 700, 1300]] + np.array([25, 27, -34])
    assert _tetrode_merged(tet, [unit, np.sort(np.r_[neuron[piece], strays])])
    # a neuron of that footprint and size firing on its own, with enough spikes to show it
    assert not _tetrode_merged(tet, [unit, np.sort(rng.integers(0, 9_600_000, size=700))])
    # at about one size, footprints that alike are distinct neurons as often as not
    twins = np.ascontiguousarray(np.stack([full, 0.8 * _stretched(full, 1.15)])[:, :, 10:14])
    assert not _tetrode_merged(twins, [unit, np.sort(np.r_[neuron[piece], strays])])


def test_on_a_tetrode_a_piece_whose_outer_half_expects_too_few_pairs_is_judged_beyond_the_double_fits():
    # mearec_tetrode seed 1: a 298-spike piece of a 1857-spike neuron at 0.31 of its size, footprints
    # 0.997, shapes 0.81; no pair in the refractory period, where its outer half expects 2.8 pairs
    # (too few for the test) and every lag beyond the double fits 3.7
    rng = np.random.default_rng(5)
    full = _unit(peak=40, center=12, width=3.0)
    tet, neuron, piece = _tetrode_piece(rng, full, scale=0.35, stretch=2.0, n_spikes=1850, fraction=0.17)
    assert _tetrode_merged(tet, [neuron[~piece], neuron[piece]])
    # a neuron of that footprint and size firing on its own shares the period as chance does
    other = np.sort(rng.integers(0, 9_600_000, size=int(piece.sum())))
    assert not _tetrode_merged(tet, [neuron[~piece], other])


def test_on_a_tetrode_two_units_of_one_size_merge_only_on_a_near_empty_refractory_period():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.footprint import footprint_cosine

    # mearec_tetrode seed 5: a neuron's 408-spike unit beside its 4616-spike one, 150 and 159 uV,
    # footprints 0.9997, shapes 0.85; 1 pair in the refractory period's outer half where 9.4 were
    # expected. Distinct neurons there agreed to 0.995-0.998 with 0.42-1.6 of chance
    rng = np.random.default_rng(17)
    full = _unit(peak=40, center=12, width=3.0)
    tet = np.ascontiguousarray(np.stack([full, 0.95 * _stretched(full, 1.3)])[:, :, 10:14])
    duration, refractory = 9_600_000, 48
    times = _split_neuron(rng, n_spikes=9000, max_isi=1800, fraction=0.1)
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, refractory=refractory, duration=duration)
    groups = footprint_merges(tet, tet, sizes, **kw, times=times)
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1]]
    # the same templates firing on their own stay two neurons
    other = [times[0], np.sort(rng.integers(0, duration, size=len(times[1])))]
    assert len(footprint_merges(tet, tet, sizes, **kw, times=other)) == 2
    # so does a footprint agreeing only as closely as distinct tetrode neurons' can (under 0.995)
    shifted = _unit(peak=40, center=13.0, width=3.0)
    loose = np.ascontiguousarray(np.stack([full, 0.95 * _stretched(shifted, 1.3)])[:, :, 10:14])
    cos, _ = footprint_cosine(np.ptp(loose[0], axis=0), np.ptp(loose[1], axis=0))
    assert 0.99 < cos < 0.995
    assert len(footprint_merges(loose, loose, sizes, **kw, times=times)) == 2


def test_two_slivers_of_one_unit_join_it_though_their_noisy_templates_differ_from_each_other():
    from spikesort.stages.merges import footprint_merges

    # mearec_sqmea seed 2: a 1201-spike unit and pieces of 25 and 30 spikes, each alike with it to
    # 0.90 (footprints 0.997), alike with each other to only 0.76: templates of so few spikes
    rng = np.random.default_rng(21)
    s = np.arange(60)
    w = -np.exp(-0.5 * ((s - 20) / 3) ** 2) + 0.3 * np.exp(-0.5 * ((s - 32) / 6) ** 2)
    q = np.sin(2 * np.pi * (s - 10) / 25) * np.exp(-0.5 * ((s - 25) / 8) ** 2)
    q -= (q @ w) / (w @ w) * w
    q *= np.sqrt(0.5 * (w @ w) / (q @ q))  # each piece 0.92 alike with the unit, 0.69 with the other
    space = 40 * np.exp(-0.5 * ((np.arange(16) - 7) / 3) ** 2)
    dense = np.stack([w[:, None] * space, (w + q)[:, None] * space, (w - q)[:, None] * space]).astype(np.float32)
    duration, refractory = 9_600_000, 48
    unit = np.cumsum(rng.integers(96, 9000, size=1200))
    times = [unit, np.sort(rng.integers(0, duration, size=30)), np.sort(rng.integers(0, duration, size=25))]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, refractory=refractory, duration=duration, times=times)
    groups = footprint_merges(dense, dense, sizes, **kw)
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1, 2]]
    # two units of a hundred spikes or more must agree with each other as well
    more = [unit[:800], np.sort(rng.integers(0, duration, size=120)), np.sort(rng.integers(0, duration, size=110))]
    kw["times"] = more
    groups = footprint_merges(dense, dense, np.array([len(t) for t in more]), **kw)
    assert len(groups) == 2


def _merge_only_on_ample_evidence(rng, dense, times, *, refractory: int, duration: int) -> None:
    """The two units of ``dense`` merge on their ``times``; two neighbours of those templates
    firing on their own stay apart, and so does the same gap on too little evidence (a tenth of
    the recording)."""
    from spikesort.stages.merges import footprint_merges

    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, refractory=refractory, duration=duration)
    assert len(footprint_merges(dense, dense, sizes, **kw, times=times)) == 1
    other = [times[0], np.sort(rng.integers(0, duration, size=len(times[1])))]
    assert len(footprint_merges(dense, dense, sizes, **kw, times=other)) == 2
    short = [t[t < duration // 10] for t in times]
    assert len(footprint_merges(dense, dense, sizes, **kw, times=short)) == 2


def test_double_fits_at_one_lag_are_left_out_of_the_refractory_count_but_independent_pairs_are_not():
    from spikesort.stages.merges.refractory import banded_refractory_ratio, outer_refractory_ratio

    rng = np.random.default_rng(12)
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 4000, size=4000))  # never two spikes within 3 ms
    piece = rng.random(len(neuron)) < 0.35
    # mearec_nn32 seed 2: 12 spikes of a unit fitted again by its piece 33-37 samples later
    doubles = neuron[~piece][::100] + rng.integers(33, 38, size=len(neuron[~piece][::100]))
    ta, tb = neuron[~piece], np.sort(np.r_[neuron[piece], doubles])
    plain, _ = outer_refractory_ratio(ta, tb, refractory=refractory, duration=duration)
    ratio, expected = banded_refractory_ratio(ta, tb, refractory=refractory, inner=24, duration=duration)
    assert plain > 0.4 and ratio < 0.1 and expected > 10
    # trains firing on their own keep every pair: no lag holds more than chance
    other = np.sort(rng.integers(0, duration, size=len(tb)))
    ratio, expected = banded_refractory_ratio(ta, other, refractory=refractory, inner=24, duration=duration)
    assert 0.6 < ratio < 1.5 and expected > 10


def test_the_independence_test_leaves_out_pairs_crowding_at_one_lag():
    from spikesort.stages.merges import fire_independently

    # mearec_tetrode_quiet seed 0: a neuron's 408-spike piece fitted again beside its unit's
    # spikes at a few fixed lags; those pairs beyond the double fits' lags made the two look
    # independent, and the piece stayed a false unit
    rng = np.random.default_rng(44)
    duration, refractory, double_fit = 9_600_000, 48, 16
    neuron = np.cumsum(rng.integers(96, 4000, size=4400))  # never two spikes within 3 ms
    piece = rng.random(len(neuron)) < 0.1
    ta = neuron[~piece]
    kw = dict(refractory=refractory, double_fit=double_fit, duration=duration)
    doubles = ta[rng.choice(len(ta), size=20, replace=False)] + rng.integers(35, 38, size=20)
    assert not fire_independently(ta, np.sort(np.r_[neuron[piece], doubles]), **kw)
    # as many pairs spread over the lags are a second neuron's spikes firing on its own
    spread = ta[rng.choice(len(ta), size=20, replace=False)] + rng.choice([-1, 1], 20) * rng.integers(17, 49, size=20)
    assert fire_independently(ta, np.sort(np.r_[neuron[piece], spread]), **kw)
    other = np.sort(rng.integers(0, duration, size=piece.sum() + 20))
    assert fire_independently(ta, other, **kw)


def test_double_fits_astride_the_inner_bound_are_left_out_whole():
    from spikesort.stages.merges.refractory import banded_refractory_ratio

    # mearec_nn32 seed 2: a neuron as a unit of 2757 spikes and one of 2309 at 0.44 of its size,
    # the smaller fitted again 19-29 samples after 19 of the larger's spikes: astride the inner
    # half's bound (24), the crowd's outer part alone was too thin to be found, and kept 11 pairs
    # in the count where chance gave 32 (0.35, no near-empty period); the neuron stayed two units
    rng = np.random.default_rng(31)
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(64, 3400, size=5000))  # never two spikes within 2 ms
    piece = rng.random(len(neuron)) < 0.45
    ta = neuron[~piece]
    doubles = ta[rng.choice(len(ta), size=24, replace=False)] + rng.integers(19, 30, size=24)
    tb = np.sort(np.r_[neuron[piece], doubles])
    ratio, expected = banded_refractory_ratio(ta, tb, refractory=refractory, inner=24, duration=duration)
    assert ratio < 0.2 and expected > 10
    # independent trains with the same crowd keep the rest of their pairs
    other = np.sort(np.r_[rng.integers(0, duration, size=len(tb) - len(doubles)), doubles])
    ratio, expected = banded_refractory_ratio(ta, other, refractory=refractory, inner=24, duration=duration)
    assert 0.6 < ratio < 1.5 and expected > 10


def test_a_bursting_neurons_piece_that_looks_less_alike_joins_only_on_ample_refractory_evidence():

    # mearec_nn32: pieces at a third of their neuron's size, footprints agreeing to 0.988 over 10
    # channels and shapes to 0.64-0.79, with a near-empty refractory period over thousands of spikes
    rng = np.random.default_rng(13)
    full = _unit(peak=40, center=12, width=3.0)
    piece_template = 0.35 * _stretched(_unit(peak=40, center=12.7, width=3.3), 2.5)  # 0.986, 0.67
    dense = np.stack([full, piece_template])
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 4000, size=4000))
    late = rng.random(len(neuron)) < 0.35
    doubles = neuron[~late][::100] + 35
    times = [neuron[~late], np.sort(np.r_[neuron[late], doubles])]
    _merge_only_on_ample_evidence(rng, dense, times, refractory=refractory, duration=duration)


def test_a_sliver_of_a_units_spikes_on_another_phase_joins_it_but_a_unit_firing_as_often_does_not():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.footprint import footprint_cosine

    # mearec_np64 seeds 1 and 2: 31 and 33 spikes (3.3 % and 1.6 % of their unit's) aligned 11-17
    # samples off, footprints agreeing to only 0.972-0.985 (few spikes), shapes to 0.92
    rng = np.random.default_rng(14)
    full = _unit(peak=40, center=12, width=3.0)
    sliver = 0.95 * np.roll(_unit(peak=40, center=12.9, width=3.0), 12, axis=0)
    dense = np.stack([full, sliver])
    cos, _ = footprint_cosine(np.ptp(full, axis=0), np.ptp(sliver, axis=0))
    assert 0.95 < cos < 0.98
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 9000, size=2000))
    few = rng.random(len(neuron)) < 0.02
    times = [neuron[~few], neuron[few] - 12]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, phase_lag=32, double_fit=16, refractory=refractory, duration=duration)
    groups = footprint_merges(dense, dense, sizes, **kw, times=times)
    assert len(groups) == 1 and dict(groups[0])[1] == 12
    # a unit that looks as alike but fires a tenth as often is not a sliver: it stays a unit
    tenth = [neuron[~few], np.sort(rng.integers(0, duration, size=len(neuron) // 10))]
    sizes = np.array([len(t) for t in tenth])
    assert len(footprint_merges(dense, dense, sizes, **kw, times=tenth)) == 2


def test_a_slivers_size_is_its_templates_projection_not_its_noisy_peak_to_peak():
    from spikesort.stages.merges import footprint_merges

    # mearec_np2 seed 0: 31 spikes of a 1106-spike neuron aligned 4 samples off, their template
    # 86 uV peak to peak against the neuron's 81 (a few dozen spikes' noise), 0.85 of it along it
    rng = np.random.default_rng(15)
    full = _unit(peak=40, center=12, width=3.0)
    noise = np.zeros_like(full)
    noise[44, 12] = 12.0  # a noisy sample on the peak channel, after the trough
    sliver = 0.85 * np.roll(_unit(peak=40, center=12.9, width=3.0), 12, axis=0) + noise
    assert np.ptp(sliver, axis=0).max() > np.ptp(full, axis=0).max()
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 9000, size=2000))
    few = rng.random(len(neuron)) < 0.02
    times = [neuron[~few], neuron[few] - 12]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, phase_lag=32, double_fit=16, refractory=refractory, duration=duration, times=times)
    assert len(footprint_merges(np.stack([full, sliver]), np.stack([full, sliver]), sizes, **kw)) == 1
    # a few spikes of a larger neuron of that shape (1.2 times along it) are no sliver of it
    larger = 1.2 * np.roll(_unit(peak=40, center=12.9, width=3.0), 12, axis=0) + noise
    assert len(footprint_merges(np.stack([full, larger]), np.stack([full, larger]), sizes, **kw)) == 2


def test_a_dense_piece_a_burst_stretched_past_its_units_shape_joins_on_a_deep_rare_gap_at_its_phase():
    from spikesort.stages.merges import footprint_merges

    # mearec_np2 seed 3: 611 spikes of a 3047-spike neuron at a third of its size, stretched so far
    # that its shape agrees only at a phase lag (0.32, 19 samples), footprints 0.992 over 12
    # channels; 1 pair in the refractory period's outer half where 9.3 were expected (p = 9e-4)
    rng = np.random.default_rng(16)
    full = _unit(peak=40, center=12, width=3.0)
    wide = 0.33 * np.roll(_stretched(_unit(peak=40, center=12.3, width=3.0), 3.0), 19, axis=0)
    dense = np.stack([full, wide])
    assert lagged_similarity(full, wide, max_lag=32)[0] < 0.6  # at no lag as alike as a piece must be
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 5100, size=3650))
    late = rng.random(len(neuron)) < 0.17
    stray = neuron[~late][1000] + 30  # one stray fit in the refractory period
    times = [neuron[~late], np.sort(np.r_[neuron[late], stray]) - 19]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, phase_lag=32, double_fit=16, refractory=refractory, duration=duration)
    groups = footprint_merges(dense, dense, sizes, **kw, times=times)
    assert len(groups) == 1 and abs(dict(groups[0])[1] - 19) <= 3  # joined on its own phase
    # a neighbour of those templates firing on its own, and one whose collisions the matching lost
    # (every second or every fourth pair kept: as thin as distinct neighbours were on crowded64)
    other = np.sort(rng.integers(0, duration, size=len(times[1])))
    close = np.searchsorted(times[0], other + refractory, "right") > np.searchsorted(times[0], other - refractory)
    for every in (1, 2, 4):
        lost = np.flatnonzero(close)[np.arange(close.sum()) % every != 0]
        thinned = np.delete(other, lost)
        assert len(footprint_merges(dense, dense, sizes, **kw, times=[times[0], thinned])) == 2, every


def test_a_stretched_piece_on_another_phase_is_judged_on_its_whole_period_once_aligned():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.refractory import STRONG_GAP_P, banded_refractory_ratio, gap_probability

    # mearec_nn32 seed 22: a burst's 504-spike piece of a 2622-spike neuron at 0.45 of its size,
    # footprints 0.994 over 6 channels, aligned 10 samples off; no pair in the refractory period's
    # outer half where 6.6 were expected (p = 0.0014), none in the whole period beyond the double
    # fits once aligned, where 8.8 were
    rng = np.random.default_rng(31)
    full = _unit(peak=40, center=12, width=1.0)  # 5 of 32 channels: a narrow footprint
    wide = 0.45 * np.roll(_stretched(full, 3.0), 10, axis=0)
    dense = np.stack([full, wide])
    assert lagged_similarity(full, wide, max_lag=3)[0] < 0.6  # no piece's shape within max_lag
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 5100, size=3600))
    late = rng.random(len(neuron)) < 0.11
    times = [neuron[~late], neuron[late] - 10]
    ratio, expected = banded_refractory_ratio(*times, refractory=refractory, inner=24, duration=duration)
    assert ratio == 0 and gap_probability(ratio, expected) > STRONG_GAP_P  # the outer half says too little
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, phase_lag=32, double_fit=16, refractory=refractory, duration=duration)
    groups = footprint_merges(dense, dense, sizes, **kw, times=times)
    assert len(groups) == 1 and abs(dict(groups[0])[1] - 10) <= 3  # joined on its own phase
    # a neighbour firing on its own, its collisions kept, or thinned to a half or a quarter
    other = np.sort(rng.integers(0, duration, size=len(times[1])))
    # pairs near a spike of the unit, aligned at the piece's lag or not
    close = np.searchsorted(times[0], other + refractory, "right") > np.searchsorted(times[0], other - 10 - refractory)
    for every in (1, 2, 4):
        thinned = np.delete(other, np.flatnonzero(close)[np.arange(close.sum()) % every != 0])
        assert len(footprint_merges(dense, dense, sizes, **kw, times=[times[0], thinned])) == 2, every


def test_a_narrow_piece_alike_in_shape_joins_on_the_deep_rare_gap_a_stretched_one_joins_on():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.footprint import footprint_cosine
    from spikesort.stages.merges.refractory import STRONG_GAP_P, banded_refractory_ratio, gap_probability

    # mearec_sqmea30 seed 0: 412 spikes of a 3507-spike neuron at half its size, footprints 0.9905
    # over 7 of 25 channels, shapes 0.70 (more alike than a stretched piece's, less than a piece's
    # must be without ample evidence); no pair beyond the double fits where 8.5 were expected
    rng = np.random.default_rng(32)
    full = _unit(peak=40, center=12, width=1.0)  # 5 of 32 channels: a narrow footprint
    half = 0.5 * _stretched(_unit(peak=40, center=12.15, width=1.0), 2.2)
    dense = np.stack([full, half])
    cos, _ = footprint_cosine(np.ptp(full, axis=0), np.ptp(half, axis=0))
    assert 0.99 <= cos < 0.999 and 0.6 < lagged_similarity(full, half, max_lag=3)[0] < 0.8
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 5100, size=3500))
    late = rng.random(len(neuron)) < 0.12
    times = [neuron[~late], neuron[late]]
    ratio, expected = banded_refractory_ratio(*times, refractory=refractory, inner=24, duration=duration)
    assert ratio == 0 and expected < 10 and gap_probability(ratio, expected) > STRONG_GAP_P
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, phase_lag=32, double_fit=16, refractory=refractory, duration=duration)
    assert len(footprint_merges(dense, dense, sizes, **kw, times=times)) == 1
    # a neighbour of that template firing on its own, its collisions kept, or thinned to a half or
    # a quarter (as the matching thins distinct neighbours' pairs)
    other = np.sort(rng.integers(0, duration, size=len(times[1])))
    close = np.searchsorted(times[0], other + refractory, "right") > np.searchsorted(times[0], other - refractory)
    for every in (1, 2, 4):
        thinned = np.delete(other, np.flatnonzero(close)[np.arange(close.sum()) % every != 0])
        assert len(footprint_merges(dense, dense, sizes, **kw, times=[times[0], thinned])) == 2, every


def test_on_a_long_probe_a_narrow_footprint_at_two_sizes_merges_only_on_ample_refractory_evidence():

    # mearec_nn32 seed 2: a bursting neuron at two sizes whose footprint spans 5 of 32 channels,
    # 3 pairs in the refractory period's outer half where 31.6 were expected
    rng = np.random.default_rng(8)
    full = _unit(peak=40, center=12, width=1.0)  # 5 channels above a tenth of the peak
    dense = np.stack([full, 0.4 * full])
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 4000, size=4000))
    small = rng.random(len(neuron)) < 0.4
    times = [neuron[~small], neuron[small]]
    _merge_only_on_ample_evidence(rng, dense, times, refractory=refractory, duration=duration)


def test_on_a_long_probe_a_narrow_piece_whose_footprint_a_burst_blurred_joins_on_ample_evidence():
    from spikesort.stages.merges.footprint import footprint_cosine

    # mearec_nn32_crowded seed 7: a neuron's 2572 shrunken spikes (0.46 of its size) beside its
    # 3139-spike unit, footprints 0.983-0.985 over a few of 32 channels, 0.054 of chance's pairs
    # (37 expected) once the lags where pairs crowd are left out
    rng = np.random.default_rng(31)
    full = _unit(peak=40, center=12, width=1.0)
    piece = 0.46 * _stretched(_unit(peak=40, center=12.25, width=1.0), 1.5)
    cos, n_ch = footprint_cosine(np.ptp(full, axis=0), np.ptp(piece, axis=0))
    assert 0.98 < cos < 0.99 and n_ch < 8
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 3000, size=5500))
    small = rng.random(len(neuron)) < 0.45
    times = [neuron[~small], neuron[small]]
    _merge_only_on_ample_evidence(rng, np.stack([full, piece]), times, refractory=refractory, duration=duration)


def test_on_a_long_probe_a_piece_whose_footprint_is_its_unit_s_joins_on_a_gap_stray_fits_thinned():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.footprint import footprint_cosine
    from spikesort.stages.merges.refractory import banded_refractory_ratio

    # mearec_nn32_long seed 1: a bursting neuron's 2009 shrunken spikes beside its 5633-spike unit,
    # footprints 1.000, shapes 0.90; stray fits left 0.32 of chance's pairs (28 expected)
    rng = np.random.default_rng(22)
    full = _unit(peak=40, center=12, width=1.0)  # 5 of 32 channels: a narrow footprint
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 3000, size=5500))
    small = rng.random(len(neuron)) < 0.3
    stray = np.sort(rng.integers(0, duration, size=int(0.3 * small.sum())))
    times = [neuron[~small], np.sort(np.r_[neuron[small], stray])]
    ratio, expected = banded_refractory_ratio(*times, refractory=refractory, inner=16, duration=duration)
    assert 0.2 < ratio < 0.4 and expected > 10
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, refractory=refractory, duration=duration, times=times)
    piece = 0.63 * _stretched(full, 1.15)
    assert lagged_similarity(full, piece, max_lag=3)[0] > 0.8
    assert len(footprint_merges(np.stack([full, piece]), np.stack([full, piece]), sizes, **kw)) == 1
    # a neighbour's footprint, a little off, needs the near-empty period that gap is not
    off = 0.63 * _unit(peak=40, center=12.15, width=1.0)  # 0.994, as close as two neurons came
    cos, _ = footprint_cosine(np.ptp(full, axis=0), np.ptp(off, axis=0))
    assert 0.98 < cos < 0.999
    assert len(footprint_merges(np.stack([full, off]), np.stack([full, off]), sizes, **kw)) == 2


def _tetrode_and_wide_piece(scale: float) -> np.ndarray:
    """A tetrode neuron (``_unit`` on channels 10-13) and a piece of it at ``scale`` of its size
    that a burst widened threefold: footprints alike, shapes not."""
    full = _unit(peak=40, center=12, width=3.0)
    wide = scale * _stretched(_unit(peak=40, center=12.4, width=3.0), 3.0)
    return np.ascontiguousarray(np.stack([full, wide])[:, :, 10:14])


def test_on_a_tetrode_a_piece_of_another_shape_joins_on_ample_refractory_evidence():
    from spikesort.stages.merges.footprint import footprint_cosine
    from spikesort.stages.merges.templates import lagged_similarity

    # mearec_tetrode seed 4: a bursting neuron as two units of ~3100 spikes, 87 and 196 uV,
    # footprints agreeing to 0.993 and shapes to only 0.40; no pair in the refractory period's
    # outer half where 48 were expected (distinct tetrode neurons: at least 0.47 of chance)
    rng = np.random.default_rng(14)
    tet = _tetrode_and_wide_piece(0.45)
    cos, _ = footprint_cosine(np.ptp(tet[0], axis=0), np.ptp(tet[1], axis=0))
    s, _ = lagged_similarity(tet[0], tet[1], max_lag=3)
    assert cos > 0.95 and s < 0.7
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 3000, size=6200))
    late = rng.random(len(neuron)) < 0.5
    times = [neuron[~late], neuron[late]]
    _merge_only_on_ample_evidence(rng, tet, times, refractory=refractory, duration=duration)


def _echo_stays_apart_own_piece_joins(dense: np.ndarray, *, seed: int) -> None:
    """Of the two units of ``dense``, fits 2 ms after 70 % of the larger's 5000 spikes (its echo,
    past the 1.5 ms refractory period, which it leaves empty) stay apart; a random 40 % of its own
    spikes, with the same empty period and no echo, still join."""
    from spikesort.stages.merges import footprint_merges

    rng = np.random.default_rng(seed)
    kw = dict(max_lag=3, refractory=48, duration=9_600_000, burst_lags=(96, 960))

    def n_groups(times):
        return len(footprint_merges(dense, dense, np.array([len(t) for t in times]), **kw, times=times))

    unit = np.cumsum(rng.integers(160, 3000, size=5000))
    echo = unit[rng.random(len(unit)) < 0.7] + 64
    assert n_groups([unit, echo]) == 2
    late = rng.random(len(unit)) < 0.4
    assert n_groups([unit[~late], unit[late]]) == 1


def test_on_a_tetrode_a_piece_of_another_shape_that_is_its_unit_s_echo_stays_apart():
    # mearec_tetrode_quiet seed 2: 1107 fits, 93 % of them 1.2-2.8 ms after one of a neuron's 1458
    # spikes (its waveform's tail), footprints alike, shapes not; the refractory period held no
    # pair, the echo lying just beyond it, and the ample evidence joined them: the neuron's unit
    # at 0.57 accuracy instead of 0.98
    _echo_stays_apart_own_piece_joins(_tetrode_and_wide_piece(0.45), seed=14)


def test_on_a_dense_probe_a_piece_whose_footprint_is_its_unit_s_stays_apart_when_it_is_the_echo():
    from spikesort.stages.merges.templates import lagged_similarity

    # a dense piece whose footprint is its unit's joins on a near-empty period, but fits to the
    # unit's waveform tail leave that period empty too: the echo must stay apart (on
    # mearec_nn32_white seed 0 two such echoes had joined their neurons' units)
    full = _unit(peak=40, center=12, width=3.0)
    dense = np.stack([full, 0.5 * _stretched(full, 2.5)])  # the tail's fits: smaller, wider
    assert 0.6 < lagged_similarity(dense[0], dense[1], max_lag=3)[0] < 0.8
    _echo_stays_apart_own_piece_joins(dense, seed=3)


def test_on_a_tetrode_a_piece_of_another_shape_joins_on_a_gap_too_deep_for_two_neurons():
    from spikesort.stages.merges import footprint_merges

    # mearec_tetrode_bursts seed 4: 582 spikes of a 2810-spike unit at 0.54 of its size, footprints
    # 0.9925, shapes 0.46 (stretched in bursts); no pair in the refractory period's outer half where
    # chance gives 8.2 (p = 3e-4), short of the ample evidence's 10 pairs
    rng = np.random.default_rng(21)
    tet = _tetrode_and_wide_piece(0.54)
    duration, refractory = 9_600_000, 48
    times = _split_neuron(rng, n_spikes=3400, max_isi=5500, fraction=0.17)
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, refractory=refractory, duration=duration)
    assert len(footprint_merges(tet, tet, sizes, **kw, times=times)) == 1
    # two neurons whose collisions the matching lost: at 0.47 of chance's pairs (the thinnest
    # between distinct neurons on MEArec tetrodes) the gap is no deeper than chance leaves
    other = np.sort(rng.integers(0, duration, size=len(times[1])))
    close = np.searchsorted(times[0], other + refractory, "right") > np.searchsorted(times[0], other - refractory)
    lost = close & (rng.random(len(other)) < 0.53)
    assert len(footprint_merges(tet, tet, sizes, **kw, times=[times[0], other[~lost]])) == 2


def test_on_a_tetrode_a_piece_of_another_shape_joins_on_an_empty_period_rare_for_two_neurons():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.evidence import CLOSE_GAP_P
    from spikesort.stages.merges.footprint import footprint_cosine
    from spikesort.stages.merges.refractory import STRONG_GAP_P, banded_refractory_ratio, gap_probability

    # mearec_tetrode_cells2 seed 3: 353 spikes of a 3200-spike unit at 0.66 of its size, footprints
    # 0.9975, shapes 0.69; no pair where chance gives 5.6 (p = 0.004): rarer than any distinct pair
    # of 57 tetrode recordings left, but short of STRONG_GAP_P
    tet = _tetrode_and_wide_piece(0.6)
    assert footprint_cosine(np.ptp(tet[0], axis=0), np.ptp(tet[1], axis=0))[0] >= 0.99
    duration, refractory = 9_600_000, 48
    rng = np.random.default_rng(4)
    times = _split_neuron(rng, n_spikes=3300, max_isi=5500, fraction=0.11)
    ratio, expected = banded_refractory_ratio(times[0], times[1], refractory=refractory, inner=24, duration=duration)
    assert ratio == 0 and STRONG_GAP_P < gap_probability(ratio, expected) < CLOSE_GAP_P
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, refractory=refractory, duration=duration)
    assert len(footprint_merges(tet, tet, sizes, **kw, times=times)) == 1
    # a few pairs (over a fifth of chance's) as rare are no gap: two neurons the matching thinned
    other = np.sort(rng.integers(0, duration, size=len(times[1]) * 2))
    close = np.searchsorted(times[0], other + refractory, "right") > np.searchsorted(times[0], other - refractory)
    thinned = other[~(close & (rng.random(len(other)) < 0.75))]
    ratio, expected = banded_refractory_ratio(times[0], thinned, refractory=refractory, inner=24, duration=duration)
    assert ratio >= 0.2 and gap_probability(ratio, expected) < CLOSE_GAP_P
    sizes = np.array([len(times[0]), len(thinned)])
    assert len(footprint_merges(tet, tet, sizes, **kw, times=[times[0], thinned])) == 2


def test_on_a_tetrode_a_neurons_rare_spikes_on_another_phase_join_it_on_ample_evidence_whatever_their_shape():
    from spikesort.stages.merges import fire_independently, footprint_merges
    from spikesort.stages.merges.evidence import ample_gap
    from spikesort.stages.merges.footprint import footprint_cosine
    from spikesort.stages.merges.refractory import banded_refractory_ratio, outer_refractory_ratio
    from spikesort.stages.merges.templates import lagged_similarity

    # mearec_tetrode_cells2 seed 3: 663 of a bursting neuron's spikes, shrunk to 0.27 of its unit's
    # size and changed, caught 26 samples before their trough: footprints 0.993, shapes 0.29 at the
    # best lag; once aligned at it, no pair in the refractory period where 14.1 were expected
    # (unaligned, a few pairs where 10.6 were: no gap)
    rng = np.random.default_rng(4)
    full = _unit(peak=40, center=12, width=3.0)
    early = 0.3 * np.roll(_stretched(full, 3.5), 26, axis=0)  # its window starts 26 samples early
    tet = np.ascontiguousarray(np.stack([full, early])[:, :, 10:14])
    cos, _ = footprint_cosine(np.ptp(tet[0], axis=0), np.ptp(tet[1], axis=0))
    s, shift = lagged_similarity(tet[0], tet[1], max_lag=32)
    assert cos >= 0.99 and s < 0.6 and shift < -20  # its spikes sit -shift samples early
    # bursts: a quarter of the intervals 1.6-3.7 ms
    isi = np.where(rng.random(3500) < 0.25, rng.integers(51, 120, 3500), rng.integers(120, 7000, 3500))
    neuron = np.cumsum(isi)
    piece = rng.random(len(neuron)) < 0.17
    trains = dict(refractory=48, duration=9_600_000, double_fit=16)
    kw = dict(max_lag=3, phase_lag=32, **trains)
    unit, early_times = neuron[~piece], neuron[piece] + shift
    unaligned = banded_refractory_ratio(unit, early_times, refractory=48, inner=24, duration=trains["duration"])
    aligned = outer_refractory_ratio(unit, early_times - shift, refractory=48, duration=trains["duration"], inner=16)
    assert not ample_gap(*unaligned, compact=True) and aligned[0] == 0 and aligned[1] >= 10

    def merged(times):
        def independent(i, j):
            return fire_independently(times[i], times[j], **trains)

        sizes = np.array([len(t) for t in times])
        return len(footprint_merges(tet, tet, sizes, **kw, times=times, independent=independent)) == 1

    assert merged([unit, early_times])
    # the same templates firing on their own stay two neurons
    assert not merged([unit, np.sort(rng.integers(0, trains["duration"], size=len(early_times)))])
    # and so do a neuron's rare spikes with too few pairs expected to say (a third as many spikes)
    assert not merged([unit, early_times[rng.random(len(early_times)) < 0.33]])


def test_on_a_tetrode_a_looser_footprint_needs_a_closer_shape_even_when_the_trains_show_a_gap():
    from spikesort.stages.merges import footprint_merges

    # a gap in the cross-correlogram happens by chance between two neurons on a short recording
    # (3 units x 20 s: 2 pairs where 6 were expected); the footprint and shape must then say it
    rng = np.random.default_rng(0)
    full = _unit(peak=40, center=12, width=3.0)
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 4300, size=4400))
    piece = rng.random(len(neuron)) < 0.1
    times = [neuron[~piece], neuron[piece]]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, times=times, refractory=refractory, duration=duration)
    for stretch, merged in ((1.5, True), (2.1, False)):
        # footprint cosine 0.974 on the four channels; shapes alike to 0.89, then to 0.74
        other = 0.3 * _stretched(_unit(peak=40, center=14, width=3.0), stretch)
        tet = np.ascontiguousarray(np.stack([full, other])[:, :, 10:14])
        assert (len(footprint_merges(tet, tet, sizes, **kw)) == 1) is merged, stretch


def _on_two_phases(rng, *, n_spikes: int, max_isi: int):
    """A unit's template and the same spikes aligned 10 samples later (a 300 s recording at
    32 kHz, 1.5 ms refractory period), and one neuron's train: never two spikes within 3 ms."""
    full = _unit(peak=40, center=12, width=3.0)
    neuron = np.cumsum(rng.integers(96, max_isi, size=n_spikes))
    return np.stack([full, np.roll(full, 10, axis=0)]), neuron, 9_600_000, 48


def test_a_piece_aligned_on_another_phase_merges_when_the_spike_trains_allow():
    from spikesort.stages.merges import footprint_merges

    rng = np.random.default_rng(3)
    dense, neuron, duration, refractory = _on_two_phases(rng, n_spikes=3000, max_isi=2000)
    kw = dict(max_lag=3, times=None, refractory=refractory, duration=duration)
    # a small piece of the neuron's own spikes (3 % of them): absorbed at the larger lag only
    piece = rng.random(len(neuron)) < 0.03
    times = [neuron[~piece], neuron[piece] - 10]  # its peak 10 samples after its alignment
    sizes = np.array([len(t) for t in times])
    assert len(footprint_merges(dense, dense, sizes, **{**kw, "times": times})) == 2
    groups = footprint_merges(dense, dense, sizes, **{**kw, "times": times, "phase_lag": 16})
    assert len(groups) == 1 and dict(groups[0])[1] == 10  # its spikes move onto the unit's alignment
    # the same shapes firing on their own, with enough spikes to show it, stay apart
    other = [neuron, np.sort(rng.integers(0, duration, size=1500))]
    sizes = np.array([len(t) for t in other])
    assert len(footprint_merges(dense, dense, sizes, **{**kw, "times": other, "phase_lag": 16})) == 2


def test_a_phase_piece_with_few_outer_half_pairs_expected_uses_the_window_beyond_double_fits():
    from spikesort.stages.merges import footprint_merges

    # mearec_np64: a biphasic neuron as a unit and a piece (28 %) aligned on its other phase; the
    # refractory period's outer half expected 2.9 pairs (too few to test), the window beyond the
    # double fits' jitter 3.8 (observed 0)
    rng = np.random.default_rng(5)
    dense, neuron, duration, refractory = _on_two_phases(rng, n_spikes=1780, max_isi=10_000)
    piece = rng.random(len(neuron)) < 0.21
    times = [neuron[~piece], neuron[piece] - 10]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, phase_lag=16, refractory=refractory, duration=duration)
    # the outer half alone expects too few pairs for the refractory test; the shapes, alike as one
    # neuron's, and no pair at all join them even so
    assert len(footprint_merges(dense, dense, sizes, **kw, times=times)) == 1
    assert len(footprint_merges(dense, dense, sizes, **kw, times=times, double_fit=16)) == 1
    # the same shapes firing on their own stay apart with the wider window too
    other = [times[0], np.sort(rng.integers(0, duration, size=len(times[1])))]
    assert len(footprint_merges(dense, dense, sizes, **kw, times=other, double_fit=16)) == 2


def test_a_large_neurons_double_fits_beside_another_neuron_are_no_phase_piece_of_it():
    from spikesort.stages.merges import footprint_merges, independence_test

    # static64 seed 3: beside a 309 uV neuron's unit (2337 spikes), a unit of 1885 held 929 of its
    # spikes fitted again 8-11 samples later and two other neurons' spikes. Its template was the
    # neuron's on another phase (0.966 at a lag of 10, footprints 0.994); the double fits, at the
    # lag that aligns the two, and the collisions the matching lost left the refractory period at
    # 0.24 of chance, and the footprint merge joined it: the other neurons were lost
    rng = np.random.default_rng(3)
    duration, refractory, double_fit = 9_000_000, 45, 15
    big = _unit(peak=40, center=12, width=3.0)
    dense = np.stack([big, 0.6 * np.roll(big, -10, axis=0)])
    neuron = _dead_time_train(rng, 8, duration, dead=90)
    twice = np.sort(rng.choice(neuron, 900, replace=False)) + rng.integers(8, 12, 900)
    other = _dead_time_train(rng, 3.2, duration, dead=90)
    at = np.clip(np.searchsorted(neuron, other), 1, len(neuron) - 1)
    collides = np.minimum(np.abs(other - neuron[at - 1]), np.abs(other - neuron[at])) <= refractory
    other = other[~collides | (rng.random(len(other)) < 0.25)]
    kw = dict(max_lag=3, phase_lag=30, refractory=refractory, duration=duration, double_fit=double_fit)

    def groups(times):
        spikes = _spikes(*times)
        independent = independence_test(
            spikes, refractory=refractory, double_fit=double_fit, duration=duration, rate_bin=300_000
        )
        return footprint_merges(
            dense, dense, np.array([len(t) for t in times]), times=times, independent=independent, **kw
        )

    assert len(groups([neuron, np.sort(np.r_[twice, other])])) == 2
    # the neuron's own spikes on that phase, a few of the unit's fitted twice among them, still join
    piece = rng.random(len(neuron)) < 0.3
    few = np.sort(rng.choice(neuron[~piece], 60, replace=False)) + 10
    assert len(groups([neuron[~piece], np.sort(np.r_[neuron[piece] + 10, few])])) == 1


def test_on_a_tetrode_one_neuron_on_two_alignments_merges_when_the_spike_trains_show_one_neuron():
    from spikesort.stages.merges import footprint_merges

    # mearec_tetrode seed 1: a bursting neuron's unit and a 248-spike unit of its spikes aligned
    # a few samples later; every tetrode neuron has about the same footprint, so only the trains tell
    rng = np.random.default_rng(7)
    full = _unit(peak=40, center=12, width=3.0)
    tet = np.ascontiguousarray(np.stack([full, np.roll(full, 8, axis=0)])[:, :, 10:14])
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 4000, size=4000))
    piece = rng.random(len(neuron)) < 0.3
    times = [neuron[~piece], neuron[piece] - 8]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, phase_lag=16, double_fit=16, refractory=refractory, duration=duration)
    groups = footprint_merges(tet, tet, sizes, **kw, times=times)
    assert len(groups) == 1 and dict(groups[0])[1] == 8
    # two neurons of that shape firing on their own stay apart, and so does the pair without a phase lag
    other = [times[0], np.sort(rng.integers(0, duration, size=len(times[1])))]
    assert len(footprint_merges(tet, tet, sizes, **kw, times=other)) == 2
    assert len(footprint_merges(tet, tet, sizes, **{**kw, "phase_lag": 0}, times=times)) == 2


def test_a_unit_made_of_the_other_units_spikes_fitted_twice_is_not_merged_as_a_piece():
    from spikesort.stages.merges import footprint_merges

    # long128: a weak template fitted to what the subtraction of a large unit's spikes left 10
    # samples later, besides the spikes of a small neuron of its own; rebuilt from those spikes it
    # looks like the large unit on another phase
    rng = np.random.default_rng(4)
    dense, neuron, duration, refractory = _on_two_phases(rng, n_spikes=3000, max_isi=2000)
    other = np.sort(rng.integers(0, duration, size=600))  # the small neuron's own spikes
    kw = dict(max_lag=3, phase_lag=16, refractory=refractory, duration=duration)
    residue = np.sort(np.r_[neuron[rng.random(len(neuron)) < 0.8] - 10, other])
    times = [neuron, residue]
    sizes = np.array([len(t) for t in times])
    assert len(footprint_merges(dense, dense, sizes, **kw, times=times)) == 2
    # the same unit without the double fits is a piece of its own events, and joins
    piece = rng.random(len(neuron)) < 0.05
    times = [neuron[~piece], neuron[piece] - 10]
    sizes = np.array([len(t) for t in times])
    assert len(footprint_merges(dense, dense, sizes, **kw, times=times)) == 1


def test_a_spike_fitted_twice_by_two_pieces_keeps_its_larger_fit():
    from spikesort.stages.merges import drop_refractory_doubles

    times = np.array([100, 118, 500, 520, 5000, 5010])
    units = np.array([0, 0, 0, 0, 1, 1])
    gains = np.array([9.0, 2.0, 1.0, 8.0, 5.0, 6.0], np.float32)
    spikes = MatchedSpikes(times, units, np.ones(6, np.float32), gains)
    out = drop_refractory_doubles(spikes, units=np.array([0]), refractory=45)
    # unit 0 (merged) keeps the larger of each close pair; unit 1 was not merged and is untouched
    assert out.times.tolist() == [100, 520, 5000, 5010]


def test_a_small_unit_made_of_two_units_firing_together_or_of_one_unit_delayed_goes_back_to_them():
    from spikesort.stages.curate import composite_units

    # mearec_np64 seeds 1 and 2: units of 31-77 spikes, labelled good, whose templates were the
    # sum of two neighbours' (synchronous spikes) or a neighbour's on another alignment
    rng = np.random.default_rng(6)
    a, b = _unit(peak=40, center=9, width=3.0), _unit(peak=30, center=13, width=3.0)
    far = _unit(peak=30, center=25, width=3.0)
    summed = a + np.roll(b, 6, axis=0)  # b's spike 6 samples after a's
    dense = np.stack([a, b, summed, np.roll(a, 5, axis=0), far])
    n_samples = 10_000_000
    # distinct points 100 samples apart: no two units' spikes meet by chance
    grid = 100 * (1 + rng.choice(n_samples // 100 - 2, size=5630, replace=False))
    times = [np.sort(part) for part in np.split(grid, np.cumsum([3000, 2500, 40, 50]))]
    times[3][0] = times[0][7] - 5  # a spike of a's fitted twice: it lands on a's own spike
    units = np.concatenate([np.full(len(t), i) for i, t in enumerate(times)])
    all_times = np.concatenate(times)
    order = np.argsort(all_times, kind="stable")
    n = len(all_times)
    spikes = MatchedSpikes(all_times[order], units[order], np.ones(n, np.float32), np.ones(n, np.float32))
    kw = dict(max_lag=30, positions_um=np.c_[np.zeros(32), 20.0 * np.arange(32)], refractory=45, duration=n_samples)
    out = composite_units(spikes, dense, amplitude_range=(0.5, 2.0), **kw)
    counts = np.bincount(out.templates, minlength=5)
    assert counts[2] == 0 and counts[3] == 0  # both dissolved
    assert counts[4] == 40  # a small unit far from both stays
    assert counts[0] == 3000 + 40 + 49 and counts[1] == 2500 + 40  # the double fit is not added
    got_b = set(out.times[out.templates == 1].tolist())
    assert {t + 6 for t in times[2].tolist()} <= got_b  # at the delay of b's spike in the sum
    assert np.all(np.diff(out.times) >= 0)
    # the same units with more spikes than a tenth of their neighbours' are left alone
    many = [times[0][:300], times[1][:250], times[2], times[3], times[4]]
    units = np.concatenate([np.full(len(t), i) for i, t in enumerate(many)])
    t = np.concatenate(many)
    n = len(t)
    spikes = MatchedSpikes(t, units, np.ones(n, np.float32), np.ones(n, np.float32))
    out = composite_units(spikes, dense, amplitude_range=(0.5, 2.0), **kw)
    assert np.array_equal(np.bincount(out.templates, minlength=5), [300, 250, 40, 50, 40])


def test_a_collision_with_a_neuron_s_smaller_spikes_goes_back_to_a_unit_that_holds_them():
    from spikesort.stages.curate import composite_units

    # mearec_nn32_white seed 2: 66 fits where two neurons collide, their template the sum of the
    # first's at 1.07 and the second's at 0.475; the second's unit held its burst spikes at 0.44
    # of its size (a piece merged into it), so 0.475 is a size its own spikes have
    rng = np.random.default_rng(8)
    a, b = _unit(peak=40, center=9, width=3.0), _unit(peak=60, center=11, width=3.0)
    dense = np.stack([a, b, a + 0.47 * np.roll(b, 6, axis=0)])  # neither alone explains it
    n_samples = 10_000_000
    grid = 100 * (1 + rng.choice(n_samples // 100 - 2, size=5540, replace=False))
    times = np.split(grid, [3000, 5500])
    units = np.concatenate([np.full(len(t), i) for i, t in enumerate(times)])
    norms = np.sqrt((dense.astype(np.float64) ** 2).sum(axis=(1, 2)))

    def dissolved(b_scales: np.ndarray) -> bool:
        scales = np.concatenate([np.ones(3000), b_scales, np.ones(40)])
        gains = (scales * norms[units]) ** 2  # the energy each spike's fit explains
        t = np.concatenate(times)
        order = np.argsort(t, kind="stable")
        spikes = MatchedSpikes(t[order], units[order], np.ones(len(t), np.float32), gains[order].astype(np.float32))
        kw = dict(max_lag=30, positions_um=np.c_[np.zeros(32), 20.0 * np.arange(32)], refractory=45, duration=n_samples)
        out = composite_units(spikes, dense, amplitude_range=(0.5, 2.0), **kw)
        return np.bincount(out.templates, minlength=3)[2] == 0

    burst = rng.random(2500) < 0.4
    assert dissolved(np.where(burst, rng.normal(0.44, 0.03, 2500), rng.normal(1.0, 0.08, 2500)))
    # a unit whose spikes all came at its own size asks the matching's range (0.5 or more)
    assert not dissolved(rng.normal(1.0, 0.08, 2500))


def test_an_echo_locked_to_a_large_unit_is_dropped_but_a_neighbour_is_not():
    from spikesort.stages.curate import residue_spikes

    rng = np.random.default_rng(5)
    dur = 30000 * 300
    big, small = _unit(peak=40, center=12), _unit(peak=6, center=13)
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    tb = _poisson_times(rng, 8, dur)
    # 70 % of the echo's spikes come 2.2 ms before the big unit's, wandering by ±0.5 ms; the rest
    # are noise detections anywhere
    locked = np.sort(rng.choice(tb, 700, replace=False)) - 66 + rng.integers(-15, 16, 700)
    echo = np.sort(np.concatenate([locked, rng.integers(100, dur - 100, 300)]))
    own = _poisson_times(rng, 4, dur)  # an independent neighbour
    spikes = _spikes(tb, echo, own)
    drop = residue_spikes(spikes, np.stack([big, small, small]), window=105, positions_um=positions)
    assert drop[spikes.templates == 1].all()
    assert not drop[spikes.templates == 0].any()
    assert drop[spikes.templates == 2].mean() < 0.05


def test_an_echo_of_two_large_units_is_dropped_but_a_neighbour_is_not():
    from spikesort.stages.curate import residue_spikes

    rng = np.random.default_rng(6)
    dur = 30000 * 300
    big1, big2, small = _unit(peak=40, center=12), _unit(peak=36, center=12.5), _unit(peak=6, center=13)
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    t1, t2 = _poisson_times(rng, 4, dur), _poisson_times(rng, 4, dur)
    # 32 % of the echo's spikes come 2.2 ms after the first big unit's, 32 % 2.3 ms before the
    # second's (wandering by ±0.5 ms), the rest anywhere (mearec_tetrode seed 90): under half with
    # either, two thirds with the two
    a = np.sort(rng.choice(t1, 320, replace=False)) + 66 + rng.integers(-15, 16, 320)
    b = np.sort(rng.choice(t2, 320, replace=False)) - 70 + rng.integers(-15, 16, 320)
    echo = np.sort(np.concatenate([a, b, rng.integers(100, dur - 100, 360)]))
    own = _poisson_times(rng, 4, dur)  # an independent neighbour
    spikes = _spikes(t1, t2, echo, own)
    dense = np.stack([big1, big2, small, small])
    drop = residue_spikes(spikes, dense, window=105, positions_um=positions)
    assert drop[spikes.templates == 2].all()
    assert not drop[np.isin(spikes.templates, [0, 1])].any()
    assert drop[spikes.templates == 3].mean() < 0.05
    # locked to only one of them: a third of its spikes are that unit's echoes, the rest its own
    half = _spikes(t1, t2, np.sort(np.concatenate([a, rng.integers(100, dur - 100, 680)])))
    drop = residue_spikes(half, dense[:3], window=105, positions_um=positions)
    assert drop[half.templates == 2].mean() < 0.5


def test_a_unit_of_collision_leftovers_is_dropped_but_a_small_neighbour_is_not():
    from spikesort.stages.curate import collision_units

    rng = np.random.default_rng(7)
    dur = 30000 * 300
    big1, big2, small = _unit(peak=40, center=12), _unit(peak=30, center=15), _unit(peak=6, center=13)
    positions = np.stack([np.zeros(32), 20.0 * np.arange(32)], axis=1)
    t1, t2 = _poisson_times(rng, 20, dur), _poisson_times(rng, 20, dur)
    # 80 leftovers, each near one of the two big units' spikes at a lag wandering by ±3 ms: no
    # single pair is locked tightly or often enough for the echo test
    near = np.concatenate([rng.choice(t1, 40, replace=False), rng.choice(t2, 40, replace=False)])
    leftovers = np.sort(near + rng.integers(-90, 91, len(near)))
    own = _poisson_times(rng, 2, dur)  # a small neuron of its own: alone as often as chance allows
    spikes = _spikes(t1, t2, leftovers, own)
    dense = np.stack([big1, big2, small, small])
    drop = collision_units(spikes, dense, window=105, positions_um=positions)
    assert drop[spikes.templates == 2].all()
    assert not drop[np.isin(spikes.templates, [0, 1, 3])].any()
    # neighbours so busy that hardly a spike could be alone: nothing is judged
    busy = _spikes(np.sort(rng.integers(100, dur - 100, 400_000)), leftovers)
    assert not collision_units(busy, dense[[0, 2]], window=105, positions_um=positions).any()


def test_one_size_look_alikes_firing_independently_are_two_neurons():
    from spikesort.stages.merges import footprint_merges, independence_test

    rng = np.random.default_rng(3)
    fs, dur = 30000, 30000 * 300
    full = _unit(peak=40, center=12, width=3.0)
    twin = _unit(peak=36, center=12.2, width=3.0)  # a neighbour a few µm away, about as large
    late = 0.4 * _stretched(full, 1.15)  # a piece of the first at another size
    dense = np.stack([full, twin, late])
    sizes = np.array([2400, 2000, 500])
    assert sorted(sorted(k for k, _ in g) for g in footprint_merges(dense, dense, sizes, max_lag=3)) == [[0, 1, 2]]
    kw = dict(refractory=45, double_fit=15, duration=dur, rate_bin=10 * fs)
    a, b = _poisson_times(rng, 8, dur), _poisson_times(rng, 7, dur)
    late_t = np.sort(rng.choice(dur, 2000, replace=False))
    independent = independence_test(_spikes(a, b, late_t), **kw)
    assert independent(0, 1) and independent(0, 2)
    groups = footprint_merges(dense, dense, sizes, max_lag=3, independent=independent)
    # the twin fires independently and is kept apart; the piece at another size still joins
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 2], [1]]
    # one neuron's spikes split between the two one-size units keep its refractory gap: merged
    one = _poisson_times(rng, 15, dur)
    half = rng.random(len(one)) < 0.5
    same = independence_test(_spikes(one[half], one[~half], late_t), **kw)
    assert not same(0, 1)
    groups = footprint_merges(dense, dense, sizes, max_lag=3, independent=same)
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1, 2]]


def test_two_sizes_firing_plainly_independently_are_two_neurons():
    """mearec_np2 seed 2: two cells at a probe's corner, 122 and 77 µV, footprints 0.990 and
    shapes 0.91 alike, merged as one neuron at two sizes though their trains held 1.07 of chance
    in the refractory period with 51 pairs expected."""
    from spikesort.stages.merges import footprint_merges, independence_test

    rng = np.random.default_rng(5)
    fs, dur = 30000, 30000 * 300
    full = _unit(peak=40, center=12, width=3.0)
    smaller = 0.6 * _unit(peak=40, center=12.1, width=3.0)  # a neighbour at 0.6 of the size
    dense = np.stack([full, smaller])
    kw = dict(refractory=45, double_fit=15, duration=dur)
    a, b = _poisson_times(rng, 14, dur), _poisson_times(rng, 6, dur)
    independent = independence_test(_spikes(a, b), rate_bin=10 * fs, **kw)
    assert independent(0, 1)
    sizes = np.array([len(a), len(b)])
    groups = footprint_merges(dense, dense, sizes, max_lag=3, times=[a, b], independent=independent, **kw)
    assert len(groups) == 2
    # without the trains (or with too few pairs expected to say it) the footprint decides, as before
    assert len(footprint_merges(dense, dense, sizes, max_lag=3, independent=independent)) == 1
    # one neuron's spikes split between its two sizes keep the refractory gap: merged
    one = _poisson_times(rng, 20, dur)
    half = rng.random(len(one)) < 0.7
    same = independence_test(_spikes(one[half], one[~half]), rate_bin=10 * fs, **kw)
    trains = [one[half], one[~half]]
    assert len(footprint_merges(dense, dense, sizes, max_lag=3, times=trains, independent=same, **kw)) == 1


def _bursting_neuron(rng, *, duration: int, fs: float = 32000.0):
    """Spike times of a neuron firing bursts of 1-4 spikes 4-15 ms apart at 3 Hz, split into its
    first two spikes of each burst (full size) and the later ones (shrunken)."""
    starts = np.sort(rng.integers(0, duration - int(0.1 * fs), size=int(3.0 * duration / fs)))
    starts = starts[np.diff(starts, prepend=-(10**9)) > int(0.08 * fs)]
    full, late = [], []
    for t in starts:
        n = rng.integers(1, 5)
        times = t + np.cumsum(np.r_[0, rng.integers(int(0.004 * fs), int(0.015 * fs), size=n - 1)])
        full += list(times[:2])
        late += list(times[2:])
    return np.array(full), np.array(late)


def test_burst_follower_scores_a_burst_s_late_spikes_apart_from_independent_and_echoing_units():
    from spikesort.stages.merges.bursts import burst_follower

    rng = np.random.default_rng(3)
    duration, fs = 9_600_000, 32000.0
    full, late = _bursting_neuron(rng, duration=duration)
    lags = dict(lo=int(0.0035 * fs), hi=int(0.05 * fs), duration=duration)
    e = burst_follower(full, late, **lags)
    assert e.z > 15 and e.asymmetry > 0.5 and e.echo < 0.1
    other = np.sort(rng.integers(0, duration, size=len(late)))  # a neuron firing on its own
    e = burst_follower(full, other, **lags)
    assert abs(e.z) < 4 and abs(e.asymmetry) < 0.1
    # an echo 2 ms after spikes of the unit follows its bursts too, but each one at that lag
    echo = np.sort(full[rng.random(len(full)) < 0.3] + int(0.002 * fs))
    e = burst_follower(full, echo, **lags)
    assert e.echo > 0.9
    # the test is of the order: the unit's spikes do not follow the late ones
    assert burst_follower(late, full, **lags).asymmetry < 0
    assert burst_follower(full, late[:0], **lags) == (0.0, 0.0, 0.0)


def test_on_a_tetrode_a_burst_s_late_spikes_join_their_unit_when_the_refractory_test_cannot_say():
    from spikesort.stages.merges import footprint_merges

    rng = np.random.default_rng(5)
    duration, fs, refractory = 9_600_000, 32000.0, 48
    full_t, late_t = _bursting_neuron(rng, duration=duration)
    # the matching fits the late spikes' template again beside some full-size spikes: pairs in the
    # refractory period's outer half, as many as chance gives, so the refractory test sees no gap
    doubles = full_t[rng.random(len(full_t)) < 0.02] + 40
    other_t = np.sort(rng.integers(0, duration, size=len(late_t)))
    full = _unit(peak=40, center=12, width=3.0)
    tet = np.ascontiguousarray(np.stack([full, 0.4 * _stretched(full, 1.15), 0.45 * full])[:, :, 10:14])
    times = [full_t, np.sort(np.r_[late_t, doubles]), other_t]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, times=times, refractory=refractory, duration=duration)
    assert len(footprint_merges(tet, tet, sizes, **kw)) == 3
    groups = footprint_merges(tet, tet, sizes, **kw, burst_lags=(int(0.0035 * fs), int(0.05 * fs)))
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1], [2]]
    # a unit of the same footprint firing on its own, however small, does not follow the bursts
    swapped = [full_t, other_t, np.sort(np.r_[late_t, doubles])]
    tet2 = np.ascontiguousarray(tet[[0, 2, 1]])
    groups = footprint_merges(tet2, tet2, sizes[[0, 2, 1]], **{**kw, "times": swapped}, burst_lags=(112, 1600))
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 2], [1]]
    # nor does a unit echoing it: each of its spikes 1.25 ms after one of the neuron's (here its
    # bursts' second spikes, so that the echo follows the bursts as their late spikes do)
    second = full_t[1:][np.diff(full_t) < int(0.02 * fs)]
    echo_t = np.sort(second + 40)
    echoed = [full_t, echo_t, other_t]
    sizes3 = np.array([len(t) for t in echoed])
    assert len(footprint_merges(tet, tet, sizes3, **{**kw, "times": echoed}, burst_lags=(112, 1600))) == 3
    # nor a neuron of that footprint bursting with it (a network burst: as often before as after)
    starts = full_t[np.diff(full_t, prepend=-(10**9)) > int(0.05 * fs)]
    cobursting = np.unique(starts + rng.integers(-int(0.03 * fs), int(0.03 * fs), size=len(starts)))
    together = [full_t, cobursting, other_t]
    sizes4 = np.array([len(t) for t in together])
    assert len(footprint_merges(tet, tet, sizes4, **{**kw, "times": together}, burst_lags=(112, 1600))) == 3


def test_a_burst_s_late_spikes_aligned_on_another_phase_join_their_unit_on_a_dense_probe():
    from spikesort.stages.merges import footprint_merges, lagged_similarity
    from spikesort.stages.merges.footprint import footprint_cosine

    # mearec_nn32_bursts seed 1: 65 late spikes at 0.38 of their unit's size, stretched, aligned 26
    # samples early on another channel's feature; footprint 0.976, shape 0.66 only at that lag
    rng = np.random.default_rng(7)
    duration, refractory = 9_600_000, 48
    full_t, late_t = _bursting_neuron(rng, duration=duration)
    other_t = np.sort(rng.integers(0, duration, size=len(late_t)))
    full = _unit(nt=90, peak=40, center=12, width=3.0)
    late = 0.38 * np.roll(_stretched(_unit(nt=90, peak=40, center=13.0, width=3.0), 2.0), 26, axis=0)
    dense = np.stack([full, late])
    ptp = np.ptp(dense, axis=1)
    assert 0.95 < footprint_cosine(ptp[0], ptp[1])[0] < 0.98
    assert lagged_similarity(full, late, max_lag=3)[0] < 0.6 <= lagged_similarity(full, late, max_lag=32)[0] < 0.8
    sizes = np.array([len(full_t), len(late_t)])
    kw = dict(max_lag=3, phase_lag=32, times=[full_t, late_t], refractory=refractory, duration=duration)
    assert len(footprint_merges(dense, dense, sizes, **kw)) == 2
    groups = footprint_merges(dense, dense, sizes, **kw, burst_lags=(112, 1600))
    assert len(groups) == 1
    # aligned on the unit: the piece's offset undoes the lag its shape was found at
    offsets = dict(groups[0])
    assert abs(offsets[1] - offsets[0]) >= 20
    # a unit of that template firing on its own stays apart
    alone = {**kw, "times": [full_t, other_t]}
    assert len(footprint_merges(dense, dense, sizes, **alone, burst_lags=(112, 1600))) == 2
    # within max_lag only, as before, the piece stays apart
    assert len(footprint_merges(dense, dense, sizes, **{**kw, "phase_lag": 3}, burst_lags=(112, 1600))) == 2


def test_on_a_dense_probe_one_neuron_on_two_phases_joins_on_an_empty_refractory_period_too_short_to_test():
    from spikesort.stages.merges import footprint_merges, lagged_similarity
    from spikesort.stages.merges.footprint import footprint_cosine
    from spikesort.stages.merges.refractory import outer_refractory_ratio

    # mearec_np2: a biphasic neuron's spikes aligned on its peak (841) and on its trough (451),
    # 9 samples apart: footprints 0.998, shapes 0.96 at that lag, no pair where chance gave 2.5
    rng = np.random.default_rng(21)
    duration, refractory, lag = 9_600_000, 48, 9
    peak = _unit(nt=90, peak=40, center=12, width=3.0)
    trough = 0.92 * np.roll(_unit(nt=90, peak=40, center=12.2, width=3.0), lag, axis=0)
    dense = np.stack([peak, trough])
    assert footprint_cosine(np.ptp(peak, axis=0), np.ptp(trough, axis=0))[0] > 0.995
    assert lagged_similarity(peak, trough, max_lag=3)[0] < 0.8 < 0.95 < lagged_similarity(peak, trough, max_lag=32)[0]
    neuron = np.cumsum(rng.integers(96, 14000, size=1300))
    on_trough = rng.random(len(neuron)) < 0.35
    times = [neuron[~on_trough], neuron[on_trough] + lag]
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, phase_lag=32, double_fit=16, refractory=refractory, duration=duration)
    trains = dict(refractory=refractory, duration=duration, inner=16)
    ratio, expected = outer_refractory_ratio(times[0], times[1] - lag, **trains)
    assert ratio == 0 and 2.0 <= expected < 3.0  # too few for the refractory test itself
    groups = footprint_merges(dense, dense, sizes, **kw, times=times)
    assert len(groups) == 1 and abs(dict(groups[0])[1] - dict(groups[0])[0]) == lag
    # two neurons that look as alike, firing on their own: pairs in the period keep them apart
    other = np.sort(rng.integers(0, duration, size=len(times[1])))
    assert outer_refractory_ratio(times[0], other - lag, **trains)[0] > 0
    assert len(footprint_merges(dense, dense, sizes, **kw, times=[times[0], other])) == 2
    # and shapes alike only to 0.9 at the lag are not enough without the refractory test
    wider = _stretched(_unit(nt=90, peak=40, center=12.2, width=3.0), 1.35)
    unlike = np.stack([peak, 0.92 * np.roll(wider, lag, axis=0)])
    assert 0.8 < lagged_similarity(unlike[0], unlike[1], max_lag=32)[0] < 0.95
    assert len(footprint_merges(unlike, unlike, sizes, **kw, times=times)) == 2


def test_one_neuron_on_three_phases_is_one_group_though_its_two_smaller_units_are_too_short_to_test():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.refractory import outer_refractory_ratio

    # mearec_sqmea: a neuron's units of 3825, 1052 and 266 spikes aligned at 0, -6 and +8 samples;
    # the two smaller ones, 14 samples apart, expected 1.9 pairs and had none
    rng = np.random.default_rng(4)
    duration, refractory = 9_600_000, 48
    base = _unit(nt=90, peak=40, center=12, width=3.0)
    dense = np.stack([base, np.roll(base, -6, axis=0), np.roll(base, 8, axis=0)])
    neuron = np.cumsum(rng.integers(96, 3800, size=5100))
    which = rng.choice(3, size=len(neuron), p=[0.74, 0.205, 0.055])
    times = [neuron[which == 0], neuron[which == 1] + 6, neuron[which == 2] - 8]
    sizes = np.array([len(t) for t in times])
    trains = dict(refractory=refractory, duration=duration, inner=16)
    ratio, expected = outer_refractory_ratio(times[1] - 6, times[2] + 8, **trains)
    assert ratio == 0 and expected < 2.0  # too few to test, even as two phases
    kw = dict(max_lag=3, phase_lag=32, double_fit=16, refractory=refractory, duration=duration, times=times)
    groups = footprint_merges(dense, dense, sizes, **kw)
    assert len(groups) == 1
    assert dict(groups[0]) == {0: 0, 1: -6, 2: 8}
    # the smaller pair firing on its own terms (pairs in the period) keeps them apart: one joins
    other = [times[0], times[1], np.sort(rng.integers(0, duration, size=len(times[2])))]
    assert outer_refractory_ratio(other[1] - 6, other[2] + 8, **trains)[0] > 0
    assert len(footprint_merges(dense, dense, sizes, **{**kw, "times": other})) == 2


def test_a_neurons_rare_smaller_spikes_join_it_but_a_rarer_neighbour_firing_on_its_own_does_not():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.footprint import footprint_cosine
    from spikesort.stages.merges.pieces import QUIET_FRACTION

    # MEArec cells: 8-15 % of a neuron's spikes at 0.25-0.6 of its size, spread over the recording;
    # their piece's footprint, from so few spikes, agrees with the unit's to only 0.96-0.99
    rng = np.random.default_rng(5)
    full = _unit(peak=40, center=12, width=3.0)
    piece = 0.4 * _unit(peak=40, center=13.0, width=3.0)
    dense = np.stack([full, piece])
    cos, n_ch = footprint_cosine(np.ptp(full, axis=0), np.ptp(piece, axis=0))
    assert 0.95 < cos < 0.98 and n_ch >= 8
    fs, duration = 30000, 30000 * 300
    neuron = _poisson_times(rng, 20.0, duration)
    rare = rng.random(len(neuron)) < 0.12
    kw = dict(max_lag=3, refractory=int(0.0015 * fs), duration=duration, double_fit=int(0.0005 * fs))

    def merged(times):
        groups = footprint_merges(dense, dense, np.array([len(t) for t in times]), times=times, **kw)
        return len(groups) == 1

    assert merged([neuron[~rare], neuron[rare]])
    # a neighbour firing on its own as rarely leaves pairs in the refractory period
    assert not merged([neuron[~rare], _poisson_times(rng, 20.0 * rare.mean(), duration)])
    # a piece with more than QUIET_FRACTION of the unit's spikes is not a rare mode of it: it
    # joins on ample refractory evidence (none of 20 or more pairs), not on a tenth of the recording
    common = rng.random(len(neuron)) < 1.5 * QUIET_FRACTION
    assert merged([neuron[~common], neuron[common]])
    assert not merged([t[t < duration // 10] for t in (neuron[~common], neuron[common])])


def test_a_neurons_rare_spikes_caught_on_another_phase_join_it_once_aligned():
    from spikesort.stages.merges import footprint_merges, lagged_similarity

    # mearec_nn32 seed 1: 57 spikes of a 1358-spike neuron fitted 26 samples early, shapes alike to
    # 0.64 at that lag, footprints to 0.96; no pair in the refractory period once aligned
    rng = np.random.default_rng(6)
    full = _unit(peak=40, center=12, width=3.0)
    early = 0.45 * np.roll(_stretched(_unit(peak=40, center=13.0, width=3.0), 1.6), 12, axis=0)
    dense = np.stack([full, early])
    s, shift = lagged_similarity(full, early, max_lag=30)
    assert abs(shift) > 3 and 0.6 <= s < 0.9
    fs, duration = 30000, 30000 * 300
    neuron = _poisson_times(rng, 20.0, duration)
    rare = rng.random(len(neuron)) < 0.08
    kw = dict(max_lag=3, refractory=int(0.0015 * fs), duration=duration, double_fit=int(0.0005 * fs))
    times = [neuron[~rare], neuron[rare] + shift]  # each rare spike found where its template aligns

    def merged(times, phase_lag):
        sizes = np.array([len(t) for t in times])
        return len(footprint_merges(dense, dense, sizes, times=times, phase_lag=phase_lag, **kw)) == 1

    assert merged(times, phase_lag=30)
    assert not merged(times, phase_lag=0)  # the lag is beyond what the caller allows
    # a rare neighbour firing on its own, alike at that lag, leaves pairs in the period
    assert not merged([neuron[~rare], _poisson_times(rng, 20.0 * rare.mean(), duration)], phase_lag=30)


def _dead_time_train(rng, rate_hz, duration, *, dead: int, fs=30000):
    """A neuron's spike times: Poisson at ``rate_hz`` beyond a dead time of ``dead`` samples (its
    relative refractory period empties the first few ms of its autocorrelogram)."""
    isi = dead + rng.exponential(fs / rate_hz - dead, int(2 * rate_hz * duration / fs) + 10)
    t = np.cumsum(isi).astype(np.int64)
    return t[(t > 100) & (t < duration - 100)]


def test_at_two_sizes_units_firing_independently_join_only_on_a_sign_of_one_neuron():
    """shanks4 seed 0: a neighbour at 0.1 of a unit's size, footprints 0.99 alike, merged though
    its spikes fired independently of the unit's (0.69 of chance in the refractory period, too few
    pairs expected to say it plainly). It is kept apart now. One neuron's two sizes whose
    refractory period collisions filled still show the trough of its relative refractory period
    at 2-10 ms, and join."""
    from spikesort.stages.merges import footprint_merges, independence_test
    from spikesort.stages.merges.refractory import band_pair_ratio

    rng = np.random.default_rng(11)
    fs, dur = 30000, 30000 * 300
    full = _unit(peak=40, center=12, width=3.0)
    smaller = 0.5 * _unit(peak=40, center=12.1, width=3.0)
    dense = np.stack([full, smaller])
    kw = dict(refractory=45, double_fit=15, duration=dur)
    trough = (60, 300)  # 2-10 ms
    # a neighbour firing on its own: fewer pairs expected than "plainly two" asks
    a, b = _poisson_times(rng, 8, dur), _poisson_times(rng, 3, dur)
    independent = independence_test(_spikes(a, b), rate_bin=10 * fs, **kw)
    assert independent(0, 1)
    sizes = np.array([len(a), len(b)])
    args = dict(max_lag=3, times=[a, b], independent=independent, **kw)
    assert len(footprint_merges(dense, dense, sizes, **args, trough_lags=trough)) == 2
    assert len(footprint_merges(dense, dense, sizes, max_lag=3, independent=independent)) == 1  # no trains: merged
    # one neuron at two sizes, with a few dozen collisions spread over its refractory period
    one = _dead_time_train(rng, 20, dur, dead=150)
    big = rng.random(len(one)) < 0.7
    ta, tb = one[big], one[~big]
    fake = rng.choice(ta, 30, replace=False) + rng.choice([-1, 1], 30) * rng.integers(16, 46, 30)
    tb = np.sort(np.concatenate([tb, fake]))
    same = independence_test(_spikes(ta, tb), rate_bin=10 * fs, **kw)
    assert same(0, 1)  # the collisions make the trains look independent ...
    ratio, z = band_pair_ratio(ta, tb, lo=trough[0], hi=trough[1], duration=dur)
    assert ratio < 0.8 and z < -2  # ... but the correlogram shows one neuron's trough
    args = dict(max_lag=3, times=[ta, tb], independent=same, **kw)
    sizes = np.array([len(ta), len(tb)])
    assert len(footprint_merges(dense, dense, sizes, **args, trough_lags=trough)) == 1
    assert len(footprint_merges(dense, dense, sizes, **args)) == 2  # the trough is what joins them


def test_spikes_a_merge_moved_off_the_recording_are_left_out():
    # a piece joined at a lag of -5 samples: its spike 3 samples into the recording would sit at
    # -2, which Phy's files cannot hold
    from spikesort.stages.curate import within_recording
    from spikesort.stages.merges.refractory import apply_groups

    spikes = MatchedSpikes(
        np.array([3, 40, 100, 995]), np.array([1, 0, 1, 0]), np.ones(4, np.float32), np.ones(4, np.float32)
    )
    moved = apply_groups(spikes, [[(0, 0), (1, -5)]])
    assert moved.times.min() < 0
    kept = within_recording(moved, n_samples=1000)
    np.testing.assert_array_equal(kept.times, [40, 95, 995])
    assert within_recording(spikes, n_samples=1000) is spikes


def test_one_size_neighbours_whose_collisions_the_matching_thinned_are_two_neurons():
    """crowded64 seed 1: two large neurons on one channel (2061 and 1871 spikes, footprints 0.993,
    shapes 0.87, 1.3 times apart in size) kept 0.39 of chance's pairs in the refractory period:
    the matching loses one spike of many collisions. Too many for one neuron, too few for the
    independence test to say two; they were merged as one neuron."""
    from spikesort.stages.merges import footprint_merges, independence_test

    rng = np.random.default_rng(8)
    fs, dur = 30000, 30000 * 300
    full = _unit(peak=40, center=12, width=3.0)
    twin = _unit(peak=32, center=12.2, width=3.0)
    dense = np.stack([full, twin])
    kw = dict(refractory=45, double_fit=15, duration=dur)
    a, b = _poisson_times(rng, 7, dur), _poisson_times(rng, 6, dur)
    expected_close = len(a) * len(b) / dur * 2 * 45
    b = _with_pairs(rng, a, b, keep=int(0.35 * expected_close), refractory=45)
    independent = independence_test(_spikes(a, b), rate_bin=10 * fs, **kw)
    assert not independent(0, 1)  # the test cannot say two neurons
    sizes = np.array([len(a), len(b)])
    groups = footprint_merges(dense, dense, sizes, max_lag=3, times=[a, b], independent=independent, **kw)
    assert len(groups) == 2
    # one neuron's spikes split between two units of one size leave the period empty: merged
    one = _poisson_times(rng, 13, dur)
    half = rng.random(len(one)) < 0.5
    trains = [one[half], one[~half]]
    same = independence_test(_spikes(*trains), rate_bin=10 * fs, **kw)
    assert len(footprint_merges(dense, dense, sizes, max_lag=3, times=trains, independent=same, **kw)) == 1
    # on less evidence a stray pair or two is no sign of two (mearec_nn32 seed 0: a bursting neuron's
    # two units, 1 pair where 4.5 were expected)
    from spikesort.stages.merges.refractory import outer_refractory_ratio

    one = _poisson_times(rng, 6.5, dur)
    third = rng.random(len(one)) < 0.33
    stray = [one[~third], np.sort(np.r_[one[third], one[~third][[5, 500]] + 30])]  # two stray pairs
    ratio, expected = outer_refractory_ratio(stray[0], stray[1], refractory=45, inner=15, duration=dur)
    assert 0.2 <= ratio and 4 <= expected < 10
    same = independence_test(_spikes(*stray), rate_bin=10 * fs, **kw)
    assert len(footprint_merges(dense, dense, sizes, max_lag=3, times=stray, independent=same, **kw)) == 1


def test_on_a_tetrode_a_piece_whose_pairs_crowd_at_one_lag_joins_on_the_gap_around_them():
    # mearec_tetrode_cells1 seed 0: a bursting neuron as two units of ~2600 spikes at 0.51
    # of each other's size, footprints 0.9994, shapes 0.87; 24 pairs in the refractory period's outer
    # half where chance gives 34, 23 of them 1.0-1.2 ms after one of the unit's spikes (its changed
    # spikes fitted twice) and none at the other lags, where chance gives 29
    rng = np.random.default_rng(23)
    full = _unit(peak=40, center=12, width=3.0)
    tet = np.ascontiguousarray(np.stack([full, 0.51 * _stretched(full, 1.15)])[:, :, 10:14])
    unit, own = _split_neuron(rng, n_spikes=5200, max_isi=3600, fraction=0.5)
    twice = unit[rng.random(len(unit)) < 0.01] + 34
    assert _tetrode_merged(tet, [unit, np.sort(np.r_[own, twice])])
    # a neuron of that footprint firing on its own spreads its pairs over every lag
    other = np.sort(rng.integers(0, 9_600_000, size=len(own) + len(twice)))
    assert not _tetrode_merged(tet, [unit, other])
    # and so it does when the matching loses half its collisions (distinct MEArec tetrode neurons
    # kept 0.49 of chance's pairs at the least), with footprints as alike as distinct neurons' are
    shifted = 0.51 * _stretched(_unit(peak=40, center=13.0, width=3.0), 1.15)
    loose = np.ascontiguousarray(np.stack([full, shifted])[:, :, 10:14])
    close = np.searchsorted(unit, other + 48, "right") > np.searchsorted(unit, other - 48)
    thinned = other[~(close & (rng.random(len(other)) < 0.5))]
    assert _tetrode_merged(loose, [unit, np.sort(np.r_[own, twice])])
    assert not _tetrode_merged(loose, [unit, thinned])


def test_on_a_tetrode_a_stretched_piece_caught_off_time_joins_on_the_gap_near_where_its_shape_aligns():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.evidence import Trains, ample_gap
    from spikesort.stages.merges.templates import lagged_similarity

    # mearec_tetrode_20k seed 90: a bursting neuron's stretched spikes (999, a third of its unit's
    # size, footprints 0.997, shapes 0.53), caught late: at lag 0 the pairs of the burst's short
    # intervals fill one side of the refractory period (7 pairs where 19 were expected), and the
    # gap they leave lies a few samples off where the shapes align them: a false unit
    rng = np.random.default_rng(31)
    full, piece = _tetrode_and_wide_piece(0.35)
    tet = np.ascontiguousarray(np.stack([np.roll(full, 20, axis=0), piece]))  # caught 20 samples late
    duration, refractory, late = 15_200_000, 48, 24
    burst = rng.random(6000) < 0.2  # a burst's intervals: just past the refractory period
    isi = np.where(burst, rng.integers(50, 300, size=6000), rng.integers(150, 6000, size=6000))
    neuron = np.cumsum(isi)
    own = rng.random(len(neuron)) < 0.2
    times = [neuron[~own], neuron[own] + late]
    sizes = np.array([len(t) for t in times])
    tr = Trains(times, refractory, duration, None, 3.0, 0.4)
    assert not ample_gap(*tr.banded(*times), compact=True)  # no gap where it is usually sought
    lag = lagged_similarity(tet[0], tet[1], max_lag=32)[1]
    assert 0 < abs(lag - late) <= refractory // 4
    ratio, expected = tr.centred(*times, lag=lag, reach=refractory // 4)
    assert ratio == 0 and expected > 10
    assert tr.centred(*times, lag=-lag, reach=refractory // 4)[0] > 0.5  # and none elsewhere
    kw = dict(max_lag=3, phase_lag=32, refractory=refractory, duration=duration)
    assert len(footprint_merges(tet, tet, sizes, **kw, times=times)) == 1
    # a neuron of that footprint firing on its own leaves no gap at any lag
    other = np.sort(rng.integers(0, duration, size=len(times[1])))
    assert len(footprint_merges(tet, tet, sizes, **kw, times=[times[0], other])) == 2
    # nor does one whose collisions the matching thinned (to 0.47 of chance's pairs)
    close = np.searchsorted(times[0], other + refractory, "right") > np.searchsorted(times[0], other - refractory)
    thinned = other[~(close & (rng.random(len(other)) < 0.53))]
    assert len(footprint_merges(tet, tet, sizes, **kw, times=[times[0], thinned])) == 2


def test_on_a_tetrode_a_faint_piece_too_few_for_the_trains_joins_the_unit_it_is_most_like():
    # mearec_tetrode seed 12: 251 of a neuron's spikes at 0.38 of its 1517-spike unit's size,
    # footprints 0.997, shapes 0.81; 2.5 pairs expected in the refractory period's outer half,
    # too few for the test, too many spikes to absorb as a sliver, a shape too loose for the
    # strict footprint
    from spikesort.stages.merges import fire_independently, footprint_merges

    rng = np.random.default_rng(12)
    full = _unit(peak=40, center=12, width=3.0)
    tet, neuron, piece = _tetrode_piece(rng, full, scale=0.38, stretch=1.85, n_spikes=1770, fraction=0.14)
    trains = [neuron[~piece], neuron[piece]]
    assert _tetrode_merged(tet, trains)
    # a shape further from the unit's (0.79) keeps it apart, and so do more spikes than a
    # quarter of the unit's, the trains still too short to say
    unlike = np.ascontiguousarray(np.stack([full, 0.38 * _stretched(full, 2.0)])[:, :, 10:14])
    assert not _tetrode_merged(unlike, trains)
    few = trains[0][rng.random(len(trains[0])) < 0.5]
    assert not _tetrode_merged(tet, [few, trains[1]])
    # a larger unit more alike to the piece than its own (0.97 against 0.82) but kept from it
    # (too many spikes to call it faint, a footprint not strict) keeps it from its own unit too
    # (mearec_tetrode seed 5: two neurons' shrunken spikes in one piece, the unit least like it
    # the only one its trains did not rule out)
    third = 0.8 * _stretched(_unit(peak=40, center=13.0, width=3.0), 1.5)[:, 10:14]
    three = np.ascontiguousarray(np.stack([tet[0], third, tet[1]]))
    times = [trains[0], np.sort(rng.integers(0, 9_600_000, size=600)), trains[1]]
    refractory, double_fit, duration = 48, 16, 9_600_000

    def independent(i, j):
        return fire_independently(times[i], times[j], refractory=refractory, double_fit=double_fit, duration=duration)

    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, refractory=refractory, duration=duration, double_fit=double_fit)
    assert len(footprint_merges(three, three, sizes, **kw, times=times, independent=independent)) == 3
    # without it, the piece joins its own unit
    assert _tetrode_merged(three[[0, 2]], [times[0], times[2]])


def test_on_a_tetrode_a_faint_piece_whose_countable_pairs_are_its_double_fits_is_judged_as_faint():
    from spikesort.stages.merges.evidence import Trains

    # mearec_tetrode seed 92: 330 of a neuron's spikes at a third of its 1535-spike unit's size,
    # shapes 0.90; the outer half expected 3.4 pairs, enough to be counted, and held 7, crowded at
    # one lag (its spikes fitted twice); left out, 2.2 were expected: too few for any count
    rng = np.random.default_rng(12)
    full = _unit(peak=40, center=12, width=3.0)
    tet, neuron, piece = _tetrode_piece(rng, full, scale=0.35, stretch=1.85, n_spikes=1900, fraction=0.18)
    unit = neuron[~piece]
    twice = np.r_[unit[rng.random(len(unit)) < 0.006] + 34, unit[rng.random(len(unit)) < 0.006] - 30]
    own = np.sort(np.r_[neuron[piece], twice])
    tr = Trains([unit, own], 48, 9_600_000, 16, 3.0, 0.4)
    assert tr.outer(unit, own)[1] >= 3.0 and tr.outer(unit, own)[0] > 1 and tr.banded(unit, own)[1] < 3.0
    assert _tetrode_merged(tet, [unit, own])
    # a neighbour of that shape firing on its own, as many pairs expected: none crowd, the count
    # stands and says two neurons
    other = np.sort(rng.integers(0, 9_600_000, size=420))
    assert tr.outer(unit, other)[1] >= 3.0 and tr.banded(unit, other)[1] >= 3.0
    assert not _tetrode_merged(tet, [unit, other])


def _faint_groups(dense: np.ndarray, trains, *, refractory=48, duration=9_600_000, double_fit=16, max_lag=3) -> list:
    """``faint_piece_merges``' groups for units of ``dense`` (300 s at 32 kHz) firing ``trains``."""
    from spikesort.stages.merges import faint_piece_merges, fire_independently

    def independent(i, j):
        return fire_independently(trains[i], trains[j], refractory=refractory, double_fit=double_fit, duration=duration)

    kw = dict(refractory=refractory, duration=duration, echo_window=100, independent=independent, max_lag=max_lag)
    return faint_piece_merges(dense, dense, trains, **kw)


def test_a_faint_piece_left_at_the_end_joins_the_unit_it_is_most_like():
    # mearec_tetrode_colored seed 3: 115 of a neuron's spikes at 0.31 of its 1193-spike unit's
    # size, shapes 0.82, 0.7 pairs expected; every piece rule left it apart
    rng = np.random.default_rng(3)
    full = _unit(peak=40, center=12, width=3.0)
    tet, neuron, piece = _tetrode_piece(rng, full, scale=0.35, stretch=1.85, n_spikes=1300, fraction=0.09)
    trains = [neuron[~piece], neuron[piece]]
    groups = _faint_groups(tet, trains)
    assert len(groups) == 1 and sorted(u for u, _ in groups[0]) == [0, 1]
    assert dict(groups[0])[1] == -lagged_similarity(tet[0], tet[1], max_lag=3)[1]  # aligned on the unit
    # a shape further from the unit's (0.39), or more spikes than FAINT_FRACTION of the unit's,
    # keep it apart; so does its being the unit's echo (every spike 40 samples after one of its)
    unlike = np.ascontiguousarray(np.stack([tet[0], 0.35 * _stretched(full, 5.0)[:, 10:14]]))
    assert len(_faint_groups(unlike, trains)) == 2
    looser = np.ascontiguousarray(np.stack([tet[0], 0.35 * _stretched(full, 3.5)[:, 10:14]]))
    assert len(_faint_groups(looser, trains)) == 1  # 0.53, above the floor of 0.45
    more = rng.random(len(neuron)) < 0.2
    many = [neuron[~more], neuron[more]]
    assert len(many[1]) > 0.18 * len(many[0]) and len(_faint_groups(tet, many)) == 2
    echo = [trains[0], trains[0][rng.random(len(trains[0])) < 0.09] + 40]
    assert len(_faint_groups(tet, echo)) == 2
    # more pairs in the refractory period than chance gives (mearec_tetrode_wire seed 4: 6 where
    # 1.4 were expected, a mixture beside a neuron's unit): not one neuron
    stray = trains[0][rng.choice(len(trains[0]), size=8, replace=False)] + rng.integers(25, 48, size=8)
    crowded = [trains[0], np.sort(np.r_[trains[1], stray])]
    assert len(_faint_groups(tet, crowded)) == 2
    assert len(_faint_groups(tet, [trains[0], np.sort(np.r_[trains[1], stray[:1]])])) == 1  # one such pair
    # caught on another phase (mearec_tetrode_colored seed 4: 151 spikes alike to 0.76 at 15
    # samples): it joins within the lags asked, aligned on the unit
    early = np.ascontiguousarray(np.stack([tet[0], np.roll(tet[1], -12, axis=0)]))
    assert len(_faint_groups(early, trains)) == 2
    groups = _faint_groups(early, trains, max_lag=16)
    assert len(groups) == 1 and dict(groups[0])[1] == -lagged_similarity(early[0], early[1], max_lag=16)[1]
    assert abs(dict(groups[0])[1]) >= 11
    # on a long probe too (mearec_nn32 seed 2: 151 spikes at 0.29 of a 1328-spike unit's size,
    # shapes 0.76), where a neighbour whose footprint lies three contacts away stays apart
    long = np.ascontiguousarray(np.stack([full, 0.35 * _stretched(full, 1.85)]))
    assert len(_faint_groups(long, trains)) == 1
    moved = 0.35 * _stretched(_unit(peak=40, center=15, width=3.0), 1.85)
    assert len(_faint_groups(np.ascontiguousarray(np.stack([full, moved])), trains)) == 2
    # with a third, larger unit more like it, the piece joins that one (the likeliest), and a
    # unit that took a piece is no piece of another
    third = np.ascontiguousarray(np.stack([tet[0], tet[1], 1.5 * tet[1]]))
    times = [trains[0], trains[1], np.cumsum(rng.integers(96, 10_000, size=3000))]
    groups = _faint_groups(third, times)
    assert sorted(sorted(u for u, _ in g) for g in groups) == [[0], [1, 2]]
    # a neuron's faint pieces are more like each other than like its unit (mearec_nn32 seed 15:
    # pieces of 30, 62 and 86 spikes, alike to 0.98, to their 1642-spike unit 0.55-0.72): each joins
    # the unit, not a piece with too few spikes to have pieces of its own
    split = rng.random(len(trains[1])) < 0.5
    pieces = np.ascontiguousarray(np.stack([tet[0], tet[1], 0.9 * tet[1]]))
    groups = _faint_groups(pieces, [trains[0], trains[1][split], trains[1][~split]])
    assert sorted(sorted(u for u, _ in g) for g in groups) == [[0, 1, 2]]


def test_a_faint_piece_whose_trains_expect_a_few_pairs_joins_on_a_near_empty_period_only():
    from spikesort.stages.merges.refractory import banded_refractory_ratio

    # mearec_tetrode_colored seed 3: 162 of a neuron's spikes beside its 4301-spike unit, shapes
    # 0.59-0.66, no pair in the refractory period's outer half where 4.7 were expected: enough
    # pairs for the count, too few for the piece rules' evidence; every other rule left it apart
    rng = np.random.default_rng(33)
    full = _unit(peak=40, center=12, width=3.0)
    tet, neuron, piece = _tetrode_piece(rng, full, scale=0.35, stretch=1.85, n_spikes=4400, fraction=0.04)
    trains = [neuron[~piece], neuron[piece]]
    banded = dict(refractory=48, inner=24, duration=9_600_000)
    ratio, expected = banded_refractory_ratio(*trains, **banded)
    assert ratio == 0 and expected >= 3
    groups = _faint_groups(tet, trains)
    assert len(groups) == 1 and sorted(u for u, _ in groups[0]) == [0, 1]
    # a neighbour of that template firing on its own whose collisions the matching thinned to a
    # half: too few pairs for the independence test, but not a near-empty period
    other = np.sort(rng.integers(0, 9_600_000, size=len(trains[1])))
    close = np.searchsorted(trains[0], other + 48, "right") > np.searchsorted(trains[0], other - 48)
    thinned = np.delete(other, np.flatnonzero(close)[::2])
    ratio, expected = banded_refractory_ratio(trains[0], thinned, **banded)
    assert 0.2 <= ratio < 0.8 and 3 <= expected < 5
    assert len(_faint_groups(tet, [trains[0], thinned])) == 2


def test_on_a_long_probe_a_sliver_of_a_narrow_footprint_joins_its_unit_on_an_empty_period():
    # mearec_nn32_cells1 seed 2: 65 of a neuron's spikes (1.1 % of its 5813-spike unit) at 0.94 of
    # its size, over 7 channels of 32: footprints 0.998, shapes 0.91, no pair in the refractory
    # period where chance gives 2.5; dense units that alike join as a sliver, a narrow one did not
    from spikesort.stages.merges import fire_independently, footprint_merges

    full = _unit(peak=40, center=12, width=1.2)
    dense = np.stack([full, 0.95 * full])
    rng = np.random.default_rng(5)
    for fraction, groups in ((0.011, 1), (0.15, 2)):  # a sliver joins; more than a tenth does not
        times = _split_neuron(rng, n_spikes=5900, max_isi=3000, fraction=fraction)
        sizes = np.array([len(t) for t in times])
        kw = dict(max_lag=3, phase_lag=32, refractory=48, duration=9_600_000, double_fit=16)

        def independent(i, j, times=times):
            return fire_independently(times[i], times[j], refractory=48, double_fit=16, duration=9_600_000)

        assert len(footprint_merges(dense, dense, sizes, **kw, times=times, independent=independent)) == groups


def test_a_dense_piece_whose_footprint_agrees_less_joins_on_a_near_empty_period_unless_tiny_or_an_echo():
    from spikesort.stages.merges import footprint_merges
    from spikesort.stages.merges.footprint import footprint_cosine

    # mearec_nn32_cells2 seed 2: one neuron as three units whose footprints agree to only
    # 0.968-0.989 over 17 channels, shapes 0.36-0.65, no pair in the refractory period of 12-17
    rng = np.random.default_rng(21)
    full = _unit(peak=40, center=12, width=3.0)
    piece = 0.45 * _stretched(_unit(peak=40, center=13.2, width=3.0), 2.0)
    assert 0.95 < footprint_cosine(np.ptp(full, axis=0), np.ptp(piece, axis=0))[0] < 0.98
    assert lagged_similarity(full, piece, max_lag=32)[0] < 0.8
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 3000, size=6000))
    late = rng.random(len(neuron)) < 0.3
    kw = dict(max_lag=3, phase_lag=32, double_fit=16, refractory=refractory, duration=duration, burst_lags=(105, 960))

    def n_groups(piece_template, times):
        dense = np.stack([full, piece_template])
        return len(footprint_merges(dense, dense, np.array([len(t) for t in times]), **kw, times=times))

    assert n_groups(piece, [neuron[~late], neuron[late]]) == 1
    # a neighbour firing on its own, and one whose collisions the matching lost (every second pair)
    other = np.sort(rng.integers(0, duration, size=late.sum()))
    close = np.searchsorted(neuron[~late], other + refractory, "right") > np.searchsorted(
        neuron[~late], other - refractory
    )
    thinned = np.delete(other, np.flatnonzero(close)[::2])
    assert n_groups(piece, [neuron[~late], other]) == 2
    assert n_groups(piece, [neuron[~late], thinned]) == 2
    # a unit a tenth the size of its neighbour loses every spike near the neighbour's to the
    # matching: its empty period says nothing (shanks4 seed 1: 0.07 of the size, none of 10.6)
    lost = np.delete(other, np.flatnonzero(close))
    assert n_groups(0.25 * piece, [neuron[~late], lost]) == 2
    # the unit's echo, 2.4 ms after most of its spikes: beyond the refractory period, never in it
    unit = neuron[~late]
    apart = np.r_[np.diff(unit) > 72 + refractory, False]  # no other spike of the unit near the echo
    echo = unit[apart & (rng.random(len(unit)) < 0.4)] + 72
    assert n_groups(piece, [unit, echo]) == 2


def test_a_piece_that_took_a_sliver_of_its_own_still_joins_its_unit_and_brings_it_aligned():
    from spikesort.stages.merges import footprint_merges

    # mearec_sqmea30 seed 2: a bursting neuron's 843-spike piece (footprints 0.952 with its
    # 2657-spike unit, shapes 0.48, 2 pairs where 12.8 were expected) had first taken 82 spikes of
    # its own, alike to it, caught a sample early; it then joined nothing and stayed a false unit
    rng = np.random.default_rng(34)
    full = _unit(peak=40, center=12, width=3.0)
    piece = 0.45 * _stretched(_unit(peak=40, center=13.2, width=3.0), 2.0)
    sliver = 0.95 * np.roll(piece, 1, axis=0)
    dense = np.stack([full, piece, sliver])
    duration, refractory = 9_600_000, 48
    neuron = np.cumsum(rng.integers(96, 3000, size=6000))
    late = rng.random(len(neuron)) < 0.3
    few = late & (rng.random(len(neuron)) < 0.08)
    times = [neuron[~late], neuron[late & ~few], neuron[few] - 1]  # caught early: its waveform later
    sizes = np.array([len(t) for t in times])
    kw = dict(max_lag=3, phase_lag=32, double_fit=16, refractory=refractory, duration=duration, burst_lags=(105, 960))
    # alone, the piece joins its unit, and the sliver joins the piece
    assert len(footprint_merges(dense[:2], dense[:2], sizes[:2], **kw, times=times[:2])) == 1
    assert len(footprint_merges(dense[1:], dense[1:], sizes[1:], **kw, times=times[1:])) == 1
    groups = footprint_merges(dense, dense, sizes, **kw, times=times)
    assert len(groups) == 1
    offset = dict(groups[0])
    assert offset[0] == 0 and offset[2] - offset[1] == 1  # the sliver aligned on the piece
    # a piece whose group holds a unit larger than a sliver takes no other role
    half = late & (rng.random(len(neuron)) < 0.5)
    times = [neuron[~late], neuron[late & ~half], neuron[half] - 1]
    sizes = np.array([len(t) for t in times])
    assert len(footprint_merges(dense, dense, sizes, **kw, times=times)) == 2


def test_on_a_dense_probe_a_rare_piece_too_few_for_the_trains_joins_the_unit_it_is_most_like():
    from spikesort.stages.merges import fire_independently, footprint_merges

    # mearec_nn32_cells2 seed 1: 205 of a neuron's spikes beside its 1215, at 0.35 of its size,
    # footprints 0.967 over 16 channels, shapes 0.81; one pair in the refractory period (a spike
    # fitted twice, 0.6 ms apart) where chance gives 1.2
    rng = np.random.default_rng(22)
    full = _unit(peak=40, center=12, width=3.0)
    dense = np.stack([full, 0.4 * _unit(peak=40, center=13.0, width=3.0)])
    duration, refractory, double_fit = 9_000_000, 45, 15
    kw = dict(max_lag=3, phase_lag=30, double_fit=double_fit, refractory=refractory, duration=duration)

    def n_groups(times, independent=None):
        def fire_apart(i, j):
            return fire_independently(
                times[i], times[j], refractory=refractory, double_fit=double_fit, duration=duration
            )

        sizes = np.array([len(t) for t in times])
        return len(footprint_merges(dense, dense, sizes, **kw, times=times, independent=independent or fire_apart))

    neuron = _poisson_times(rng, 4.0, duration)
    rare = rng.random(len(neuron)) < 0.15
    twice = neuron[~rare][100] - 20
    assert n_groups([neuron[~rare], np.sort(np.r_[neuron[rare], twice])]) == 1
    # a rare neighbour the independence test tells apart stays apart
    assert n_groups([neuron[~rare], np.sort(np.r_[neuron[rare], twice])], independent=lambda i, j: True) == 2
    # where chance gives enough pairs to count, a rare neighbour firing on its own fills the period
    busy = _poisson_times(rng, 20.0, duration)
    assert n_groups([busy, _poisson_times(rng, 2.5, duration)]) == 2
    # a sliver's template, from a few dozen spikes, larger peak to peak than its unit's by its
    # noise (mearec_np64_cells1 seed 1: 73 spikes of a 5018-spike neuron, 1.15 of its size)
    noisy = 0.9 * _unit(peak=40, center=13.0, width=3.0)
    noisy[20, 12] -= 10.0  # a noisy sample deepens its trough
    assert np.ptp(noisy, axis=0).max() > np.ptp(full, axis=0).max()
    dense = np.stack([full, noisy])
    sliver = rng.random(len(neuron)) < 0.05
    assert n_groups([neuron[~sliver], np.sort(np.r_[neuron[sliver], neuron[~sliver][200] - 20])]) == 1


def test_on_a_tetrode_units_whose_trains_never_meet_in_the_refractory_period_join_whatever_their_shapes():
    # mearec_tetrode_diamond seed 0: one bursting neuron as three units of unlike shapes (0.14-0.45),
    # footprints 0.97-0.998, none of 9.4 and 16.1 pairs expected between the third and the others
    from spikesort.stages.merges import empty_period_merges

    rng = np.random.default_rng(7)
    full = _unit(peak=40.0)
    tet = np.ascontiguousarray(
        np.stack([full, 0.6 * _stretched(full, 1.6), 0.8 * np.roll(_stretched(full, 1.3), 5, axis=0)])[:, :, 10:14]
    )
    neuron = np.cumsum(rng.integers(96, 4_000, size=6000))
    part = rng.integers(0, 3, size=len(neuron))
    trains = [neuron[part == u] for u in range(3)]
    kw = dict(refractory=48, duration=int(neuron[-1]) + 1, max_lag=3)
    groups = empty_period_merges(tet, tet, trains, **kw)
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1, 2]]
    # a neighbour firing on its own stays apart, though its footprint is the neuron's
    other = np.sort(rng.integers(0, kw["duration"], size=1700))
    groups = empty_period_merges(tet, tet, [trains[0], trains[1], other], **kw)
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1], [2]]
    # so does a unit whose footprint differs from the neuron's, though the trains never meet
    moved = tet.copy()
    moved[2] = tet[2][:, ::-1] * np.array([1.0, 0.5, 0.3, 0.2], dtype=np.float32)
    groups = empty_period_merges(moved, moved, trains, **kw)
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 1], [2]]
    # and on a long probe, where a footprint spans a few of its channels, the rule does not judge
    long_probe = np.stack([full, 0.6 * _stretched(full, 1.6), 0.8 * _stretched(full, 1.3)])
    assert len(empty_period_merges(long_probe, long_probe, trains, **kw)) == 3


def test_on_a_tetrode_a_burst_s_late_spikes_of_another_shape_join_their_unit_on_the_burst_timing_alone():
    from spikesort.stages.merges import footprint_merges, lagged_similarity
    from spikesort.stages.merges.footprint import footprint_cosine

    # mearec_tetrode_bursts_cells2 seed 3: 562 late spikes of a 4464-spike neuron, shrunk to 0.4 of
    # its size and changed past every shape floor (0.08 at its alignment, 0.40 at 22 samples),
    # footprints 0.995; stray fits beside the unit's spikes fill the refractory period's outer half
    rng = np.random.default_rng(11)
    duration, refractory = 9_600_000, 48
    full_t, late_t = _bursting_neuron(rng, duration=duration)
    doubles = full_t[rng.random(len(full_t)) < 0.02]
    doubles = doubles + rng.integers(25, 48, size=len(doubles))
    piece_t = np.sort(np.r_[late_t, doubles])
    other_t = np.sort(rng.integers(0, duration, size=len(piece_t)))
    full = _unit(nt=90, peak=40, center=12, width=3.0)
    late = 0.4 * np.roll(_stretched(full, 3.5), 22, axis=0)
    dense = np.stack([full, late])
    tet = np.ascontiguousarray(dense[:, :, 10:14])
    ptp = np.ptp(tet, axis=1)
    assert footprint_cosine(ptp[0], ptp[1])[0] >= 0.99
    assert lagged_similarity(tet[0], tet[1], max_lag=32)[0] < 0.6
    sizes = np.array([len(full_t), len(piece_t)])
    kw = dict(max_lag=3, phase_lag=32, refractory=refractory, duration=duration, burst_lags=(112, 1600))
    assert len(footprint_merges(tet, tet, sizes, **kw, times=[full_t, piece_t])) == 1
    # a unit of that template firing on its own stays apart
    assert len(footprint_merges(tet, tet, sizes, **kw, times=[full_t, other_t])) == 2
    # on a dense probe the footprint is no evidence of one neuron: the shape floor stands
    assert len(footprint_merges(dense, dense, sizes, **kw, times=[full_t, piece_t])) == 2


def _masked(rng, times, by, *, window, keep=0.0):
    """``times`` without (all but ``keep`` of) the spikes within ``window`` of one of ``by``'s."""
    by = np.sort(by)
    near = np.searchsorted(by, times + window, "right") > np.searchsorted(by, times - window)
    return times[~(near & (rng.random(len(times)) >= keep))]


def test_a_piece_whose_larger_neighbour_masked_its_spikes_joins_neither_on_a_gap_rarer_beside_its_own_neuron():
    from spikesort.stages.merges import empty_period_merges
    from spikesort.stages.merges.evidence import rarer_gap
    from spikesort.stages.merges.refractory import banded_refractory_ratio

    # mearec_tetrode_crowded seed 70: a neuron's piece (1660 spikes, 33 uV) left 1 pair of 10.5
    # expected beside a 293 uV neighbour whose spikes hid it, and 5 of 25 beside its own neuron's
    # unit (92 uV): the near-empty period with the neighbour joined two neurons
    rng = np.random.default_rng(11)
    duration, refractory = 9_000_000, 45
    full = _unit(peak=40.0)
    tet = np.ascontiguousarray(np.stack([7.3 * full, 2.3 * full, 0.8 * _stretched(full, 1.4)])[:, :, 10:14])
    big = np.sort(rng.choice(duration, 1500, replace=False))
    own = np.sort(rng.choice(duration, 3000, replace=False))
    piece = np.sort(rng.choice(duration, 2200, replace=False))
    piece = _masked(rng, _masked(rng, piece, big, window=refractory), own, window=refractory, keep=0.3)
    kw = dict(refractory=refractory, inner=refractory // 2, duration=duration)
    with_big, with_own = banded_refractory_ratio(big, piece, **kw), banded_refractory_ratio(own, piece, **kw)
    assert with_big[0] < 0.2 <= with_own[0] and with_big[1] >= 10 and with_own[1] >= 10
    own_and_big = banded_refractory_ratio(own, big, **kw)  # two neurons: chance's pairs
    assert rarer_gap(with_big, [(with_own, own_and_big)], min_expected=10.0) == 0
    groups = empty_period_merges(tet, tet, [big, own, piece], refractory=refractory, duration=duration, max_lag=3)
    assert len(groups) == 3
    # its own neuron's unit left as much of a gap as chance: the neighbour's is the only one, and
    # joins it (the rule cannot tell a masked piece from one whose trains say nothing else)
    loose = np.sort(rng.choice(duration, 3000, replace=False))
    alone = _masked(rng, np.sort(rng.choice(duration, 2200, replace=False)), big, window=refractory)
    groups = empty_period_merges(tet, tet, [big, loose, alone], refractory=refractory, duration=duration, max_lag=3)
    assert sorted(sorted(k for k, _ in g) for g in groups) == [[0, 2], [1]]


def test_rarer_gap_names_the_first_rival_whose_gap_is_rarer_and_rare_and_that_is_not_the_units_neuron():
    from spikesort.stages.merges.evidence import rarer_gap

    own = (1 / 10.5, 10.5)  # 1 pair of 10.5
    apart = (1.0, 20.0)  # the rival beside the unit: chance's pairs, another neuron
    assert rarer_gap(own, [((1.0, 20.0), apart), ((5 / 25, 25.0), apart)], min_expected=3.0) == 1
    assert rarer_gap((0.0, 25.0), [((5 / 25, 25.0), apart)], min_expected=3.0) is None  # its own gap is the rarer
    assert rarer_gap(own, [((0.0, 2.0), apart)], min_expected=3.0) is None  # too few pairs expected to count
    assert rarer_gap((1.0, 1.0), [((0.5, 4.0), apart)], min_expected=3.0) is None  # 2 of 4: not rare (p 0.24)
    # mearec_tetrode_wire seed 72: the rival was another piece of the unit's neuron (no pair beside it)
    assert rarer_gap(own, [((5 / 25, 25.0), (0.0, 12.0))], min_expected=3.0) is None
