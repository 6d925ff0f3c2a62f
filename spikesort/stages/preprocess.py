"""Filtering, common reference, bad-channel detection and local ZCA whitening.

All functions work on (n_samples, n_channels) float32 arrays. ``preprocess_chunk`` is the one
transform applied to every chunk; the model it needs (filter, whitening matrix, good channels)
is fitted once by ``fit_preprocessing`` on a subsample of chunks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spikesort.kernels.preprocess import sosfiltfilt_rows, sparse_mix, subtract_reference
from spikesort.stages.filters import butter_sos, sos_steady_state
from spikesort.stages.lines import line_power, mains_lines, without_lines
from spikesort.stages.noise_sd import robust_sd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessModel:
    sos: np.ndarray  # second-order sections of the band filter
    whitening: np.ndarray  # (C, C) float32; whitened = traces @ whitening.T
    good_channels: np.ndarray  # (C,) bool; bad channels are zeroed after whitening
    noise_sd: np.ndarray  # (C,) robust sd of filtered, referenced traces (recording units, µV with a gain)
    reference: str
    bad_reasons: dict  # channel index -> "dead" | "noisy"
    # |common reference| above this (recording units) marks an artefact seen on every channel
    # (movement, licking, a stimulus): those stretches are blanked. 0: off
    artefact_threshold: float = 0.0
    artefact_pad: int = 0  # samples blanked on either side of an artefact
    # (C,) extra multiple of the reference subtracted from each channel, or None (see reference_gains)
    reference_gains: np.ndarray | None = None
    # mains harmonics (frequency / sampling rate) fitted out of every chunk (spikesort.stages.lines)
    line_cycles: np.ndarray | None = None


def design_filter(*, sampling_rate_hz: float, highpass_hz: float, lowpass_hz: float = 0.0) -> np.ndarray:
    nyq = sampling_rate_hz / 2
    if highpass_hz >= nyq:
        raise ValueError(f"high-pass {highpass_hz} Hz is above Nyquist ({nyq} Hz) for this sampling rate")
    if lowpass_hz and lowpass_hz < 0.95 * nyq and lowpass_hz > highpass_hz:
        return butter_sos(3, (highpass_hz, lowpass_hz), btype="bandpass", sampling_rate_hz=sampling_rate_hz)
    return butter_sos(3, highpass_hz, btype="highpass", sampling_rate_hz=sampling_rate_hz)


def filter_and_reference(
    traces: np.ndarray,
    *,
    sos: np.ndarray,
    reference: str,
    good_channels: np.ndarray | None = None,
    with_reference: bool = False,
):
    """Zero-phase filter each channel, then subtract the common reference of the good channels.
    With ``with_reference``: (traces, the (n,) reference subtracted, or None)."""
    x = np.ascontiguousarray(traces, dtype=np.float32)
    # filtfilt needs a few filter lengths of signal; tiny blocks are padded less
    padlen = max(0, min(3 * (2 * len(sos) + 1), x.shape[0] - 1))
    if x.shape[0] >= 2:
        x = sosfiltfilt_rows(x, sos, sos_steady_state(sos), padlen, True)
    else:
        x = x - x.mean(axis=0, keepdims=True)
    ref = common_reference(x, reference=reference, good_channels=good_channels)
    return (x, ref) if with_reference else x


def common_reference(x: np.ndarray, *, reference: str, good_channels: np.ndarray | None = None) -> np.ndarray | None:
    """Subtract the common (median or mean) reference of the good channels from filtered traces, in
    place; return it (None when there is none)."""
    if reference != "none" and x.shape[1] > 1:
        chans = np.arange(x.shape[1]) if good_channels is None else np.flatnonzero(good_channels)
        return subtract_reference(x, reference_channels(chans), reference == "median")
    return None


# the common reference of a long probe is taken on at most this many of its good channels, evenly
# spread: the median of 128 channels estimates the common signal to within a few % of the noise
# of the median of 384, at a quarter of the cost (the reference is the costliest preprocessing
# step on a Neuropixels probe)
REFERENCE_MAX_CHANNELS = 128


def reference_channels(good: np.ndarray) -> np.ndarray:
    """The channels the common reference is computed on: every good channel, or an evenly spaced
    subset of REFERENCE_MAX_CHANNELS of them."""
    good = np.asarray(good, dtype=np.int64)
    if len(good) <= REFERENCE_MAX_CHANNELS:
        return good
    return good[np.unique(np.linspace(0, len(good) - 1, REFERENCE_MAX_CHANNELS).round().astype(np.int64))]


# a common reference takes the median (or mean) across channels for the noise they share: that
# holds while one spike reaches few of the channels. Where a spike reaches nearly all of them (a
# tetrode, a handful of close contacts) the median carries the spike itself, and subtracting it
# removes signal and flattens the amplitude pattern across channels that tells units apart (on
# spikeinterface's tetrode the median reference cost 3 of 6 units; without it 6 of 6 were found).
# The local whitening still removes the noise the channels share. A spike's large part reaches
# about REFERENCE_FOOTPRINT_UM; the reference is left out when that covers more than
# REFERENCE_MAX_REACH of the channels around a typical one (a 2 x 8 probe at 20 µm, 10 of 16,
# keeps it).
REFERENCE_FOOTPRINT_UM = 50.0
REFERENCE_MAX_REACH = 0.75


def resolve_reference(reference: str, *, positions_um: np.ndarray) -> str:
    """``reference`` itself, or for "auto": "median", or "none" when a typical channel has more
    than REFERENCE_MAX_REACH of the probe's channels within REFERENCE_FOOTPRINT_UM of it."""
    if reference != "auto":
        return reference
    pos = np.asarray(positions_um, dtype=np.float64)
    if len(pos) < 3:
        return "none"
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=2)
    reach = np.median(np.sum(dist <= REFERENCE_FOOTPRINT_UM, axis=1))
    return "none" if reach > REFERENCE_MAX_REACH * len(pos) else "median"


def find_bad_channels(
    noise_sd: np.ndarray,
    *,
    referenced_sd: np.ndarray | None = None,
    dead_ratio: float = 0.1,
    noisy_ratio: float = 5.0,
) -> dict:
    """Channels far below (dead/flat) or above (noisy) the median noise of the probe. Dead is
    judged on ``noise_sd`` (unreferenced: a flat channel minus the reference is not flat); noisy on
    ``referenced_sd`` when given (a signal every channel shares, such as mains hum above the
    high-pass, inflates every unreferenced sd alike and would hide a noisy channel)."""
    ref = np.median(noise_sd)
    loud = noise_sd if referenced_sd is None else referenced_sd
    loud_ref = np.median(loud)
    bad = {}
    for c, s in enumerate(noise_sd):
        if not np.isfinite(s) or s <= dead_ratio * ref or s == 0:
            bad[c] = "dead"
        elif not np.isfinite(loud[c]) or loud[c] >= noisy_ratio * loud_ref:
            bad[c] = "noisy"
    return bad


# artefacts seen on every channel (movement, licking, stimulation) move the common reference far
# more than spikes can: on the benchmark's recordings spikes moved the median reference to at
# most 7x the median channel noise, artefacts of 0.5-3 mV to 26-140x. A stretch where the
# reference stays above ARTEFACT_LOW_SDS and reaches ARTEFACT_SDS is blanked (whitened traces
# set to 0, as saturation is), with ARTEFACT_PAD_MS on either side: what the reference leaves of
# it differs between channels and would be detected as spikes.
ARTEFACT_SDS = 20.0
ARTEFACT_LOW_SDS = 4.0
ARTEFACT_PAD_MS = 2.0
# below this many reference channels the median is too easily moved by one spike
ARTEFACT_MIN_CHANNELS = 8


def artefact_mask(ref: np.ndarray, *, threshold: float, pad: int) -> np.ndarray:
    """(n,) bool: the runs where |ref| > threshold * ARTEFACT_LOW_SDS / ARTEFACT_SDS that reach
    |ref| > threshold, widened by ``pad`` samples on either side."""
    r = np.abs(ref)
    hi = r > threshold
    if not hi.any():
        return np.zeros(len(r), dtype=bool)
    lo = r > threshold * ARTEFACT_LOW_SDS / ARTEFACT_SDS
    run = np.cumsum(np.diff(np.concatenate([[False], lo])).astype(np.int8) == 1)  # run id of each sample
    keep = np.zeros(run.max() + 1, dtype=bool)
    keep[run[hi]] = True
    mask = lo & keep[run]
    if pad > 0:
        counts = np.concatenate([[0], np.cumsum(mask)])
        i = np.arange(len(mask))
        mask = counts[np.minimum(i + pad + 1, len(mask))] - counts[np.maximum(i - pad, 0)] > 0
    return mask


def local_zca(
    cov: np.ndarray, *, positions_um: np.ndarray, radius_um: float, good_channels: np.ndarray, eps_rel: float = 1e-3
) -> np.ndarray:
    """Whitening matrix whose row c is the ZCA row of channel c computed on its neighbourhood.

    Row c only mixes channels within ``radius_um`` (always at least the channel itself and its
    nearest neighbours, so sparse probes and tetrodes whiten too).
    """
    n = cov.shape[0]
    w = np.zeros((n, n), dtype=np.float64)
    good = np.flatnonzero(good_channels)
    if good.size == 0:
        return w.astype(np.float32)
    dist = np.linalg.norm(positions_um[:, None, :] - positions_um[None, :, :], axis=2)
    for c in good:
        d = dist[c, good]
        neigh = good[d <= radius_um]
        if neigh.size < min(4, good.size):
            neigh = good[np.argsort(d)[: min(4, good.size)]]
        sub = cov[np.ix_(neigh, neigh)]
        evals, evecs = np.linalg.eigh(sub)
        evals = np.clip(evals, 0, None)
        eps = eps_rel * max(evals.mean(), 1e-12)
        zca = (evecs * (1.0 / np.sqrt(evals + eps))) @ evecs.T
        w[c, neigh] = zca[np.flatnonzero(neigh == c)[0]]
    return w.astype(np.float32)


def preprocess_chunk(traces: np.ndarray, *, model: PreprocessModel) -> np.ndarray:
    """Raw chunk (n_samples, C) in recording units -> whitened float32 (noise sd ~ 1); artefacts
    seen on every channel are blanked (set to 0)."""
    x, ref = filter_and_reference(
        traces, sos=model.sos, reference=model.reference, good_channels=model.good_channels, with_reference=True
    )
    if model.reference_gains is not None and ref is not None:
        x -= ref[:, None] * model.reference_gains[None, :]
    if model.line_cycles is not None:
        x, ref = without_lines(x, ref, cycles=model.line_cycles)
    w = apply_whitening(x, model.whitening)
    if model.artefact_threshold > 0 and ref is not None:
        w[artefact_mask(ref, threshold=model.artefact_threshold, pad=model.artefact_pad)] = 0
    return w


def apply_whitening(x: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """``x @ whitening.T``. A local whitening matrix on a long probe is mostly zeros (384
    channels, 100 µm: ~19 per row): its rows are applied as sparse sums, ~2x faster than BLAS
    on the dense matrix there; small or dense matrices go to BLAS."""
    idx, w = _sparse_rows(whitening)
    if idx.shape[1] > 0.25 * whitening.shape[1]:
        return x @ whitening.T
    out = np.empty((x.shape[0], whitening.shape[0]), dtype=np.float32)
    sparse_mix(np.ascontiguousarray(x, dtype=np.float32), idx, w, out)
    return out


def _sparse_rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the non-zeros of each row of m, rows padded with -1 / 0. Vectorised:
    it runs once per preprocessed chunk."""
    rows, cols = np.nonzero(m)  # row-major: columns ascend within a row
    counts = np.bincount(rows, minlength=len(m))
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    k = max(1, int(counts.max(initial=0)))
    idx = np.full((len(m), k), -1, dtype=np.int64)
    w = np.zeros((len(m), k), dtype=np.float32)
    idx[rows, slot] = cols
    w[rows, slot] = m[rows, cols]
    return idx, w


def fit_preprocessing(
    blocks,
    *,
    sampling_rate_hz: float,
    positions_um: np.ndarray,
    highpass_hz: float,
    lowpass_hz: float,
    reference: str,
    whitening_radius_um: float,
    detect_bad_channels: bool,
    n_jobs: int = 1,
) -> PreprocessModel:
    """Fit filter, bad channels and whitening on a few raw blocks sampled across the recording.

    ``blocks``: a sequence of (n, C) raw arrays; it is indexed, one block at a time per worker,
    so it may read each block when asked (memory then holds a few blocks, not all of them: 32
    one-second blocks of 384 channels are 1.5 GB in float32)."""
    from spikesort.chunks import map_chunks

    chosen = resolve_reference(reference, positions_um=positions_um)
    if chosen != reference:
        log.info(
            "common reference: %s (%s)",
            chosen,
            "a spike reaches most channels of this probe" if chosen == "none" else "from the probe geometry",
        )
    reference = chosen
    sos = design_filter(sampling_rate_hz=sampling_rate_hz, highpass_hz=highpass_hz, lowpass_hz=lowpass_hz)
    n_blocks = len(blocks)

    def stats(x, ref=None):
        """Covariance terms, robust sd and a sample of filtered, referenced traces; with the
        reference subtracted from them, its cross terms and a sample of it."""
        sd = robust_sd(x, max_samples=10_000)
        # spikes inflate the covariance; clip big excursions so a few large units do not dominate it
        lim = (6.0 * np.maximum(sd, 1e-12)).astype(np.float32)
        # float32 BLAS is ~10x faster than float64 and accurate enough here. (Every 3rd sample
        # would cut the cost on long probes, but moved sorted units on the benchmark scenarios:
        # the clustering is sensitive to the whitening at that level.)
        clipped = np.clip(x, -lim, lim)
        stride = max(1, len(x) * n_blocks // 100_000)
        out = (clipped.T @ clipped).astype(np.float64), len(clipped), sd, x[::stride]
        if ref is None:
            return out + (None, 0.0, None)
        r = ref.astype(np.float64)
        return out + (clipped.T.astype(np.float64) @ r, float(r @ r), ref[::stride])

    def first_pass(i):
        # one read and one filtering serve both the bad-channel test (unreferenced noise) and,
        # when every channel turns out good (the usual case), the whitening statistics
        x = filter_and_reference(blocks[i], sos=sos, reference="none")
        # the bad-channel test compares with a tenth and 5x the probe median: a coarse sd will do
        sd_raw = robust_sd(x, max_samples=3_000)
        ref = common_reference(x, reference=reference)
        spectrum = (len(x), line_power(x))
        if ref is None:
            return sd_raw, sd_raw, stats(x), spectrum
        return sd_raw, robust_sd(x, max_samples=3_000), stats(x, ref), spectrum

    first = list(map_chunks(first_pass, range(n_blocks), n_jobs=n_jobs))
    n_ch = len(first[0][0])
    sd_raw = np.median([f[0] for f in first], axis=0)
    sd_ref = np.median([f[1] for f in first], axis=0)
    bad = find_bad_channels(sd_raw, referenced_sd=sd_ref) if detect_bad_channels and n_ch > 2 else {}
    if len(bad) == n_ch:
        raise ValueError("every channel looks dead or saturated: the recording has no usable signal")
    good = np.ones(n_ch, dtype=bool)
    good[list(bad)] = False
    for c, why in bad.items():
        log.warning(
            "channel %d looks %s (noise sd %.3g vs probe median %.3g): left out", c, why, sd_raw[c], np.median(sd_raw)
        )
    if bad:
        # the reference must leave the bad channels out: filter again
        parts = list(
            map_chunks(
                lambda i: stats(
                    *filter_and_reference(
                        blocks[i], sos=sos, reference=reference, good_channels=good, with_reference=True
                    )
                ),
                range(n_blocks),
                n_jobs=n_jobs,
            )
        )
    else:
        parts = [f[2] for f in first]
    cov = sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)
    noise_sd = np.median([p[2] for p in parts], axis=0)
    sample = np.concatenate([p[3] for p in parts])
    # on a probe where one spike reaches a good part of the channels the reference carries the
    # spikes too, and a fit on it would take part of every unit out (a 16-channel, 2-column
    # probe: one unit's template correlated 0.875 with its true one)
    gains = reference_gains(parts, cov=cov, good=good) if _reach(positions_um) <= REFERENCE_GAIN_MAX_REACH else None
    if gains is not None:
        log.info(
            "the common reference carries a signal the channels see at different sizes (mains hum?): "
            "subtracted at each channel's own gain (%.2f-%.2f)",
            1 + gains[good].min(),
            1 + gains[good].max(),
        )
        c = sum(p[4] for p in parts) / max(sum(p[1] for p in parts), 1)
        v = sum(p[5] for p in parts) / max(sum(p[1] for p in parts), 1)
        g = gains.astype(np.float64)
        cov = cov - np.outer(g, c) - np.outer(c, g) + np.outer(g, g) * v
        sample = sample - np.concatenate([p[6] for p in parts])[:, None] * gains[None, :]
        # the noise is what the traces keep once the hum is gone: measured before the gains it
        # held each channel's share of the hum (up to 1.5x its noise on the benchmark's dirty
        # recording) and put neurons there under the template SNR floor
        noise_sd = np.where(good, robust_sd(sample), noise_sd)

    def cleaned(i, cycles=None):
        x, ref = filter_and_reference(blocks[i], sos=sos, reference=reference, good_channels=good, with_reference=True)
        if gains is not None:
            x -= ref[:, None] * gains[None, :]
        return (len(x), line_power(x[:, good])) if cycles is None else stats(without_lines(x, None, cycles=cycles)[0])

    # mains lines the reference (at the channels' gains, where fitted) left: fitted out of every
    # chunk, and the statistics measured once they are gone
    lines = mains_lines([f[3] for f in first], sampling_rate_hz=sampling_rate_hz)
    if len(lines) and (bad or gains is not None):
        lines = mains_lines(
            list(map_chunks(cleaned, range(n_blocks), n_jobs=n_jobs)), sampling_rate_hz=sampling_rate_hz
        )
    cycles = lines / sampling_rate_hz if len(lines) else None
    if cycles is not None:
        log.info("mains hum: %d lines at %.2f-%.2f Hz, fitted out of every chunk", len(lines), lines[0], lines[-1])
        parts = list(map_chunks(lambda i: cleaned(i, cycles), range(n_blocks), n_jobs=n_jobs))
        cov = sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)
        noise_sd = np.where(good, np.median([p[2] for p in parts], axis=0), noise_sd)
        sample = np.concatenate([p[3] for p in parts])
    w = local_zca(cov, positions_um=positions_um, radius_um=whitening_radius_um, good_channels=good)
    # scale rows so every good channel has unit robust noise sd in whitened space: thresholds are then in sd
    sd_white = robust_sd(apply_whitening(sample, w))
    w[good] /= np.maximum(sd_white[good], 1e-12)[:, None].astype(np.float32)
    artefact_threshold = 0.0
    if reference != "none" and len(reference_channels(np.flatnonzero(good))) >= ARTEFACT_MIN_CHANNELS:
        artefact_threshold = float(ARTEFACT_SDS * np.median(noise_sd[good]))
    return PreprocessModel(
        sos=sos,
        whitening=w,
        good_channels=good,
        noise_sd=noise_sd.astype(np.float32),
        reference=reference,
        bad_reasons=bad,
        artefact_threshold=artefact_threshold,
        artefact_pad=int(round(ARTEFACT_PAD_MS * sampling_rate_hz / 1000)),
        reference_gains=gains,
        line_cycles=cycles,
    )


# the common reference is subtracted with one gain per channel when that explains at least this
# share of the referenced traces' variance on the median channel: mains hum or an artefact that
# the channels pick up at different sizes (0.7-1.3 on the benchmark's dirty recording: 17%) is
# then removed, where the plain median leaves each channel its own share of it. On clean
# recordings the reference explains under 1% (0.2-0.6% on the benchmark's) and is subtracted as is.
REFERENCE_GAIN_MIN_EXPLAINED = 0.05


# ... and only on probes where a typical channel has at most this share of the channels within
# REFERENCE_FOOTPRINT_UM (a 64-channel NP1 slice: 9 %; a 2 x 8 probe at 20 µm: 60 %). A spike
# reaching a third of the channels moves their median by at most 0.7 noise sd (to the 25th
# percentile of the others) and the fit takes little of it; at 0.25 the hum stayed on a 32-channel
# staggered probe (28 %) and lifted the matching thresholds to 15 sd (`dirty32` seed 95: 17 of 20)
REFERENCE_GAIN_MAX_REACH = 1 / 3


def _reach(positions_um: np.ndarray) -> float:
    """The share of the probe's channels within REFERENCE_FOOTPRINT_UM of a typical channel."""
    pos = np.asarray(positions_um, dtype=np.float64)
    if len(pos) == 0:
        return 1.0
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=2)
    return float(np.median(np.sum(dist <= REFERENCE_FOOTPRINT_UM, axis=1))) / len(pos)


def reference_gains(parts, *, cov: np.ndarray, good: np.ndarray) -> np.ndarray | None:
    """(C,) float32 extra gain of the reference per channel (0 on bad channels), or None: the
    least-squares fit of each referenced channel on the reference, kept when it explains at
    least REFERENCE_GAIN_MIN_EXPLAINED of the variance on the median good channel."""
    if parts[0][4] is None:
        return None
    xr = sum(p[4] for p in parts)
    rr = sum(p[5] for p in parts)
    n = max(sum(p[1] for p in parts), 1)
    if rr <= 0:
        return None
    g = np.where(good, xr / rr, 0.0)
    explained = g**2 * (rr / n) / np.maximum(np.diag(cov), 1e-12)
    if np.median(explained[good]) < REFERENCE_GAIN_MIN_EXPLAINED:
        return None
    return g.astype(np.float32)
