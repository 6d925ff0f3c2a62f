"""The last merge of curation: small pieces on a larger unit's footprint (stages/merges/shrunken.py)."""

import numpy as np

from spikesort.stages.match import MatchedSpikes
from spikesort.stages.merges import apply_groups, shrunken_piece_merges
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
    return shrunken_piece_merges(dense, dense, np.asarray(counts), max_lag=max_lag)


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
    # a footprint only roughly alike (cosine 0.935)
    rough = FOOT + np.array([0.0, 0, 0, 10, 45, 0, 0, 0])
    assert 0.93 < footprint_cosine(rough, FOOT)[0] < 0.95
    assert _groups([_template(FOOT), 0.5 * _template(rough)], [5000, 500]) == [[(0, 0)], [(1, 0)]]


def test_a_few_dozen_spikes_join_whatever_the_size_of_their_rough_template():
    groups = _groups([_template(FOOT), 1.4 * _template(FOOT)], [4693, 30])
    assert groups == [[(0, 0), (1, 0)]]


def test_a_piece_of_a_piece_joins_the_unit_they_both_belong_to():
    unit, piece, sliver = _template(FOOT), 0.6 * _template(FOOT), 0.3 * _template(FOOT)
    groups = _groups([sliver, unit, piece], [20, 10000, 1000])
    assert len(groups) == 1 and sorted(groups[0]) == [(0, 0), (1, 0), (2, 0)]


def test_nothing_to_join_without_units_or_spikes():
    assert _groups([_template(FOOT), _template(OTHER)], [0, 0]) == [[(0, 0)], [(1, 0)]]
    assert shrunken_piece_merges(np.zeros((0, NT, C)), np.zeros((0, NT, C)), np.zeros(0), max_lag=3) == []
