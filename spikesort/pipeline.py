"""The orchestrator: calls the stages in order and holds no algorithm of its own."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .chunks import iter_chunks, map_chunks
from .cluster import cluster_spikes
from .curate import apply_groups, ghost_units, refractory_merges, relabel, remove_duplicates
from .detect import (Detections, choose_sign, detect_block, envelope_bank, filtered_noise_sd,
                     learn_temporal_bases)
from .errors import SpikesortError
from .export import phy_whitening, unit_metrics, write_phy
from .features import SpikeFeatures, features_block, similarity_matrix, template_feature_index
from .geometry import neighbor_table
from .match import (MatchedSpikes, build_templates, channel_candidates, match_block, merge_similar_templates,
                    snippet_merge_test, template_snr)
from .params import Params
from .preprocess import fit_preprocessing, preprocess_chunk
from .result import SortingResult
from .traces import TraceStore

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
        raise SpikesortError("only single-segment recordings are supported: concatenate segments first "
                             "(spikeinterface.concatenate_recordings)")
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
    return RecordingInfo(sampling_rate_hz=float(recording.get_sampling_frequency()),
                         n_samples=int(recording.get_num_samples(0)), n_channels=int(recording.get_num_channels()),
                         positions_um=pos, shank_ids=np.asarray(shanks, dtype=np.int64), gains_to_uv=gains,
                         has_gain=has_gain)


def _read_raw(recording, start: int, stop: int) -> np.ndarray:
    x = recording.get_traces(start_frame=start, end_frame=stop, return_in_uV=False)
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise SpikesortError(f"the recording holds NaN or infinite values (samples {start}-{stop})")
    return x


def _stage(timings: dict, name: str):
    class _T:
        def __enter__(self):
            self.t0 = time.perf_counter()
            log.info("stage %s ...", name)

        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.t0
            if exc[0] is None:
                log.info("stage %s done in %.1f s", name, timings[name])

    return _T()


def sort(recording, output_folder, *, params: Params | None = None, overwrite: bool = False,
         progress: bool = False, **overrides) -> SortingResult:
    """Sort a spikeinterface recording (with a probe) into ``output_folder`` (a Phy folder)."""
    params = Params.from_dict(overrides, base=params or Params())
    out = Path(output_folder)
    if out.exists():
        if not overwrite:
            raise SpikesortError(f"output folder {out} exists (use --overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        return _sort_into(recording, out, params=params, progress=progress)
    finally:
        # the whitened scratch copy is as large as the recording: never leave it behind
        (out / TEMP_TRACES).unlink(missing_ok=True)


TEMP_TRACES = "temp_wh.dat"


def _sort_into(recording, out: Path, *, params: Params, progress: bool) -> SortingResult:
    n_jobs = params.n_jobs or os.cpu_count() or 1
    info = recording_info(recording)
    fs = info.sampling_rate_hz
    timings: dict = {}
    rng = np.random.default_rng(params.seed)
    chunk = max(1, int(round(params.chunk_s * fs)))
    pre = int(round(params.ms_before * fs / 1000))
    nt = pre + int(round(params.ms_after * fs / 1000)) + 1
    margin = max(int(round(params.margin_ms * fs / 1000)), 2 * nt)
    exclusion = max(1, int(round(params.exclusion_ms * fs / 1000)))
    chunks = list(iter_chunks(n_samples=info.n_samples, chunk_samples=chunk, margin_samples=margin))

    def tq(total, desc):
        if not progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="chunk", leave=False)

    # ---- preprocess -------------------------------------------------------------------------
    with _stage(timings, "preprocess"):
        block = min(info.n_samples, int(fs))
        starts = np.unique(np.linspace(0, info.n_samples - block, min(params.whitening_n_chunks,
                                                                      max(1, info.n_samples // block))).astype(np.int64))
        blocks = [_read_raw(recording, s, s + block) for s in starts]
        model = fit_preprocessing(blocks, sampling_rate_hz=fs, positions_um=info.positions_um,
                                  highpass_hz=params.highpass_hz, lowpass_hz=params.lowpass_hz,
                                  reference=params.common_reference, whitening_radius_um=params.whitening_radius_um,
                                  detect_bad_channels=params.bad_channel_detection)
        store = TraceStore(out / TEMP_TRACES, n_samples=info.n_samples, n_channels=info.n_channels)
        store.create()

        def pre_fn(ch):
            w = preprocess_chunk(_read_raw(recording, ch.read_start, ch.read_stop), model=model)
            store.write(ch.keep_start, w[ch.keep_slice])

        for _ in map_chunks(pre_fn, chunks, n_jobs=n_jobs, progress=tq(len(chunks), "preprocess")):
            pass

    good = model.good_channels
    peak_nb = neighbor_table(positions_um=info.positions_um, radius_um=params.detect_radius_um,
                             good_channels=good, shank_ids=info.shank_ids)
    feat_nb = neighbor_table(positions_um=info.positions_um, radius_um=params.feature_radius_um,
                             good_channels=good, shank_ids=info.shank_ids, min_neighbors=min(4, int(good.sum())))

    # ---- detect -----------------------------------------------------------------------------
    with _stage(timings, "detect"):
        white_blocks = [store.read(s, s + block) for s in starts[:10]]
        sign = choose_sign(np.concatenate(white_blocks), threshold=2 * params.detect_threshold)
        bases = learn_temporal_bases(white_blocks, sign=sign, threshold=params.detect_threshold, neighbors=peak_nb,
                                     exclusion=exclusion, pre=pre, nt=nt, n_components=params.n_temporal_components,
                                     rng=rng)
        filter_sd = filtered_noise_sd(white_blocks, bases=bases, pre=pre)
        bank = envelope_bank(positions_um=info.positions_um, neighbors=feat_nb, sigmas_um=params.envelope_sigmas_um,
                             center_radius_um=params.detect_radius_um)

        def det_fn(ch):
            x = store.read(ch.read_start, ch.read_stop)
            return detect_block(x, keep_start=ch.keep_start - ch.read_start, keep_stop=ch.keep_stop - ch.read_start,
                                offset=ch.read_start, sign=sign, threshold=params.detect_threshold,
                                universal_threshold=params.universal_threshold, peak_neighbors=peak_nb,
                                feature_neighbors=feat_nb, bank=bank, bases=bases, pre=pre, exclusion=exclusion,
                                positions_um=info.positions_um, filter_sd=filter_sd)

        det = Detections.concat(list(map_chunks(det_fn, chunks, n_jobs=n_jobs, progress=tq(len(chunks), "detect"))))
        log.info("%d spikes detected (sign %+d)", len(det), sign)

    # ---- cluster ----------------------------------------------------------------------------
    with _stage(timings, "cluster"):
        cl = cluster_spikes(features=det.features, channels=det.channels, neighbors=feat_nb,
                            max_spikes_per_channel=params.max_spikes_per_channel,
                            min_cluster_size=params.min_cluster_size, split_depth=params.split_depth,
                            bimodality_threshold=params.bimodality_threshold,
                            merge_similarity=params.merge_similarity, seed=params.seed)
        times, labels = det.times[cl.spike_index], cl.labels
        templates = build_templates(store, times, labels, n_units=cl.n_units, pre=pre, nt=nt, rng=rng)
        sizes = np.bincount(labels[labels >= 0], minlength=cl.n_units)
        veto = snippet_merge_test(store, times, labels, pre=pre, nt=nt, threshold=params.bimodality_threshold,
                                  rng=rng)
        groups = merge_similar_templates(templates.dense, sizes, positions_um=info.positions_um, max_lag=3,
                                         threshold=params.template_merge_similarity, same_unit=veto)
        times, labels = relabel(times, labels, groups)
        log.info("%d clusters after template merges", len(groups))
        templates = build_templates(store, times, labels, n_units=len(groups), pre=pre, nt=nt, rng=rng)
        _, w_inv_uv = phy_whitening(model.whitening, info.gains_to_uv)
        snr = template_snr(templates.dense @ w_inv_uv.astype(np.float32), model.noise_sd * info.gains_to_uv)
        keep = np.flatnonzero((np.sqrt(templates.norm2) >= params.universal_threshold) & (snr >= params.min_template_snr))
        log.info("%d templates below SNR %.1f or too weak to match: dropped", templates.n_templates - len(keep),
                 params.min_template_snr)
        templates = templates.take(keep)
        log.info("%d templates kept for matching", templates.n_templates)

    # ---- match ------------------------------------------------------------------------------
    with _stage(timings, "match"):
        cand = channel_candidates(templates, n_channels=info.n_channels)

        def match_fn(ch):
            x = store.read(ch.read_start, ch.read_stop)
            spikes, _ = match_block(x, keep_start=ch.keep_start - ch.read_start,
                                    keep_stop=ch.keep_stop - ch.read_start, offset=ch.read_start,
                                    templates=templates, chan_templates=cand, sign=sign,
                                    detect_threshold=params.match_detect_threshold, peak_neighbors=peak_nb,
                                    exclusion=exclusion, match_threshold=params.match_threshold,
                                    iterations=params.match_iterations, max_lag=2,
                                    amplitude_range=params.amplitude_range, bases=bases, filter_sd=filter_sd)
            return spikes

        spikes = MatchedSpikes.concat(list(map_chunks(match_fn, chunks, n_jobs=n_jobs,
                                                      progress=tq(len(chunks), "match"))))
        log.info("%d spikes matched", len(spikes.times))

    # ---- curate -----------------------------------------------------------------------------
    with _stage(timings, "curate"):
        dup = int(round(params.duplicate_ms * fs / 1000))
        spikes = remove_duplicates(spikes, window=dup)
        post = build_templates(store, spikes.times, spikes.templates, n_units=templates.n_templates, pre=pre,
                               nt=nt, rng=rng)
        ghosts = ghost_units(spikes, post.dense, window=int(round(params.refractory_ms * fs / 1000)),
                             positions_um=info.positions_um)
        spikes = spikes.take(np.flatnonzero(~np.isin(spikes.templates, ghosts)))
        veto = snippet_merge_test(store, spikes.times, spikes.templates, pre=pre, nt=nt,
                                  threshold=params.bimodality_threshold, rng=rng)
        groups = refractory_merges(spikes, post.dense, positions_um=info.positions_um, duration=info.n_samples,
                                   refractory=int(round(params.refractory_ms * fs / 1000)),
                                   similarity=params.post_merge_similarity, same_unit=veto)
        spikes = remove_duplicates(apply_groups(spikes, groups), window=dup)
        log.info("%d units after refractory merges", len(groups))
        final = build_templates(store, spikes.times, spikes.templates, n_units=len(groups), pre=pre, nt=nt, rng=rng)
        # units left without spikes (all theirs were duplicates) are dropped and ids made contiguous
        # too few spikes to be a unit: leftovers of a unit whose spikes other templates took
        counts = np.bincount(spikes.templates, minlength=final.n_templates)
        keep = np.flatnonzero(counts >= params.min_cluster_size)
        spikes = spikes.take(np.flatnonzero(np.isin(spikes.templates, keep)))
        remap = np.full(final.n_templates, -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        final = final.take(keep)
        spikes = MatchedSpikes(spikes.times, remap[spikes.templates], spikes.amplitudes, spikes.gains)

    # ---- features and export ------------------------------------------------------------------
    with _stage(timings, "export"):
        similar = similarity_matrix(final.dense)
        tf_index = template_feature_index(similar, n_features=params.n_template_features)
        n_pc_ch = min(info.n_channels, params.n_pc_channels)
        pc_nb = neighbor_table(positions_um=info.positions_um, radius_um=0.0, good_channels=None,
                               shank_ids=info.shank_ids, min_neighbors=n_pc_ch)[:, :n_pc_ch]
        pc_nb = np.where(pc_nb >= 0, pc_nb, np.arange(info.n_channels)[:, None])
        bounds = np.searchsorted(spikes.times, [[c.keep_start, c.keep_stop] for c in chunks])

        def feat_fn(ic):
            ch = chunks[ic]
            lo, hi = bounds[ic]
            x = store.read(ch.read_start, ch.read_stop)
            return features_block(x, times=spikes.times[lo:hi] - ch.read_start, units=spikes.templates[lo:hi],
                                  templates=final, pc_neighbors=pc_nb, bases=bases, tf_index=tf_index,
                                  positions_um=info.positions_um)

        feats = SpikeFeatures.concat(list(map_chunks(feat_fn, range(len(chunks)), n_jobs=n_jobs,
                                                     progress=tq(len(chunks), "features"))))
        # column 0 is the spike's own template: its least-squares scale is Phy's amplitude
        amplitudes = feats.template_features[:, 0] if final.n_templates else np.zeros(0, np.float32)
        templates_uv = final.dense @ w_inv_uv.astype(np.float32)
        metrics, labels = (None, np.zeros(0, dtype=str)) if final.n_templates == 0 else unit_metrics(
                                       spike_times=spikes.times, spike_clusters=spikes.templates,
                                       amplitudes=amplitudes, templates_uv=templates_uv,
                                       noise_uv=model.noise_sd * info.gains_to_uv, positions_um=info.positions_um,
                                       sampling_rate_hz=fs, duration_s=info.duration_s, params=params)
        if len(spikes.times) >= 2 and final.n_templates > 0:
            write_phy(out, recording=recording, spike_times=spikes.times, spike_units=spikes.templates,
                      amplitudes=amplitudes, templates_white=final.dense, pre=pre, whitening=model.whitening,
                      gains_to_uv=info.gains_to_uv, positions_um=info.positions_um, shank_ids=info.shank_ids,
                      pc_features=feats.pc_features, pc_feature_ind=pc_nb[final.main_channel],
                      template_features=feats.template_features, template_feature_ind=tf_index,
                      similar=similar, spike_positions=feats.positions_um, metrics=metrics, labels=labels,
                      sampling_rate_hz=fs)
        unit_ids = np.arange(final.n_templates)

    store.path.unlink(missing_ok=True)
    (out / "spikesort_run.json").write_text(json.dumps(
        {"version": __version__, "params": params.to_dict(), "timings_s": timings,
         "recording": {"sampling_rate_hz": fs, "n_channels": info.n_channels, "n_samples": info.n_samples,
                       "duration_s": info.duration_s, "has_gain": info.has_gain},
         "n_units": int(final.n_templates), "n_spikes": int(len(spikes.times)),
         "bad_channels": {int(c): r for c, r in model.bad_reasons.items()}}, indent=1))
    return SortingResult(output_folder=out, spike_times=spikes.times, spike_clusters=spikes.templates,
                         amplitudes=amplitudes, unit_ids=unit_ids, sampling_rate_hz=fs, timings_s=timings,
                         labels=np.asarray(labels))
