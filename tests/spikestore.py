"""A trace store for tests of the rules that read spikes' snippets (imported by name: pytest puts
tests/ on sys.path)."""

from __future__ import annotations

import numpy as np


class SpikeStore:
    """Whitened traces made on demand, read as the trace store reads them: white noise plus every
    spike whose waveform reaches into the window (a 300 s recording never sits in memory).

    ``units`` are (times, waveform) pairs; each waveform is (nt, C) with its spike time at
    sample ``peak``. ``sizes``, one array per unit when given, scales each spike's waveform."""

    def __init__(self, units, *, seed: int, peak: int, sizes=None):
        self.times = np.concatenate([t for t, _ in units])
        self.owner = np.concatenate([np.full(len(t), k) for k, (t, _) in enumerate(units)])
        self.size = np.ones(len(self.times)) if sizes is None else np.concatenate(sizes).astype(np.float64)
        order = np.argsort(self.times, kind="stable")
        self.times, self.owner, self.size = self.times[order], self.owner[order], self.size[order]
        self.waveforms = [w for _, w in units]
        self.nt, self.n_channels = self.waveforms[0].shape
        self.peak = peak
        self.rng = np.random.default_rng(seed)

    def snippets(self, times, *, pre, nt, channels=None):
        chans = np.arange(self.n_channels) if channels is None else np.asarray(channels)
        out = self.rng.normal(size=(len(times), nt, self.n_channels)).astype(np.float32)
        for n, t in enumerate(np.asarray(times)):
            start = t - pre
            lo, hi = np.searchsorted(self.times, [start - self.nt + self.peak + 1, start + nt + self.peak])
            for s, k, g in zip(self.times[lo:hi], self.owner[lo:hi], self.size[lo:hi]):
                a = s - self.peak - start  # where the spike's window starts inside this one
                src = slice(max(0, -a), min(self.nt, nt - a))
                out[n, max(0, a) : max(0, a) + src.stop - src.start] += g * self.waveforms[k][src]
        return out[:, :, chans]
