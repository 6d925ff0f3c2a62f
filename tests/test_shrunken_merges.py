"""The last merge of curation: small pieces on a larger unit's footprint (stages/merges/shrunken.py)."""

import numpy as np

from spikesort.stages.labels import PIECE_COSINE
from spikesort.stages.match import MatchedSpikes
from spikesort.stages.merges import apply_groups, shrunken_piece_merges
from spikesort.stages.merges.shrunken import double_fit_lag
from spikesort.stages.merges.templates import footprint_cosine

NT, C = 60, 8


def _template(footprint, *, trough=20) -> np.ndarray:
    t = np.arange(NT, dtype=np.float64)
    wave = -np.exp(-0.5 * ((t - trough) / 1.5) ** 2) + 0.4 * np.exp(-0.5 * ((t - trough - 8) / 4.0) ** 2)
    return (wave[:, None] * np.asarray(footprint, dtype=np.float64)[None, :]).astype(np.float32)


FOOT = np.array([100.0, 60, 30, 10, 0, 0, 0, 0])
OTHER = np.array([0.0, 0, 0, 10, 30, 60, 100, 40])


def _groups(templates, counts, max_lag=30):
    dense = np.stack(templates)
    return shrunken_piece_merges(dense, dense, np.asarray(counts), max_lag=max_lag, min_cosine=PIECE_COSINE)


def test_a_half_size_piece_with_a_tenth_of_the_spikes_joins_its_unit_aligned_on_it():
    unit = _template(FOOT)
    piece = 0.5 * _template(FOOT, trough=26)  # caught 6 samples before its trough sits where the unit's does
    groups = _groups([unit, piece, _template(OTHER)], [5000, 500, 3000])
    assert groups == [[(0, 0), (1, 6)], [(2, 0)]]
    # a piece's spike at 1000 is its unit's spike at 1006
    spikes = MatchedSpikes(np.array([1000, 5000]), np.array([1, 0]), np.ones(2, np.float32), np.ones(2, np.float32))
    joined = apply_groups(spikes, groups)
    assert joined.times.tolist() == [1006, 5000] and joined.templates.tolist() == [0, 0]


def test_a_unit_near_its_neighbours_size_on_one_ray_stays_a_neuron():
    # within a fifth of the larger unit's size: as likely a second neuron on that ray (left to the label)
    groups = _groups([_template(FOOT), 0.87 * _template(FOOT)], [4556, 868])
    assert groups == [[(0, 0)], [(1, 0)]]


def test_other_footprints_and_units_with_a_fair_share_of_the_spikes_stay_apart():
    # another footprint at half the size
    assert _groups([_template(FOOT), 0.5 * _template(OTHER)], [5000, 500]) == [[(0, 0)], [(1, 0)]]
    # the same footprint at half the size, with 30 % of the spikes: the trains can speak, the other merges decide
    assert _groups([_template(FOOT), 0.5 * _template(FOOT)], [5000, 1500]) == [[(0, 0)], [(1, 0)]]
    # a footprint only roughly alike (cosine 0.909)
    rough = FOOT + np.array([0.0, 0, 0, 10, 55, 0, 0, 0])
    assert 0.90 < footprint_cosine(rough, FOOT)[0] < 0.92
    assert _groups([_template(FOOT), 0.5 * _template(rough)], [5000, 500]) == [[(0, 0)], [(1, 0)]]


def test_a_rare_piece_whose_few_spikes_blur_its_footprint_to_0_935_joins_its_unit():
    # mearec_nn32 seed 80: 95 shrunken spikes at 0.3 of their neuron's unit, footprint 0.928
    blurred = FOOT + np.array([0.0, 0, 0, 10, 45, 0, 0, 0])
    assert 0.92 < footprint_cosine(blurred, FOOT)[0] < 0.95
    assert _groups([_template(FOOT), 0.3 * _template(blurred)], [1088, 95]) == [[(0, 0), (1, 0)]]


def test_a_few_dozen_spikes_join_whatever_the_size_of_their_rough_template():
    groups = _groups([_template(FOOT), 1.4 * _template(FOOT)], [4693, 30])
    assert groups == [[(0, 0), (1, 0)]]


def test_a_piece_of_a_piece_joins_the_unit_they_both_belong_to():
    unit, piece, sliver = _template(FOOT), 0.6 * _template(FOOT), 0.3 * _template(FOOT)
    groups = _groups([sliver, unit, piece], [20, 10000, 1000])
    assert len(groups) == 1 and sorted(groups[0]) == [(0, 0), (1, 0), (2, 0)]


def test_nothing_to_join_without_units_or_spikes():
    assert _groups([_template(FOOT), _template(OTHER)], [0, 0]) == [[(0, 0)], [(1, 0)]]
    empty = np.zeros((0, NT, C))
    assert shrunken_piece_merges(empty, empty, np.zeros(0), max_lag=3, min_cosine=PIECE_COSINE) == []


def test_a_piece_whose_spikes_were_fitted_twice_is_aligned_at_the_lag_of_those_pairs():
    # mearec_tetrode seed 70: a neuron's shrunken spikes caught 20-40 samples early, a shape too
    # unlike its unit's (0.40) to tell the lag; half of them were also fitted on time by the unit
    rng = np.random.default_rng(0)
    n_samples = 9_000_000
    unit_t = np.sort(rng.choice(n_samples - 100, 5000, replace=False)) + 50
    caught = rng.choice(unit_t, 500, replace=False)
    piece_t = np.sort(caught - rng.integers(23, 28, size=500))  # 23-27 samples early
    doubles = rng.random(500) < 0.5
    unit_only = np.setdiff1d(unit_t, caught[~doubles])  # the others the unit missed
    unit, piece = _template(FOOT), 0.5 * _template(FOOT, trough=26)  # shape says: 6
    dense = np.stack([unit, piece])
    counts = np.array([len(unit_only), len(piece_t)])
    by_shape = shrunken_piece_merges(dense, dense, counts, max_lag=30, min_cosine=PIECE_COSINE)
    assert by_shape == [[(0, 0), (1, 6)]]
    kw = dict(times=[unit_only, piece_t], refractory=45, n_samples=n_samples)
    groups = shrunken_piece_merges(dense, dense, counts, max_lag=30, min_cosine=PIECE_COSINE, **kw)
    lag = groups[0][1][1]
    assert 23 <= lag <= 27
    # aligned, the piece's spikes land within 2 samples of the neuron's spikes they were
    spikes = MatchedSpikes(
        np.concatenate([unit_only, piece_t]),
        np.repeat([0, 1], counts),
        np.ones(counts.sum(), np.float32),
        np.ones(counts.sum(), np.float32),
    )
    joined = apply_groups(spikes, groups)
    moved = np.setdiff1d(joined.times, unit_only)
    near = np.abs(moved[:, None] - caught[None, :]).min(axis=1)
    assert np.all(near <= 2)


def test_double_fit_lag_needs_more_pairs_than_chance_gives_and_a_tenth_of_the_piece():
    rng = np.random.default_rng(1)
    n_samples = 9_000_000
    a = np.sort(rng.choice(n_samples, 5000, replace=False))
    b = np.sort(rng.choice(n_samples, 500, replace=False))  # independent: about 14 pairs within 45 samples
    assert double_fit_lag(b, a, refractory=45, n_samples=n_samples) is None
    # 60 of them fitted twice 30 samples apart: a tenth of the piece, far over chance's 1.4 in 5 samples
    c = np.sort(np.concatenate([b, a[:60] - 30]))
    lag, pairs = double_fit_lag(c, a, refractory=45, n_samples=n_samples)
    assert lag == 30 and pairs >= 60
    # 14 of 514 (mearec_tetrode seed 5: the unit's own misfits beside a piece sitting elsewhere)
    d = np.sort(np.concatenate([b, a[:14] - 30]))
    assert double_fit_lag(d, a, refractory=45, n_samples=n_samples) is None
    # a small piece: 12 of 112 are enough; 6 of 106 are not
    e = b[:100]
    assert double_fit_lag(np.sort(np.concatenate([e, a[:12] - 30])), a, refractory=45, n_samples=n_samples)[0] == 30
    assert double_fit_lag(np.sort(np.concatenate([e, a[:6] - 30])), a, refractory=45, n_samples=n_samples) is None
    assert double_fit_lag(np.array([], np.int64), a, refractory=45, n_samples=n_samples) is None
