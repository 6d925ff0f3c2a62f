"""The online run's whitened traces, without a second copy of the recording on disk.

- :class:`RingStore`: the most recent whitened traces, in a file of fixed size (sample s lives at
  slot s % capacity). The warm-up's sort reads it, and so do new units' templates (the pool's
  last ``pool_s``). On 384 channels at 30 kHz a second holds 23 MB: a full copy of a 30-minute
  session would take 41.5 GB beside the recording, the ring a few GB whatever the length.
- :class:`RawWhitened`: whitened traces computed from the raw recording when read, for the Phy
  folder written at the stop (its features and templates need every spike's neighbourhood).

Both offer what the offline steps read from ``spikesort.pipeline.traces.TraceStore``:
``read(start, stop)``, ``snippets(times, pre=, nt=, channels=)``, ``n_samples``, ``n_channels``.
:func:`whiten` is the one preprocessing of raw samples the warm-up, the stream and the stop share.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from spikesort.kernels.preprocess import quantize_int16
from spikesort.pipeline.traces import SCALE, mapped_windows
from spikesort.stages import saturation
from spikesort.stages.preprocess import PreprocessModel, preprocess_chunk


def whiten(raw: np.ndarray, *, model: PreprocessModel, rails, pad: int) -> np.ndarray:
    """Raw samples (n, C) float32 -> whitened float32, with saturated stretches zeroed as the
    offline preprocess step zeroes them (every channel, ``pad`` samples around a clipped one)."""
    w = preprocess_chunk(raw, model=model)
    if rails is not None:
        clipped = saturation.saturated_mask(raw, rails=rails, channels=np.flatnonzero(model.good_channels), pad=pad)
        if clipped.any():
            w[clipped] = 0
    return w


class Whitener:
    """Whitened samples of the growing file (``source``), computed in pieces side by side on
    ``n_jobs`` threads (the kernels release the GIL), each read with ``margin`` samples of context."""

    def __init__(self, source, *, model: PreprocessModel, margin: int, n_jobs: int, min_piece: int):
        self.source, self.model, self.margin = source, model, int(margin)
        self.rails = saturation.rails(source.info.dtype)
        self.pad = int(round(saturation.PAD_MS * source.info.sampling_rate_hz / 1000))
        self.n_jobs, self.min_piece = max(1, int(n_jobs)), max(1, int(min_piece))
        self.workers = (
            ThreadPoolExecutor(self.n_jobs, thread_name_prefix="spikesort-online") if self.n_jobs > 1 else None
        )
        from threadpoolctl import ThreadpoolController

        self.blas = ThreadpoolController()

    def pieces(self, start: int, stop: int) -> list[tuple[int, int]]:
        """[start, stop) cut into one piece per thread (one piece when they would be too short)."""
        k = self.n_jobs if stop - start >= self.n_jobs * self.min_piece else 1
        edges = np.linspace(start, stop, k + 1).round().astype(np.int64)
        return list(zip(edges[:-1].tolist(), edges[1:].tolist()))

    def map(self, fn, items: list) -> list:
        """``fn(*item)`` for every item, side by side; results in order."""
        if self.workers is None or len(items) == 1:
            return [fn(*it) for it in items]
        with self.blas.limit(limits=1, user_api="blas"):  # one BLAS thread per piece: no oversubscription
            return list(self.workers.map(lambda it: fn(*it), items))

    def whitened(self, start: int, stop: int, n: int) -> tuple[np.ndarray, int]:
        """(whitened samples [start - margin, stop + margin) as far as the file's ``n`` go, their first sample)."""
        rs, re = max(0, start - self.margin), min(n, stop + self.margin)
        return whiten(self.source.read(rs, re), model=self.model, rails=self.rails, pad=self.pad), rs

    def into(self, store, start: int, stop: int, n: int) -> None:
        """Whiten samples [start, stop) into ``store``."""

        def one(a, b):
            w, rs = self.whitened(a, b, n)
            store.write(a, w[a - rs : b - rs])

        self.map(one, self.pieces(start, stop))
        store.n_samples = max(store.n_samples, stop)

    def close(self) -> None:
        if self.workers is not None:
            self.workers.shutdown(wait=True)


def _zero_outside(times: np.ndarray, *, pre: int, nt: int, n_samples: int) -> np.ndarray:
    """True for windows inside [0, n_samples), as TraceStore.snippets reads them (others are zero)."""
    start = times - pre
    return (start >= 0) & (start + nt <= n_samples)


class RingStore:
    """Whitened traces as scaled int16 (the trace store's format) in a file of ``capacity``
    samples. Only the last ``capacity`` samples written can be read back."""

    def __init__(self, path, *, capacity: int, n_channels: int, n_samples: int = 0):
        self.path = Path(path)
        self.capacity = int(capacity)
        self.n_channels = int(n_channels)
        self.n_samples = int(n_samples)  # samples [0, n_samples) have been written

    @property
    def frame_bytes(self) -> int:
        return 2 * self.n_channels

    def create(self) -> None:
        """Make the file (sparse: its blocks are allocated as they are written)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as fh:
            fh.truncate(self.capacity * self.frame_bytes)

    def _spans(self, start: int, stop: int):
        """(slot, offset in the block, length) pieces of samples [start, stop), split at the wrap."""
        s = start
        while s < stop:
            slot = s % self.capacity
            n = min(stop - s, self.capacity - slot)
            yield slot, s - start, n
            s += n

    def write(self, start: int, block: np.ndarray) -> None:
        if len(block) > self.capacity:
            raise ValueError(f"a block of {len(block)} samples does not fit a ring of {self.capacity}")
        q = np.ascontiguousarray(quantize_int16(np.ascontiguousarray(block, dtype=np.float32), np.float32(SCALE)))
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for slot, off, n in self._spans(start, start + len(q)):
                os.pwrite(fd, q[off : off + n].tobytes(), slot * self.frame_bytes)
        finally:
            os.close(fd)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Whitened float32 traces of samples [start, stop) (clipped to what was written)."""
        start, stop = max(0, int(start)), min(self.n_samples, int(stop))
        if start < self.n_samples - self.capacity:
            raise ValueError(
                f"samples from {start} were overwritten: the ring holds the last {self.capacity} of {self.n_samples}"
            )
        out = np.empty((max(0, stop - start), self.n_channels), np.int16)
        with open(self.path, "rb") as fh:
            for slot, off, n in self._spans(start, stop):
                fh.seek(slot * self.frame_bytes)
                out[off : off + n] = np.frombuffer(fh.read(n * self.frame_bytes), np.int16).reshape(n, -1)
        return out.astype(np.float32) * np.float32(1.0 / SCALE)

    def snippets(self, times: np.ndarray, *, pre: int, nt: int, channels: np.ndarray | None = None) -> np.ndarray:
        """(n, nt, C') windows starting at ``times - pre``; windows that cross an edge are zero."""
        times = np.asarray(times, dtype=np.int64)
        chans = np.arange(self.n_channels) if channels is None else np.asarray(channels, dtype=np.int64)
        out = np.zeros((len(times), nt, len(chans)), dtype=np.float32)
        inside = _zero_outside(times, pre=pre, nt=nt, n_samples=self.n_samples)
        slot = (times - pre) % self.capacity
        flat = inside & (slot + nt <= self.capacity)  # windows that do not cross the wrap
        if flat.any():
            idx = np.flatnonzero(flat)
            part = np.zeros((len(idx), nt, len(chans)), dtype=np.float32)
            mapped_windows(
                self.path, n_rows=self.capacity, n_channels=self.n_channels, starts=slot[idx], channels=chans, out=part
            )
            out[idx] = part
        for i in np.flatnonzero(inside & ~flat):
            out[i] = self.read(times[i] - pre, times[i] - pre + nt)[:, chans]
        return out


class RawWhitened:
    """Whitened traces of the raw recording's first ``n_samples``, computed when read (by
    ``whitener``, with its margin of context each side)."""

    def __init__(self, whitener: Whitener, *, n_samples: int, n_channels: int, max_read: int):
        self.whitener = whitener
        self.n_samples, self.n_channels, self.max_read = int(n_samples), int(n_channels), int(max_read)
        self.path = None

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, int(start)), min(self.n_samples, int(stop))
        w, rs = self.whitener.whitened(start, stop, self.n_samples)
        return w[start - rs : stop - rs]

    def snippets(self, times: np.ndarray, *, pre: int, nt: int, channels: np.ndarray | None = None) -> np.ndarray:
        """As TraceStore.snippets. Nearby windows are whitened together (one read per group of
        windows less than a margin apart, at most ~1 s long)."""
        times = np.asarray(times, dtype=np.int64)
        chans = np.arange(self.n_channels) if channels is None else np.asarray(channels, dtype=np.int64)
        out = np.zeros((len(times), nt, len(chans)), dtype=np.float32)
        idx = np.flatnonzero(_zero_outside(times, pre=pre, nt=nt, n_samples=self.n_samples))
        if not len(idx):
            return out
        idx = idx[np.argsort(times[idx], kind="stable")]
        starts = times[idx] - pre
        # a new group where the next window starts over a margin after the last ends, or ~1 s on
        breaks = np.flatnonzero(np.diff(starts) > nt + self.whitener.margin) + 1
        for group in np.split(np.arange(len(idx)), breaks):
            for part in np.array_split(group, int(starts[group[-1]] - starts[group[0]]) // self.max_read + 1):
                lo, hi = int(starts[part[0]]), int(starts[part[-1]]) + nt
                w = self.read(lo, hi)
                for j in part:
                    s = int(starts[j]) - lo
                    out[idx[j]] = w[s : s + nt][:, chans]
        return out
