"""The resident-memory sampler behind the per-stage peak memory of the run record."""

import numpy as np

from spikesort.memory import PeakRss, rss_mb


def test_peak_rss_sees_a_short_lived_allocation():
    before = rss_mb()
    with PeakRss(interval_s=0.01) as p:
        block = np.ones(400 * 2**20 // 8)  # 400 MB, touched, then freed inside the block
        block.sum()
        del block
    assert p.peak_mb >= before + 300, (before, p.peak_mb)
    assert rss_mb() < p.peak_mb - 300  # and it was given back: the sampler reports a peak, not now


def test_rss_is_plausible():
    assert 20 < rss_mb() < 24_000
