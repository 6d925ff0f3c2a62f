"""The warm-up: the offline pipeline's steps on the first stretch of the recording give the
preprocessing model, the detection filter and the first units' templates."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.params import Params
from spikesort.pipeline import checkpoints
from spikesort.pipeline.run import make_run
from spikesort.pipeline.steps import _cluster, _curate, _detect, _match, _preprocess
from spikesort.stages.match import MatchedSpikes

from .model import OnlineModel

log = logging.getLogger(__name__)


@dataclass
class Warmed:
    model: OnlineModel
    spikes: MatchedSpikes  # the warm-up stretch's spikes, unit = template index


def warm_up(recording, *, params: Params, traces_path: Path, progress=False) -> Warmed:
    """Sort ``recording`` (the warm-up stretch) with the offline steps, writing its whitened
    traces to ``traces_path`` (the stream then appends to that file).

    Drift is not corrected here: the stream's traces are not corrected either, it moves the
    templates instead (see :mod:`.drift`)."""
    reads = checkpoints.ParamReads(Params.from_dict({"drift": "none"}, base=params))
    traces_path.parent.mkdir(parents=True, exist_ok=True)
    run = make_run(recording, params=reads, store_path=traces_path, progress=progress)
    prep = _preprocess(run)
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
