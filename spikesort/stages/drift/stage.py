"""The drift stage: decide, detect, estimate, correct the whitened traces in place, record.

Estimation is in :mod:`.estimate`, correction in :mod:`.interpolate`, the per-shank decision in
:mod:`.plan`, the files in :mod:`.records` and the drift map in :mod:`.figure`. This module
holds what the stage needs from a detection pass (spike depths by a peaked fit of their
amplitude across contacts, ``localize_fit``) and the stage itself (``correct_drift``).

Files, written only when the traces were corrected: the motion files (``Motion.save``) and
``drift_map.png``, the spikes of the estimation pass as recorded and corrected. ``drift.json``
records the decision every time.

After correction, units that clustering kept apart because they were seen at two probe
positions are merged (``spikesort.stages.merges.drift_split_groups``, called at the end of
curation).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.layout import DRIFT_MAP, DRIFT_RECORD, MOTION_FILES

from .estimate import Motion, estimate_motion
from .figure import draw_drift_map
from .interpolate import correct_store
from .plan import plan_drift
from .records import _write_record, motion_spread_um

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MotionPeaks:
    """What estimation needs from a detection pass."""

    times_s: np.ndarray  # (n,)
    depths_um: np.ndarray  # (n,) y of the estimated position, on the traces as recorded
    amplitudes: np.ndarray  # (n,) > 0, whitened sd
    shanks: np.ndarray  # (n,) shank of the peak channel

    @classmethod
    def concat(cls, parts: list[MotionPeaks]) -> MotionPeaks:
        if not parts:
            return cls(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int64))
        fields = ("times_s", "depths_um", "amplitudes", "shanks")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


LOCALIZE_BLOCK = 1 << 16  # spikes per block of localize_fit


def localize_fit(
    features: np.ndarray, channels: np.ndarray, *, neighbors: np.ndarray, positions_um: np.ndarray
) -> np.ndarray:
    """Spike positions (n, 2) from a peaked fit to the amplitude on the peak channel's
    neighbourhood: log amplitude ~ b0 + b1 x + b2 y + b3 (x^2 + y^2) (a Gaussian footprint),
    weighted by amplitude squared, over the channels above a fifth of the peak.

    A centre of mass is pulled towards the peak channel (it cannot leave the convex hull of the
    few channels that carry the spike), which compresses motion on sparse probes; the fitted
    peak moves with the unit. Spikes the fit cannot place (fewer than 4 channels, no peak, a
    peak far outside the neighbourhood) keep their centre of mass.
    """
    # in blocks: the fit's intermediates take about 2 kB a spike (2.3 GB for the million spikes of
    # 30 minutes on 128 channels), the positions 8 bytes
    out = np.zeros((len(features), 2), np.float32)
    for lo in range(0, len(features), LOCALIZE_BLOCK):
        hi = lo + LOCALIZE_BLOCK
        out[lo:hi] = _localize_fit_block(
            features[lo:hi], channels[lo:hi], neighbors=neighbors, positions_um=positions_um
        )
    return out


def _localize_fit_block(features, channels, *, neighbors, positions_um) -> np.ndarray:
    from spikesort.stages.detect import localize

    com = localize(features, channels, neighbors=neighbors, positions_um=positions_um).astype(np.float64)
    if len(features) == 0:
        return com.astype(np.float32)
    amp = np.sqrt((features.astype(np.float64) ** 2).sum(axis=2))  # (n, M)
    nb = neighbors[channels]
    valid = (nb >= 0) & (amp >= 0.2 * amp.max(axis=1, keepdims=True)) & (amp > 0)
    pos = positions_um[np.where(nb >= 0, nb, 0)].astype(np.float64)  # (n, M, 2)
    # centred on the peak channel for a well-conditioned fit
    origin = positions_um[channels].astype(np.float64)[:, None, :]
    x, y = pos[..., 0] - origin[..., 0], pos[..., 1] - origin[..., 1]
    design = np.stack([np.ones_like(x), x, y, x * x + y * y], axis=2)  # (n, M, 4)
    w = np.where(valid, amp * amp, 0.0)
    target = np.log(np.maximum(amp, 1e-12))
    a = np.einsum("nm,nmi,nmj->nij", w, design, design)
    b = np.einsum("nm,nmi,nm->ni", w, design, target)
    out = com.copy()
    # x alone cannot be fitted on a single column: the fit needs spread in both directions, so
    # solve with a small ridge and only trust y where the footprint is peaked along depth
    ridge = 1e-6 * np.trace(a, axis1=1, axis2=2)[:, None, None] * np.eye(4)[None]
    ok = valid.sum(axis=1) >= 4
    beta = np.zeros((len(a), 4))
    if ok.any():
        beta[ok] = np.linalg.solve(a[ok] + ridge[ok], b[ok][..., None])[..., 0]
    peaked = ok & (beta[:, 3] < -1e-9)
    fit = np.full((len(a), 2), np.nan)
    fit[peaked, 0] = -beta[peaked, 1] / (2 * beta[peaked, 3])
    fit[peaked, 1] = -beta[peaked, 2] / (2 * beta[peaked, 3])
    reach = np.sqrt(np.where(nb >= 0, (x * x + y * y), 0).max(axis=1))
    inside = peaked & (np.abs(fit[:, 1]) <= reach)
    out[inside, 1] = origin[inside, 0, 1] + fit[inside, 1]
    return out.astype(np.float32)


def on_end_row(channels, *, positions_um, shank_ids, good_channels=None) -> np.ndarray:
    """Spikes whose peak channel is on the first or last row of usable channels of its shank.

    Such a spike's footprint may peak beyond the end, where no contact sees it: the fit places
    it anywhere near the end, and it does not follow the probe's motion (on a 4-shank probe, the
    units just beyond the top row were placed 15-45 µm off and moved the wrong way, and a 30 µm
    step went unseen)."""
    c = np.asarray(channels, dtype=np.int64)
    pos = np.asarray(positions_um, dtype=np.float64)
    sh = np.asarray(shank_ids, dtype=np.int64)
    good = np.ones(len(pos), bool) if good_channels is None else np.asarray(good_channels, bool)
    end = np.zeros(len(pos), bool)
    for s in np.unique(sh):
        y = pos[(sh == s) & good, 1]
        if len(y):
            end |= (sh == s) & ((pos[:, 1] <= y.min()) | (pos[:, 1] >= y.max()))
    return end[c]


def motion_peaks(
    spikes, *, sampling_rate_hz: float, positions_um, shank_ids, feature_neighbors, good_channels=None
) -> MotionPeaks:
    """What estimation needs from the detected spikes (spikesort.detect.Detections), without
    the spikes that peak on the end rows of a shank (``on_end_row``)."""
    keep = ~on_end_row(spikes.channels, positions_um=positions_um, shank_ids=shank_ids, good_channels=good_channels)
    y = localize_fit(
        spikes.features[keep], spikes.channels[keep], neighbors=feature_neighbors, positions_um=positions_um
    )[:, 1]
    c = np.asarray(spikes.channels, dtype=np.int64)[keep]
    return MotionPeaks(
        spikes.times[keep] / sampling_rate_hz,
        y.astype(np.float64),
        np.maximum(spikes.amplitudes[keep], 1e-3).astype(np.float64),
        np.asarray(shank_ids)[c] if len(c) else np.zeros(0, np.int64),
    )


def motion_summary(motion: Motion) -> str:
    d = motion.displacement_um
    if d.size == 0:
        return "no blocks"
    return (
        f"{motion.n_time_bins} time bins x {d.shape[1]} blocks, displacement RMS {np.sqrt(np.mean(d**2)):.1f} µm, "
        f"range {d.min():+.1f} to {d.max():+.1f} µm"
    )


def correct_drift(
    store,
    *,
    detect,
    chunks,
    sampling_rate_hz: float,
    positions_um,
    shank_ids,
    good_channels,
    feature_neighbors,
    params,
    out=None,
    n_jobs: int = 1,
    progress=None,
) -> Motion | None:
    """The drift stage: decide, detect, estimate, correct ``store`` in place, write the outputs.

    ``detect(peaks_of)`` runs a detection pass on the uncorrected store and returns
    ``MotionPeaks.concat`` of ``peaks_of(spikes)`` over its chunks (spikes: one chunk's
    spikesort.stages.detect.Detections), so that no chunk's features need outlive it; it is
    called only when the probe allows an estimate.

    Returns the motion when the traces were corrected, None when they were not (drift off, a
    shank too small, too few spikes, or motion below ``drift_min_um``); the decision and its
    reason are logged, and recorded in ``out``/drift.json (with the span of the estimate when
    one was made). The motion files and the drift map are written to ``out`` only when the traces
    were corrected, so a folder with motion.npy holds spike positions on corrected traces.
    ``progress(total, desc)`` may return a progress bar.
    """
    record = {"corrected": False, "shanks": {}, "spread_um": None, "n_spikes": 0}
    if out is not None:
        # what an earlier attempt in this folder left (a resumed run with other parameters)
        for name in MOTION_FILES + (DRIFT_MAP, DRIFT_RECORD):
            (Path(out) / name).unlink(missing_ok=True)

    def finish(motion, why=None):
        if why:
            log.info("drift not corrected: %s", why)
            record["reason"] = why
        if out is not None:
            _write_record(Path(out) / DRIFT_RECORD, record)
        return motion

    plan = plan_drift(
        mode=params.drift,
        positions_um=positions_um,
        shank_ids=shank_ids,
        good_channels=good_channels,
        min_span_um=params.drift_min_span_um,
        nonrigid_span_um=params.drift_nonrigid_span_um,
    )
    several = len(plan.skipped) + len(plan.shanks) > 1
    for s, why in sorted(plan.skipped.items()):
        record["shanks"][str(s)] = f"not corrected: {why}"
        if several and plan.shanks:
            say = log.info if params.drift in ("auto", "none") else log.warning
            say("drift not corrected on shank %d: %s", s, why)
    if not plan.shanks:
        reasons = sorted(set(plan.skipped.values()))
        if params.drift in ("rigid", "nonrigid"):
            log.warning("drift = %s was asked for, but: %s", params.drift, "; ".join(reasons))
        return finish(
            None,
            "; ".join(reasons)
            if not several
            else "; ".join(f"shank {s}: {why}" for s, why in sorted(plan.skipped.items())),
        )
    bar = (lambda desc: progress(len(chunks), desc)) if progress is not None else (lambda desc: None)
    peaks = detect(
        functools.partial(
            motion_peaks,
            sampling_rate_hz=sampling_rate_hz,
            positions_um=positions_um,
            shank_ids=shank_ids,
            feature_neighbors=feature_neighbors,
            good_channels=good_channels,
        )
    )
    record["n_spikes"] = int(len(peaks.times_s))
    duration_s = store.n_samples / sampling_rate_hz
    n_bins = max(1, int(np.ceil(duration_s / params.drift_bin_s)))
    shanks = []
    for g in plan.shanks:
        n = int(np.count_nonzero(peaks.shanks == g.shank))
        # a handful of spikes per bin on average is the least a histogram registration can use
        if n < max(100, 5 * n_bins):
            why = f"only {n} spikes found in {duration_s:.0f} s, too few to estimate motion"
            record["shanks"][str(g.shank)] = f"not corrected: {why}"
            if several:
                log.info("drift not corrected on shank %d: %s", g.shank, why)
        else:
            shanks.append(g)
    if not shanks:
        return finish(None, f"only {len(peaks.times_s)} spikes found in {duration_s:.0f} s, too few to estimate motion")
    motion = estimate_motion(
        times_s=peaks.times_s,
        depths_um=peaks.depths_um,
        amplitudes=peaks.amplitudes,
        shanks=peaks.shanks,
        geometry=shanks,
        duration_s=duration_s,
        bin_s=params.drift_bin_s,
        block_um=params.drift_block_um,
        max_shift_um=params.drift_max_um,
    )
    for g in shanks:
        record["shanks"][str(g.shank)] = g.mode
    spread = motion_spread_um(motion)
    record["spread_um"] = round(spread, 2)
    log.info(
        "drift: %s from %d spikes; %s",
        "; ".join(f"{g.mode} on shank {g.shank} ({g.depth_max_um - g.depth_min_um:.0f} µm)" for g in shanks),
        len(peaks.times_s),
        motion_summary(motion),
    )
    if spread < params.drift_min_um:
        return finish(
            None,
            f"the estimated motion spans only {spread:.1f} µm (below drift_min_um = "
            f"{params.drift_min_um:g}), interpolating would cost more than so little motion",
        )
    correct_store(
        store,
        motion=motion,
        chunks=chunks,
        sampling_rate_hz=sampling_rate_hz,
        positions_um=positions_um,
        shank_ids=shank_ids,
        good_channels=good_channels,
        n_jobs=n_jobs,
        progress=bar("drift: correct"),
    )
    if out is not None:
        motion.save(out)
        try:
            raw = peaks.depths_um
            # reference depth y0 solves y0 + d(t, y0) = raw: one fixed-point step is plenty here
            ref = raw - motion.at(times_s=peaks.times_s, depths_um=raw, shanks=peaks.shanks)
            ref = raw - motion.at(times_s=peaks.times_s, depths_um=ref, shanks=peaks.shanks)
            draw_drift_map(
                Path(out) / DRIFT_MAP,
                times_s=peaks.times_s,
                raw_um=raw,
                corrected_um=ref,
                amplitudes=peaks.amplitudes,
                motion=motion,
            )
        except Exception:  # a figure must never cost the sort
            log.warning("could not draw the drift map", exc_info=True)
    log.info("drift: traces corrected (motion spans %.1f µm)", spread)
    record["corrected"] = True
    return finish(motion)
