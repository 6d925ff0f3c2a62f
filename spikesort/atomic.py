"""Files and folders that are never seen half-written.

:func:`write_atomic` writes one file through a hidden temporary file (the Phy files and the
checkpoints use it); :func:`atomic_destination` yields a temporary path for any writer, a file or
a folder (``spikesort export``, the raw copy of ``spikesort run --export-raw``), and renames it
into place when the writer is done."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a hidden temporary file in the same folder, fsync it, rename it into place.

    The temporary name starts with '.' and ends with '.tmp' so that a file left by a hard
    kill matches none of the globs phylib uses ('spike_*.npy', '*.tsv', 'templates*.npy', ...).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # 'x' also lets the OS apply the umask (mkstemp would force mode 0600)
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_destination(dest: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``dest``; renames it to ``dest`` if the block succeeds (a
    folder already at ``dest`` is deleted first: the caller decided it may be replaced), removes
    it otherwise."""
    dest = Path(dest)
    # hidden, beside the destination (one file system for the rename), same extension (pynwb asks)
    tmp = dest.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{dest.name}")
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
