"""Per-unit quality metrics (the good / mua / noise label that reads them: ``labels.py``).

All functions are pure numpy on whole-sorting arrays and return one value per entry of
``unit_ids`` (spikes of other clusters are ignored). Spike times are int sample indices.
A metric that is undefined for a unit (too few spikes) is NaN.

Errors: a parameter value a user can set (refractory period, thresholds, duration) raises
SpikesortError; arrays that do not fit together are a programming error and raise ValueError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np

from spikesort.errors import SpikesortError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# grouping spikes by unit
# --------------------------------------------------------------------------------------------


def _unit_index(spike_clusters: np.ndarray, unit_ids: np.ndarray) -> np.ndarray:
    """Index of each spike's cluster in ``unit_ids``, -1 for clusters not listed."""
    clusters = np.asarray(spike_clusters)
    ids = np.asarray(unit_ids)
    if ids.ndim != 1:
        raise ValueError(f"unit_ids must be 1-D, got shape {ids.shape}")
    if clusters.ndim != 1:
        raise ValueError(f"spike_clusters must be 1-D, got shape {clusters.shape}")
    if ids.size == 0:
        return np.full(clusters.shape, -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise ValueError("unit_ids has repeated ids")
    pos = np.clip(np.searchsorted(sorted_ids, clusters), 0, ids.size - 1)
    return np.where(sorted_ids[pos] == clusters, order[pos], -1).astype(np.int64)


def _spike_times(spike_times, n: int) -> np.ndarray:
    t = np.asarray(spike_times)
    if t.shape != (n,):
        raise ValueError(f"spike_times has shape {t.shape}, spike_clusters has ({n},)")
    if t.dtype.kind not in "iu":
        raise ValueError(f"spike_times must be integer sample indices, got dtype {t.dtype}")
    return t.astype(np.int64)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise SpikesortError(f"{name} must be > 0, got {value}")
    return value


def _periods_s(refractory_ms: float, censored_ms: float) -> tuple[float, float]:
    t_r = _positive("refractory_ms", refractory_ms) / 1000.0
    t_c = float(censored_ms) / 1000.0
    if not 0 <= t_c < t_r:
        raise SpikesortError(f"censored_ms must be >= 0 and below refractory_ms ({refractory_ms}), got {censored_ms}")
    return t_r, t_c


@dataclass(frozen=True)
class RefractoryViolations:
    """Per-unit counts of spikes closer than the refractory period."""

    n_spikes: np.ndarray  # (U,) spikes of the unit
    n_isi: np.ndarray  # (U,) consecutive intervals shorter than the period
    n_pairs: np.ndarray  # (U,) pairs (any two spikes) closer than the period


def refractory_violations(
    *, spike_times, spike_clusters, unit_ids, sampling_rate_hz: float, refractory_ms: float
) -> RefractoryViolations:
    """Count, per unit, intervals and pairs with ``t_j - t_i < refractory_ms``.

    Three spikes within the period give 2 interval violations and 3 pair violations.
    """
    idx = _unit_index(spike_clusters, unit_ids)
    t = _spike_times(spike_times, idx.size)
    n_units = np.asarray(unit_ids).size
    fs = _positive("sampling_rate_hz", sampling_rate_hz)
    # for integer differences d: d < r  <=>  d < ceil(r)
    r = int(np.ceil(_positive("refractory_ms", refractory_ms) * fs / 1000.0))
    keep = idx >= 0
    idx, t = idx[keep], t[keep]
    n_spikes = np.bincount(idx, minlength=n_units)
    if t.size == 0:
        zeros = np.zeros(n_units, dtype=np.int64)
        return RefractoryViolations(n_spikes=n_spikes, n_isi=zeros, n_pairs=zeros.copy())
    # one sorted key per spike; units are separated by more than r so no window crosses them
    t0 = t.min()
    span = int(t.max() - t0) + r + 1
    key = idx * span + (t - t0)
    order = np.argsort(key, kind="stable")
    key, idx = key[order], idx[order]
    close = np.diff(key) < r  # consecutive spikes of one unit (different units differ by > r)
    n_isi = np.bincount(idx[1:][close], minlength=n_units)
    later = np.searchsorted(key, key + r, side="left") - np.arange(key.size) - 1
    n_pairs = np.bincount(idx, weights=later, minlength=n_units).astype(np.int64)
    return RefractoryViolations(n_spikes=n_spikes, n_isi=n_isi, n_pairs=n_pairs)


# --------------------------------------------------------------------------------------------
# spike-train metrics
# --------------------------------------------------------------------------------------------


def firing_rate_hz(*, spike_clusters, unit_ids, duration_s: float) -> np.ndarray:
    """Spikes per second of each unit over the whole recording."""
    idx = _unit_index(spike_clusters, unit_ids)
    duration_s = _positive("duration_s", duration_s)
    counts = np.bincount(idx[idx >= 0], minlength=np.asarray(unit_ids).size)
    return counts / duration_s


def _violation_inputs(spike_times, spike_clusters, unit_ids, sampling_rate_hz, duration_s, refractory_ms, censored_ms):
    """What both refractory estimates start from: periods (s), duration, violation counts, N."""
    t_r, t_c = _periods_s(refractory_ms, censored_ms)
    duration_s = _positive("duration_s", duration_s)
    v = refractory_violations(
        spike_times=spike_times,
        spike_clusters=spike_clusters,
        unit_ids=unit_ids,
        sampling_rate_hz=sampling_rate_hz,
        refractory_ms=refractory_ms,
    )
    return t_r, t_c, duration_s, v, v.n_spikes.astype(np.float64)


def isi_violation_ratio(
    *,
    spike_times,
    spike_clusters,
    unit_ids,
    sampling_rate_hz: float,
    duration_s: float,
    refractory_ms: float,
    censored_ms: float = 0.0,
) -> np.ndarray:
    """ISI violation ratio of Hill et al. (2011), as the Allen Institute and SpikeInterface
    (``isi_violations_ratio``) compute it:

        ratio = n_isi * T / (2 * N**2 * (t_r - t_c))

    with n_isi consecutive intervals shorter than t_r, N spikes, T the duration. It is the
    violation rate relative to that of a Poisson train of the same rate; roughly the
    contaminating fraction when small, 0.5 for pure Poisson, and unbounded. NaN without spikes.
    """
    t_r, t_c, duration_s, v, n = _violation_inputs(
        spike_times, spike_clusters, unit_ids, sampling_rate_hz, duration_s, refractory_ms, censored_ms
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = v.n_isi * duration_s / (2.0 * n**2 * (t_r - t_c))
    return np.where(n > 0, ratio, np.nan)


def contamination(
    *,
    spike_times,
    spike_clusters,
    unit_ids,
    sampling_rate_hz: float,
    duration_s: float,
    refractory_ms: float,
    censored_ms: float = 0.0,
) -> np.ndarray:
    """Estimated fraction of a unit's spikes that come from other neurons, in [0, 1].

    The model of Hill et al. (2011), solved as in Llobet et al. (2022): a fraction c of the
    N spikes are Poisson intruders, the rest never come closer than t_r. Pairs of spikes closer
    than t_r then number, on average,

        n_pairs = N**2 * (t_r - t_c) * (1 - (1 - c)**2) / (T - 2 * N * t_c)

    (every pair except true-true ones can violate; t_c is the censored period in which no two
    spikes can be seen at all, which removes 2*N*t_c of the time). Solving for c:

        c = 1 - sqrt(1 - n_pairs * (T - 2 N t_c) / (N**2 (t_r - t_c)))

    clipped to 1 when there are more violations than the model allows. NaN below 2 spikes.
    """
    t_r, t_c, duration_s, v, n = _violation_inputs(
        spike_times, spike_clusters, unit_ids, sampling_rate_hz, duration_s, refractory_ms, censored_ms
    )
    t_eff = duration_s - 2.0 * n * t_c
    with np.errstate(divide="ignore", invalid="ignore"):
        arg = 1.0 - v.n_pairs * t_eff / (n**2 * (t_r - t_c))
    c = 1.0 - np.sqrt(np.clip(arg, 0.0, 1.0))
    return np.where(n >= 2, c, np.nan)


def presence_ratio(
    *, spike_times, spike_clusters, unit_ids, sampling_rate_hz: float, duration_s: float, bin_s: float | None = None
) -> np.ndarray:
    """Fraction of equal time bins in which the unit fires at least once.

    ``bin_s`` defaults to ``min(60, duration_s / 10)`` so a short recording still has 10 bins.
    The recording is cut into ``round(duration_s / bin_s)`` bins of equal length, so no short
    last bin counts against a unit. A unit without spikes has presence 0.
    """
    idx = _unit_index(spike_clusters, unit_ids)
    t = _spike_times(spike_times, idx.size)
    fs = _positive("sampling_rate_hz", sampling_rate_hz)
    duration_s = _positive("duration_s", duration_s)
    bin_s = min(60.0, duration_s / 10.0) if bin_s is None else _positive("bin_s", bin_s)
    n_bins = max(1, int(round(duration_s / bin_s)))
    width_s = duration_s / n_bins
    keep = idx >= 0
    # a spike at or past the end (rounding) belongs to the last bin
    b = np.clip(np.floor(t[keep] / fs / width_s).astype(np.int64), 0, n_bins - 1)
    occupied = np.unique(idx[keep] * n_bins + b)
    n_units = np.asarray(unit_ids).size
    return np.bincount(occupied // n_bins, minlength=n_units) / n_bins


def _amplitude_cutoff_one(amps: np.ndarray, n_bins: int, smoothing_bins: float, min_spikes_per_bin: float) -> float:
    if amps.size < n_bins * min_spikes_per_bin:
        return np.nan
    if np.median(amps) < 0:  # negative-going amplitudes: the cut is at the small |a| end
        amps = -amps
    # imported here: scipy.ndimage is a third of `import spikesort.cli`, which loads this module for `spikesort export`
    from scipy.ndimage import gaussian_filter1d

    hist, _ = np.histogram(amps, bins=n_bins)
    pdf = gaussian_filter1d(hist.astype(np.float64), smoothing_bins, mode="nearest")
    # The lowest bin sits at the detection cut. Mirror around the peak: the upper tail beyond
    # the last bin still as high as the lowest one stands for the part missing below the cut.
    last_high = np.flatnonzero(pdf >= pdf[0])[-1]
    missing = pdf[last_high + 1 :].sum()
    return float(min(missing / (amps.size + missing), 0.5))


def amplitude_cutoff(
    *,
    amplitudes,
    spike_clusters,
    unit_ids,
    n_bins: int = 100,
    smoothing_bins: float = 3.0,
    min_spikes_per_bin: float = 5.0,
) -> np.ndarray:
    """Estimated fraction of each unit's spikes missed below the detection threshold.

    The estimate of Hill et al. (2011) as used by the Allen Institute and SpikeInterface:
    histogram of the unit's amplitudes (``n_bins``), Gaussian smoothing (sigma =
    ``smoothing_bins`` bins), then the upper tail beyond the point where the smoothed density
    falls back to the level of the lowest bin is taken as a mirror image of the missing lower
    tail: ``missing / (N + missing)``. It assumes a symmetric amplitude distribution (drift
    breaks this) and cannot see more than half missing, so it is capped at 0.5. NaN when the
    unit has fewer than ``n_bins * min_spikes_per_bin`` spikes. Any amplitude unit works
    (scale factors or µV); negative-going amplitudes are flipped. Unlike SpikeInterface we
    smooth the histogram in floating point (it truncates the smoothed counts to integers), so
    values differ from its ``amplitude_cutoff`` by a few thousandths.
    """
    idx = _unit_index(spike_clusters, unit_ids)
    amps = np.asarray(amplitudes, dtype=np.float64)
    if amps.shape != idx.shape:
        raise ValueError(f"amplitudes has shape {amps.shape}, spike_clusters has {idx.shape}")
    if int(n_bins) < 2 or smoothing_bins < 0 or min_spikes_per_bin < 0:
        raise SpikesortError(
            f"amplitude_cutoff needs n_bins >= 2 and non-negative smoothing and min spikes; got "
            f"{n_bins}, {smoothing_bins}, {min_spikes_per_bin}"
        )
    n_units = np.asarray(unit_ids).size
    if n_units == 0:
        return np.zeros(0)
    keep = idx >= 0
    idx, amps = idx[keep], amps[keep]
    order = np.argsort(idx, kind="stable")
    groups = np.split(amps[order], np.cumsum(np.bincount(idx, minlength=n_units))[:-1])
    return np.array(
        [_amplitude_cutoff_one(g, int(n_bins), float(smoothing_bins), float(min_spikes_per_bin)) for g in groups],
        dtype=np.float64,
    )


# --------------------------------------------------------------------------------------------
# template metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplatePeak:
    """Largest absolute value of each template and where it is."""

    channel: np.ndarray  # (K,) channel index of the largest |value|
    amplitude_uv: np.ndarray  # (K,) that |value|, µV


def template_peak(*, templates_uv) -> TemplatePeak:
    """Peak channel = the channel with the largest |value| over time; amplitude = that value."""
    t = np.asarray(templates_uv, dtype=np.float64)
    if t.ndim != 3:
        raise ValueError(f"templates_uv must be (K, nt, C), got shape {t.shape}")
    per_channel = np.abs(t).max(axis=1) if t.shape[1] else np.zeros((t.shape[0], t.shape[2]))
    channel = per_channel.argmax(axis=1)
    return TemplatePeak(channel=channel, amplitude_uv=per_channel[np.arange(t.shape[0]), channel])


def snr(*, templates_uv, noise_uv) -> np.ndarray:
    """Signal-to-noise ratio of each template (K, nt, C) in µV.

    |peak| of the template on its peak channel divided by that channel's noise standard
    deviation in µV (``noise_uv``, (C,), e.g. MAD / 0.6745 of the filtered traces). This is
    SpikeInterface's default ("extremum") SNR, so values compare with its tables. NaN where
    the noise is not positive.
    """
    peak = template_peak(templates_uv=templates_uv)
    noise = np.asarray(noise_uv, dtype=np.float64)
    n_channels = np.shape(templates_uv)[2]
    if noise.shape != (n_channels,):
        raise ValueError(f"noise_uv must have shape ({n_channels},), got {noise.shape}")
    sd = noise[peak.channel]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, peak.amplitude_uv / sd, np.nan)


def template_depth_um(*, templates_uv, channel_positions) -> np.ndarray:
    """Depth (y, µm) of each template: the |peak|-weighted mean y of the channels whose |peak|
    is at least half the largest one (so far channels' noise does not pull it)."""
    t = np.abs(np.asarray(templates_uv, dtype=np.float64))
    pos = np.asarray(channel_positions, dtype=np.float64)
    if t.ndim != 3 or pos.shape != (t.shape[2], 2):
        raise ValueError(f"templates_uv must be (K, nt, C) and channel_positions (C, 2); got {t.shape} and {pos.shape}")
    amp = t.max(axis=1)
    weights = np.where(amp >= 0.5 * amp.max(axis=1, keepdims=True), amp, 0.0)
    total = weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = weights @ pos[:, 1] / total
    # an all-zero template has no peak: use its (first) peak channel
    return np.where(total > 0, depth, pos[amp.argmax(axis=1), 1])


# --------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class UnitMetrics:
    """One array per metric, one entry per unit (all of the same length)."""

    unit_id: np.ndarray
    n_spikes: np.ndarray
    firing_rate_hz: np.ndarray
    isi_violation_ratio: np.ndarray
    contamination: np.ndarray
    presence_ratio: np.ndarray
    amplitude_cutoff: np.ndarray
    snr: np.ndarray
    amplitude_uv: np.ndarray
    peak_channel: np.ndarray
    depth_um: np.ndarray

    def __post_init__(self):
        lengths = {f.name: np.shape(getattr(self, f.name)) for f in fields(self)}
        if len({s for s in lengths.values()}) != 1 or len(lengths["unit_id"]) != 1:
            raise ValueError(f"UnitMetrics columns must be 1-D of one length, got {lengths}")

    def __len__(self) -> int:
        return int(np.shape(self.unit_id)[0])

    def to_table(self) -> dict[str, list]:
        """Column name -> list of plain Python values (NaN kept as float('nan'))."""
        return {f.name: np.asarray(getattr(self, f.name)).tolist() for f in fields(self)}


def compute_unit_metrics(
    *,
    spike_times,
    spike_clusters,
    amplitudes,
    templates_uv,
    template_of_unit,
    noise_uv,
    channel_positions,
    sampling_rate_hz: float,
    duration_s: float,
    refractory_ms: float,
    censored_ms: float,
    unit_ids=None,
    presence_bin_s: float | None = None,
) -> UnitMetrics:
    """All metrics for the units ``unit_ids`` (default ``arange(len(template_of_unit))``).

    ``templates_uv`` (K, nt, C) are templates in µV; unit ``unit_ids[u]`` uses row
    ``template_of_unit[u]``. ``amplitudes`` (n,) are per-spike amplitudes in any unit (only
    their distribution matters, for amplitude_cutoff). ``amplitude_uv`` is the template's |peak|
    on its peak channel, ``snr`` that divided by the channel's noise, ``depth_um`` from
    :func:`template_depth_um`.
    """
    template_of_unit = np.asarray(template_of_unit)
    templates_uv = np.asarray(templates_uv, dtype=np.float64)
    if templates_uv.ndim != 3:
        raise ValueError(f"templates_uv must be (K, nt, C), got shape {templates_uv.shape}")
    if template_of_unit.ndim != 1 or template_of_unit.dtype.kind not in "iu":
        raise ValueError(
            f"template_of_unit must be a 1-D integer array, got {template_of_unit.shape} {template_of_unit.dtype}"
        )
    if template_of_unit.size and not (0 <= template_of_unit.min() and template_of_unit.max() < templates_uv.shape[0]):
        raise ValueError(f"template_of_unit must index the {templates_uv.shape[0]} templates")
    unit_ids = np.arange(template_of_unit.size) if unit_ids is None else np.asarray(unit_ids)
    if unit_ids.shape != template_of_unit.shape:
        raise ValueError(f"unit_ids has shape {unit_ids.shape}, template_of_unit {template_of_unit.shape}")
    train = dict(
        spike_times=spike_times,
        spike_clusters=spike_clusters,
        unit_ids=unit_ids,
        sampling_rate_hz=sampling_rate_hz,
        duration_s=duration_s,
    )
    refractory = dict(refractory_ms=refractory_ms, censored_ms=censored_ms)
    unit_templates = templates_uv[template_of_unit]
    peak = template_peak(templates_uv=unit_templates)
    idx = _unit_index(spike_clusters, unit_ids)
    return UnitMetrics(
        unit_id=unit_ids,
        n_spikes=np.bincount(idx[idx >= 0], minlength=unit_ids.size),
        firing_rate_hz=firing_rate_hz(spike_clusters=spike_clusters, unit_ids=unit_ids, duration_s=duration_s),
        isi_violation_ratio=isi_violation_ratio(**train, **refractory),
        contamination=contamination(**train, **refractory),
        presence_ratio=presence_ratio(**train, bin_s=presence_bin_s),
        amplitude_cutoff=amplitude_cutoff(amplitudes=amplitudes, spike_clusters=spike_clusters, unit_ids=unit_ids),
        snr=snr(templates_uv=unit_templates, noise_uv=noise_uv),
        amplitude_uv=peak.amplitude_uv,
        peak_channel=peak.channel,
        depth_um=template_depth_um(templates_uv=unit_templates, channel_positions=channel_positions),
    )
