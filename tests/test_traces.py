"""The whitened-traces stores (spikesort.pipeline.traces): the compressed kind against the plain
one, block by block, under concurrent and partial writes, reopened after a flush; which kind a
run gets; and its codec kernels against numpy twins."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from spikesort.kernels.preprocess import quantize_zigzag, unzigzag
from spikesort.pipeline import traces
from spikesort.pipeline.traces import (
    COMPRESSED_SCALE,
    MAX_BLOCK,
    CompressedTraceStore,
    TraceStore,
    block_samples,
    open_store,
)

N_CH = 12


def whitened(rng, n, n_ch=N_CH):
    """Noise of sd 1 with a few large spikes, as the whitened traces look."""
    x = rng.standard_normal((n, n_ch)).astype(np.float32)
    x[rng.integers(0, n, 40), rng.integers(0, n_ch, 40)] -= 40.0
    return x


def quantized(x):
    """What the compressed store gives back for x (numpy twin of the codec)."""
    return (np.clip(np.rint(x * COMPRESSED_SCALE), -32767, 32767) / COMPRESSED_SCALE).astype(np.float32)


def compressed(tmp_path, n, *, block=1000, n_ch=N_CH):
    store = CompressedTraceStore(tmp_path / "t.blosc", n_samples=n, n_channels=n_ch, block=block)
    store.create()
    return store


def test_zigzag_kernels_match_numpy():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 7)) * 3000).astype(np.float32)
    x[0, 0], x[0, 1], x[0, 2] = 1e9, -1e9, -0.0
    codes = quantize_zigzag(x, np.float32(COMPRESSED_SCALE))
    q = np.clip(np.rint(x.astype(np.float64) * COMPRESSED_SCALE), -32767, 32767).astype(np.int64)
    np.testing.assert_array_equal(codes, np.where(q >= 0, 2 * q, -2 * q - 1).astype(np.uint16))
    out = np.empty(x.shape, dtype=np.float32)
    unzigzag(codes, np.float32(1 / COMPRESSED_SCALE), out)
    np.testing.assert_array_equal(out, (q / COMPRESSED_SCALE).astype(np.float32))


def test_compressed_store_reads_back_what_was_written(tmp_path):
    rng = np.random.default_rng(1)
    n = 10_500  # not a whole number of blocks
    x = whitened(rng, n)
    store = compressed(tmp_path, n)
    for start in range(0, n, 3000):  # 3 blocks a write, the last one short
        store.write(start, x[start : start + 3000])
    want = quantized(x)
    np.testing.assert_array_equal(store.read(0, n), want)
    for a, b in [(0, 1), (999, 1001), (2500, 7400), (10_000, 10_500), (-5, 30), (10_490, 20_000)]:
        np.testing.assert_array_equal(store.read(a, b), want[max(0, a) : min(n, b)])
    assert np.abs(store.read(0, n) - x).max() <= 0.5 / COMPRESSED_SCALE + 1e-6
    # white noise of sd 1 at 1/8: ~3x smaller than int16 (lz4, bit-shuffled)
    assert store.nbytes() < n * N_CH * 2 / 2.2


def test_partial_and_concurrent_writes_merge_into_shared_blocks(tmp_path):
    """Chunks that do not end on block edges, written by threads in any order, and then written
    again (as drift correction rewrites every chunk) read back as the last data written."""
    rng = np.random.default_rng(2)
    n = 9_000
    store = compressed(tmp_path, n, block=1000)
    edges = np.unique(np.r_[0, np.sort(rng.choice(np.arange(1, n), 11, replace=False)), n])
    spans = list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    for x in (whitened(rng, n), 3 * whitened(rng, n)):  # the second pass needs bigger blocks
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda s, x=x: store.write(s[0], x[s[0] : s[1]]), spans[::-1]))
        np.testing.assert_array_equal(store.read(0, n), quantized(x))


def test_unwritten_blocks_read_as_zeros_and_a_flushed_store_reopens(tmp_path):
    rng = np.random.default_rng(3)
    n = 5_000
    x = whitened(rng, 2000)
    store = compressed(tmp_path, n)
    store.write(1000, x)
    got = store.read(0, n)
    assert not got[:1000].any() and not got[3000:].any()
    store.flush()
    again = CompressedTraceStore(store.path, n_samples=n, n_channels=N_CH, block=1000)
    np.testing.assert_array_equal(again.read(0, n), got)
    assert set(p.name for p in again.files) == {"t.blosc", "t.blosc.index.npy"}


@pytest.mark.parametrize("channels", [None, np.array([3, 0, 7])])
def test_compressed_snippets_equal_the_plain_stores(tmp_path, channels):
    rng = np.random.default_rng(4)
    n, nt, pre = 8_000, 61, 20
    x = quantized(whitened(rng, n))  # exact in both stores
    store = compressed(tmp_path, n)
    plain = TraceStore(tmp_path / "p.dat", n_samples=n, n_channels=N_CH)
    plain.create()
    for start in range(0, n, 2000):
        store.write(start, x[start : start + 2000])
        plain.write(start, x[start : start + 2000])
    # windows on block edges, across them, at the recording's edges (zero), in no order, and a
    # block holding many windows (decoded whole) beside blocks holding one (decoded apart)
    times = np.r_[rng.integers(0, n, 30), 980, 1000, 1020, 1979, 5, n - 5, np.arange(3000, 3900, 20)]
    rng.shuffle(times)
    got = store.snippets(times, pre=pre, nt=nt, channels=channels)
    np.testing.assert_array_equal(got, plain.snippets(times, pre=pre, nt=nt, channels=channels))
    assert not got[list(times).index(5)].any()  # starts before the recording
    assert store.snippets(np.zeros(0, dtype=np.int64), pre=pre, nt=nt).shape == (0, nt, N_CH)


def test_plain_snippets_equal_numpy_across_mappings(tmp_path, monkeypatch):
    """The plain copy is mapped anew every few windows (a mapping's touched page cache counts as
    resident memory): windows in no order, on either side of a mapping's last window and at the
    recording's edges read what numpy cuts out of the same int16 copy."""
    monkeypatch.setattr(traces, "MAPPED_WINDOWS", 7)
    rng = np.random.default_rng(5)
    n, nt, pre = 6_000, 41, 15
    plain = TraceStore(tmp_path / "p.dat", n_samples=n, n_channels=N_CH)
    plain.create()
    plain.write(0, whitened(rng, n))
    codes = np.fromfile(tmp_path / "p.dat", dtype=np.int16).reshape(n, N_CH)
    times = np.r_[rng.integers(0, n, 40), 3, n - 3, pre, n - nt + pre]
    rng.shuffle(times)
    chans = np.array([5, 0, 11])
    got = plain.snippets(times, pre=pre, nt=nt, channels=chans)
    for t, window in zip(times, got):
        s = t - pre
        want = codes[s : s + nt, chans] * np.float32(1.0 / traces.SCALE) if 0 <= s <= n - nt else np.zeros((nt, 3))
        np.testing.assert_array_equal(window, np.asarray(want, dtype=np.float32))


def test_block_length_divides_the_chunk_grids():
    assert block_samples(60_000, 60_000) == 7_500
    assert block_samples(60_000, 45_000) == 7_500  # gcd 15 000
    assert block_samples(40_000, 40_000) == 8_000
    assert block_samples(60_000, 11_101) == MAX_BLOCK  # no useful common divisor: shared blocks


def test_which_store_a_run_gets(tmp_path, monkeypatch, caplog):
    path = tmp_path / "state" / "temp_wh.dat"
    kw = dict(n_samples=30_000, n_channels=4, chunk_sizes=(6000,))
    assert isinstance(open_store(path, kind="auto", **kw), TraceStore)
    assert isinstance(open_store(path, kind="compressed", **kw), CompressedTraceStore)
    assert isinstance(open_store(path, kind="plain", **kw), TraceStore)
    with pytest.raises(ValueError, match="'auto', 'plain' or 'compressed'"):
        open_store(path, kind="zip", **kw)
    # large: compressed
    monkeypatch.setattr(traces, "COMPRESS_ABOVE_GB", 1e-6)
    assert isinstance(open_store(path, kind="auto", **kw), CompressedTraceStore)
    monkeypatch.setattr(traces, "COMPRESS_ABOVE_GB", 16.0)

    # a plain copy the disk cannot hold: compressed
    class Usage:
        free = 100_000

    monkeypatch.setattr(traces.shutil, "disk_usage", lambda p: Usage)
    with caplog.at_level(logging.INFO, logger="spikesort.pipeline.traces"):
        store = open_store(path, kind="auto", **kw)
    assert isinstance(store, CompressedTraceStore) and store.kind == "compressed"
    assert "keeping it compressed" in caplog.text  # the sort differs a little: say why
    monkeypatch.undo()
    # a resumed run keeps the kind already on disk
    path.parent.mkdir()
    store = open_store(path, kind="compressed", **kw)
    store.create()
    assert isinstance(open_store(path, kind="auto", **kw), CompressedTraceStore)
    plain = open_store(path, kind="plain", **kw)
    plain.create()  # removes the other kind's files
    assert not store.path.exists()
    assert isinstance(open_store(path, kind="auto", **kw), TraceStore)


def test_compressed_store_says_when_the_disk_is_too_small(tmp_path, monkeypatch):
    from spikesort.errors import SpikesortError

    class Usage:
        free = 1000

    monkeypatch.setattr(traces.shutil, "disk_usage", lambda p: Usage)
    store = CompressedTraceStore(tmp_path / "s" / "t.blosc", n_samples=10**6, n_channels=64, block=1000)
    with pytest.raises(SpikesortError, match="even compressed"):
        store.create()


def _frame_with_blocks_reordered(frame: bytes) -> bytes:
    """The same Blosc frame with its inner blocks stored in reverse order (Blosc's own threads
    store them out of order): the start table says where each is."""
    import struct

    nbytes, inner, cbytes = struct.unpack("<iii", frame[4:16])
    nb = -(-nbytes // inner)
    starts = np.frombuffer(frame, np.int32, count=nb, offset=16).astype(np.int64)
    ends = np.r_[starts[1:], cbytes]
    assert np.all(np.diff(starts) > 0)
    body, new_starts, pos = [], np.zeros(nb, np.int32), 16 + 4 * nb
    for i in range(nb)[::-1]:
        new_starts[i] = pos
        body.append(frame[starts[i] : ends[i]])
        pos += ends[i] - starts[i]
    return frame[:16] + new_starts.tobytes() + b"".join(body)


@pytest.mark.parametrize("kind", ["ordered", "reordered", "incompressible"])
def test_rows_are_decoded_from_just_their_inner_blocks(tmp_path, kind):
    from numcodecs import Blosc

    from spikesort.pipeline.blosc_rows import decode_rows, read_head

    rng = np.random.default_rng(5)
    codec = Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE, blocksize=16384)
    n, c = 4096, 384  # inner blocks of 64 kB: 85 rows, so windows straddle them
    codes = (rng.standard_normal((n, c)) * 8).astype(np.int16).view(np.uint16)
    if kind == "incompressible":
        codes = rng.integers(0, 2**16, (n, c), dtype=np.uint16)
    frame = bytes(codec.encode(codes))
    if kind == "reordered":
        frame = _frame_with_blocks_reordered(frame)
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100 + frame)  # the frame at an offset, as in the store's file
    fd = os.open(path, os.O_RDONLY)
    try:
        head = read_head(fd, offset=100, size=len(frame))
        assert head.memcpyed == (kind == "incompressible")
        for lo, hi in [(0, 1), (80, 95), (84, 86), (1000, 1075), (n - 75, n), (0, n)]:
            out = np.empty((hi - lo, c), np.uint16)
            decode_rows(codec, fd, head, lo=lo, hi=hi, out=out)
            np.testing.assert_array_equal(out, codes[lo:hi])
    finally:
        os.close(fd)


def test_windows_follow_a_rewritten_block(tmp_path):
    """Block headers are kept once read; a block written again (drift correction) is read anew."""
    rng = np.random.default_rng(6)
    n = 4000
    store = compressed(tmp_path, n)
    times = np.array([500, 1500, 2990])
    for x in (whitened(rng, n), 3 * whitened(rng, n), np.zeros((n, N_CH), np.float32)):
        store.write(0, x)
        want = quantized(x)
        got = store.snippets(times, pre=10, nt=30)
        np.testing.assert_array_equal(got, np.stack([want[t - 10 : t + 20] for t in times]))
