"""Drift: motion estimation from detected spikes, and its correction on the whitened traces.

Convention. ``d(t, depth)`` (µm) is how far the tissue at ``depth`` appears shifted towards
larger y at time t, relative to the reference position (the middle of its range over time,
per block, so that no moment needs a larger correction than necessary). A
spike seen at depth y at time t sits at reference depth ``y - d``; a corrected trace of channel
c holds what the probe recorded at ``p_c + (0, d)``, so corrected traces look as if the probe
never moved.

Estimation (``estimate_motion``), per shank, from the spikes of a first detection pass located
by a peaked fit of their amplitude across contacts (``detect_for_motion``, ``localize_fit``):
1. spikes are binned into (time bin × depth bin × log-amplitude bin) histograms, one per
   ``bin_s`` of recording, smoothed along depth; spikes placed at either end of the shank are
   left out (a unit beyond the last contact is placed there whatever its true depth);
2. every pair of time bins within ``horizon_s`` is registered by cross-correlation along depth
   (FFT, sub-bin peak by a parabola), which gives a relative shift and a confidence (the
   normalised correlation peak, discounted for bins with few spikes);
3. the displacement of every time bin comes from one weighted least-squares fit of all pairwise
   shifts (decentralised registration, the idea of DREDge), with a smoothness term across
   neighbouring bins; a bin with few or no spikes has low-confidence pairs and so takes its
   value from its neighbours. Two reweighting rounds (Tukey) drop pairs that registered on the
   wrong peak;
4. non-rigid: the same on Gaussian depth windows ("blocks") of the rigidly corrected spikes,
   whose residual is added to the rigid estimate.

Correction (``Kriging``, ``interpolation_matrix``, ``correct_chunk``, ``correct_store``):
Gaussian-kernel kriging across the channels of a shank, regularised so that it smooths the
same at every shift (see ``Kriging``). Each corrected channel is the prediction at its shifted
position from the recorded channels; the weights are recomputed every quarter of a time bin
from the displacement interpolated in time. The traces corrected are the whitened ones in the
scratch store (as Kilosort 4 does): that costs one read and write of the store, while fusing
the interpolation with whitening would need filtering the raw recording a second time.

Files, written only when the traces were corrected (``Motion.save``): ``motion.npy`` (T, B)
float32 displacement in µm; ``motion_time_bins_s.npy`` (T,) centres of the time bins;
``motion_depth_bins_um.npy`` (B,) block centre depths; ``motion_shanks.npy`` (B,) shank index of
each block (the shank order of ``channel_shanks.npy``). A rigid shank has one block. The
displacement at any (t, depth, shank) is linear in time between bin centres and in depth between
the shank's block centres, constant beyond the first and last. ``drift_map.png`` shows the
spikes of the estimation pass as recorded and corrected. ``drift.json`` records the decision
every time (corrected or not, why, mode per shank, span of the estimate).

After correction, units that clustering kept apart because they were seen at two probe
positions are merged (``drift_split_groups``, called at the end of curation).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

from spikesort.layout import DRIFT_MAP, DRIFT_RECORD, MOTION_FILES  # noqa: F401 (re-exported)
# a shank needs this many usable channels before its drift can be estimated
MIN_CHANNELS = 8
# amplitude bins of the registration histograms (log-spaced between the 1st and 99.5th percentiles)
N_AMPLITUDE_BINS = 3
# the registration histograms are smoothed along depth by a Gaussian of this sd
DEPTH_SMOOTH_UM = 5.0
# correction weights are recomputed this many times per time bin
CORRECTION_STEPS_PER_BIN = 4
# kriging kernel width and regularisation (see Kriging for why this much smoothing)
KRIGING_SIGMA_UM = 30.0
KRIGING_REGULARIZATION = 0.3


# ---------------------------------------------------------------------------------------------
# the motion estimate


@dataclass(frozen=True)
class Motion:
    displacement_um: np.ndarray  # (T, B) float32
    time_bins_s: np.ndarray  # (T,) float64 bin centres
    depth_bins_um: np.ndarray  # (B,) float64 block centres
    block_shanks: np.ndarray  # (B,) int64 shank of each block

    @property
    def n_time_bins(self) -> int:
        return len(self.time_bins_s)

    def at(self, *, times_s, depths_um, shanks=None) -> np.ndarray:
        """Displacement (µm) at each (time, depth[, shank]); 0 on shanks without blocks."""
        t = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
        y = np.broadcast_to(np.asarray(depths_um, dtype=np.float64), t.shape)
        sh = np.zeros(t.shape, np.int64) if shanks is None else np.broadcast_to(np.asarray(shanks), t.shape)
        out = np.zeros(t.shape, dtype=np.float64)
        if self.displacement_um.size == 0:
            return out
        # linear in time between bin centres, constant outside
        tb = self.time_bins_s
        u = np.clip(np.interp(t, tb, np.arange(len(tb), dtype=np.float64)), 0, len(tb) - 1)
        i0 = np.floor(u).astype(np.int64)
        i1 = np.minimum(i0 + 1, len(tb) - 1)
        f = u - i0
        for s in np.unique(sh):
            blocks = np.flatnonzero(self.block_shanks == s)
            if blocks.size == 0:
                continue
            m = sh == s
            order = blocks[np.argsort(self.depth_bins_um[blocks])]
            d = self.displacement_um[:, order].astype(np.float64)
            at_t = d[i0[m]] * (1 - f[m, None]) + d[i1[m]] * f[m, None]  # (n, b)
            if len(order) == 1:
                out[m] = at_t[:, 0]
                continue
            c = self.depth_bins_um[order]
            v = np.clip(np.interp(y[m], c, np.arange(len(c), dtype=np.float64)), 0, len(c) - 1)
            j0 = np.minimum(np.floor(v).astype(np.int64), len(c) - 2)
            g = v - j0
            rows = np.arange(len(v))
            out[m] = at_t[rows, j0] * (1 - g) + at_t[rows, j0 + 1] * g
        return out

    def save(self, folder) -> None:
        folder = Path(folder)
        arrays = (self.displacement_um.astype(np.float32), self.time_bins_s.astype(np.float64),
                  self.depth_bins_um.astype(np.float64), self.block_shanks.astype(np.int32))
        for name, arr in zip(MOTION_FILES, arrays):
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            tmp.replace(folder / name)

    @classmethod
    def load(cls, folder) -> "Motion":
        folder = Path(folder)
        d, t, y, s = (np.load(folder / name, allow_pickle=False) for name in MOTION_FILES)
        return cls(d.reshape(len(t), len(y)), t, y, s.astype(np.int64))

    @classmethod
    def exists(cls, folder) -> bool:
        return all((Path(folder) / name).is_file() for name in MOTION_FILES)


# ---------------------------------------------------------------------------------------------
# estimation


def _histograms(*, times_s, depths_um, amplitudes, n_bins: int, bin_s: float, edges: np.ndarray,
                amp_edges: np.ndarray, smooth_bins: float) -> np.ndarray:
    """(T, D, A) spike counts per time bin, depth bin and log-amplitude bin."""
    from scipy.ndimage import gaussian_filter1d

    ti = np.clip((times_s / bin_s).astype(np.int64), 0, n_bins - 1)
    di = np.searchsorted(edges, depths_um, side="right") - 1
    ai = np.clip(np.searchsorted(amp_edges, np.log(np.maximum(amplitudes, 1e-6)), side="right") - 1,
                 0, len(amp_edges) - 2)
    ok = (di >= 0) & (di < len(edges) - 1)
    shape = (n_bins, len(edges) - 1, len(amp_edges) - 1)
    flat = np.ravel_multi_index((ti[ok], di[ok], ai[ok]), shape)
    h = np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape).astype(np.float32)
    if smooth_bins > 0:
        h = gaussian_filter1d(h, smooth_bins, axis=1, mode="constant")
    return h


def _pairwise_shifts(h: np.ndarray, *, max_lag: int, horizon: int, rows_per_block: int = 32):
    """Relative shift (in depth bins) and correlation peak of every pair of time bins within
    ``horizon`` bins, as banded arrays (T, 2*horizon+1): entry [i, k] is the pair (i, i+k-horizon).

    shift[i, j] is s_i - s_j: histogram i matches histogram j moved by that many bins.
    """
    from scipy import fft

    n_t, n_d, n_a = h.shape
    norm = np.sqrt((h.astype(np.float64) ** 2).sum(axis=(1, 2)))
    hn = (h / np.maximum(norm, 1e-12)[:, None, None]).astype(np.float32)
    # zero padding of max_lag bins on each side: circular correlation never wraps within +-max_lag
    n_fft = fft.next_fast_len(n_d + 2 * max_lag + 1, real=True)
    spec_t = np.ascontiguousarray(fft.rfft(hn, n=n_fft, axis=1).transpose(1, 0, 2))  # (F, T, A) complex64
    width = 2 * horizon + 1
    shift = np.zeros((n_t, width), dtype=np.float64)
    peak = np.zeros((n_t, width), dtype=np.float64)
    lags = np.arange(-max_lag, max_lag + 1)
    for i0 in range(0, n_t, rows_per_block):
        i1 = min(n_t, i0 + rows_per_block)
        j0, j1 = max(0, i0 - horizon), min(n_t, i1 + horizon)
        # corr_ij(l) = sum_d,a hn_i[d + l, a] hn_j[d, a]
        prod = spec_t[:, i0:i1, :] @ np.conj(spec_t[:, j0:j1, :]).transpose(0, 2, 1)  # (F, ni, nj)
        corr = fft.irfft(prod, n=n_fft, axis=0)[lags % n_fft]  # (L, ni, nj)
        best = corr.argmax(axis=0)
        c1 = np.take_along_axis(corr, best[None], 0)[0]
        inner = (best > 0) & (best < len(lags) - 1)
        b = np.clip(best, 1, len(lags) - 2)
        c0 = np.take_along_axis(corr, (b - 1)[None], 0)[0]
        c2 = np.take_along_axis(corr, (b + 1)[None], 0)[0]
        den = c0 - 2 * c1 + c2
        curved = inner & (den < -1e-9)
        off = np.where(curved, 0.5 * (c0 - c2) / np.where(curved, den, -1.0), 0.0)
        s = lags[best] + np.clip(off, -0.5, 0.5)
        # a peak at the edge of the lag range is no registration: the shift is out of range
        c1 = np.where(inner, c1, 0.0)
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
        k = jj - ii + horizon
        ok = (k >= 0) & (k < width)
        shift[ii[ok], k[ok]] = s[ok]
        peak[ii[ok], k[ok]] = c1[ok]
    return shift, peak


def _solve_displacement(shift: np.ndarray, weight: np.ndarray, *, horizon: int, smoothness: float) -> np.ndarray:
    """Least-squares displacement p (T,) with p_i - p_j ~ shift_ij (weights), plus
    ``smoothness`` x (p_i - p_i+1)^2 scaled to the typical data weight of a bin."""
    from scipy.linalg import solveh_banded

    n_t, width = shift.shape
    # symmetric pairs i < j: average the two registrations of a pair
    ab = np.zeros((horizon + 1, n_t))  # upper banded form: ab[horizon + i - j, j] = A[i, j]
    rhs = np.zeros(n_t)
    diag = np.zeros(n_t)
    for k in range(1, horizon + 1):
        i = np.arange(0, n_t - k)
        j = i + k
        w = 0.5 * (weight[i, horizon + k] + weight[j, horizon - k])
        s = 0.5 * (shift[i, horizon + k] - shift[j, horizon - k])
        ab[horizon - k, j] -= w
        diag[i] += w
        diag[j] += w
        np.add.at(rhs, i, w * s)
        np.add.at(rhs, j, -w * s)
    typical = np.median(diag[diag > 0]) if np.any(diag > 0) else 1.0
    lam = smoothness * typical
    if horizon >= 1:
        ab[horizon - 1, 1:] -= lam
    diag[:-1] += lam
    diag[1:] += lam
    # a tiny pull to 0 fixes the free offset (and the solution when there are no data at all)
    diag += 1e-6 * typical
    ab[horizon] = diag
    return solveh_banded(ab, rhs)


def _register(h: np.ndarray, counts: np.ndarray, *, depth_bin_um: float, max_shift_um: float, horizon: int,
              smoothness: float, robust_rounds: int = 2) -> np.ndarray:
    """Displacement (µm) of each time bin from its histograms (T, D, A)."""
    n_t = len(h)
    if n_t == 1:
        return np.zeros(1)
    horizon = max(1, min(horizon, n_t - 1))
    max_lag = max(1, int(np.ceil(max_shift_um / depth_bin_um)))
    shift, peak = _pairwise_shifts(h, max_lag=max_lag, horizon=horizon)
    # confidence: the correlation peak, discounted where either bin holds few spikes (a handful
    # of spikes can correlate well with anything by chance)
    n0 = max(1.0, 0.1 * float(np.median(counts[counts > 0])) if np.any(counts > 0) else 1.0)
    trust = counts / (counts + n0)
    band = np.arange(n_t)[:, None] + np.arange(-horizon, horizon + 1)[None, :]
    inside = (band >= 0) & (band < n_t)
    weight = peak * trust[:, None] * np.where(inside, trust[np.clip(band, 0, n_t - 1)], 0.0)
    weight[:, horizon] = 0.0
    p = _solve_displacement(shift, weight, horizon=horizon, smoothness=smoothness)
    for _ in range(robust_rounds):
        resid = p[:, None] - p[np.clip(band, 0, n_t - 1)] - shift
        used = (weight > 0) & inside
        if not used.any():
            break
        scale = 1.4826 * np.median(np.abs(resid[used]))
        c = 4.685 * max(scale, 0.5)
        tukey = np.where(np.abs(resid) < c, (1 - (resid / c) ** 2) ** 2, 0.0)
        p = _solve_displacement(shift, weight * tukey, horizon=horizon, smoothness=smoothness)
    return p * depth_bin_um


def _middle(d: np.ndarray) -> float:
    """The reference position: midway between the 1st and 99th percentiles of the displacement.
    Correction is least accurate for large shifts, and this keeps the largest one smallest (a
    probe stepping between two positions is corrected by half the step either way, where the
    median would pick one position and correct the other by the whole step)."""
    lo, hi = np.percentile(d, [1.0, 99.0])
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class ShankGeometry:
    """What estimation needs to know about one shank: its index and depth range (µm)."""
    shank: int
    depth_min_um: float
    depth_max_um: float
    mode: str  # "rigid" | "nonrigid"
    # spikes located this close to either end are left out: a unit beyond the last contact is
    # placed at the end whatever its true depth, so it looks still while the rest moves
    edge_um: float = 0.0


def block_centres(*, depth_min_um: float, depth_max_um: float, block_um: float) -> np.ndarray:
    """Centres of the non-rigid blocks along a shank: about ``block_um`` apart, at least 2."""
    span = depth_max_um - depth_min_um
    n = max(2, int(round(span / block_um)))
    return depth_min_um + (np.arange(n) + 0.5) * span / n


def estimate_motion(*, times_s, depths_um, amplitudes, shanks=None, geometry: list[ShankGeometry],
                    duration_s: float, bin_s: float = 2.0, depth_bin_um: float = 2.0, block_um: float = 200.0,
                    max_shift_um: float = 60.0, horizon_s: float = 300.0, smoothness: float = 0.05) -> Motion:
    """Motion of each shank in ``geometry`` from spikes (time s, depth µm, amplitude > 0).

    ``shanks`` gives each spike's shank index (all 0 when None). Rigid shanks get one block,
    non-rigid ones blocks about ``block_um`` apart. Long shanks use coarser depth bins (at most
    1000 per shank) so memory stays bounded; the sub-bin peak fit keeps the precision.
    """
    times_s = np.asarray(times_s, dtype=np.float64)
    depths_um = np.asarray(depths_um, dtype=np.float64)
    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    shanks = np.zeros(len(times_s), np.int64) if shanks is None else np.asarray(shanks, dtype=np.int64)
    if bin_s <= 0 or duration_s <= 0:
        raise ValueError("bin_s and duration_s must be positive")
    n_t = max(1, int(np.ceil(duration_s / bin_s - 1e-9)))
    centres_t = (np.arange(n_t) + 0.5) * bin_s
    horizon = max(1, int(round(horizon_s / bin_s)))
    logs = np.log(np.maximum(amplitudes, 1e-6))
    lo, hi = np.percentile(logs, [1.0, 99.5]) if len(logs) else (0.0, 1.0)
    amp_edges = np.linspace(lo, max(hi, lo + 1e-3), N_AMPLITUDE_BINS + 1)
    amp_edges[0], amp_edges[-1] = -np.inf, np.inf
    columns, depth_bins, block_shanks = [], [], []
    for g in geometry:
        m = ((shanks == g.shank) & (depths_um >= g.depth_min_um + g.edge_um)
             & (depths_um <= g.depth_max_um - g.edge_um))
        t, y, a = times_s[m], depths_um[m], amplitudes[m]
        step = max(depth_bin_um, (g.depth_max_um - g.depth_min_um) / 1000)
        edges = np.arange(g.depth_min_um - 2 * step, g.depth_max_um + 3 * step, step)
        ti = np.clip((t / bin_s).astype(np.int64), 0, n_t - 1)
        kw = dict(depth_bin_um=step, max_shift_um=max_shift_um, horizon=horizon, smoothness=smoothness)
        h = _histograms(times_s=t, depths_um=y, amplitudes=a, n_bins=n_t, bin_s=bin_s, edges=edges,
                        amp_edges=amp_edges, smooth_bins=DEPTH_SMOOTH_UM / step)
        counts = np.bincount(ti, minlength=n_t).astype(np.float64)
        rigid = _register(h, counts, **kw)
        del h
        rigid -= _middle(rigid)
        if g.mode != "nonrigid":
            columns.append(rigid[:, None])
            depth_bins.append([0.5 * (g.depth_min_um + g.depth_max_um)])
            block_shanks.append([g.shank])
            continue
        # residual motion of each block, on the rigidly corrected depths, in a Gaussian window
        y_ref = y - rigid[ti]
        centres = block_centres(depth_min_um=g.depth_min_um, depth_max_um=g.depth_max_um, block_um=block_um)
        sigma = 0.5 * (centres[1] - centres[0])
        # the residual is small: search a narrower range
        kw["max_shift_um"] = max(4 * step, max_shift_um / 2)
        out = np.zeros((n_t, len(centres)))
        for b, c in enumerate(centres):
            eb = edges[(edges >= c - 3 * sigma - step) & (edges <= c + 3 * sigma + step)]
            hb = _histograms(times_s=t, depths_um=y_ref, amplitudes=a, n_bins=n_t, bin_s=bin_s, edges=eb,
                             amp_edges=amp_edges, smooth_bins=DEPTH_SMOOTH_UM / step)
            hb *= np.exp(-0.5 * ((0.5 * (eb[:-1] + eb[1:]) - c) / sigma) ** 2).astype(np.float32)[None, :, None]
            cb = np.bincount(ti, weights=np.exp(-0.5 * ((y_ref - c) / sigma) ** 2), minlength=n_t)
            r = _register(hb, cb, **kw)
            out[:, b] = rigid + r - _middle(rigid + r)
        columns.append(out)
        depth_bins.append(centres)
        block_shanks.append([g.shank] * len(centres))
    if not columns:
        return Motion(np.zeros((n_t, 0), np.float32), centres_t, np.zeros(0), np.zeros(0, np.int64))
    return Motion(np.concatenate(columns, axis=1).astype(np.float32), centres_t,
                  np.concatenate([np.asarray(d, dtype=np.float64) for d in depth_bins]),
                  np.concatenate([np.asarray(s, dtype=np.int64) for s in block_shanks]))


# ---------------------------------------------------------------------------------------------
# correction




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
    def build(cls, *, positions_um, shank_ids=None, good_channels=None, sigma_um: float | None = None,
              regularization: float | None = None) -> "Kriging":
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


def interpolation_matrix(*, positions_um, shift_um, shank_ids=None, good_channels=None,
                         sigma_um: float | None = None, regularization: float | None = None) -> np.ndarray:
    """One (C, C) correction matrix (see ``Kriging``); corrected = traces @ M.T."""
    return Kriging.build(positions_um=positions_um, shank_ids=shank_ids, good_channels=good_channels,
                         sigma_um=sigma_um, regularization=regularization).matrix(shift_um)


def correct_chunk(x: np.ndarray, *, matrix: np.ndarray) -> np.ndarray:
    """A (n_samples, C) block seen through one correction matrix."""
    return np.asarray(x, dtype=np.float32) @ matrix.T


def correct_block(x: np.ndarray, *, start: int, sampling_rate_hz: float, motion: Motion, kriging: Kriging,
                  channel_shanks: np.ndarray, step_samples: int) -> np.ndarray:
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
        out[a - start:b - start] = correct_chunk(x[a - start:b - start], matrix=kriging.matrix(shift))
        k += 1
    return out


def correct_store(store, *, motion: Motion, chunks, sampling_rate_hz: float, positions_um, shank_ids, good_channels,
                  n_jobs: int = 1, progress=None, sigma_um: float | None = None) -> None:
    """Correct the whitened traces of ``store`` in place, chunk by chunk (keep windows only:
    the interpolation is across channels, so no margin is needed)."""
    from spikesort.chunks import map_chunks

    kriging = Kriging.build(positions_um=positions_um, shank_ids=shank_ids, good_channels=good_channels,
                            sigma_um=sigma_um)
    bin_s = float(np.median(np.diff(motion.time_bins_s))) if motion.n_time_bins > 1 else 2.0
    step = max(1, int(round(bin_s / CORRECTION_STEPS_PER_BIN * sampling_rate_hz)))
    shanks = np.asarray(shank_ids)

    def fn(ch):
        x = store.read(ch.keep_start, ch.keep_stop)
        store.write(ch.keep_start, correct_block(x, start=ch.keep_start, sampling_rate_hz=sampling_rate_hz,
                                                 motion=motion, kriging=kriging, channel_shanks=shanks,
                                                 step_samples=step))

    for _ in map_chunks(fn, chunks, n_jobs=n_jobs, progress=progress):
        pass


# ---------------------------------------------------------------------------------------------
# which shanks, which mode


@dataclass(frozen=True)
class DriftPlan:
    shanks: tuple  # ShankGeometry of each shank to estimate and correct
    skipped: dict  # shank index -> reason it is not corrected

    def describe(self) -> str:
        parts = [f"{g.mode} on shank {g.shank} ({g.depth_max_um - g.depth_min_um:.0f} µm)" for g in self.shanks]
        parts += [f"shank {s} skipped: {why}" for s, why in sorted(self.skipped.items())]
        return "; ".join(parts)


def plan_drift(*, mode: str, positions_um, shank_ids=None, good_channels=None, min_span_um: float,
               nonrigid_span_um: float) -> DriftPlan:
    """Decide, per shank, whether and how drift is corrected.

    ``auto``: non-rigid on shanks spanning at least ``nonrigid_span_um`` of depth, rigid on
    shorter ones; ``rigid``/``nonrigid`` force the mode. In every mode a shank with fewer than
    MIN_CHANNELS usable channels or a depth span below ``min_span_um`` is left alone: a tetrode
    or a few contacts cannot tell drift from a unit changing shape.
    """
    pos = np.asarray(positions_um, dtype=np.float64)
    n = len(pos)
    shanks = np.zeros(n, np.int64) if shank_ids is None else np.asarray(shank_ids, dtype=np.int64)
    good = np.ones(n, bool) if good_channels is None else np.asarray(good_channels, bool)
    plan, skipped = [], {}
    for s in np.unique(shanks):
        if mode == "none":
            skipped[int(s)] = "drift correction is off (drift = none)"
            continue
        ch = np.flatnonzero((shanks == s) & good)
        y = pos[ch, 1]
        span = float(np.ptp(y)) if len(y) else 0.0
        if len(ch) < MIN_CHANNELS:
            skipped[int(s)] = (f"only {len(ch)} usable channels, drift estimation needs at least {MIN_CHANNELS} "
                               "along the depth of a shank")
        elif span < min_span_um:
            skipped[int(s)] = (f"the contacts span only {span:.0f} µm of depth, below drift_min_span_um = "
                               f"{min_span_um:g}: too short to tell drift from noise")
        else:
            chosen = mode if mode in ("rigid", "nonrigid") else ("nonrigid" if span >= nonrigid_span_um else "rigid")
            rows = np.diff(np.unique(np.round(y, 1)))
            plan.append(ShankGeometry(int(s), float(y.min()), float(y.max()), chosen,
                                      edge_um=float(np.median(rows)) if len(rows) else 0.0))
    return DriftPlan(tuple(plan), skipped)


# ---------------------------------------------------------------------------------------------
# the pipeline stage


@dataclass(frozen=True)
class MotionPeaks:
    """What estimation needs from a detection pass."""
    times_s: np.ndarray  # (n,)
    depths_um: np.ndarray  # (n,) y of the estimated position, on the traces as recorded
    amplitudes: np.ndarray  # (n,) > 0, whitened sd
    shanks: np.ndarray  # (n,) shank of the peak channel


def localize_fit(features: np.ndarray, channels: np.ndarray, *, neighbors: np.ndarray,
                 positions_um: np.ndarray) -> np.ndarray:
    """Spike positions (n, 2) from a peaked fit to the amplitude on the peak channel's
    neighbourhood: log amplitude ~ b0 + b1 x + b2 y + b3 (x^2 + y^2) (a Gaussian footprint),
    weighted by amplitude squared, over the channels above a fifth of the peak.

    A centre of mass is pulled towards the peak channel (it cannot leave the convex hull of the
    few channels that carry the spike), which compresses motion on sparse probes; the fitted
    peak moves with the unit. Spikes the fit cannot place (fewer than 4 channels, no peak, a
    peak far outside the neighbourhood) keep their centre of mass.
    """
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


def motion_peaks(spikes, *, sampling_rate_hz: float, positions_um, shank_ids, feature_neighbors) -> MotionPeaks:
    """What estimation needs from the detected spikes (spikesort.detect.Detections)."""
    y = localize_fit(spikes.features, spikes.channels, neighbors=feature_neighbors, positions_um=positions_um)[:, 1]
    c = np.asarray(spikes.channels, dtype=np.int64)
    return MotionPeaks(spikes.times / sampling_rate_hz, y.astype(np.float64),
                       np.maximum(spikes.amplitudes, 1e-3).astype(np.float64),
                       np.asarray(shank_ids)[c] if len(c) else np.zeros(0, np.int64))


def motion_summary(motion: Motion) -> str:
    d = motion.displacement_um
    if d.size == 0:
        return "no blocks"
    return (f"{motion.n_time_bins} time bins x {d.shape[1]} blocks, displacement RMS {np.sqrt(np.mean(d**2)):.1f} µm, "
            f"range {d.min():+.1f} to {d.max():+.1f} µm")


def correct_drift(store, *, detect, chunks, sampling_rate_hz: float, positions_um, shank_ids, good_channels,
                  feature_neighbors, params, out=None, n_jobs: int = 1, progress=None) -> Motion | None:
    """The drift stage: decide, detect, estimate, correct ``store`` in place, write the outputs.

    ``detect()`` returns the spikes (spikesort.detect.Detections) of the uncorrected store; it is
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

    plan = plan_drift(mode=params.drift, positions_um=positions_um, shank_ids=shank_ids, good_channels=good_channels,
                      min_span_um=params.drift_min_span_um, nonrigid_span_um=params.drift_nonrigid_span_um)
    several = len(plan.skipped) + len(plan.shanks) > 1
    for s, why in sorted(plan.skipped.items()):
        record["shanks"][str(s)] = f"not corrected: {why}"
        if several and plan.shanks:
            (log.info if params.drift in ("auto", "none") else log.warning)("drift not corrected on shank %d: %s", s, why)
    if not plan.shanks:
        reasons = sorted(set(plan.skipped.values()))
        if params.drift in ("rigid", "nonrigid"):
            log.warning("drift = %s was asked for, but: %s", params.drift, "; ".join(reasons))
        return finish(None, "; ".join(reasons) if not several else
                      "; ".join(f"shank {s}: {why}" for s, why in sorted(plan.skipped.items())))
    bar = (lambda desc: progress(len(chunks), desc)) if progress is not None else (lambda desc: None)
    peaks = motion_peaks(detect(), sampling_rate_hz=sampling_rate_hz, positions_um=positions_um,
                         shank_ids=shank_ids, feature_neighbors=feature_neighbors)
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
        return finish(None, f"only {len(peaks.times_s)} spikes found in {duration_s:.0f} s, too few to estimate "
                            "motion")
    motion = estimate_motion(times_s=peaks.times_s, depths_um=peaks.depths_um, amplitudes=peaks.amplitudes,
                             shanks=peaks.shanks, geometry=shanks, duration_s=duration_s, bin_s=params.drift_bin_s,
                             block_um=params.drift_block_um, max_shift_um=params.drift_max_um)
    for g in shanks:
        record["shanks"][str(g.shank)] = g.mode
    spread = motion_spread_um(motion)
    record["spread_um"] = round(spread, 2)
    log.info("drift: %s from %d spikes; %s", "; ".join(f"{g.mode} on shank {g.shank} "
             f"({g.depth_max_um - g.depth_min_um:.0f} µm)" for g in shanks), len(peaks.times_s), motion_summary(motion))
    if spread < params.drift_min_um:
        return finish(None, f"the estimated motion spans only {spread:.1f} µm (below drift_min_um = "
                            f"{params.drift_min_um:g}), interpolating would cost more than so little motion")
    correct_store(store, motion=motion, chunks=chunks, sampling_rate_hz=sampling_rate_hz, positions_um=positions_um,
                  shank_ids=shank_ids, good_channels=good_channels, n_jobs=n_jobs, progress=bar("drift: correct"))
    if out is not None:
        motion.save(out)
        try:
            raw = peaks.depths_um
            # reference depth y0 solves y0 + d(t, y0) = raw: one fixed-point step is plenty here
            ref = raw - motion.at(times_s=peaks.times_s, depths_um=raw, shanks=peaks.shanks)
            ref = raw - motion.at(times_s=peaks.times_s, depths_um=ref, shanks=peaks.shanks)
            draw_drift_map(Path(out) / DRIFT_MAP, times_s=peaks.times_s, raw_um=raw, corrected_um=ref,
                           amplitudes=peaks.amplitudes, motion=motion)
        except Exception:  # a figure must never cost the sort
            log.warning("could not draw the drift map", exc_info=True)
    log.info("drift: traces corrected (motion spans %.1f µm)", spread)
    record["corrected"] = True
    return finish(motion)


def _write_record(path: Path, record: dict) -> None:
    import json

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf8")
    tmp.replace(path)


def read_drift_record(folder) -> dict | None:
    """What the drift stage decided for the run in ``folder`` (drift.json), None if absent."""
    import json

    try:
        return json.loads((Path(folder) / DRIFT_RECORD).read_text(encoding="utf8"))
    except (OSError, ValueError):
        return None


def applied_motion(folder) -> Motion | None:
    """The motion the traces of the run in ``folder`` were corrected with, None if they were not."""
    record = read_drift_record(folder)
    if not record or not record.get("corrected") or not Motion.exists(folder):
        return None
    return Motion.load(folder)


def motion_spread_um(motion: Motion) -> float:
    """How far the estimate moves: the largest, over blocks, 1st-to-99th percentile range (µm)."""
    d = motion.displacement_um
    if d.size == 0:
        return 0.0
    lo, hi = np.percentile(d, [1.0, 99.0], axis=0)
    return float(np.max(hi - lo))


# ---------------------------------------------------------------------------------------------
# drift map


def draw_drift_map(path, *, times_s, raw_um, corrected_um, amplitudes, motion: Motion | None = None,
                   max_points: int = 200_000) -> Path:
    """Spike depth against time, as recorded (left) and corrected (right), as a PNG.

    Darker dots are larger spikes; the left panel also shows the estimated motion of each
    block (block centre + displacement).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = np.asarray(times_s, dtype=np.float64)
    raw, cor = np.asarray(raw_um, dtype=np.float64), np.asarray(corrected_um, dtype=np.float64)
    a = np.log(np.maximum(np.asarray(amplitudes, dtype=np.float64), 1e-3))
    if len(t) > max_points:
        keep = np.sort(np.random.default_rng(0).choice(len(t), max_points, replace=False))
        t, raw, cor, a = t[keep], raw[keep], cor[keep], a[keep]
    order = np.argsort(a)  # large spikes drawn last, on top
    shade = (a - np.percentile(a, 5)) / max(np.ptp(np.percentile(a, [5, 99])), 1e-9) if len(a) else a
    shade = np.clip(shade, 0, 1)
    fig = Figure(figsize=(12, 6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, y, title in ((axes[0], raw, "as recorded"), (axes[1], cor, "drift corrected")):
        ax.scatter(t[order], y[order], s=1, c=shade[order], cmap="Greys", vmin=-0.3, vmax=1.0, linewidths=0,
                   rasterized=True)
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("depth (µm)")
    if motion is not None and motion.displacement_um.size:
        for b in range(motion.displacement_um.shape[1]):
            axes[0].plot(motion.time_bins_s, motion.depth_bins_um[b] + motion.displacement_um[:, b], color="tab:red",
                         lw=1)
        d = motion.displacement_um
        fig.suptitle(f"drift: displacement RMS {np.sqrt(np.mean(d**2)):.1f} µm, range {d.min():+.1f} to "
                     f"{d.max():+.1f} µm (red: estimated motion)")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------
# units split by drift


def drift_split_groups(*, spike_times_s, spike_units, templates, main_channels, positions_um, channel_shanks,
                       motion: Motion, min_similarity: float = 0.8, min_separation: float = 0.4,
                       min_spikes: int = 30, bin_um: float = 4.0, seed: int = 0) -> list[list[int]]:
    """Groups of units that are one neuron split by drift (singletons included).

    Interpolated traces are not exact: a unit whose spikes come from two probe positions (a step
    in the motion) looks slightly different at each, and clustering may keep the two apart
    (their snippets are bimodal). Two units are the same neuron when their templates
    ``(K, nt, C)`` are similar (cosine >= ``min_similarity``) and their spikes come from
    different probe positions: the distributions of the displacement at their spikes (at their
    depth) differ, by at least ``min_separation`` (1 - overlap) and clearly more than two
    samples of one distribution would (the 95th percentile of 20 label shuffles, + 0.15), and
    together they sample the probe's positions like a neuron that fired all along. Different
    neurons fire whatever the probe position. Groups grow greedily from the most similar pair;
    two groups join when their templates are similar on average over every cross pair, and the
    position tests compare the two groups being joined.
    """
    times = np.asarray(spike_times_s, dtype=np.float64)
    units = np.asarray(spike_units, dtype=np.int64)
    k = len(templates)
    if k < 2 or len(times) == 0:
        return [[u] for u in range(k)]
    flat = np.asarray(templates, dtype=np.float64).reshape(k, -1)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    cos = flat @ flat.T
    main = np.asarray(main_channels, dtype=np.int64)
    depth = np.asarray(positions_um)[main, 1][units]
    disp = motion.at(times_s=times, depths_um=depth, shanks=np.asarray(channel_shanks)[main][units])
    edges = np.arange(np.floor(disp.min()) - bin_um, np.ceil(disp.max()) + 2 * bin_um, bin_um)
    binned = np.clip(np.searchsorted(edges, disp, side="right") - 1, 0, len(edges) - 2)
    rng = np.random.default_rng(seed)

    def separation(a: np.ndarray, b: np.ndarray) -> float:
        pa = np.bincount(a, minlength=len(edges) - 1) / len(a)
        pb = np.bincount(b, minlength=len(edges) - 1) / len(b)
        return 1.0 - float(np.minimum(pa, pb).sum())

    # where the probe was, at a unit's depth: what a neuron firing steadily samples
    bin_s = motion.time_bins_s[1] - motion.time_bins_s[0] if motion.n_time_bins > 1 else 2.0
    grid = np.arange(0.0, motion.time_bins_s[-1] + 0.5 * bin_s, 0.25 * bin_s)

    def occupancy(u: int) -> np.ndarray:
        d = motion.at(times_s=grid, depths_um=np.full(len(grid), np.asarray(positions_um)[main[u], 1]),
                      shanks=np.full(len(grid), np.asarray(channel_shanks)[main[u]]))
        return np.clip(np.searchsorted(edges, d, side="right") - 1, 0, len(edges) - 2)

    similar = cos >= min_similarity

    def apart(ga: list, gb: list) -> bool:
        """The two groups' spikes come from clearly different probe positions."""
        a = binned[np.isin(units, ga)]
        b = binned[np.isin(units, gb)]
        sep = separation(a, b)
        if len(a) < min_spikes or len(b) < min_spikes or sep < min_separation:
            return False
        pooled = np.concatenate([a, b])
        null = [separation(*np.split(rng.permutation(pooled), [len(a)])) for _ in range(20)]
        return sep >= np.percentile(null, 95) + 0.15

    def fills(parts: list[list]) -> bool:
        """Together the parts fire like one neuron that never stopped: their union follows the
        probe's occupancy clearly better than any part alone (a look-alike that fires all along,
        and a unit seen at one position only, do not)."""
        occ = occupancy(parts[0][0])
        pooled = binned[np.isin(units, [u for g in parts for u in g])]
        best = min(separation(binned[np.isin(units, g)], occ) for g in parts)
        # a part that already misses only a short stretch (a 30 s step) can improve by little
        return separation(pooled, occ) <= best - min(0.1, 0.5 * best)

    def grow(initial: list[list[int]], *, check_fill: bool) -> list[list[int]]:
        members = {g[0]: list(g) for g in initial}
        group = {u: g[0] for g in initial for u in g}
        sub = np.asarray([u for g in initial for u in g])
        pairs = [(int(sub[i]), int(sub[j])) for i, j in zip(*np.nonzero(np.triu(similar[np.ix_(sub, sub)], 1)))]
        for i, j in sorted(pairs, key=lambda p: -cos[p]):
            ga, gb = group[i], group[j]
            # similar on average: pieces at the two ends of a neuron's travel can differ more
            # than either differs from the piece in the middle
            if ga == gb or cos[np.ix_(members[ga], members[gb])].mean() < min_similarity:
                continue
            if apart(members[ga], members[gb]) and (not check_fill or fills([members[ga], members[gb]])):
                members[ga] += members.pop(gb)
                for u in members[ga]:
                    group[u] = ga
        return list(members.values())

    # a neuron seen at three positions is three units, and any two of them miss the third
    # position: groups grow on the position tests alone, then a group must fill the occupancy as
    # a whole. The members of one that does not are free again, and every unit is grown once
    # more with the occupancy test on each join (a piece first grouped with a look-alike that
    # fires elsewhere can then find its own neuron)
    first = grow([[u] for u in range(k)], check_fill=False)
    whole = [len(g) == 1 or fills([[u] for u in g]) for g in first]
    kept = [g for g, ok in zip(first, whole) if ok]
    freed = [[u] for g, ok in zip(first, whole) if not ok for u in g]
    out = [sorted(g) for g in grow(kept + freed, check_fill=True)]
    return sorted(out)
