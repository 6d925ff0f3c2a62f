"""The warm-up: the offline pipeline's steps on the first stretch of the recording give the
preprocessing model, the detection filter and the first units' templates.

It is done in two parts so that little is left to do once the stretch is complete (every second
the warm-up's sort takes at the end is a second of recording whose spikes come out late):

1. at ``FIT_FRACTION`` of the stretch, the offline preprocess and detect steps on what exists:
   the filter, bad channels and whitening fitted on its sampled blocks, the detection filter
   (sign, temporal bases) learnt on its first blocks, and its samples whitened and detected; the
   runner then whitens and detects the rest of the stretch as it is written
   (:class:`StretchDetector`);
2. once the stretch is complete, the offline cluster, match and curate steps on its whitened
   traces and detections.

Drift is not corrected here: the stream's traces are not corrected either, it moves the
templates instead (see :mod:`.drift`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from spikesort.params import Params
from spikesort.pipeline import checkpoints
from spikesort.pipeline.curation import _curate
from spikesort.pipeline.run import make_run
from spikesort.pipeline.state import Detected, Preprocessed, _neighbors
from spikesort.pipeline.steps import _cluster, _detect, _match, _preprocess
from spikesort.stages.detect import Detections, detect_block, envelope_bank
from spikesort.stages.match import MatchedSpikes

from .model import OnlineModel

log = logging.getLogger(__name__)

# the preprocessing is fitted once this fraction of the warm-up stretch exists (on blocks sampled
# across it, as the offline step samples the whole recording), but not on fewer one-second blocks
# than the offline step would sample on the whole stretch (whitening_n_chunks): on a 15 s warm-up,
# a fit on 7 blocks made a noisier whitening, and one unit of the zigzag test split in two
FIT_FRACTION = 0.5


@dataclass
class Warmed:
    model: OnlineModel
    spikes: MatchedSpikes  # the warm-up stretch's spikes, unit = template index


def _run(recording, *, params: Params, store, progress):
    reads = checkpoints.ParamReads(Params.from_dict({"drift": "none"}, base=params))
    run = make_run(recording, params=reads, store_path=store.path, progress=progress)
    return dataclasses.replace(run, store=store)


def fit(recording, *, params: Params, store, progress=False) -> Preprocessed:
    """The offline preprocess step on ``recording`` (the part of the stretch written so far):
    the fitted model, and its samples whitened into ``store`` (a RingStore)."""
    run = _run(recording, params=params, store=store, progress=progress)
    prep = _preprocess(run)
    store.n_samples = run.info.n_samples
    return prep


class StretchDetector:
    """The offline detect step on the part of the stretch that exists (``run``, its whitened
    traces in ``store``), then the same detection on the rest as it is whitened (:meth:`advance`)."""

    def __init__(self, run, *, prep: Preprocessed, store, margin: int):
        self.det = _detect(run, prep=prep)
        self.store, self.margin = store, margin
        # the part's last margin was whitened without its right context: detected again later
        self.until = max(0, run.info.n_samples - margin)
        self.parts = [self.det.spikes.take(np.flatnonzero(self.det.spikes.times < self.until))]
        p, info = run.params, run.info
        self.peak_nb, self.feat_nb = _neighbors(run, prep.model.good_channels)
        self.bank = envelope_bank(
            positions_um=info.positions_um,
            neighbors=self.feat_nb,
            sigmas_um=p.envelope_sigmas_um,
            center_radius_um=p.detect_radius_um,
        )
        self.run = run

    def advance(self, stop: int) -> None:
        """Detect samples up to ``stop`` (the store must hold them and a margin after, or end there)."""
        if stop <= self.until:
            return
        p, d = self.run.params, self.det
        start = max(0, self.until - self.margin)
        x = self.store.read(start, stop + self.margin)
        self.parts.append(
            detect_block(
                x,
                keep_start=self.until - start,
                keep_stop=stop - start,
                offset=start,
                sign=d.sign,
                threshold=p.detect_threshold,
                universal_threshold=p.universal_threshold,
                peak_neighbors=self.peak_nb,
                feature_neighbors=self.feat_nb,
                bank=self.bank,
                bases=d.bases,
                pre=self.run.pre,
                exclusion=self.run.exclusion,
                positions_um=self.run.info.positions_um,
                filter_sd=d.filter_sd,
            )
        )
        self.until = stop

    def result(self) -> Detected:
        spikes = Detections.concat(self.parts)
        log.info("%d spikes detected in the warm-up stretch (sign %+d)", len(spikes), self.det.sign)
        return Detected(
            sign=self.det.sign, bases=self.det.bases, filter_sd=self.det.filter_sd, spikes=spikes, n_spikes=len(spikes)
        )


def sort_stretch(recording, *, prep: Preprocessed, det: Detected, params: Params, store, progress=False) -> Warmed:
    """The offline cluster, match and curate steps on ``recording`` (the whole warm-up stretch),
    whose whitened traces ``store`` holds and whose spikes ``det`` are."""
    run = _run(recording, params=params, store=store, progress=progress)
    clu = _cluster(run, prep=prep, det=det)
    mat = _match(run, prep=prep, det=det, clu=clu)
    cur = _curate(run, prep=prep, clu=clu, mat=mat, sign=det.sign)
    t = cur.templates
    log.info("warm-up: %d units from %.1f s", t.n_templates, run.info.duration_s)
    model = OnlineModel(
        prep=prep.model,
        sign=det.sign,
        bases=det.bases,
        filter_sd=det.filter_sd,
        dense=t.dense.astype(np.float32),
        pre=run.pre,
    )
    return Warmed(model=model, spikes=cur.spikes)
