"""Every tunable of the sorter, in one frozen dataclass.

Each field carries its unit in the name, a range, a help text and the stage that reads it.
The CLI options, ``spikesort params`` (a TOML template), ``--config`` parsing and validation
are all generated from these definitions.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpikesortError


def _p(default, *, help: str, stage: str, lo=None, hi=None, choices=None):
    return field(default=default, metadata=dict(help=help, stage=stage, lo=lo, hi=hi, choices=choices))


@dataclass(frozen=True)
class Params:
    # --- streaming -------------------------------------------------------------------------
    chunk_s: float = _p(2.0, lo=0.1, hi=60.0, stage="chunks", help="length of one streamed chunk of traces, seconds")
    margin_ms: float = _p(
        10.0,
        lo=1.0,
        hi=500.0,
        stage="chunks",
        help="extra samples read on each side of a chunk so filters and templates see context",
    )
    n_jobs: int = _p(0, lo=0, hi=256, stage="chunks", help="threads for numba kernels and chunk work; 0 = all cores")
    trace_store: str = _p(
        "auto",
        choices=("auto", "plain", "compressed"),
        stage="chunks",
        help="the whitened scratch copy of the traces: plain int16, or compressed (about a third of the size, "
        "values rounded to 1/8 of the noise sd); auto compresses it above 16 GB or when the plain copy "
        "would not fit on the disk",
    )
    seed: int = _p(0, lo=0, hi=2**31 - 1, stage="all", help="seed for every random choice (subsampling, k-means)")
    # --- preprocess ------------------------------------------------------------------------
    highpass_hz: float = _p(
        300.0,
        lo=10.0,
        hi=5000.0,
        stage="preprocess",
        help="high-pass corner of the 3rd-order zero-phase Butterworth filter",
    )
    lowpass_hz: float = _p(
        0.0, lo=0.0, hi=20000.0, stage="preprocess", help="optional low-pass corner; 0 = none (kept below Nyquist)"
    )
    common_reference: str = _p(
        "auto",
        choices=("auto", "median", "mean", "none"),
        stage="preprocess",
        help="common reference subtracted across channels at each sample; auto = median, or none where "
        "one spike reaches most channels (tetrodes, a few close contacts)",
    )
    whitening_radius_um: float = _p(
        100.0, lo=0.0, hi=10000.0, stage="preprocess", help="local ZCA whitening uses channels within this distance"
    )
    whitening_n_chunks: int = _p(
        20, lo=1, hi=1000, stage="preprocess", help="number of chunks sampled to estimate the channel covariance"
    )
    bad_channel_detection: bool = _p(
        True, stage="preprocess", help="find dead (flat) and very noisy channels and leave them out"
    )
    # --- drift -----------------------------------------------------------------------------
    drift: str = _p(
        "auto",
        choices=("auto", "rigid", "nonrigid", "none"),
        stage="drift",
        help="motion correction: auto = non-rigid on long shanks, rigid on shorter ones, "
        "none on shanks too small to estimate it (tetrodes, a few channels)",
    )
    drift_bin_s: float = _p(2.0, lo=0.5, hi=60.0, stage="drift", help="time resolution of the motion estimate")
    drift_block_um: float = _p(
        200.0, lo=20.0, hi=10000.0, stage="drift", help="spacing of the depth blocks of a non-rigid motion estimate"
    )
    drift_max_um: float = _p(
        60.0,
        lo=5.0,
        hi=1000.0,
        stage="drift",
        help="largest displacement between two moments of the recording that is searched",
    )
    drift_min_span_um: float = _p(
        150.0,
        lo=0.0,
        hi=100000.0,
        stage="drift",
        help="shanks whose contacts span less depth than this are not corrected",
    )
    drift_nonrigid_span_um: float = _p(
        1000.0,
        lo=0.0,
        hi=100000.0,
        stage="drift",
        help="with drift = auto, shanks spanning at least this depth get non-rigid correction",
    )
    drift_min_um: float = _p(
        5.0,
        lo=0.0,
        hi=1000.0,
        stage="drift",
        help="motion estimated to span less than this (1st-99th percentile) is left uncorrected",
    )
    drift_merge_similarity: float = _p(
        0.8,
        lo=0.0,
        hi=1.0,
        stage="drift",
        help="after correction, units this similar (template cosine) whose spikes come "
        "from different probe positions are one neuron split by drift",
    )
    # --- detect ----------------------------------------------------------------------------
    detect_threshold: float = _p(
        5.0,
        lo=2.0,
        hi=50.0,
        stage="detect",
        help="candidate threshold on whitened traces, in noise standard deviations",
    )
    universal_threshold: float = _p(
        7.0,
        lo=2.0,
        hi=100.0,
        stage="detect",
        help="matched-filter score a candidate needs against the universal template bank",
    )
    detect_radius_um: float = _p(
        50.0, lo=0.0, hi=1000.0, stage="detect", help="a candidate must be the largest peak within this distance"
    )
    exclusion_ms: float = _p(0.5, lo=0.05, hi=5.0, stage="detect", help="... and within this many ms on either side")
    envelope_sigmas_um: tuple = _p(
        (15.0, 30.0, 60.0), stage="detect", help="spatial Gaussian widths of the universal templates"
    )
    n_temporal_components: int = _p(
        5, lo=1, hi=12, stage="detect", help="temporal waveforms in the universal template bank and in features"
    )
    ms_before: float = _p(1.0, lo=0.2, hi=5.0, stage="detect", help="waveform window before the spike peak")
    ms_after: float = _p(1.5, lo=0.2, hi=10.0, stage="detect", help="waveform window after the spike peak")
    # --- cluster ---------------------------------------------------------------------------
    feature_radius_um: float = _p(
        75.0,
        lo=10.0,
        hi=1000.0,
        stage="cluster",
        help="features of a spike are taken on channels within this distance of its peak",
    )
    max_spikes_per_channel: int = _p(
        3000, lo=100, hi=10**6, stage="cluster", help="clustering subsamples at most this many spikes per peak channel"
    )
    min_cluster_size: int = _p(
        30,
        lo=5,
        hi=10**5,
        stage="cluster",
        help="smaller clusters are dropped, and so are units left with fewer spikes after matching",
    )
    split_depth: int = _p(6, lo=1, hi=20, stage="cluster", help="maximum depth of recursive bimodal splits")
    # 0.2: three MEArec tetrode neurons of one shape (waveforms 0.91-0.96 alike) left valleys of
    # 0.20-0.25 and came out as one cluster at 0.25 (mearec_tetrode seed 71; docs/benchmarks.md)
    bimodality_threshold: float = _p(
        0.2, lo=0.0, hi=1.0, stage="cluster", help="valley depth (1 - valley/peak) needed to split a cluster in two"
    )
    merge_similarity: float = _p(
        0.8, lo=0.0, hi=1.0, stage="cluster", help="templates with cosine similarity above this are tested for merging"
    )
    min_template_snr: float = _p(
        2.5,
        lo=0.0,
        hi=100.0,
        stage="cluster",
        help="templates whose peak is below this many noise sd (best channel) are not matched",
    )
    template_merge_similarity: float = _p(
        0.9, lo=0.0, hi=1.0, stage="cluster", help="templates more similar than this (cosine, best lag) are one unit"
    )
    post_merge_similarity: float = _p(
        0.7,
        lo=0.0,
        hi=1.0,
        stage="curate",
        help="after matching, units this similar merge when their spike trains show a shared refractory gap",
    )
    # --- match -----------------------------------------------------------------------------
    match_threshold: float = _p(
        5.0,
        lo=1.0,
        hi=100.0,
        stage="match",
        help="a template is subtracted when it explains this much residual (sqrt energy, whitened noise units)",
    )
    match_noise_sds: float = _p(
        4.5,
        lo=1.0,
        hi=100.0,
        stage="match",
        help="and when its score exceeds this many sds of its own score on the noise (measured per "
        "template: coloured noise spreads a smooth template's score wider than whitening says)",
    )
    match_detect_threshold: float = _p(
        3.5,
        lo=2.0,
        hi=50.0,
        stage="match",
        help="candidate threshold on the filtered residual while matching (noise sd); the template fit then decides",
    )
    match_sure_threshold: float = _p(
        4.0,
        lo=2.0,
        hi=50.0,
        stage="match",
        help="a candidate peak under this (noise sd) is faint: its fit must reach match_faint_min_amplitude",
    )
    match_faint_min_amplitude: float = _p(
        0.7,
        lo=0.0,
        hi=2.0,
        stage="match",
        help="least template scale for a faint candidate's fit: a neighbour's template fitted small to "
        "a faint spike takes another neuron's spike",
    )
    match_iterations: int = _p(4, lo=1, hi=20, stage="match", help="rounds of detect-and-peel on the residual")
    amplitude_range: tuple = _p((0.5, 2.0), stage="match", help="allowed scaling of a template for one spike")
    # --- export ---
    n_pc_channels: int = _p(12, lo=1, hi=64, stage="export", help="channels per spike in Phy's PC features")
    n_template_features: int = _p(
        8,
        lo=1,
        hi=64,
        stage="export",
        help="similar templates each spike is projected on (Phy's template-feature view)",
    )
    # --- curate ----------------------------------------------------------------------------
    duplicate_ms: float = _p(
        0.25,
        lo=0.0,
        hi=5.0,
        stage="curate",
        help="spikes of one unit closer than this are duplicates; the smaller is dropped",
    )
    min_rate_hz: float = _p(
        0.1,
        lo=0.0,
        hi=100.0,
        stage="curate",
        help="units firing less often than this over the recording are dropped (min_cluster_size spikes at least)",
    )
    faint_min_rate_hz: float = _p(
        0.5,
        lo=0.0,
        hi=100.0,
        stage="curate",
        help="units below good_min_snr firing less often than this are dropped (0: keep them)",
    )
    max_shadowed_fraction: float = _p(
        0.1,
        lo=0.0,
        hi=1.0,
        stage="curate",
        help="units spread over the probe (a tetrode's) with more than this fraction of their spikes fitted "
        "better by a larger unit's template than by their own are dropped, unless their train shows a neuron "
        "apart from it (1: keep them)",
    )
    refractory_ms: float = _p(1.5, lo=0.1, hi=10.0, stage="curate", help="refractory period for contamination")
    censored_ms: float = _p(0.0, lo=0.0, hi=5.0, stage="curate", help="censored period for contamination estimates")
    good_max_contamination: float = _p(
        0.1, lo=0.0, hi=1.0, stage="curate", help="label 'good' needs refractory contamination below this"
    )
    good_min_snr: float = _p(5.0, lo=0.0, hi=1000.0, stage="curate", help="label 'good' needs SNR above this")
    good_min_presence: float = _p(
        0.8, lo=0.0, hi=1.0, stage="curate", help="label 'good' needs spikes in at least this fraction of time bins"
    )
    good_min_spikes: int = _p(
        50,
        lo=0,
        hi=10**6,
        stage="curate",
        help="label 'good' needs at least this many spikes (fewer cannot show a clean refractory period)",
    )
    noise_max_snr: float = _p(2.5, lo=0.0, hi=1000.0, stage="curate", help="units with SNR below this are 'noise'")
    good_max_piece_fraction: float = _p(
        0.2,
        lo=0.0,
        hi=1.0,
        stage="curate",
        help="no 'good' label for a unit with at most this fraction of the spikes of a larger one of its footprint",
    )

    # ---------------------------------------------------------------------------------------
    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            m = f.metadata
            if m.get("choices") is not None and v not in m["choices"]:
                raise SpikesortError(f"parameter {f.name}={v!r} must be one of {', '.join(m['choices'])}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if v != v:
                    raise SpikesortError(f"parameter {f.name} is NaN")
                if m.get("lo") is not None and v < m["lo"] or m.get("hi") is not None and v > m["hi"]:
                    raise SpikesortError(f"parameter {f.name}={v} is out of range [{m['lo']}, {m['hi']}]")
        for name in ("amplitude_range", "envelope_sigmas_um"):
            if not all(math.isfinite(x) for x in getattr(self, name)):
                raise SpikesortError(f"parameter {name}={getattr(self, name)} must hold finite numbers")
        if (
            len(self.amplitude_range) != 2
            or self.amplitude_range[0] >= self.amplitude_range[1]
            or self.amplitude_range[0] <= 0
        ):
            raise SpikesortError(
                f"parameter amplitude_range={self.amplitude_range} must be (low, high) with 0 < low < high"
            )
        if not self.envelope_sigmas_um or min(self.envelope_sigmas_um) <= 0:
            raise SpikesortError("parameter envelope_sigmas_um needs positive widths")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, base: Params | None = None) -> Params:
        """Build from user values, converting types and naming the nearest valid key on a typo."""
        base = base or cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out = {}
        for key, value in values.items():
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SpikesortError(f"unknown parameter {key!r}{hint}")
            out[key] = _coerce(key, value, getattr(base, key))
        return dataclasses.replace(base, **out)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> Params:
        values = load_config(path)
        values.update(overrides)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def to_toml(self) -> str:
        """A commented TOML template of every parameter (what ``spikesort params`` prints)."""
        lines = ["# spikesort parameters: edit and pass with --config FILE.toml", ""]
        stage = None
        for f in dataclasses.fields(self):
            m = f.metadata
            if m["stage"] != stage:
                stage = m["stage"]
                lines += ["", f"# ---- {stage} ----"]
            rng = ""
            if m.get("choices"):
                rng = f" one of: {', '.join(m['choices'])}"
            elif m.get("lo") is not None:
                rng = f" range [{m['lo']}, {m['hi']}]"
            lines.append(f"# {m['help']}.{rng}")
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def _coerce(key: str, value, default):
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if isinstance(default, int):
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [x for x in value.replace("(", "").replace(")", "").split(",") if x.strip()]
            return tuple(float(x) for x in value)
        return str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int("inf"), float(10**400)
        raise SpikesortError(f"parameter {key}={value!r} is not a valid {type(default).__name__}") from None


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML parameter file into a plain dict (validated later by Params.from_dict)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    p = Path(path)
    if not p.is_file():
        raise SpikesortError(f"config file not found: {p}")
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpikesortError(f"config file {p} is not valid TOML: {e}") from None
    except OSError as e:
        raise SpikesortError(f"cannot read config file {p}: {e.strerror or e}") from None
