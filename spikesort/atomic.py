"""One way to write a file that is never seen half-written: the Phy files and the checkpoints use it."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a hidden temporary file in the same folder, fsync it, rename it into place.

    The temporary name starts with '.' and ends with '.tmp' so that a file left by a hard
    kill matches none of the globs phylib uses ('spike_*.npy', '*.tsv', 'templates*.npy', ...).
    """
    import uuid

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
