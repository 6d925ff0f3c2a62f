"""The preprocessed-traces store: whitened traces written once, read by chunks.

Every stage after preprocessing reads this file instead of re-filtering the raw recording.
Chunks are read with explicit file reads (not a long-lived memmap) so the resident memory
stays at one chunk per worker whatever the recording length.

Two kinds, one interface (``create``, ``write``, ``read``, ``snippets``, ``flush``, ``files``):

- :class:`TraceStore`: scaled int16, as large as the recording in int16 (83 GB for an hour of 384
  channels).
- :class:`CompressedTraceStore`: blocks quantized to 1/8 of the noise sd and compressed (Blosc,
  bit-shuffled zstd), about a third of that. :func:`open_store` picks it for recordings whose
  plain copy would not fit on the disk or would be larger than ``COMPRESS_ABOVE_GB``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.kernels.preprocess import gather_windows, quantize_int16, quantize_zigzag, unzigzag

from .blosc_rows import BlockHead, decode_rows, read_head

log = logging.getLogger(__name__)

# whitened noise has sd ~ 1; x200 keeps 0.005 sd resolution and +-160 sd range in int16
SCALE = 200.0


class _TimedReads:
    """Seconds spent in ``read`` and ``snippets``, summed over the threads that called them: the
    run record gives each stage's share, which tells a slow disk from slow arithmetic."""

    def _timing_init(self) -> None:
        self._timing_lock = threading.Lock()
        self.read_s = 0.0

    def _timed(self, t0: float) -> None:
        dt = time.perf_counter() - t0
        with self._timing_lock:
            self.read_s += dt


class TraceStore(_TimedReads):
    kind = "plain"

    def __init__(self, path: str | Path, *, n_samples: int, n_channels: int):
        self._timing_init()
        self.path = Path(path)
        self.n_samples = int(n_samples)
        self.n_channels = int(n_channels)

    @property
    def frame_bytes(self) -> int:
        return 2 * self.n_channels

    @property
    def files(self) -> list[Path]:
        """The files that hold the traces (a checkpoint records them)."""
        return [self.path]

    def flush(self) -> None:
        """Make what was written readable by a later run (a plain file needs nothing)."""

    def create(self) -> None:
        self.check_space()
        _remove_store_files(self.path)
        with open(self.path, "wb") as fh:
            fh.truncate(self.n_samples * self.frame_bytes)

    def check_space(self) -> None:
        """Fail before the first chunk, not hours later, when the disk cannot hold the store.

        The file is created sparse, so nothing reserves its size: the check is the only warning.
        """
        need = self.n_samples * self.frame_bytes
        try:
            free = shutil.disk_usage(self.path.parent).free
            held = os.stat(self.path).st_blocks * 512 if self.path.exists() else 0  # a resumed run's own file
        except OSError:
            return  # a filesystem that cannot say: the write itself reports a full disk
        if free + held < need:
            raise SpikesortError(
                f"not enough disk space in {self.path.parent.parent} for the whitened traces: "
                f"{need / 1e9:.1f} GB needed, {(free + held) / 1e9:.1f} GB free "
                "(free some space or write the output folder to a larger disk with -o)"
            )

    def write(self, start: int, block: np.ndarray) -> None:
        q = quantize_int16(np.ascontiguousarray(block, dtype=np.float32), np.float32(SCALE))
        with open(self.path, "r+b") as fh:
            fh.seek(start * self.frame_bytes)
            fh.write(memoryview(np.ascontiguousarray(q)).cast("B"))  # no copy: a chunk of 384 channels is 46 MB

    def read(self, start: int, stop: int) -> np.ndarray:
        """Whitened float32 traces of samples [start, stop)."""
        t0 = time.perf_counter()
        start = max(0, int(start))
        stop = min(self.n_samples, int(stop))
        q = np.fromfile(
            self.path, dtype=np.int16, count=(stop - start) * self.n_channels, offset=start * self.frame_bytes
        )
        out = q.reshape(stop - start, self.n_channels).astype(np.float32) * np.float32(1.0 / SCALE)
        self._timed(t0)
        return out

    def snippets(self, times: np.ndarray, *, pre: int, nt: int, channels: np.ndarray | None = None) -> np.ndarray:
        """(n, nt, C') windows starting at ``times - pre``; windows that cross an edge are zero.

        Cut out of short mappings of the file (:func:`mapped_windows`)."""
        t0 = time.perf_counter()
        chans = np.arange(self.n_channels) if channels is None else np.asarray(channels)
        out = np.zeros((len(times), nt, len(chans)), dtype=np.float32)
        starts = np.asarray(times, dtype=np.int64) - pre
        mapped_windows(
            self.path, n_rows=self.n_samples, n_channels=self.n_channels, starts=starts, channels=chans, out=out
        )
        self._timed(t0)
        return out


# the compressed kind: whitened noise sd ~ 1 quantized to 1/8 (the rounding adds 0.13 % to the
# noise variance) compresses 2.9x with bit-shuffled zstd, where x200 int16 compresses 1.6x
COMPRESSED_SCALE = 8.0
COMPRESSED_SUFFIX = ".blosc"
INDEX_SUFFIX = ".index.npy"
# blocks of at most this many samples: a chunk read with its margins decodes little beyond them
MAX_BLOCK = 8192
MIN_BLOCK = 1024
# a block is decoded whole when it holds at least one window to cut out per this many of its
# bytes (lz4: a 7500 x 64 block whole costs as much as ~10 windows decoded apart, 7500 x 384 ~40)
FULL_DECODE_BYTES_PER_WINDOW = 100_000
# "auto" compresses the scratch copy above this size: past the page cache of a workstation every
# pass reads it from disk, and reading a third of the bytes is faster than decoding costs (an
# hour of 384 channels: 83 GB plain, ~29 GB compressed)
COMPRESS_ABOVE_GB = 16.0
# what the compressed copy is assumed to need when checking the disk (measured 2.9x: margin kept)
COMPRESSED_RATIO_FOR_SPACE = 2.5


# windows cut out of one mapping of the plain copy: at most ~2 MB of resident memory each
MAPPED_WINDOWS = 128


def mapped_windows(path, *, n_rows: int, n_channels: int, starts: np.ndarray, channels, out: np.ndarray) -> None:
    """``out[i] = rows starts[i] ... of the scaled int16 file at path (n_rows x n_channels), on
    channels``, as float32; windows that cross an edge are left as they are. The file is mapped
    anew for every ``MAPPED_WINDOWS`` windows: the kernel counts the page-cache folios a mapping
    touches (up to 2 MB around each window) as the process's resident memory until it is
    unmapped (2511 windows of 384 channels in one mapping, 0.2 GB of data, took resident memory
    3.7 GB higher)."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    chans = np.ascontiguousarray(channels, dtype=np.int64)
    for first in range(0, len(starts), MAPPED_WINDOWS):
        mm = np.memmap(path, dtype=np.int16, mode="r", shape=(n_rows, n_channels))
        last = first + MAPPED_WINDOWS
        gather_windows(mm, starts[first:last], chans, np.float32(1.0 / SCALE), out[first:last])
        del mm


def plain_bytes(n_samples: int, n_channels: int) -> int:
    """Bytes of the plain (int16) whitened copy."""
    return int(n_samples) * 2 * int(n_channels)


def compressed_by_size(n_samples: int, n_channels: int) -> bool:
    """Whether "auto" compresses the copy for its size alone, whatever the disk holds."""
    return plain_bytes(n_samples, n_channels) > COMPRESS_ABOVE_GB * 1e9


def store_files(plain_path: Path) -> list[Path]:
    """Every file a store of either kind for the plain path ``plain_path`` may leave."""
    c = Path(plain_path).with_suffix(COMPRESSED_SUFFIX)
    return [Path(plain_path), c, Path(str(c) + INDEX_SUFFIX)]


def _remove_store_files(plain_path: Path) -> None:
    """Remove any trace store left at ``plain_path`` (of either kind) before a new one is made."""
    for p in store_files(plain_path):
        p.unlink(missing_ok=True)


def block_samples(*chunk_sizes: int) -> int:
    """The store's block length: the largest divisor of every chunk grid's step that is at most
    MAX_BLOCK, so chunk writes fill whole blocks; MAX_BLOCK when that divisor would be tiny (odd
    chunk lengths: writes then merge into shared blocks)."""
    g = 0
    for c in chunk_sizes:
        g = math.gcd(g, int(c))
    if g <= 0:
        return MAX_BLOCK
    for m in range(1, g + 1):
        if g % m == 0 and g // m <= MAX_BLOCK:
            return g // m if g // m >= MIN_BLOCK else MAX_BLOCK
    return MAX_BLOCK


class CompressedTraceStore(_TimedReads):
    """Whitened traces in independently compressed blocks of ``block`` samples.

    Blocks are appended to one data file; an index (offset, size, room) says where each lives, and
    is saved by :meth:`flush` next to it. A block written again (drift correction rewrites every
    chunk) goes back into its room when it fits, else to the end of the file. Blocks never written
    read as zeros. Thread-safe: chunk workers write and read side by side.
    """

    kind = "compressed"

    def __init__(self, path: str | Path, *, n_samples: int, n_channels: int, block: int, plain_path=None):
        import numcodecs.blosc as nb
        from numcodecs import Blosc

        # numcodecs' Blosc starts threads of its own when called from the main thread; the sort's
        # own workers are the parallelism here (and n_jobs = 1 must mean one core)
        nb.use_threads = False
        self._timing_init()
        # lz4 decodes 4x faster than zstd for 5 % more bytes; inner blocks of 16 kB let one window
        # be decoded for 30 µs instead of 90 (Blosc's default) at 0.01 of the ratio
        self.codec = Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE, blocksize=16384)
        self.path = Path(path)
        self.plain_path = Path(plain_path) if plain_path is not None else self.path.with_suffix(".dat")
        self.n_samples = int(n_samples)
        self.n_channels = int(n_channels)
        self.block = int(block)
        self.n_blocks = -(-self.n_samples // self.block)
        self.index_path = Path(str(self.path) + INDEX_SUFFIX)
        self._lock = threading.Lock()
        self._block_locks = [threading.Lock() for _ in range(min(self.n_blocks, 64))]
        self._end = 0
        self._file = None  # (descriptor, (device, inode)) of the data file
        self.index = np.full((self.n_blocks, 3), -1, dtype=np.int64)  # offset, bytes, room
        self._heads: dict[int, BlockHead] = {}  # each block's Blosc header and table, ~2 kB
        if self.index_path.is_file() and self.path.is_file():
            saved = np.load(self.index_path)
            if saved.shape == self.index.shape:
                self.index = saved
                self._end = int(max(0, (saved[:, 0] + saved[:, 2]).max(initial=0)))

    @property
    def files(self) -> list[Path]:
        return [self.path, self.index_path]

    def _fd(self) -> int:
        """One descriptor for every thread's reads and writes (pread/pwrite need no shared
        position), reopened when the file was made anew."""
        with self._lock:
            st = os.stat(self.path)
            if self._file is None or self._file[1] != (st.st_dev, st.st_ino):
                if self._file is not None:
                    os.close(self._file[0])
                self._file = (os.open(self.path, os.O_RDWR), (st.st_dev, st.st_ino))
            return self._file[0]

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                os.close(self._file[0])
                self._file = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def nbytes(self) -> int:
        """Bytes the blocks take in the data file (without the room left by rewrites)."""
        return int(self.index[self.index[:, 1] > 0, 1].sum())

    def check_space(self) -> None:
        need = plain_bytes(self.n_samples, self.n_channels) / COMPRESSED_RATIO_FOR_SPACE
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < need:
            raise SpikesortError(
                f"not enough disk space in {self.path.parent.parent} for the whitened traces: "
                f"about {need / 1e9:.1f} GB needed even compressed, {free / 1e9:.1f} GB free "
                "(free some space or write the output folder to a larger disk with -o)"
            )

    def create(self) -> None:
        self.check_space()
        _remove_store_files(self.plain_path)
        self.path.touch()
        self.index[:] = -1
        self._end = 0

    def flush(self) -> None:
        from spikesort.atomic import write_atomic

        write_atomic(self.index_path, lambda fh: np.save(fh, self.index))
        plain = plain_bytes(self.n_samples, self.n_channels)
        log.info(
            "whitened traces kept compressed: %.2f GB, %.1fx smaller than the %.2f GB of int16",
            self.nbytes() / 1e9,
            plain / max(self.nbytes(), 1),
            plain / 1e9,
        )

    # -- blocks
    def _bounds(self, b: int) -> tuple[int, int]:
        return b * self.block, min(self.n_samples, (b + 1) * self.block)

    def _raw(self, b: int) -> bytes | None:
        """Block b's compressed bytes (None when it was never written)."""
        with self._lock:
            off, size, _ = (int(v) for v in self.index[b])
        if size <= 0:
            return None
        return os.pread(self._fd(), size, off)

    def _get_codes(self, b: int, lo: int | None = None, hi: int | None = None, raw=None) -> np.ndarray:
        """(hi - lo, C) uint16 zigzag codes of samples [lo, hi) of block b (block-relative; the
        whole block by default), zeros where it was never written. A short range is decoded on
        its own: Blosc reads only the inner blocks that hold it."""
        s0, s1 = self._bounds(b)
        lo = 0 if lo is None else lo
        hi = s1 - s0 if hi is None else hi
        raw = self._raw(b) if raw is None else raw
        if raw is None:
            return np.zeros((hi - lo, self.n_channels), dtype=np.uint16)
        c = self.n_channels
        if 2 * (hi - lo) < s1 - s0:
            data = self.codec.decode_partial(raw, lo * c, (hi - lo) * c)
            return np.frombuffer(data, dtype=np.uint16).reshape(hi - lo, c)
        return np.frombuffer(self.codec.decode(raw), dtype=np.uint16).reshape(s1 - s0, c)[lo:hi]

    def _put_codes(self, b: int, codes: np.ndarray) -> None:
        data = self.codec.encode(np.ascontiguousarray(codes))
        size = len(data)
        with self._lock:
            off, _, room = (int(v) for v in self.index[b])
            if size > room:
                off, room = self._end, size
                self._end += size
        os.pwrite(self._fd(), data, off)
        with self._lock:
            self.index[b] = (off, size, room)

    def write(self, start: int, block: np.ndarray) -> None:
        codes = quantize_zigzag(np.ascontiguousarray(block, dtype=np.float32), np.float32(COMPRESSED_SCALE))
        start, stop = int(start), int(start) + len(codes)
        for b in range(start // self.block, -(-stop // self.block)):
            s0, s1 = self._bounds(b)
            lo, hi = max(s0, start), min(s1, stop)
            if lo == s0 and hi == s1:
                self._put_codes(b, codes[lo - start : hi - start])
                continue
            # part of a block another chunk shares: read, merge and write back under its lock
            with self._block_locks[b % len(self._block_locks)]:
                merged = self._get_codes(b).copy()
                merged[lo - s0 : hi - s0] = codes[lo - start : hi - start]
                self._put_codes(b, merged)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Whitened float32 traces of samples [start, stop)."""
        t0 = time.perf_counter()
        start = max(0, int(start))
        stop = min(self.n_samples, int(stop))
        out = np.empty((max(0, stop - start), self.n_channels), dtype=np.float32)
        for b in range(start // self.block, -(-stop // self.block)):
            s0, s1 = self._bounds(b)
            lo, hi = max(s0, start), min(s1, stop)
            codes = np.ascontiguousarray(self._get_codes(b, lo - s0, hi - s0))
            unzigzag(codes, np.float32(1.0 / COMPRESSED_SCALE), out[lo - start : hi - start])
        self._timed(t0)
        return out

    def snippets(self, times: np.ndarray, *, pre: int, nt: int, channels: np.ndarray | None = None) -> np.ndarray:
        """(n, nt, C') windows starting at ``times - pre``; windows that cross an edge are zero.

        A template averages a few hundred spikes spread over the whole recording: decoding each
        of their blocks whole made that 25x slower than the plain store. A block holding a few
        windows has only those rows read and decoded (``blosc_rows``); one holding many is
        decoded once."""
        t0 = time.perf_counter()
        starts = np.asarray(times, dtype=np.int64) - pre
        chans = None if channels is None else np.asarray(channels, dtype=np.int64)
        n_c = self.n_channels if chans is None else len(chans)
        out = np.zeros((len(starts), nt, n_c), dtype=np.float32)
        inside = np.flatnonzero((starts >= 0) & (starts + nt <= self.n_samples))
        if not len(inside) or os.fstat(self._fd()).st_size == 0:  # no window, or nothing written yet
            return out
        inside = inside[np.argsort(starts[inside], kind="stable")]
        first = starts[inside] // self.block
        cuts = np.flatnonzero(np.diff(first)) + 1
        self._cut_windows(np.split(inside, cuts), starts, nt, chans, out)
        self._timed(t0)
        return out

    def _head(self, b: int) -> BlockHead | None:
        """Block b's header and inner-block table (None when never written), kept once read."""
        with self._lock:
            off, size, _ = (int(v) for v in self.index[b])
            head = self._heads.get(b)
        if size <= 0:
            return None
        if head is None or (head.offset, head.size) != (off, size):  # new, or the block was rewritten
            head = read_head(self._fd(), offset=off, size=size)
            with self._lock:
                self._heads[b] = head
        return head

    def _rows(self, b: int, lo: int, hi: int, out: np.ndarray) -> None:
        head = self._head(b)
        if head is None:
            out[...] = 0
        else:
            decode_rows(self.codec, self._fd(), head, lo=lo, hi=hi, out=out)

    def _cut_windows(self, groups, starts, nt: int, chans, out) -> None:
        n_c = out.shape[2]
        offsets = np.arange(nt)
        for group in groups:
            b = int(starts[group[0]] // self.block)
            s0, s1 = self._bounds(b)
            rel = starts[group] - s0
            if len(group) * FULL_DECODE_BYTES_PER_WINDOW >= (s1 - s0) * self.n_channels * 2:
                codes = self._get_codes(b)
                if rel.max() + nt > s1 - s0:  # a window runs into the next block
                    more = np.empty((int(rel.max()) + nt - (s1 - s0), self.n_channels), dtype=np.uint16)
                    self._rows(b + 1, 0, len(more), more)
                    codes = np.concatenate([codes, more])
                picked = codes[rel[:, None] + offsets[None, :]]
            else:
                picked = np.empty((len(group), nt, self.n_channels), dtype=np.uint16)
                for j, r in enumerate(rel.tolist()):
                    k = min(nt, s1 - s0 - r)  # the part of the window in this block
                    self._rows(b, r, r + k, picked[j, :k])
                    if k < nt:
                        self._rows(b + 1, 0, nt - k, picked[j, k:])
            if chans is not None:
                picked = picked[:, :, chans]
            values = np.empty((len(group) * nt, n_c), dtype=np.float32)
            unzigzag(np.ascontiguousarray(picked).reshape(-1, n_c), np.float32(1.0 / COMPRESSED_SCALE), values)
            out[group] = values.reshape(len(group), nt, n_c)


def open_store(
    path: str | Path, *, n_samples: int, n_channels: int, kind: str, chunk_sizes: tuple[int, ...] = ()
) -> TraceStore | CompressedTraceStore:
    """The trace store for a run whose plain store would be ``path``.

    ``kind``: "plain", "compressed" or "auto". A store already on disk (a resumed run) keeps its
    kind under "auto"; otherwise "auto" compresses when the plain copy would exceed
    COMPRESS_ABOVE_GB or the free disk space."""
    path = Path(path)
    compressed_path = path.with_suffix(COMPRESSED_SUFFIX)

    def compressed():
        block = block_samples(*chunk_sizes) if chunk_sizes else MAX_BLOCK
        return CompressedTraceStore(
            compressed_path, n_samples=n_samples, n_channels=n_channels, block=block, plain_path=path
        )

    def plain():
        return TraceStore(path, n_samples=n_samples, n_channels=n_channels)

    if kind == "plain":
        return plain()
    if kind == "compressed":
        return compressed()
    if kind != "auto":
        raise ValueError(f"trace store kind must be 'auto', 'plain' or 'compressed', not {kind!r}")
    if compressed_path.is_file():
        return compressed()
    if path.is_file():
        return plain()
    need = plain_bytes(n_samples, n_channels)
    where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    if compressed_by_size(n_samples, n_channels):
        return compressed()
    if free is not None and need > free:
        # the sort then differs a little from one on a roomier disk (values rounded to 1/8 sd)
        log.info(
            "%.1f GB free where the plain whitened copy needs %.1f GB: keeping it compressed",
            free / 1e9,
            need / 1e9,
        )
        return compressed()
    return plain()
