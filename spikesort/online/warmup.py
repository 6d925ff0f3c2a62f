"""The warm-up: the offline pipeline's steps on the first stretch of the recording give the
preprocessing model, the detection filter and the first units' templates.

It is done in two parts so that little is left to do once the stretch is complete (every second
the warm-up's sort takes at the end is a second of recording whose spikes come out late):

1. at ``FIT_FRACTION`` of the stretch, the offline preprocess step on what exists: it fits the
   filter, bad channels and whitening on its sampled blocks and whitens those samples; the
   runner then whitens the rest of the stretch as it is written;
2. once the stretch is complete, the offline detect, cluster, match and curate steps on its
   whitened traces.

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
from spikesort.pipeline.run import make_run
from spikesort.pipeline.state import Preprocessed
from spikesort.pipeline.steps import _cluster, _curate, _detect, _match, _preprocess
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


def sort_stretch(recording, *, prep: Preprocessed, params: Params, store, progress=False) -> Warmed:
    """The offline detect, cluster, match and curate steps on ``recording`` (the whole warm-up
    stretch), whose whitened traces ``store`` holds."""
    run = _run(recording, params=params, store=store, progress=progress)
    det = _detect(run, prep=prep)
    clu = _cluster(run, prep=prep, det=det)
    mat = _match(run, prep=prep, det=det, clu=clu)
    cur = _curate(run, prep=prep, clu=clu, mat=mat)
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
