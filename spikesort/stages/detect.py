"""Spike detection with a bank of universal templates.

Two steps on whitened traces (noise sd ~ 1):
1. candidates: local extrema beyond ``detect_threshold`` within a space-time exclusion zone
   (numba kernel ``detect_peaks``);
2. universal templates: each candidate's neighbourhood is projected onto a few temporal
   waveforms learned from the data (``project_neighborhoods``); a bank of spatial Gaussian
   envelopes centred on nearby contacts turns those projections into matched-filter scores.
   Candidates whose best score stays below ``universal_threshold`` are noise and dropped.
The projections are kept: they are the spikes' features for clustering.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spikesort.kernels.detect import detect_peaks, project_neighborhoods, temporal_filter

log = logging.getLogger(__name__)


@dataclass
class Detections:
    times: np.ndarray  # (n,) int64 sample of the peak
    channels: np.ndarray  # (n,) int64 peak channel
    amplitudes: np.ndarray  # (n,) float32 peak value in whitened sd (sign-corrected, > 0)
    scores: np.ndarray  # (n,) float32 best universal-template score
    positions_um: np.ndarray  # (n, 2) float32 estimated location
    features: np.ndarray  # (n, M, K) float32 projections on the peak channel's neighbourhood

    @classmethod
    def empty(cls, m: int, k: int) -> Detections:
        return cls(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
            np.zeros((0, 2), np.float32),
            np.zeros((0, m, k), np.float32),
        )

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def concat(cls, parts: list[Detections]) -> Detections:
        return cls(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("times", "channels", "amplitudes", "scores", "positions_um", "features")
            )
        )

    def take(self, idx) -> Detections:
        return Detections(
            self.times[idx],
            self.channels[idx],
            self.amplitudes[idx],
            self.scores[idx],
            self.positions_um[idx],
            self.features[idx],
        )


# samples beyond the threshold that the sign is read from; fewer, and the threshold comes down
MIN_SIGN_SAMPLES = 200


def choose_sign(x: np.ndarray, *, threshold: float, floor: float | None = None) -> int:
    """-1 when large negative excursions dominate (the usual extracellular spike), +1 otherwise.

    Read at ``threshold``, or, where fewer than ``MIN_SIGN_SAMPLES`` samples cross it either
    way, at the first of 3/4 and 1/2 of it (no lower than ``floor``) where that many do: on a
    noisy tetrode (mearec_tetrode_noisy seed 71) only 12 samples passed 10 sd, all the positive
    lobe of one neuron, and the sorter detected every spike on the wrong side (1 of 6 neurons)."""
    floor = 0.0 if floor is None else floor
    for t in (threshold, 0.75 * threshold, 0.5 * threshold):
        t = max(t, floor)
        neg = np.count_nonzero(x < -t)
        pos = np.count_nonzero(x > t)
        if neg + pos >= MIN_SIGN_SAMPLES:
            break
    return -1 if neg >= 0.5 * pos else 1


def learn_temporal_bases(
    blocks: list[np.ndarray],
    *,
    sign: int,
    threshold: float,
    neighbors: np.ndarray,
    exclusion: int,
    pre: int,
    nt: int,
    n_components: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Temporal waveforms (K, nt) spanning the spikes seen on their peak channel, by SVD.

    Falls back to Gaussian-windowed cosines when the data hold too few spikes to learn from
    (an empty or spike-free recording still sorts, to zero units).
    """
    snippets = []
    for x in blocks:
        t, c = detect_peaks(x, float(sign), float(threshold), neighbors, exclusion, pre, x.shape[0] - nt + pre)
        for ti, ci in zip(t, c):
            snippets.append(x[ti - pre : ti - pre + nt, ci])
    if len(snippets) >= 4 * n_components + 20:
        s = np.asarray(snippets, dtype=np.float64)
        if len(s) > 20000:
            s = s[rng.choice(len(s), 20000, replace=False)]
        _, _, vt = np.linalg.svd(s, full_matrices=False)
        bases = vt[:n_components]
        log.debug("temporal bases learned from %d spikes", len(s))
    else:
        log.info("only %d spikes to learn waveform shapes from: using generic ones", len(snippets))
        tt = np.arange(nt) - pre
        win = np.exp(-0.5 * (tt / (nt / 6)) ** 2)
        bases = np.array([win * np.cos(np.pi * k * tt / nt) for k in range(n_components)])
        bases, _ = np.linalg.qr(bases.T)
        bases = bases.T
    # sign so that each basis projects positively onto a spike of the detected polarity
    for k in range(len(bases)):
        if sign * bases[k, pre] < 0:
            bases[k] = -bases[k]
    return np.ascontiguousarray(bases, dtype=np.float32)


def envelope_bank(*, positions_um: np.ndarray, neighbors: np.ndarray, sigmas_um, center_radius_um: float) -> np.ndarray:
    """(C, E, M) unit-norm spatial weights: Gaussian envelopes of each width, centred on the
    contacts within ``center_radius_um`` of channel c, over c's neighbourhood. Padded rows are 0."""
    n_c, m = neighbors.shape
    per_c = []
    for c in range(n_c):
        nb = neighbors[c][neighbors[c] >= 0]
        pos = positions_um[nb]
        centers = pos[np.linalg.norm(pos - positions_um[c], axis=1) <= center_radius_um]
        rows = []
        for ctr in centers:
            d2 = np.sum((pos - ctr) ** 2, axis=1)
            for s in sigmas_um:
                w = np.exp(-0.5 * d2 / s**2)
                row = np.zeros(m)
                row[: len(nb)] = w / np.linalg.norm(w)
                rows.append(row)
        per_c.append(np.asarray(rows))
    e = max(len(r) for r in per_c)
    bank = np.zeros((n_c, e, m), dtype=np.float32)
    for c, r in enumerate(per_c):
        bank[c, : len(r)] = r
    return bank


def universal_scores(features: np.ndarray, channels: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Best matched-filter score of each event over the envelope bank: max_e |sum_m w_em P_m|."""
    if len(features) == 0:
        return np.zeros(0, np.float32)
    v = np.einsum("nem,nmk->nek", bank[channels], features, optimize=True)
    return np.sqrt((v * v).sum(axis=2).max(axis=1)).astype(np.float32)


def localize(
    features: np.ndarray, channels: np.ndarray, *, neighbors: np.ndarray, positions_um: np.ndarray
) -> np.ndarray:
    """Centre of mass of the projected energy over the neighbourhood (µm)."""
    if len(features) == 0:
        return np.zeros((0, 2), np.float32)
    energy = (features * features).sum(axis=2)  # (n, M)
    nb = neighbors[channels]  # (n, M)
    pos = positions_um[np.where(nb >= 0, nb, 0)]  # (n, M, 2)
    energy = np.where(nb >= 0, energy, 0.0)
    # only the strong part of the footprint, so far channels' noise does not pull the estimate
    energy = np.maximum(energy - 0.1 * energy.max(axis=1, keepdims=True), 0)
    w = energy / np.maximum(energy.sum(axis=1, keepdims=True), 1e-12)
    return (w[:, :, None] * pos).sum(axis=1).astype(np.float32)


def filtered_noise_sd(blocks: list[np.ndarray], *, bases: np.ndarray, pre: int) -> np.ndarray:
    """Robust sd per channel of the traces after the matched filter of the first temporal basis."""
    from .noise_sd import robust_sd

    y = np.concatenate([temporal_filter(b, bases[0], pre, np.ones(b.shape[1], np.float32)) for b in blocks])
    return np.maximum(robust_sd(y), 1e-6).astype(np.float32)


def candidate_peaks(
    x: np.ndarray,
    *,
    bases: np.ndarray,
    filter_sd: np.ndarray,
    pre: int,
    threshold: float,
    neighbors: np.ndarray,
    exclusion: int,
    lo: int,
    hi: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of the temporally matched-filtered traces (in noise sd) above ``threshold``.

    Filtering with the main spike shape before thresholding gathers a spike's energy over its
    whole waveform, which finds units whose single-sample peak hides in the noise. The bases
    are oriented so that spikes of the detected polarity give positive output.
    """
    y = temporal_filter(x, bases[0], pre, (1.0 / filter_sd).astype(np.float32))
    return detect_peaks(y, 1.0, float(threshold), neighbors, exclusion, lo, hi)


def detect_block(
    x: np.ndarray,
    *,
    keep_start: int,
    keep_stop: int,
    offset: int,
    sign: int,
    threshold: float,
    universal_threshold: float,
    peak_neighbors: np.ndarray,
    feature_neighbors: np.ndarray,
    bank: np.ndarray,
    bases: np.ndarray,
    pre: int,
    exclusion: int,
    positions_um: np.ndarray,
    filter_sd: np.ndarray,
) -> Detections:
    """Detect in one whitened block; ``offset`` is the recording sample of ``x[0]``."""
    nt = bases.shape[1]
    # a window must fit: events too close to the recording's edges cannot be fitted or extracted
    lo = max(keep_start, pre)
    hi = min(keep_stop, x.shape[0] - (nt - pre))
    if hi <= lo:
        return Detections.empty(feature_neighbors.shape[1], bases.shape[0])
    t, c = candidate_peaks(
        x,
        bases=bases,
        filter_sd=filter_sd,
        pre=pre,
        threshold=threshold,
        neighbors=peak_neighbors,
        exclusion=exclusion,
        lo=lo,
        hi=hi,
    )
    # no re-alignment by the best universal score over a few lags: that criterion is nearly
    # flat across lags, so it put one unit's spikes on different samples and clustering split
    # them by alignment. The matched filter's peak is the consistent alignment.
    feats = project_neighborhoods(x, t, c, feature_neighbors, bases, pre)
    scores = universal_scores(feats, c, bank)
    ok = scores >= universal_threshold
    t, c, feats, scores = t[ok], c[ok], feats[ok], scores[ok]
    amps = (sign * x[t, c]).astype(np.float32)
    pos = localize(feats, c, neighbors=feature_neighbors, positions_um=positions_um)
    return Detections(t + offset, c, amps, scores, pos, feats)
