"""Rows of one compressed block, read without reading the block.

A Blosc (version 1) frame is a 16-byte header, a table of where each inner block starts, and
the inner blocks, each compressed on its own. Decoding a few rows needs only the header, the
table and the inner blocks that hold those rows: for a 75-sample spike window of a 384-channel
block that is about 30 kB of its 2.2 MB. Reading just those bytes (``decode_rows``) keeps the
window cuts of template building from reading whole blocks, or faulting in 128 kB around every
touched page of a mapped file, when the compressed store is larger than the page cache.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass

import numpy as np

HEADER_BYTES = 16
_MEMCPYED = 0x02  # the frame holds the bytes as they were (nothing to decode)
_buffers = threading.local()


@dataclass(frozen=True)
class BlockHead:
    offset: int  # of the frame in the data file
    size: int  # bytes of the frame
    inner_bytes: int  # uncompressed bytes per inner block
    memcpyed: bool
    raw: bytes  # header and start table, as stored
    starts: np.ndarray  # (nb,) int64 first byte of each inner block, frame-relative
    ends: np.ndarray  # (nb,) int64 one past its last byte


def read_head(fd: int, *, offset: int, size: int) -> BlockHead:
    """The header and inner-block table of the frame at ``offset`` (``size`` bytes)."""
    h = os.pread(fd, HEADER_BYTES, offset)
    if len(h) < HEADER_BYTES:
        raise OSError(f"compressed trace store truncated at byte {offset}")
    flags = h[2]
    nbytes, inner, cbytes = struct.unpack("<iii", h[4:16])
    if flags & _MEMCPYED or nbytes == 0:
        empty = np.zeros(0, np.int64)
        return BlockHead(offset, size, max(inner, 1), bool(flags & _MEMCPYED), h, empty, empty)
    nb = -(-nbytes // inner)
    raw = h + os.pread(fd, 4 * nb, offset + HEADER_BYTES)
    starts = np.frombuffer(raw, np.int32, count=nb, offset=HEADER_BYTES).astype(np.int64)
    # inner blocks are not always stored in order: each ends where the next stored one begins
    order = np.argsort(starts, kind="stable")
    ends = np.empty(nb, np.int64)
    ends[order[:-1]] = starts[order[1:]]
    ends[order[-1]] = cbytes
    return BlockHead(offset, size, inner, False, raw, starts, ends)


def _buffer(size: int) -> memoryview:
    """A scratch buffer of this thread, at least ``size`` bytes (reused: blocks are MBs)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < size:
        buf = memoryview(bytearray(max(size, 1 << 20)))
        _buffers.buf = buf
    return buf


def decode_rows(codec, fd: int, head: BlockHead, *, lo: int, hi: int, out: np.ndarray) -> None:
    """Rows [lo, hi) of the block into ``out`` ((hi - lo, C) uint16, C-contiguous)."""
    row = out.shape[1] * out.itemsize
    b0, b1 = lo * row, hi * row
    if head.memcpyed:
        data = os.pread(fd, b1 - b0, head.offset + HEADER_BYTES + b0)
        out[...] = np.frombuffer(data, out.dtype).reshape(out.shape)
        return
    buf = _buffer(head.size)
    buf[: len(head.raw)] = head.raw
    for i in range(b0 // head.inner_bytes, (b1 - 1) // head.inner_bytes + 1):
        s, e = int(head.starts[i]), int(head.ends[i])
        if os.preadv(fd, [buf[s:e]], head.offset + s) != e - s:
            raise OSError(f"compressed trace store truncated at byte {head.offset + e}")
    codec.decode_partial(buf[: head.size], lo * out.shape[1], (hi - lo) * out.shape[1], out=out)
