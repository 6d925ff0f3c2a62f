"""An .npy file written block of rows by block of rows, for arrays too large to hold whole.

The header (with the final shape) goes first, then the rows in order, with plain file writes:
pages written through the page cache do not count towards the process's resident memory, as
those of a mapped file would. The file is byte for byte what ``np.save`` of the whole array
writes. It is written under a hidden temporary name beside its destination and only renamed
into place (:meth:`StreamedNpy.commit`) once it is complete; a writer that fails or is
discarded removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def npy_header(*, shape: tuple, dtype) -> bytes:
    """The header ``np.save`` writes before the data of a C-ordered array of this shape and dtype."""
    import io

    dt = np.dtype(dtype)
    if dt.hasobject:
        raise ValueError(f"dtype {dt} holds Python objects: it cannot be streamed")
    # plain ints: the header is the repr of the shape (numpy 2 scalars repr as np.int64(5))
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape {shape} has a negative length")
    buf = io.BytesIO()
    d = {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, d)
    return buf.getvalue()


def temporary_path(path: Path) -> Path:
    """Where the rows of ``path`` are written until it is complete: hidden and ending in '.tmp'
    (like ``atomic.write_atomic``) so that phylib's globs never pick it up. The name is fixed, so
    that a run killed while writing leaves one file that the next attempt overwrites."""
    path = Path(path)
    return path.with_name(f".{path.name}.rows.tmp")


@dataclass(frozen=True)
class StreamedNpy:
    """A complete .npy file under its temporary name: what ``io.phy`` validates and renames."""

    path: Path  # the temporary file
    shape: tuple
    dtype: np.dtype
    n_nonfinite: int  # non-finite values seen in the rows (0 when not counted)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def commit(self, dest: Path) -> None:
        """Rename the file to ``dest`` (same file system: the temporary file sits beside it)."""
        os.replace(self.path, dest)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def read_rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) read back with a plain read (not a map)."""
        if not 0 <= lo <= hi <= self.shape[0]:
            raise ValueError(f"rows [{lo}, {hi}) are outside the {self.shape[0]} rows of {self.path}")
        row = int(np.prod(self.shape[1:], dtype=np.int64))
        offset = len(npy_header(shape=self.shape, dtype=self.dtype)) + lo * row * self.dtype.itemsize
        flat = np.fromfile(self.path, dtype=self.dtype, count=(hi - lo) * row, offset=offset)
        return flat.reshape((hi - lo, *self.shape[1:]))


class NpyRowWriter:
    """Write an array of ``shape`` (rows first) and ``dtype`` to ``temporary_path(path)``, rows in
    order: ``write(rows)`` appends (converting to ``dtype``), ``finish()`` checks that every row
    came, fsyncs, and returns the :class:`StreamedNpy`. Used as a context manager, the file is
    removed when the block raises. ``count_nonfinite`` counts NaN and infinite values as rows
    arrive, so that a check on them needs no second pass."""

    def __init__(self, path: Path, *, shape: tuple, dtype, count_nonfinite: bool = False):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) < 1:
            raise ValueError(f"an array written by rows needs at least one axis, got shape {self.shape}")
        header = npy_header(shape=self.shape, dtype=self.dtype)
        self.path = temporary_path(path)
        self.rows = 0
        self.n_nonfinite = 0
        self.count_nonfinite = bool(count_nonfinite) and self.dtype.kind in "fc"
        self._file = open(self.path, "wb")  # noqa: SIM115  closed by finish or discard
        try:
            self._file.write(header)
        except BaseException:
            self.discard()
            raise

    def write(self, rows) -> None:
        if self._file is None:
            raise ValueError(f"{self.path.name}: rows written after the file was finished or discarded")
        a = np.asarray(rows)
        if a.shape[1:] != self.shape[1:] or a.ndim != len(self.shape):
            raise ValueError(
                f"{self.path.name}: rows of shape {a.shape} do not fit an array of shape {self.shape} "
                f"(rows must be (m, {', '.join(map(str, self.shape[1:]))}))"
            )
        if self.rows + len(a) > self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.rows + len(a)} rows written for an array of {self.shape[0]}")
        if a.dtype.kind not in "biuf" and a.size:
            raise ValueError(f"{self.path.name}: rows must hold numbers, got dtype {a.dtype}")
        a = np.ascontiguousarray(a, dtype=self.dtype)
        if self.count_nonfinite:
            self.n_nonfinite += int(a.size - np.count_nonzero(np.isfinite(a)))
        self._file.write(a.reshape(-1).view(np.uint8))
        self.rows += len(a)

    def finish(self) -> StreamedNpy:
        if self._file is None:
            raise ValueError(f"{self.path.name}: finished twice, or after it was discarded")
        if self.rows != self.shape[0]:
            n = self.rows
            self.discard()
            raise ValueError(f"{self.path.name}: {n} rows written of the {self.shape[0]} announced")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except BaseException:
            self.discard()
            raise
        self._file = None
        return StreamedNpy(self.path, self.shape, self.dtype, self.n_nonfinite)

    def discard(self) -> None:
        """Close and remove the temporary file (nothing when it was already renamed)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> NpyRowWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.discard()


def save_streamed(path: Path, array, *, block_rows: int = 1 << 16) -> StreamedNpy:
    """``array`` written by blocks of rows through :class:`NpyRowWriter`, its non-finite values
    counted."""
    a = np.asarray(array)
    with NpyRowWriter(path, shape=a.shape, dtype=a.dtype, count_nonfinite=True) as w:
        for lo in range(0, len(a), block_rows):
            w.write(a[lo : lo + block_rows])
        return w.finish()
