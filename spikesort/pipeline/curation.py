"""The curation steps after matching: the units of one neuron merged, residues, echoes and
collision leftovers dropped, spikes reported where they were recorded (``_curate``); after drift
correction, the units of one neuron seen at two probe positions merged (``_merge_drift_splits``).
Each reads the run's shared state (``.state``) and calls the stages' pure functions
(``spikesort.stages.curate``, ``spikesort.stages.merges``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from spikesort.stages.curate import (
    collision_units,
    composite_units,
    on_recorded_troughs,
    remove_duplicates,
    residue_spikes,
    shadowed_units,
    within_recording,
)
from spikesort.stages.drift import applied_motion
from spikesort.stages.export import phy_whitening
from spikesort.stages.labels import PIECE_COSINE
from spikesort.stages.lookalikes import sizes_apart
from spikesort.stages.match import MatchedSpikes
from spikesort.stages.merges import (
    apply_groups,
    drift_split_groups,
    drop_refractory_doubles,
    empty_period_merges,
    faint_piece_merges,
    footprint_merges,
    independence_test,
    noise_merges,
    refractory_merges,
    shrunken_piece_merges,
    snippet_merge_test,
)
from spikesort.stages.mixtures import split_two_neuron_units
from spikesort.stages.refits import refit_spikes
from spikesort.stages.templates import build_templates, template_snr

from .state import Clustered, Curated, Matched, Preprocessed, _Run

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
# spikes are reported at their unit's trough in µV when matching put them this far from it
RECORDED_TROUGH_MS = 0.3


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


def _curate(
    run: _Run, *, prep: Preprocessed, clu: Clustered, mat: Matched, sign: int, drift_corrected: bool = False
) -> Curated:
    info, p, store = run.info, run.params, run.store
    pre, nt, fs = run.pre, run.nt, info.sampling_rate_hz
    dup = int(round(p.duplicate_ms * fs / 1000))
    spikes = remove_duplicates(mat.spikes, window=dup)
    # leftovers reach as far as the waveform (biophysical tails echoed at ±2.3-2.5 ms); bursts beyond
    residue_window = int(round((p.ms_before + p.ms_after + RESIDUE_EXTRA_MS) * fs / 1000))

    memo: dict = {}  # the units a merge or a drop left as they were keep their templates

    def templates_of(spikes, n_units):
        kw = dict(pre=pre, nt=nt, seed=p.seed, n_jobs=run.n_jobs, memo=memo)
        return build_templates(store, spikes.times, spikes.templates, n_units=n_units, **kw)

    _, w_inv_uv = phy_whitening(prep.model.whitening, info.gains_to_uv)
    refractory = int(round(p.refractory_ms * fs / 1000))
    # spikes aligned on another of their phases: pieces 0.3-0.9 ms apart on MEArec's Neuropixels-64
    phase_lag = int(round(p.ms_before * fs / 1000))
    trains = dict(refractory=refractory, duration=info.n_samples)
    double_fit, rate_bin = int(round(DOUBLE_FIT_MS * fs / 1000)), int(round(REFRACTORY_RATE_BIN_S * fs))
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

    far = int(round(RECORDED_TROUGH_MS * fs / 1000))

    def on_troughs(spikes, templates):
        """Units caught off their trough as recorded moved onto it, a trough on the window's edge
        followed there and looked for again: the footprints compare templates, and one cut by the
        window's end looks like no other piece of its neuron (mearec_tetrode seed 7: 181 spikes of
        a neuron caught 47 samples before their trough, a false unit; on it, they joined)."""
        kw = dict(pre=pre, sign=sign, n_samples=info.n_samples, min_offset=far, edges=True)
        for _ in range(2):
            spikes, moved = on_recorded_troughs(spikes, templates.dense @ w_inv_uv.astype(np.float32), **kw)
            if not moved:
                break
            spikes = remove_duplicates(spikes, window=dup)
            templates = templates_of(spikes, templates.n_templates)
        return spikes, templates

    def merge_footprints(spikes, templates):
        """The pieces of a neuron whose spikes shrink in bursts: one footprint at several sizes,
        compared once each unit sits on its trough."""
        spikes, templates = on_troughs(spikes, templates)
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

    # units of two neurons, cut before any merge drops the refractory pairs that show them
    spikes, n_units = split_two_neuron_units(
        store, spikes, clu.templates.dense, pre=pre, nt=nt, double_fit=double_fit, seed=p.seed, **trains
    )
    spikes, post = merge_footprints(spikes, templates_of(spikes, n_units))

    def drop_residues(spikes, templates):
        residue = residue_spikes(spikes, templates.dense, window=residue_window, positions_um=info.positions_um)
        # refits fill the refractory gap between a neuron's pieces
        residue |= refit_spikes(spikes, templates, store, window=residue_window, positions_um=info.positions_um)
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
    vkw = dict(pre=pre, nt=nt, threshold=p.bimodality_threshold, seed=p.seed)
    veto = snippet_merge_test(store, spikes.times, spikes.templates, **vkw)
    rkw = dict(positions_um=info.positions_um, duration=info.n_samples, refractory=refractory, rate_bin=rate_bin)
    # a weak gap's pair must be one shape at any size: a bursting neuron's pieces differ in size
    shape = snippet_merge_test(store, spikes.times, spikes.templates, scale_free=True, **vkw)
    rkw.update(same_unit=veto, same_shape=shape)
    groups = refractory_merges(spikes, post.dense, similarity=p.post_merge_similarity, **rkw)
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
    # then the small pieces on a larger unit's footprint that no train vouches for
    counts = np.bincount(spikes.templates, minlength=final.n_templates)
    uv, times = footprints_and_times(spikes, final)
    # at the label's floor: a piece the label would mark joins here
    skw = dict(max_lag=phase_lag, min_cosine=PIECE_COSINE, times=times, refractory=refractory, n_samples=info.n_samples)
    groups = shrunken_piece_merges(final.dense, uv, counts, **skw)
    if len(groups) < final.n_templates:
        spikes, final = join(spikes, groups)
    # two neurons of one shape at two sizes: each spike to the unit of its size, once the merges
    # have said which units are neurons. Not where the drift was corrected: a neuron's size there
    # follows the probe's position (on shanks4 seed 0 a neuron's spikes at one position took the
    # size of a look-alike's, and 93 of them moved to it)
    if not drift_corrected:
        spikes, moved = sizes_apart(store, spikes, final.dense, pre=pre, nt=nt, duplicate=dup)
        if moved:
            final = templates_of(spikes, final.n_templates)
    # reported where ground truth and Phy's users put a spike: at its unit's trough as recorded
    uv = final.dense @ w_inv_uv.astype(np.float32)
    spikes, moved = on_recorded_troughs(spikes, uv, pre=pre, sign=sign, n_samples=info.n_samples, min_offset=far)
    return Curated(spikes=spikes, templates=templates_of(spikes, final.n_templates) if moved else final)
