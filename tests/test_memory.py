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


def test_free_heap_pages_go_back_to_the_system():
    """Arrays that glibc serves from its arenas stay resident once freed until the heap is trimmed
    (the pipeline trims between stages, so a stage's peak does not stay for the rest of the run)."""
    import pytest

    from spikesort.memory import release_free_heap

    if not release_free_heap():
        pytest.skip("no malloc_trim in this C library")
    big = np.ones(4_000_000)  # freeing a 32 MB block raises glibc's mmap threshold to 32 MB
    del big
    blocks = [np.ones(100_000) for _ in range(1500)]  # 1.2 GB in 800 kB arrays, from the arenas
    del blocks[::2]  # half freed, between live ones: nothing at the top of the heap to give back
    before = rss_mb()
    release_free_heap()
    assert rss_mb() < before - 400, (before, rss_mb())
    del blocks
