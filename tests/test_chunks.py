"""The chunk iterator and the threaded chunk map."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from spikesort.chunks import Chunk, iter_chunks, map_chunks, n_chunks


def chunks(n, size, margin):
    return list(iter_chunks(n_samples=n, chunk_samples=size, margin_samples=margin))


@pytest.mark.parametrize(
    "n, size, margin", [(1000, 300, 50), (1000, 250, 0), (999, 1, 3), (7, 7, 2), (10, 3, 100), (1, 1, 0)]
)
def test_keep_windows_cover_every_sample_exactly_once(n, size, margin):
    cs = chunks(n, size, margin)
    assert len(cs) == n_chunks(n_samples=n, chunk_samples=size)
    count = np.zeros(n, dtype=int)
    for i, c in enumerate(cs):
        assert c.index == i
        count[c.keep_start : c.keep_stop] += 1
        assert 0 < c.keep_stop - c.keep_start <= size
        # margins on both sides, clipped to the recording
        assert c.read_start == max(0, c.keep_start - margin)
        assert c.read_stop == min(n, c.keep_stop + margin)
        assert c.n_read == c.read_stop - c.read_start
    np.testing.assert_array_equal(count, 1)
    # consecutive and in order
    assert [c.keep_start for c in cs] == [0] + [c.keep_stop for c in cs[:-1]]
    assert cs[-1].keep_stop == n


def test_keep_slice_locates_the_kept_samples_in_the_read_block():
    data = np.arange(1000)
    out = []
    for c in chunks(1000, 300, 40):
        block = data[c.read_start : c.read_stop]
        assert len(block) == c.n_read
        out.append(block[c.keep_slice])
    np.testing.assert_array_equal(np.concatenate(out), data)


def test_margins_clipped_at_the_ends():
    cs = chunks(1000, 300, 50)
    assert (cs[0].read_start, cs[0].read_stop) == (0, 350)
    assert (cs[1].read_start, cs[1].read_stop) == (250, 650)
    assert (cs[-1].keep_start, cs[-1].keep_stop) == (900, 1000)
    assert (cs[-1].read_start, cs[-1].read_stop) == (850, 1000)


def test_chunk_longer_than_the_recording():
    assert chunks(100, 1000, 30) == [Chunk(index=0, read_start=0, read_stop=100, keep_start=0, keep_stop=100)]


def test_chunk_size_one():
    cs = chunks(5, 1, 2)
    assert [(c.keep_start, c.keep_stop) for c in cs] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert [(c.read_start, c.read_stop) for c in cs] == [(0, 3), (0, 4), (0, 5), (1, 5), (2, 5)]


def test_empty_recording_has_no_chunks():
    assert chunks(0, 10, 2) == []


@pytest.mark.parametrize("size, margin", [(0, 0), (-5, 0), (10, -1)])
def test_invalid_arguments_raise(size, margin):
    with pytest.raises(ValueError):
        chunks(100, size, margin)


class Progress:
    def __init__(self):
        self.calls = []

    def update(self, n):
        self.calls.append(n)


@pytest.mark.parametrize("n_jobs", [0, 1, 2, 5])
def test_map_chunks_results_in_chunk_order(n_jobs):
    cs = chunks(200, 10, 3)
    rng = np.random.default_rng(0)
    delays = rng.uniform(0, 0.003, len(cs))  # finish out of order on threads

    def fn(c):
        time.sleep(delays[c.index])
        return c.index, c.keep_start

    prog = Progress()
    out = list(map_chunks(fn, cs, n_jobs=n_jobs, progress=prog))
    assert out == [(c.index, c.keep_start) for c in cs]
    assert prog.calls == [1] * len(cs)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_map_chunks_few_or_no_chunks(n_jobs):
    prog = Progress()
    assert list(map_chunks(lambda c: c.index, [], n_jobs=n_jobs, progress=prog)) == []
    assert prog.calls == []
    cs = chunks(20, 10, 0)
    assert list(map_chunks(lambda c: c.index, iter(cs), n_jobs=n_jobs)) == [0, 1]  # progress optional


def test_map_chunks_uses_threads_and_bounds_chunks_in_flight():
    cs = chunks(300, 10, 0)
    n_jobs = 2
    started, threads = [], set()
    lock = threading.Lock()

    def fn(c):
        with lock:
            started.append(c.index)
            threads.add(threading.get_ident())
        time.sleep(0.001)
        return c.index

    consumed = 0
    for i, res in enumerate(map_chunks(fn, cs, n_jobs=n_jobs)):
        assert res == i
        consumed += 1
        with lock:
            assert len(started) - consumed <= 2 * n_jobs
    assert consumed == len(cs) and sorted(started) == list(range(len(cs)))
    assert len(threads) >= 1 and threading.get_ident() not in threads


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_map_chunks_propagates_errors(n_jobs):
    def fn(c):
        if c.index == 3:
            raise RuntimeError("boom")
        return c.index

    with pytest.raises(RuntimeError, match="boom"):
        list(map_chunks(fn, chunks(100, 10, 0), n_jobs=n_jobs))
