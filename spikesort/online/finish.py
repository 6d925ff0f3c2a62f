"""At the stop: every spike emitted (OUT/online/spikes.csv) becomes a complete Phy folder in OUT,
with metrics and labels, through the offline export step."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from spikesort.params import Params
from spikesort.pipeline import checkpoints
from spikesort.pipeline.run import RUN_FILE, make_run, run_record
from spikesort.pipeline.state import Curated, Detected, Preprocessed, recording_info
from spikesort.pipeline.steps import _export
from spikesort.stages.curate import remove_duplicates
from spikesort.stages.detect import Detections
from spikesort.stages.match import MatchedSpikes
from spikesort.stages.templates import build_templates

from .emit import read_csv
from .model import OnlineModel

log = logging.getLogger(__name__)


def write_phy_folder(
    out: Path,
    *,
    recording,
    model: OnlineModel,
    n_samples: int,
    csv_path: Path,
    traces_path: Path,
    params: Params,
    extra: dict | None = None,
):
    """Write the Phy folder of the online run into ``out``; returns the SortingResult.

    Unit ids stay those emitted; each unit's template is rebuilt from all its spikes (the median
    waveform, as the offline curate step does)."""
    info = dataclasses.replace(recording_info(recording), n_samples=int(n_samples))
    reads = checkpoints.ParamReads(params)
    run = make_run(recording, params=reads, store_path=traces_path, progress=False, info=info)
    times, units, amps, _ = read_csv(csv_path)
    keep = times < n_samples
    order = np.lexsort((units[keep], times[keep]))
    spikes = MatchedSpikes(times[keep][order], units[keep][order], amps[keep][order], amps[keep][order])
    fs = info.sampling_rate_hz
    spikes = remove_duplicates(spikes, window=int(round(params.duplicate_ms * fs / 1000)))
    k = model.n_units
    templates = build_templates(
        run.store,
        spikes.times,
        spikes.templates,
        n_units=k,
        pre=run.pre,
        nt=run.nt,
        rng=np.random.default_rng([params.seed, 99]),
        n_jobs=run.n_jobs,
    )
    # a unit whose spikes are all outside the store (none here) keeps the template it was matched with
    empty = np.bincount(spikes.templates, minlength=k) == 0
    if empty.any():
        dense = templates.dense.copy()
        dense[empty] = model.dense[empty]
        from spikesort.stages.templates import sparsify

        templates = sparsify(dense, pre=run.pre)
    m = model.bases.shape[0]
    det = Detected(sign=model.sign, bases=model.bases, filter_sd=model.filter_sd, spikes=Detections.empty(1, m))
    prep = Preprocessed(model=model.prep, saturated=np.zeros((0, 2), np.int64))
    result = _export(run, out, prep=prep, det=det, cur=Curated(spikes=spikes, templates=templates))
    checkpoints.write_json_atomic(
        out / RUN_FILE,
        run_record(
            params=params,
            info=info,
            result=result,
            bad_reasons=model.prep.bad_reasons,
            saturated_s=[],
            timings_s={},
            peak_rss_mb={},
            reused_stages=[],
            extra={"online": extra or {}},
        ),
    )
    log.info(
        "Phy folder written: %d units, %d spikes in %.1f s of recording",
        result.n_units,
        len(result.spike_times),
        info.duration_s,
    )
    return result
