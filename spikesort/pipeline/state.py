"""What the stage steps share: the recording's geometry, the run's sizes and trace store (``_Run``),
the per-stage timing log, the seeded random streams, and the result each step hands on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from spikesort.chunks import map_chunks
from spikesort.errors import SpikesortError, raise_if_stop_requested
from spikesort.memory import PeakRss, release_free_heap
from spikesort.stages.detect import (
    Detections,
)
from spikesort.stages.geometry import neighbor_table
from spikesort.stages.match import MatchedSpikes
from spikesort.stages.preprocess import PreprocessModel
from spikesort.stages.templates import Templates

from . import checkpoints
from .traces import CompressedTraceStore, TraceStore

log = logging.getLogger(__name__)


@dataclass
class RecordingInfo:
    sampling_rate_hz: float
    n_samples: int
    n_channels: int
    positions_um: np.ndarray
    shank_ids: np.ndarray
    gains_to_uv: np.ndarray  # (C,) multiply recording units by this to get µV (1 when unknown)
    has_gain: bool

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate_hz


def recording_info(recording) -> RecordingInfo:
    if recording.get_num_segments() != 1:
        raise SpikesortError(
            "only single-segment recordings are supported: concatenate segments first "
            "(spikeinterface.concatenate_recordings)"
        )
    try:
        pos = np.asarray(recording.get_channel_locations(), dtype=np.float64)
    except Exception:
        raise SpikesortError("the recording has no probe geometry: pass --probe") from None
    if pos.ndim != 2 or pos.shape[1] < 2:
        raise SpikesortError("the probe has no 2D contact positions")
    pos = pos[:, :2]
    groups = recording.get_channel_groups()
    shanks = np.unique(groups, return_inverse=True)[1] if groups is not None else np.zeros(len(pos), np.int64)
    has_gain = bool(recording.has_scaleable_traces())
    gains = np.asarray(recording.get_channel_gains(), dtype=np.float64) if has_gain else np.ones(len(pos))
    return RecordingInfo(
        sampling_rate_hz=float(recording.get_sampling_frequency()),
        n_samples=int(recording.get_num_samples(0)),
        n_channels=int(recording.get_num_channels()),
        positions_um=pos,
        shank_ids=np.asarray(shanks, dtype=np.int64),
        gains_to_uv=gains,
        has_gain=has_gain,
    )


def _read_raw(recording, start: int, stop: int) -> np.ndarray:
    x = recording.get_traces(start_frame=start, end_frame=stop, return_in_uV=False)
    integer = np.asarray(x).dtype.kind in "iub"
    x = np.asarray(x, dtype=np.float32)
    if not integer and not np.isfinite(x).all():
        raise SpikesortError(f"the recording holds NaN or infinite values (samples {start}-{stop})")
    return x


@dataclass
class StageLog:
    """Wall seconds, peak resident memory (MB) and seconds spent reading the trace store (summed
    over threads) of each stage, for the run record."""

    timings_s: dict
    peak_rss_mb: dict
    store_read_s: dict = field(default_factory=dict)
    store: object = None  # the run's trace store, whose read_s the stages share out


def _stage(stages: StageLog, name: str):
    class _T:
        def __enter__(self):
            raise_if_stop_requested()
            self.t0 = time.perf_counter()
            self.read0 = getattr(stages.store, "read_s", 0.0)
            self.rss = PeakRss().__enter__()
            log.info("stage %s ...", name)

        def __exit__(self, *exc):
            self.rss.__exit__(*exc)
            release_free_heap()  # what the stage freed is not held through the next ones
            stages.timings_s[name] = time.perf_counter() - self.t0
            stages.peak_rss_mb[name] = round(self.rss.peak_mb, 1)
            if stages.store is not None:
                stages.store_read_s[name] = round(stages.store.read_s - self.read0, 2)
            if exc[0] is None:
                log.info(
                    "stage %s done in %.1f s (peak memory %.0f MB)", name, stages.timings_s[name], self.rss.peak_mb
                )
                raise_if_stop_requested()

    return _T()


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """The random stream of one stage: the same whether or not earlier stages came from checkpoints."""
    return np.random.default_rng([int(seed), checkpoints.STAGES.index(stage)])


# --------------------------------------------------------------------------- stage results


@dataclass
class Preprocessed:
    model: PreprocessModel
    saturated: np.ndarray  # (k, 2) int64 [start, stop) samples left out as clipped


@dataclass
class Detected:
    sign: int
    bases: np.ndarray  # temporal bases (nt, n_components)
    filter_sd: np.ndarray
    spikes: Detections  # the spikes clustering reads: at most max_spikes_per_channel per peak channel
    n_spikes: int  # spikes detected in all


@dataclass
class Clustered:
    templates: Templates  # the templates matching fits


@dataclass
class Matched:
    spikes: MatchedSpikes


@dataclass
class Curated:
    spikes: MatchedSpikes
    templates: Templates  # final, one per unit


@dataclass
class _Run:
    """What every stage reads: the recording, its geometry, the sizes derived from the parameters."""

    recording: object
    info: RecordingInfo
    params: checkpoints.ParamReads
    n_jobs: int
    chunks: list
    preprocess_chunks: list  # a grid of its own: see run.PREPROCESS_CHUNK_S
    pre: int
    nt: int
    exclusion: int
    store: TraceStore | CompressedTraceStore
    tq: object
    # spikes found on the final traces by the drift estimation pass, handed to the detect stage
    detected: Detected | None = None

    def map(self, fn, items, desc: str, stage: str):
        """map_chunks over ``items`` with a progress bar, and the test kill hook after each item."""
        results = map_chunks(fn, items, n_jobs=self.n_jobs, progress=self.tq(len(items), desc))
        try:
            for i, result in enumerate(results, start=1):
                checkpoints.kill_point(f"{stage}:{i}")
                raise_if_stop_requested()  # a Ctrl-C deferred or swallowed stops at the next chunk
                yield result
        finally:
            results.close()  # on an interrupt, wait here for the chunks in flight to finish


def _sample_blocks(run: _Run) -> tuple[int, np.ndarray]:
    """Length and starts of the one-second blocks sampled across the recording to fit models."""
    n, fs = run.info.n_samples, run.info.sampling_rate_hz
    block = min(n, int(fs))
    starts = np.unique(
        np.linspace(0, n - block, min(run.params.whitening_n_chunks, max(1, n // block))).astype(np.int64)
    )
    return block, starts


def _neighbors(run: _Run, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour tables of the good channels: for peak detection, and for features."""
    info, p = run.info, run.params
    peak_nb = neighbor_table(
        positions_um=info.positions_um, radius_um=p.detect_radius_um, good_channels=good, shank_ids=info.shank_ids
    )
    feat_nb = neighbor_table(
        positions_um=info.positions_um,
        radius_um=p.feature_radius_um,
        good_channels=good,
        shank_ids=info.shank_ids,
        min_neighbors=min(4, int(good.sum())),
    )
    return peak_nb, feat_nb


class _RawBlocks:
    """The raw blocks preprocessing is fitted on, read when indexed (see fit_preprocessing)."""

    def __init__(self, recording, *, starts: np.ndarray, length: int):
        self.recording, self.starts, self.length = recording, starts, length

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> np.ndarray:
        s = int(self.starts[i])
        return _read_raw(self.recording, s, s + self.length)
