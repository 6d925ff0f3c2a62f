"""The stage steps of a sort, one function per step, and the results they hand on.

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
from spikesort.stages.curate import (
    collision_units,
    composite_units,
    on_recorded_troughs,
    remove_duplicates,
    residue_spikes,
    shadowed_units,
    within_recording,
)
from spikesort.stages.detect import (
    Detections,
    choose_sign,
    detect_block,
    envelope_bank,
    filtered_noise_sd,
    learn_temporal_bases,
)
from spikesort.stages.drift import MotionPeaks, applied_motion, correct_drift
from spikesort.stages.export import phy_whitening
from spikesort.stages.match import MatchedSpikes, channel_candidates, match_block, match_thresholds
from spikesort.stages.merges import (
    apply_groups,
    drift_split_groups,
    drop_refractory_doubles,
    empty_period_merges,
    faint_piece_merges,
    footprint_merges,
    independence_test,
    merge_similar_templates,
    noise_merges,
    refractory_merges,
    relabel,
    snippet_merge_test,
)
from spikesort.stages.preprocess import fit_preprocessing, preprocess_chunk
from spikesort.stages.templates import build_templates, filtered_templates, realigned, template_snr

from .state import (
    Clustered,
    Curated,
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

# the refractory merge test compares coincidences with the rates of the two units over stretches
# this long: long enough for several spikes a bin, short enough to see a 30 s drift step
REFRACTORY_RATE_BIN_S = 10.0
# one spike fitted by the templates of two pieces of a neuron: the two fits land this close
DOUBLE_FIT_MS = 0.5
BURST_MS = 50.0  # a burst's late spikes follow its first within this long
# one neuron's relative refractory period: a trough in two units' correlogram beyond the absolute one
CCG_TROUGH_MS = (2.0, 10.0)
# subtraction residues are looked for up to the template window plus this much on either side
RESIDUE_EXTRA_MS = 1.0
# a cluster whose trough sits this far from where detection puts spikes' troughs is realigned on it
TROUGH_MS = 0.5
# spikes are reported at their unit's trough in µV when matching put them this far from it
RECORDED_TROUGH_MS = 0.3
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
    sign = choose_sign(np.concatenate(white_blocks), threshold=2 * p.detect_threshold)
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
    tkw = dict(pre=pre, nt=nt, seed=p.seed, n_jobs=run.n_jobs)
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
            faint_min_amplitude=p.match_faint_min_amplitude,
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


def _merge_drift_splits(run: _Run, cur: Curated, *, out: Path) -> Curated:
    """After drift correction: units that are one neuron seen at two probe positions become one
    (spikesort.stages.merges.drift_split_groups). Nothing changes when the traces were not corrected."""
    p = run.params
    motion = applied_motion(out) if p.drift != "none" else None
    if motion is None or cur.templates.n_templates < 2:
        return cur
    fs = run.info.sampling_rate_hz
    groups = drift_split_groups(
        spike_times_s=cur.spikes.times / fs,
        spike_units=cur.spikes.templates,
        templates=cur.templates.dense,
        main_channels=cur.templates.main_channel,
        positions_um=run.info.positions_um,
        channel_shanks=run.info.shank_ids,
        motion=motion,
        min_similarity=p.drift_merge_similarity,
        # the waveform changes with the probe's position, and a piece cut off by drift can be
        # aligned on another of its troughs: 5 and 14 samples from its neuron (0.16 and 0.44 ms)
        # on MEArec's moving Neuropixels-64. Within the window's lead, as for phase pieces
        max_lag=int(round(p.ms_before * fs / 1000)),
        sampling_rate_hz=fs,
        refractory_ms=p.refractory_ms,
        double_fit_ms=DOUBLE_FIT_MS,
        rate_bin_s=REFRACTORY_RATE_BIN_S,
    )
    if len(groups) == cur.templates.n_templates:
        return cur
    log.info("drift: %d units seen at different probe positions merged into %d", cur.templates.n_templates, len(groups))
    spikes = remove_duplicates(apply_groups(cur.spikes, groups), window=int(round(p.duplicate_ms * fs / 1000)))
    spikes = within_recording(spikes, n_samples=run.info.n_samples)
    kw = dict(pre=run.pre, nt=run.nt, seed=p.seed, n_jobs=run.n_jobs)
    templates = build_templates(run.store, spikes.times, spikes.templates, n_units=len(groups), **kw)
    return Curated(spikes=spikes, templates=templates)


def _curate(run: _Run, *, prep: Preprocessed, clu: Clustered, mat: Matched, sign: int) -> Curated:
    info, p, store = run.info, run.params, run.store
    pre, nt, fs = run.pre, run.nt, info.sampling_rate_hz
    dup = int(round(p.duplicate_ms * fs / 1000))
    spikes = remove_duplicates(mat.spikes, window=dup)

    def templates_of(spikes, n_units):
        return build_templates(
            store, spikes.times, spikes.templates, n_units=n_units, pre=pre, nt=nt, seed=p.seed, n_jobs=run.n_jobs
        )

    _, w_inv_uv = phy_whitening(prep.model.whitening, info.gains_to_uv)
    refractory = int(round(p.refractory_ms * fs / 1000))
    # spikes aligned on another of their phases: pieces 0.3-0.9 ms apart on MEArec's Neuropixels-64
    phase_lag = int(round(p.ms_before * fs / 1000))
    trains = dict(refractory=refractory, duration=info.n_samples)
    double_fit, rate_bin = int(round(DOUBLE_FIT_MS * fs / 1000)), int(round(REFRACTORY_RATE_BIN_S * fs))
    # leftovers reach as far as the waveform (biophysical tails echoed at ±2.3-2.5 ms); bursts beyond
    residue_window = int(round((p.ms_before + p.ms_after + RESIDUE_EXTRA_MS) * fs / 1000))
    burst_lags = (residue_window, max(residue_window, int(round(BURST_MS * fs / 1000))))
    trough_lags = tuple(int(round(ms * fs / 1000)) for ms in CCG_TROUGH_MS)

    def footprints_and_times(spikes, templates):  # templates in µV, each unit's times: what merges read
        times = [spikes.times[spikes.templates == i] for i in range(templates.n_templates)]
        return templates.dense @ w_inv_uv.astype(np.float32), times

    def join(spikes, groups):
        """A merge's groups applied; each merged unit drops its spikes fitted twice (by two of its
        pieces' templates), and the templates are built anew."""
        spikes = apply_groups(spikes, groups)
        merged = np.array([g for g, members in enumerate(groups) if len(members) > 1])
        spikes = drop_refractory_doubles(spikes, units=merged, refractory=refractory)
        return spikes, templates_of(spikes, len(groups))

    def merge_footprints(spikes, templates):
        """The pieces of a neuron whose spikes shrink in bursts: one footprint at several sizes."""
        sizes = np.bincount(spikes.templates, minlength=templates.n_templates)
        uv, times = footprints_and_times(spikes, templates)
        independent = independence_test(spikes, double_fit=double_fit, rate_bin=rate_bin, **trains)
        lags = dict(
            max_lag=3, phase_lag=phase_lag, double_fit=double_fit, burst_lags=burst_lags, trough_lags=trough_lags
        )
        groups = footprint_merges(templates.dense, uv, sizes, **lags, times=times, independent=independent, **trains)
        if len(groups) == templates.n_templates:
            return spikes, templates
        return join(spikes, groups)

    def merge_noise_pieces(spikes, templates):
        """Pieces of a neuron too few for the refractory test, told from neighbours by their
        spikes' scatter."""
        uv, times = footprints_and_times(spikes, templates)
        kw = dict(pre=pre, nt=nt, double_fit=double_fit, seed=p.seed, **trains)
        groups = noise_merges(store, templates.dense, uv, times, **kw)
        if len(groups) == templates.n_templates:
            return spikes, templates
        log.info("%d units after merging pieces alike within noise", len(groups))
        return join(spikes, groups)

    spikes, post = merge_footprints(spikes, templates_of(spikes, clu.templates.n_templates))

    def drop_residues(spikes, templates):
        residue = residue_spikes(spikes, templates.dense, window=residue_window, positions_um=info.positions_um)
        return spikes.take(np.flatnonzero(~residue)), bool(residue.any())

    def merge_empty_periods(spikes, templates):
        """Units of one neuron on a compact probe whose trains, all together, never meet within
        the refractory period."""
        uv, times = footprints_and_times(spikes, templates)
        groups = empty_period_merges(templates.dense, uv, times, max_lag=3, **trains)
        if len(groups) == templates.n_templates:
            return spikes, templates
        return join(spikes, groups)

    spikes, _ = drop_residues(spikes, post)
    veto = snippet_merge_test(
        store, spikes.times, spikes.templates, pre=pre, nt=nt, threshold=p.bimodality_threshold, seed=p.seed
    )
    rkw = dict(positions_um=info.positions_um, duration=info.n_samples, refractory=refractory, rate_bin=rate_bin)
    groups = refractory_merges(spikes, post.dense, similarity=p.post_merge_similarity, same_unit=veto, **rkw)
    spikes = remove_duplicates(apply_groups(spikes, groups), window=dup)
    log.info("%d units after refractory merges", len(groups))
    # merged units can show residues and echoes that their parts hid; then the footprints again,
    # now that residues and echoes no longer blur the pieces' footprints
    merged = templates_of(spikes, len(groups))
    spikes, dropped = drop_residues(spikes, merged)
    spikes, final = merge_footprints(spikes, templates_of(spikes, len(groups)) if dropped else merged)
    spikes, final = merge_noise_pieces(spikes, final)
    spikes, final = merge_empty_periods(spikes, final)
    # collision leftovers last, once every piece of a neuron has joined its unit; then the units
    # whose template is one or two others' (synchronous firing, another alignment)
    collided = collision_units(spikes, final.dense, window=residue_window, positions_um=info.positions_um)
    spikes = spikes.take(np.flatnonzero(~collided))
    kw = dict(positions_um=info.positions_um, amplitude_range=p.amplitude_range, **trains)
    spikes = composite_units(spikes, final.dense, max_lag=nt // 2, **kw)
    spikes = within_recording(spikes, n_samples=info.n_samples)
    # then the units between larger ones: other neurons' shrunken spikes, mixed
    independent = independence_test(spikes, double_fit=double_fit, rate_bin=rate_bin, **trains)
    skw = dict(pre=pre, nt=nt, seed=p.seed, max_fraction=p.max_shadowed_fraction, independent=independent)
    shadowed = shadowed_units(store, spikes, final.dense, **skw)
    spikes = spikes.take(np.flatnonzero(~np.isin(spikes.templates, shadowed)))
    # units left without spikes (all theirs were duplicates) are dropped and ids made contiguous
    # too few spikes to be a unit: leftovers and pieces, which grow with the recording (hence a rate)
    counts = np.bincount(spikes.templates, minlength=final.n_templates)
    # a faint unit firing rarely is noise crossings or a sliver of a neuron: on 40 benchmark
    # recordings (2026-12-03) all 10 units under SNR 5 and 0.5 Hz were false
    snr = template_snr(final.dense @ w_inv_uv.astype(np.float32), prep.model.noise_sd * info.gains_to_uv)
    rare = counts < p.faint_min_rate_hz * info.duration_s
    keep = np.flatnonzero(
        (counts >= max(p.min_cluster_size, p.min_rate_hz * info.duration_s)) & ~(rare & (snr < p.good_min_snr))
    )
    spikes = spikes.take(np.flatnonzero(np.isin(spikes.templates, keep)))
    remap = np.full(final.n_templates, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    final = final.take(keep)
    spikes = MatchedSpikes(spikes.times, remap[spikes.templates], spikes.amplitudes, spikes.gains)
    # last, once only the units to report are left: faint pieces, too few for the trains to speak
    uv, times = footprints_and_times(spikes, final)
    independent = independence_test(spikes, double_fit=double_fit, rate_bin=rate_bin, **trains)
    kw = dict(echo_window=residue_window, independent=independent, max_lag=phase_lag, **trains)
    groups = faint_piece_merges(final.dense, uv, times, **kw)
    if len(groups) < final.n_templates:
        spikes, final = join(spikes, groups)
    # reported where ground truth and Phy's users put a spike: at its unit's trough as recorded
    uv = final.dense @ w_inv_uv.astype(np.float32)
    far = int(round(RECORDED_TROUGH_MS * fs / 1000))
    spikes, moved = on_recorded_troughs(spikes, uv, pre=pre, sign=sign, n_samples=info.n_samples, min_offset=far)
    return Curated(spikes=spikes, templates=templates_of(spikes, final.n_templates) if moved else final)
