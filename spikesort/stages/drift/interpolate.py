"""Correction of the traces for a motion estimate.

Gaussian-kernel kriging across the channels of a shank, regularised so that it smooths the
same at every shift (see ``Kriging``). Each corrected channel is the prediction at its shifted
position from the recorded channels; the weights are recomputed every quarter of a time bin
from the displacement interpolated in time. The traces corrected are the whitened ones in the
scratch store (as Kilosort 4 does): that costs one read and write of the store, while fusing
the interpolation with whitening would need filtering the raw recording a second time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .estimate import Motion

# correction weights are recomputed this many times per time bin
CORRECTION_STEPS_PER_BIN = 4
# kriging kernel width and regularisation (see Kriging for why this much smoothing)
KRIGING_SIGMA_UM = 30.0
KRIGING_REGULARIZATION = 0.3


@dataclass(frozen=True)
class Kriging:
    """Kriging interpolation across the good channels of each shank (Gaussian kernel).

    ``matrix(shift_um)`` is (C, C) float32 M with corrected = traces @ M.T: channel c becomes the
    estimate, from the good channels of its shank, of the signal at ``p_c + (0, shift_um[c])``:
    ``k(target, P) (k(P, P) + regularization I)^-1``. Bad channels stay zero. A channel shifted
    off the end of its shank fades to zero: there is nothing recorded there, and copying the
    edge channel instead would show one unit on two channels.

    Why a wide kernel (30 µm) with a large regularisation (0.3), so that even zero shift smooths
    a little: a spike's footprint on whitened traces is sharper than the contact spacing, so an
    exact interpolator (σ 20 µm, regularisation 1e-3, identity at zero shift) reproduces a unit
    exactly when the probe sits at its reference position and blurs it in between; the unit's
    waveform then changes with the probe's position and clustering splits it. Smoothing the
    same amount at every shift keeps one waveform per unit: measured on 64-channel NP1-like
    recordings (120 s, ±20 µm zigzag, 30 units), mean change of a unit's waveform between
    displacement quartiles 0.22 -> 0.15, well-detected units 16 -> 21 (static: 23).
    The smoothing lowers the noise of the whitened traces (to about 0.6 sd); one gain per shank
    brings it back to 1, so the later stages' thresholds (in noise sd) keep their meaning.
    Correction is only applied when the motion is worth it (``drift_min_um``).
    """

    positions_um: np.ndarray  # (C, 2)
    sources: tuple  # per shank: good channel indices
    inverses: tuple  # per shank: inverse of the regularised kernel matrix of those channels
    sigma_um: float

    @classmethod
    def build(
        cls,
        *,
        positions_um,
        shank_ids=None,
        good_channels=None,
        sigma_um: float | None = None,
        regularization: float | None = None,
    ) -> Kriging:
        sigma_um = KRIGING_SIGMA_UM if sigma_um is None else sigma_um
        regularization = KRIGING_REGULARIZATION if regularization is None else regularization
        pos = np.asarray(positions_um, dtype=np.float64)[:, :2]
        n = len(pos)
        shanks = np.zeros(n, np.int64) if shank_ids is None else np.asarray(shank_ids)
        good = np.ones(n, bool) if good_channels is None else np.asarray(good_channels, bool)
        sources, inverses = [], []
        for s in np.unique(shanks):
            src = np.flatnonzero((shanks == s) & good)
            if src.size == 0:
                continue
            kyy = _gauss_kernel(pos[src], pos[src], sigma_um)
            inv = np.linalg.inv(kyy + regularization * np.eye(len(src)))
            # the smoothing lowers the noise: one gain per shank brings it back to unit sd, so
            # thresholds in noise sd keep their meaning (the same gain at every shift)
            inv /= np.sqrt(np.median(((kyy @ inv) ** 2).sum(axis=1)))
            sources.append(src)
            inverses.append(inv)
        return cls(pos, tuple(sources), tuple(inverses), float(sigma_um))

    def matrix(self, shift_um) -> np.ndarray:
        n = len(self.positions_um)
        shift = np.broadcast_to(np.asarray(shift_um, dtype=np.float64), (n,))
        m = np.zeros((n, n), dtype=np.float64)
        for src, inv in zip(self.sources, self.inverses):
            p = self.positions_um[src]
            target = p + np.column_stack([np.zeros(len(src)), shift[src]])
            m[np.ix_(src, src)] = _gauss_kernel(target, p, self.sigma_um) @ inv
        return m.astype(np.float32)


def _gauss_kernel(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / sigma**2)


def interpolation_matrix(
    *,
    positions_um,
    shift_um,
    shank_ids=None,
    good_channels=None,
    sigma_um: float | None = None,
    regularization: float | None = None,
) -> np.ndarray:
    """One (C, C) correction matrix (see ``Kriging``); corrected = traces @ M.T."""
    return Kriging.build(
        positions_um=positions_um,
        shank_ids=shank_ids,
        good_channels=good_channels,
        sigma_um=sigma_um,
        regularization=regularization,
    ).matrix(shift_um)


def correct_chunk(x: np.ndarray, *, matrix: np.ndarray) -> np.ndarray:
    """A (n_samples, C) block seen through one correction matrix."""
    return np.asarray(x, dtype=np.float32) @ matrix.T


def correct_block(
    x: np.ndarray,
    *,
    start: int,
    sampling_rate_hz: float,
    motion: Motion,
    kriging: Kriging,
    channel_shanks: np.ndarray,
    step_samples: int,
) -> np.ndarray:
    """Correct samples [start, start + len(x)) of the recording.

    The weights change every ``step_samples`` on a grid fixed in recording samples (so the
    result does not depend on how the recording is chunked); each step uses the displacement
    at its centre, interpolated in time between the motion's bins.
    """
    out = np.empty_like(x, dtype=np.float32)
    depths = kriging.positions_um[:, 1]
    stop = start + len(x)
    k = start // step_samples
    while k * step_samples < stop:
        a, b = max(start, k * step_samples), min(stop, (k + 1) * step_samples)
        t_mid = (k + 0.5) * step_samples / sampling_rate_hz
        shift = motion.at(times_s=np.full(len(depths), t_mid), depths_um=depths, shanks=channel_shanks)
        out[a - start : b - start] = correct_chunk(x[a - start : b - start], matrix=kriging.matrix(shift))
        k += 1
    return out


def correct_store(
    store,
    *,
    motion: Motion,
    chunks,
    sampling_rate_hz: float,
    positions_um,
    shank_ids,
    good_channels,
    n_jobs: int = 1,
    progress=None,
    sigma_um: float | None = None,
) -> None:
    """Correct the whitened traces of ``store`` in place, chunk by chunk (keep windows only:
    the interpolation is across channels, so no margin is needed)."""
    from spikesort.chunks import map_chunks

    kriging = Kriging.build(
        positions_um=positions_um, shank_ids=shank_ids, good_channels=good_channels, sigma_um=sigma_um
    )
    bin_s = float(np.median(np.diff(motion.time_bins_s))) if motion.n_time_bins > 1 else 2.0
    step = max(1, int(round(bin_s / CORRECTION_STEPS_PER_BIN * sampling_rate_hz)))
    shanks = np.asarray(shank_ids)

    def fn(ch):
        x = store.read(ch.keep_start, ch.keep_stop)
        store.write(
            ch.keep_start,
            correct_block(
                x,
                start=ch.keep_start,
                sampling_rate_hz=sampling_rate_hz,
                motion=motion,
                kriging=kriging,
                channel_shanks=shanks,
                step_samples=step,
            ),
        )

    for _ in map_chunks(fn, chunks, n_jobs=n_jobs, progress=progress):
        pass
