"""What real rigs add to a clean recording, for the ``dirty`` family: mains hum with harmonics, a
dead channel, a noisy channel, movement artefacts seen on every channel and short stretches
where the amplifier saturates (clipped at the int16 rails of the stored file).

``DirtyRecording`` wraps a recording in µV. Everything it adds is a function of the absolute
sample index and the seed, so any chunk, read by any worker in any order, gets the same values.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from spikeinterface.preprocessing.basepreprocessor import BasePreprocessor, BasePreprocessorSegment

# the noisy channel's extra noise is drawn per block of this many samples (one seed per block)
NOISE_BLOCK = 30_000


@dataclasses.dataclass(frozen=True)
class Dirt:
    """The impairments, drawn from ``seed`` for a recording of ``num_channels`` and ``duration_s``."""

    line_hz: float
    line_amplitudes_uv: tuple  # per harmonic k = 1, 2, ...: amplitude of k * line_hz
    line_phases: tuple
    line_gains: tuple  # per channel: the hum differs a little between channels, so a common reference leaves some
    dead_channel: int
    noisy_channel: int
    noisy_sd_uv: float
    artefact_times_s: tuple
    artefact_amplitudes_uv: tuple  # signed
    artefact_rise_ms: tuple
    artefact_decay_ms: tuple
    artefact_gains: tuple  # per channel
    saturation_times_s: tuple
    saturation_durations_s: tuple
    saturation_signs: tuple
    rail_uv: float  # the stored file's full scale: traces are clipped to ±rail_uv
    seed: int

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Dirt:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def draw_dirt(
    *,
    num_channels: int,
    duration_s: float,
    seed: int,
    rail_uv: float,
    line_hz: float = 50.0,
    line_uv: float = 150.0,
    harmonics: int = 10,
    noisy_sd_uv: float = 50.0,
    artefacts_per_min: float = 6.0,
    saturations: int = 5,
    bad_channels: bool = True,
) -> Dirt:
    """Seeded impairments. The hum's k-th harmonic has amplitude ``line_uv / k``; movement
    artefacts are 0.5-3 mV, rising in 0.2-1 ms and decaying in 5-40 ms; saturations last
    20-150 ms. Dead and noisy channels are away from the probe's ends (channels 1..C-2); without
    ``bad_channels`` there are none (-1), the rest drawn as with them."""
    if num_channels < 4:
        raise ValueError("a dirty recording needs at least 4 channels (a dead and a noisy one among them)")
    rng = np.random.default_rng([seed, 15])
    k = np.arange(1, harmonics + 1)
    dead, noisy = rng.choice(np.arange(1, num_channels - 1), size=2, replace=False)
    n_art = int(round(artefacts_per_min * duration_s / 60))
    # keep events off the first and last second, so every chunk boundary case stays simple
    art_t = np.sort(rng.uniform(1.0, duration_s - 1.0, n_art))
    sat_t = np.sort(rng.uniform(1.0, duration_s - 1.0, saturations))
    return Dirt(
        line_hz=float(line_hz),
        line_amplitudes_uv=tuple(float(x) for x in line_uv / k),
        line_phases=tuple(float(x) for x in rng.uniform(0, 2 * np.pi, harmonics)),
        line_gains=tuple(float(x) for x in rng.uniform(0.7, 1.3, num_channels)),
        dead_channel=int(dead) if bad_channels else -1,
        noisy_channel=int(noisy) if bad_channels else -1,
        noisy_sd_uv=float(noisy_sd_uv),
        artefact_times_s=tuple(float(x) for x in art_t),
        artefact_amplitudes_uv=tuple(float(x) for x in rng.uniform(500, 3000, n_art) * rng.choice([-1, 1], n_art)),
        artefact_rise_ms=tuple(float(x) for x in rng.uniform(0.2, 1.0, n_art)),
        artefact_decay_ms=tuple(float(x) for x in rng.uniform(5.0, 40.0, n_art)),
        artefact_gains=tuple(float(x) for x in rng.uniform(0.7, 1.3, num_channels)),
        saturation_times_s=tuple(float(x) for x in sat_t),
        saturation_durations_s=tuple(float(x) for x in rng.uniform(0.02, 0.15, saturations)),
        saturation_signs=tuple(float(x) for x in rng.choice([-1.0, 1.0], saturations)),
        rail_uv=float(rail_uv),
        seed=int(seed),
    )


def artefact_waveform(t_s: np.ndarray, *, rise_ms: float, decay_ms: float) -> np.ndarray:
    """A movement artefact of peak 1 at ``t = rise``: a linear rise from 0, then an exponential
    decay; 0 before 0 and after 10 decay constants."""
    rise, decay = rise_ms / 1000, decay_ms / 1000
    out = np.zeros(t_s.shape, dtype=np.float64)
    up = (t_s >= 0) & (t_s < rise)
    out[up] = t_s[up] / rise
    down = (t_s >= rise) & (t_s < rise + 10 * decay)
    out[down] = np.exp(-(t_s[down] - rise) / decay)
    return out


def dirt_traces(dirt: Dirt, *, start: int, end: int, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """(added, saturation): what the dirt adds to frames [start, end) of every channel, in µV, and
    per frame +1 / -1 where the amplifier saturates high / low, else 0."""
    n = end - start
    t = np.arange(start, end, dtype=np.float64) / fs
    hum = np.zeros(n)
    for k, (a, ph) in enumerate(zip(dirt.line_amplitudes_uv, dirt.line_phases, strict=True), start=1):
        hum += a * np.sin(2 * np.pi * k * dirt.line_hz * t + ph)
    added = hum[:, None] * np.asarray(dirt.line_gains)[None, :]
    art = np.zeros(n)
    for t0, amp, rise, decay in zip(
        dirt.artefact_times_s, dirt.artefact_amplitudes_uv, dirt.artefact_rise_ms, dirt.artefact_decay_ms, strict=True
    ):
        if n and t0 <= t[-1] and t0 + (rise + 10 * decay) / 1000 >= t[0]:
            art += amp * artefact_waveform(t - t0, rise_ms=rise, decay_ms=decay)
    added += art[:, None] * np.asarray(dirt.artefact_gains)[None, :]
    saturation = np.zeros(n)
    for t0, dur, sign in zip(dirt.saturation_times_s, dirt.saturation_durations_s, dirt.saturation_signs, strict=True):
        saturation[(t >= t0) & (t < t0 + dur)] = sign
    # the noisy channel: white noise drawn per fixed block, so it does not depend on the chunking
    if n and dirt.noisy_channel >= 0:
        b0, b1 = start // NOISE_BLOCK, (end - 1) // NOISE_BLOCK
        noise = np.concatenate(
            [
                np.random.default_rng([dirt.seed, 16, b]).normal(0, dirt.noisy_sd_uv, NOISE_BLOCK)
                for b in range(b0, b1 + 1)
            ]
        )
        added[:, dirt.noisy_channel] += noise[start - b0 * NOISE_BLOCK : end - b0 * NOISE_BLOCK]
    return added, saturation


class DirtyRecordingSegment(BasePreprocessorSegment):
    def __init__(self, parent_segment, *, dirt: Dirt, fs: float):
        BasePreprocessorSegment.__init__(self, parent_segment)
        self.dirt = dirt
        self.fs = fs

    def get_traces(self, start_frame, end_frame, channel_indices):
        start = 0 if start_frame is None else int(start_frame)
        end = self.get_num_samples() if end_frame is None else int(end_frame)
        x = self.parent_recording_segment.get_traces(start, end, slice(None)).astype(np.float64)
        added, saturation = dirt_traces(self.dirt, start=start, end=end, fs=self.fs)
        x += added
        if self.dirt.dead_channel >= 0:
            x[:, self.dirt.dead_channel] = 0.0  # a broken contact: flat
        rail = self.dirt.rail_uv
        x[saturation != 0] = saturation[saturation != 0, None] * rail  # every channel pinned at a rail
        np.clip(x, -rail, rail, out=x)
        return x[:, channel_indices].astype(np.float32)


class DirtyRecording(BasePreprocessor):
    """``recording`` (µV) with ``dirt`` added; float32 traces clipped to ±dirt.rail_uv."""

    def __init__(self, recording, dirt: dict):
        BasePreprocessor.__init__(self, recording, dtype="float32")
        d = Dirt.from_dict(dirt)
        for seg in recording._recording_segments:
            self.add_recording_segment(DirtyRecordingSegment(seg, dirt=d, fs=recording.get_sampling_frequency()))
        self._kwargs = dict(recording=recording, dirt=d.to_dict())
