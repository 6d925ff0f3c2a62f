"""Motion estimation from the spikes of a detection pass.

Convention. ``d(t, depth)`` (µm) is how far the tissue at ``depth`` appears shifted towards
larger y at time t, relative to the reference position (the middle of its range over time,
per block, so that no moment needs a larger correction than necessary). A
spike seen at depth y at time t sits at reference depth ``y - d``; a corrected trace of channel
c holds what the probe recorded at ``p_c + (0, d)``, so corrected traces look as if the probe
never moved.

Estimation (``estimate_motion``), per shank, from the spikes of a first detection pass located
by a peaked fit of their amplitude across contacts (``spikesort.stages.drift.stage.localize_fit``):
1. spikes are binned into (time bin × depth bin × log-amplitude bin) histograms, one per
   ``bin_s`` of recording, smoothed along depth; spikes placed at either end of the shank are
   left out (a unit beyond the last contact is placed there whatever its true depth), and so
   are spikes whose peak channel is on a shank's end row (``spikesort.stages.drift.stage.on_end_row``);
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

``Motion`` is the estimate, and its files (``Motion.save``, see
:mod:`spikesort.stages.drift.records`): ``motion.npy`` (T, B) float32 displacement in µm;
``motion_time_bins_s.npy`` (T,) centres of the time bins; ``motion_depth_bins_um.npy`` (B,) block
centre depths; ``motion_shanks.npy`` (B,) shank index of each block (the shank order of
``channel_shanks.npy``). A rigid shank has one block. The displacement at any (t, depth, shank)
is linear in time between bin centres and in depth between the shank's block centres, constant
beyond the first and last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.layout import MOTION_FILES

# amplitude bins of the registration histograms (log-spaced between the 1st and 99.5th percentiles)
N_AMPLITUDE_BINS = 3
# the registration histograms are smoothed along depth by a Gaussian of this sd
DEPTH_SMOOTH_UM = 5.0
# Motion.at interpolates this many points at a time
AT_BLOCK = 1 << 15


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
        shape = t.shape
        y = np.broadcast_to(np.asarray(depths_um, dtype=np.float64), shape).ravel()
        sh = np.zeros(t.size, np.int64) if shanks is None else np.broadcast_to(np.asarray(shanks), shape).ravel()
        t = t.ravel()
        out = np.zeros(t.size, dtype=np.float64)
        if self.displacement_um.size == 0:
            return out.reshape(shape)
        # by blocks of points: the interpolation holds a few (n, blocks) arrays, 0.5 GB for a
        # million spikes on a non-rigid Neuropixels shank (each point is computed on its own)
        for lo in range(0, t.size, AT_BLOCK):
            hi = min(t.size, lo + AT_BLOCK)
            out[lo:hi] = self._at(t[lo:hi], y[lo:hi], sh[lo:hi])
        return out.reshape(shape)

    def _at(self, t: np.ndarray, y: np.ndarray, sh: np.ndarray) -> np.ndarray:
        out = np.zeros(t.shape, dtype=np.float64)
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
        arrays = (
            self.displacement_um.astype(np.float32),
            self.time_bins_s.astype(np.float64),
            self.depth_bins_um.astype(np.float64),
            self.block_shanks.astype(np.int32),
        )
        for name, arr in zip(MOTION_FILES, arrays):
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            tmp.replace(folder / name)

    @classmethod
    def load(cls, folder) -> Motion:
        folder = Path(folder)
        d, t, y, s = (np.load(folder / name, allow_pickle=False) for name in MOTION_FILES)
        return cls(d.reshape(len(t), len(y)), t, y, s.astype(np.int64))

    @classmethod
    def exists(cls, folder) -> bool:
        return all((Path(folder) / name).is_file() for name in MOTION_FILES)


# ---------------------------------------------------------------------------------------------
# estimation


def _histograms(
    *,
    times_s,
    depths_um,
    amplitudes,
    n_bins: int,
    bin_s: float,
    edges: np.ndarray,
    amp_edges: np.ndarray,
    smooth_bins: float,
) -> np.ndarray:
    """(T, D, A) spike counts per time bin, depth bin and log-amplitude bin."""
    from scipy.ndimage import gaussian_filter1d

    ti = np.clip((times_s / bin_s).astype(np.int64), 0, n_bins - 1)
    di = np.searchsorted(edges, depths_um, side="right") - 1
    ai = np.clip(
        np.searchsorted(amp_edges, np.log(np.maximum(amplitudes, 1e-6)), side="right") - 1, 0, len(amp_edges) - 2
    )
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


def _register(
    h: np.ndarray,
    counts: np.ndarray,
    *,
    depth_bin_um: float,
    max_shift_um: float,
    horizon: int,
    smoothness: float,
    robust_rounds: int = 2,
) -> np.ndarray:
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


def estimate_motion(
    *,
    times_s,
    depths_um,
    amplitudes,
    shanks=None,
    geometry: list[ShankGeometry],
    duration_s: float,
    bin_s: float = 2.0,
    depth_bin_um: float = 2.0,
    block_um: float = 200.0,
    max_shift_um: float = 60.0,
    horizon_s: float = 300.0,
    smoothness: float = 0.05,
) -> Motion:
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
        m = (shanks == g.shank) & (depths_um >= g.depth_min_um + g.edge_um) & (depths_um <= g.depth_max_um - g.edge_um)
        t, y, a = times_s[m], depths_um[m], amplitudes[m]
        step = max(depth_bin_um, (g.depth_max_um - g.depth_min_um) / 1000)
        edges = np.arange(g.depth_min_um - 2 * step, g.depth_max_um + 3 * step, step)
        ti = np.clip((t / bin_s).astype(np.int64), 0, n_t - 1)
        kw = dict(depth_bin_um=step, max_shift_um=max_shift_um, horizon=horizon, smoothness=smoothness)
        h = _histograms(
            times_s=t,
            depths_um=y,
            amplitudes=a,
            n_bins=n_t,
            bin_s=bin_s,
            edges=edges,
            amp_edges=amp_edges,
            smooth_bins=DEPTH_SMOOTH_UM / step,
        )
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
            hb = _histograms(
                times_s=t,
                depths_um=y_ref,
                amplitudes=a,
                n_bins=n_t,
                bin_s=bin_s,
                edges=eb,
                amp_edges=amp_edges,
                smooth_bins=DEPTH_SMOOTH_UM / step,
            )
            hb *= np.exp(-0.5 * ((0.5 * (eb[:-1] + eb[1:]) - c) / sigma) ** 2).astype(np.float32)[None, :, None]
            cb = np.bincount(ti, weights=np.exp(-0.5 * ((y_ref - c) / sigma) ** 2), minlength=n_t)
            r = _register(hb, cb, **kw)
            out[:, b] = rigid + r - _middle(rigid + r)
        columns.append(out)
        depth_bins.append(centres)
        block_shanks.append([g.shank] * len(centres))
    if not columns:
        return Motion(np.zeros((n_t, 0), np.float32), centres_t, np.zeros(0), np.zeros(0, np.int64))
    return Motion(
        np.concatenate(columns, axis=1).astype(np.float32),
        centres_t,
        np.concatenate([np.asarray(d, dtype=np.float64) for d in depth_bins]),
        np.concatenate([np.asarray(s, dtype=np.int64) for s in block_shanks]),
    )
