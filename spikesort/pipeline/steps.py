"""The stage steps of a sort up to matching, one function per step (the curation steps after it
are in :mod:`.curation`).

``spikesort.pipeline.run`` calls them in order and saves their results as checkpoints; each step
reads what it needs from ``_Run`` (the recording, its geometry, the sizes derived from the
parameters, the trace store) and the results of earlier steps, and calls the stages' pure
functions (``spikesort.stages``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.stages import saturation
from spikesort.stages.cluster import ClusterSample, cluster_spikes
from spikesort.stages.detect import (
    Detections,
    choose_sign,
    detect_block,
    envelope_bank,
    filtered_noise_sd,
    learn_temporal_bases,
)
from spikesort.stages.drift import MotionPeaks, correct_drift
from spikesort.stages.export import phy_whitening
from spikesort.stages.match import MatchedSpikes, channel_candidates, faint_floors, match_block, match_thresholds
from spikesort.stages.merges import (
    merge_similar_templates,
    relabel,
    snippet_merge_test,
)
from spikesort.stages.preprocess import fit_preprocessing, preprocess_chunk
from spikesort.stages.templates import build_templates, filtered_templates, realigned, template_snr

from .state import (
    Clustered,
    Detected,
    Matched,
    Preprocessed,
    StageLog,
    _neighbors,
    _RawBlocks,
    _read_raw,
    _Run,
    _sample_blocks,
    _stage,
    stage_rng,
)

log = logging.getLogger(__name__)

# a cluster whose trough sits this far from where detection puts spikes' troughs is realigned on it
TROUGH_MS = 0.5
NOISE_BLOCKS = 10  # blocks sampled for the templates' scores on noise


def _preprocess(run: _Run) -> Preprocessed:
    info, p, recording, store = run.info, run.params, run.recording, run.store
    fs = info.sampling_rate_hz
    block, starts = _sample_blocks(run)
    blocks = _RawBlocks(recording, starts=starts, length=block)
    try:
        model = fit_preprocessing(
            blocks,
            sampling_rate_hz=fs,
            positions_um=info.positions_um,
            highpass_hz=p.highpass_hz,
            lowpass_hz=p.lowpass_hz,
            reference=p.common_reference,
            whitening_radius_um=p.whitening_radius_um,
            detect_bad_channels=p.bad_channel_detection,
            n_jobs=run.n_jobs,
        )
    except ValueError as exc:  # no usable channel, a filter above Nyquist: the data's fault
        if isinstance(exc, SpikesortError):
            raise
        raise SpikesortError(f"cannot preprocess the recording: {exc}") from None
    rails = saturation.rails(recording.get_dtype())
    good = np.flatnonzero(model.good_channels)
    pad = int(round(saturation.PAD_MS * fs / 1000))
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.create()

    def pre_fn(ch):
        raw = _read_raw(recording, ch.read_start, ch.read_stop)
        w = preprocess_chunk(raw, model=model)
        clipped = np.zeros(0, bool)
        if rails is not None:
            clipped = saturation.saturated_mask(raw, rails=rails, channels=good, pad=pad)[ch.keep_slice]
            w[ch.keep_slice][clipped] = 0
        store.write(ch.keep_start, w[ch.keep_slice])
        return saturation.runs(clipped, offset=ch.keep_start)

    saturated = saturation.merge_runs(list(run.map(pre_fn, run.preprocess_chunks, "preprocess", "preprocess")))
    if len(saturated):
        total = float(np.sum(saturated[:, 1] - saturated[:, 0])) / fs
        log.warning(
            "%d saturated (clipped) stretches, %.2f s in all (the first at %.2f s), left out of the sorting",
            len(saturated),
            total,
            saturated[0, 0] / fs,
        )
    return Preprocessed(model=model, saturated=saturated)


def _drift(run: _Run, prep: Preprocessed, *, out: Path, stages: StageLog) -> Preprocessed:
    """Motion estimation and correction of the whitened traces in place (spikesort.stages.drift);
    writes motion*.npy and drift_map.png to ``out``, or logs why drift is not corrected."""
    made = []

    def detect(peaks_of):
        peaks = []
        made.append(_detection_pass(run, prep=prep, each_chunk=lambda d: peaks.append(peaks_of(d))))
        return MotionPeaks.concat(peaks)

    with _stage(stages, "drift"):
        _, feat_nb = _neighbors(run, prep.model.good_channels)
        motion = correct_drift(
            run.store,
            detect=detect,
            chunks=run.chunks,
            sampling_rate_hz=run.info.sampling_rate_hz,
            positions_um=run.info.positions_um,
            shank_ids=run.info.shank_ids,
            good_channels=prep.model.good_channels,
            feature_neighbors=feat_nb,
            params=run.params,
            out=out,
            n_jobs=run.n_jobs,
            progress=run.tq,
        )
    if motion is None and made:
        # the traces were left as they were: the detect stage's pass would find exactly these spikes
        run.detected = made[-1]
    return prep


def _detect(run: _Run, *, prep: Preprocessed) -> Detected:
    reused = run.detected is not None
    det = run.detected if reused else _detection_pass(run, prep=prep)
    run.detected = None
    log.info("%d spikes detected (sign %+d)%s", det.n_spikes, det.sign, ", by the drift estimation pass" * reused)
    return det


def _detection_pass(run: _Run, *, prep: Preprocessed, each_chunk=None) -> Detected:
    """Detect the spikes of the whole trace store; keep those clustering will see
    (``ClusterSample``), after handing each chunk's detections to ``each_chunk`` if given."""
    info, p, store = run.info, run.params, run.store
    pre, nt, exclusion = run.pre, run.nt, run.exclusion
    rng = stage_rng(p.seed, "detect")
    block, starts = _sample_blocks(run)
    peak_nb, feat_nb = _neighbors(run, prep.model.good_channels)
    white_blocks = [store.read(s, s + block) for s in starts[:10]]
    sign = choose_sign(np.concatenate(white_blocks), threshold=2 * p.detect_threshold, floor=p.detect_threshold)
    bases = learn_temporal_bases(
        white_blocks,
        sign=sign,
        threshold=p.detect_threshold,
        neighbors=peak_nb,
        exclusion=exclusion,
        pre=pre,
        nt=nt,
        n_components=p.n_temporal_components,
        rng=rng,
    )
    filter_sd = filtered_noise_sd(white_blocks, bases=bases, pre=pre)
    bank = envelope_bank(
        positions_um=info.positions_um,
        neighbors=feat_nb,
        sigmas_um=p.envelope_sigmas_um,
        center_radius_um=p.detect_radius_um,
    )

    def det_fn(ch):
        x = store.read(ch.read_start, ch.read_stop)
        return detect_block(
            x,
            keep_start=ch.keep_start - ch.read_start,
            keep_stop=ch.keep_stop - ch.read_start,
            offset=ch.read_start,
            sign=sign,
            threshold=p.detect_threshold,
            universal_threshold=p.universal_threshold,
            peak_neighbors=peak_nb,
            feature_neighbors=feat_nb,
            bank=bank,
            bases=bases,
            pre=pre,
            exclusion=exclusion,
            positions_um=info.positions_um,
            filter_sd=filter_sd,
        )

    sample = ClusterSample(per_channel=p.max_spikes_per_channel, n_channels=info.n_channels, seed=p.seed)
    sample.gather(run.map(det_fn, run.chunks, "detect", "detect"), each=each_chunk)
    chosen = sample.result() or Detections.empty(feat_nb.shape[1], bases.shape[0])
    return Detected(sign=int(sign), bases=bases, filter_sd=filter_sd, spikes=chosen, n_spikes=sample.n_seen)


def _cluster(run: _Run, *, prep: Preprocessed, det: Detected) -> Clustered:
    info, p, store = run.info, run.params, run.store
    pre, nt = run.pre, run.nt
    _, feat_nb = _neighbors(run, prep.model.good_channels)
    spikes = det.spikes
    cl = cluster_spikes(
        times=spikes.times,
        features=spikes.features,
        channels=spikes.channels,
        neighbors=feat_nb,
        max_spikes_per_channel=p.max_spikes_per_channel,
        min_cluster_size=p.min_cluster_size,
        split_depth=p.split_depth,
        bimodality_threshold=p.bimodality_threshold,
        merge_similarity=p.merge_similarity,
        seed=p.seed,
    )
    times, labels = spikes.times[cl.spike_index], cl.labels
    # memo: the clusters that realignment and the merges leave as they were keep their templates
    tkw = dict(pre=pre, nt=nt, seed=p.seed, n_jobs=run.n_jobs, memo={})
    templates = build_templates(store, times, labels, n_units=cl.n_units, **tkw)
    # realigned before the template merges, so that a neuron's clusters caught on two lobes merge
    min_offset = int(round(TROUGH_MS * info.sampling_rate_hz / 1000))
    moved = realigned(times, labels, dense=templates.dense, pre=pre, sign=det.sign, min_offset=min_offset)
    if (moved != times).any():
        log.info("clusters caught off their trough realigned on it")
        times = moved
        templates = build_templates(store, times, labels, n_units=cl.n_units, **tkw)
    sizes = np.bincount(labels[labels >= 0], minlength=cl.n_units)
    veto = snippet_merge_test(store, times, labels, pre=pre, nt=nt, threshold=p.bimodality_threshold, seed=p.seed)
    groups = merge_similar_templates(
        templates.dense,
        sizes,
        positions_um=info.positions_um,
        max_lag=3,
        threshold=p.template_merge_similarity,
        same_unit=veto,
    )
    times, labels = relabel(times, labels, groups)
    log.info("%d clusters after template merges", len(groups))
    templates = build_templates(store, times, labels, n_units=len(groups), **tkw)
    _, w_inv_uv = phy_whitening(prep.model.whitening, info.gains_to_uv)
    snr = template_snr(templates.dense @ w_inv_uv.astype(np.float32), prep.model.noise_sd * info.gains_to_uv)
    keep = np.flatnonzero((np.sqrt(templates.norm2) >= p.universal_threshold) & (snr >= p.min_template_snr))
    log.info(
        "%d templates below SNR %.1f or too weak to match: dropped",
        templates.n_templates - len(keep),
        p.min_template_snr,
    )
    templates = templates.take(keep)
    log.info("%d templates kept for matching", templates.n_templates)
    return Clustered(templates=templates)


def _match(run: _Run, *, prep: Preprocessed, det: Detected, clu: Clustered) -> Matched:
    info, p, store = run.info, run.params, run.store
    templates = clu.templates
    peak_nb, _ = _neighbors(run, prep.model.good_channels)
    cand = channel_candidates(templates, n_channels=info.n_channels)
    filtered = filtered_templates(templates, det.bases[0])
    # a template's score on the noise, from a few blocks spread over the recording
    sampled = run.chunks[:: max(1, len(run.chunks) // NOISE_BLOCKS)]
    thresholds = match_thresholds(
        (store.read(ch.read_start, ch.read_stop) for ch in sampled),
        templates=templates,
        match_threshold=p.match_threshold,
        noise_sds=p.match_noise_sds,
        rng=stage_rng(p.seed, "match"),
    )
    if len(thresholds):
        log.info("matching thresholds %.1f-%.1f (each template's score on noise)", thresholds.min(), thresholds.max())

    # once for the run, not per chunk (hundreds of templates on 384 channels)
    floors = faint_floors(
        filtered,
        channels=templates.channels,
        inv_sd=(1.0 / det.filter_sd).astype(np.float32),
        sure_threshold=p.match_sure_threshold,
        faint_min_amplitude=p.match_faint_min_amplitude,
    )

    def match_fn(ch):
        x = store.read(ch.read_start, ch.read_stop)
        spikes, _ = match_block(
            x,
            keep_start=ch.keep_start - ch.read_start,
            keep_stop=ch.keep_stop - ch.read_start,
            offset=ch.read_start,
            templates=templates,
            chan_templates=cand,
            sign=det.sign,
            detect_threshold=p.match_detect_threshold,
            sure_threshold=p.match_sure_threshold,
            faint_min_amplitude=floors,
            peak_neighbors=peak_nb,
            exclusion=run.exclusion,
            match_threshold=thresholds,
            iterations=p.match_iterations,
            max_lag=2,
            amplitude_range=p.amplitude_range,
            bases=det.bases,
            filter_sd=det.filter_sd,
            filtered=filtered,
            drop_misfits=True,
        )
        return spikes

    spikes = MatchedSpikes.concat(list(run.map(match_fn, run.chunks, "match", "match")))
    log.info("%d spikes matched", len(spikes.times))
    return Matched(spikes=spikes)
