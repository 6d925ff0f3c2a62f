"""The preprocessed-traces store: whitened traces written once as scaled int16, read by chunks.

Every stage after preprocessing reads this file instead of re-filtering the raw recording.
Chunks are read with explicit file reads (not a long-lived memmap) so the resident memory
stays at one chunk per worker whatever the recording length.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.kernels.preprocess import gather_windows, quantize_int16

# whitened noise has sd ~ 1; x200 keeps 0.005 sd resolution and +-160 sd range in int16
SCALE = 200.0


class TraceStore:
    def __init__(self, path: str | Path, *, n_samples: int, n_channels: int):
        self.path = Path(path)
        self.n_samples = int(n_samples)
        self.n_channels = int(n_channels)

    @property
    def frame_bytes(self) -> int:
        return 2 * self.n_channels

    def create(self) -> None:
        self.check_space()
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
            fh.write(np.ascontiguousarray(q).tobytes())

    def read(self, start: int, stop: int) -> np.ndarray:
        """Whitened float32 traces of samples [start, stop)."""
        start = max(0, int(start))
        stop = min(self.n_samples, int(stop))
        q = np.fromfile(
            self.path, dtype=np.int16, count=(stop - start) * self.n_channels, offset=start * self.frame_bytes
        )
        return q.reshape(stop - start, self.n_channels).astype(np.float32) * np.float32(1.0 / SCALE)

    def snippets(self, times: np.ndarray, *, pre: int, nt: int, channels: np.ndarray | None = None) -> np.ndarray:
        """(n, nt, C') windows starting at ``times - pre``; windows that cross an edge are zero."""
        mm = np.memmap(self.path, dtype=np.int16, mode="r", shape=(self.n_samples, self.n_channels))
        chans = np.arange(self.n_channels) if channels is None else np.asarray(channels)
        out = np.zeros((len(times), nt, len(chans)), dtype=np.float32)
        gather_windows(
            mm,
            np.asarray(times, dtype=np.int64) - pre,
            np.ascontiguousarray(chans, dtype=np.int64),
            np.float32(1.0 / SCALE),
            out,
        )
        del mm
        return out
