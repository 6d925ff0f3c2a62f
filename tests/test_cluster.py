"""The bimodal split and its valley test, on synthetic features."""

import numpy as np
from scipy.stats import norm

from spikesort.stages.bimodality import bimodality
from spikesort.stages.cluster import split_recursive


def test_a_mode_of_a_few_points_is_not_a_split():
    # three stray points far from 300 others make a "peak" with an empty valley, but a count of
    # three is within Poisson noise of zero; ten are a mode
    body = norm.ppf((np.arange(300) + 0.5) / 300)
    few = np.r_[body, np.linspace(5.9, 6.1, 3)]
    assert bimodality(few, 3.0, min_z=0.0) == 1.0
    assert bimodality(few, 3.0) == 0.0
    assert bimodality(np.r_[body, np.linspace(5.9, 6.1, 10)], 3.0) == 1.0


def test_two_clear_modes_split_even_when_small():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, 40), rng.normal(8, 1, 40)])
    assert bimodality(x, 4.0) > 0.5


def test_small_unit_beside_a_big_one_is_split_off_for_every_seed():
    # a big cluster, stretched along one axis (amplitude changes, say), and a small one of a third
    # of its amplitude on the same channels: one 2-means seed often cuts the big cluster along its
    # stretch, finds no valley and stops; the restarts must find the small one
    rng = np.random.default_rng(2)
    d = 30
    shape = rng.normal(size=d)
    shape /= np.linalg.norm(shape)
    other = rng.normal(size=d)
    other -= (other @ shape) * shape
    other /= np.linalg.norm(other)
    big = 9.0 * shape + rng.normal(0, 1, (2300, d)) + 3.0 * rng.normal(size=(2300, 1)) * other
    small = 3.0 * shape + rng.normal(0, 1, (700, d))
    x = np.concatenate([big, small])
    truth = np.r_[np.zeros(len(big)), np.ones(len(small))].astype(bool)

    def found(seed, **kw):
        lab = split_recursive(x, min_size=30, max_depth=6, threshold=0.25, rng=np.random.default_rng(seed), **kw)
        return max(np.mean(truth[lab == k]) for k in np.unique(lab)) > 0.95

    assert all(found(seed) for seed in range(12))
    assert not all(found(seed, n_init=1) for seed in range(12))  # what the restarts are for
