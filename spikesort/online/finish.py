"""At the stop: every spike emitted (OUT/online/spikes.csv) becomes a complete Phy folder in OUT,
with metrics and labels, through the offline export step."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from spikesort.params import Params
from spikesort.pipeline import checkpoints
from spikesort.pipeline.phy_export import _export
from spikesort.pipeline.run import RUN_FILE, make_run, run_record
from spikesort.pipeline.state import Curated, Detected, Preprocessed, recording_info
from spikesort.stages.curate import remove_duplicates
from spikesort.stages.detect import Detections
from spikesort.stages.match import MatchedSpikes
from spikesort.stages.templates import build_templates, sparsify

from .emit import read_csv
from .model import OnlineModel
from .store import RawWhitened, Whitener

log = logging.getLogger(__name__)


# a unit with fewer spikes than this in the ring gets its template from the raw recording instead
MIN_RING_SPIKES = 30
# ...from at most this many of its spikes (each read whitens a short window of the raw file)
MAX_RAW_SPIKES = 100


def write_phy_folder(
    out: Path,
    *,
    recording,
    model: OnlineModel,
    source,
    ring,
    n_samples: int,
    csv_path: Path,
    margin: int,
    params: Params,
    extra: dict | None = None,
):
    """Write the Phy folder of the online run into ``out``; returns the SortingResult.

    Unit ids stay those emitted. The features of every spike need the whitened traces of the
    whole run: they are computed from the recording (``source``, the growing file) as they are
    read, so no copy of them is kept on disk. Each unit's template is the median of up to 300 of
    its spikes in ``ring`` (the last minutes: the waveform as it is now, and nothing to
    recompute), or of up to ``MAX_RAW_SPIKES`` of all its spikes when it fired too little there."""
    info = dataclasses.replace(recording_info(recording), n_samples=int(n_samples))
    reads = checkpoints.ParamReads(params)
    run = make_run(recording, params=reads, store_path=Path(os.devnull), progress=False, info=info)
    whitener = Whitener(source, model=model.prep, margin=margin, n_jobs=1, min_piece=1)
    store = RawWhitened(whitener, n_samples=n_samples, n_channels=info.n_channels, max_read=int(info.sampling_rate_hz))
    run = dataclasses.replace(run, store=store)
    times, units, amps, _ = read_csv(csv_path)
    keep = times < n_samples
    order = np.lexsort((units[keep], times[keep]))
    spikes = MatchedSpikes(times[keep][order], units[keep][order], amps[keep][order], amps[keep][order])
    fs = info.sampling_rate_hz
    spikes = remove_duplicates(spikes, window=int(round(params.duplicate_ms * fs / 1000)))
    k = model.n_units
    ring.n_samples = int(n_samples)
    recent = spikes.times >= max(0, n_samples - ring.capacity) + margin + run.pre
    dense = build_templates(
        ring,
        spikes.times[recent],
        spikes.templates[recent],
        n_units=k,
        pre=run.pre,
        nt=run.nt,
        seed=params.seed,
        n_jobs=run.n_jobs,
    ).dense.copy()
    few = np.bincount(spikes.templates[recent], minlength=k) < MIN_RING_SPIKES
    if few.any():
        sel = np.isin(spikes.templates, np.flatnonzero(few))
        raw = build_templates(
            store,
            spikes.times[sel],
            spikes.templates[sel],
            n_units=k,
            pre=run.pre,
            nt=run.nt,
            seed=params.seed,
            max_spikes=MAX_RAW_SPIKES,
            n_jobs=run.n_jobs,
        )
        dense[few] = raw.dense[few]
    # a unit without spikes keeps the template it was matched with
    empty = np.bincount(spikes.templates, minlength=k) == 0
    dense[empty] = model.dense[empty]
    templates = sparsify(dense, pre=run.pre)
    m = model.bases.shape[0]
    det = Detected(
        sign=model.sign, bases=model.bases, filter_sd=model.filter_sd, spikes=Detections.empty(1, m), n_spikes=0
    )
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
