"""Synthetic chronic recordings: one population of neurons seen in several sessions of one probe.

Each neuron keeps its template parameters (shape, amplitude, spatial decay) for the whole
experiment; between sessions the probe moves (a rigid shift, optionally a depth gradient), a fifth
of the neurons is replaced by new ones, firing rates change, and the noise is drawn anew. The
benchmark (``benchmarks/tracking.py``) and the tests use it; spikeinterface is imported on use.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ChronicSession", "chronic_probe", "make_chronic_sessions", "save_int16"]

MS_BEFORE, MS_AFTER = 1.0, 3.0
STORAGE_GAIN_UV = 0.195  # int16 step in µV, as the demo


@dataclass
class ChronicSession:
    """One simulated session: a lazy recording (µV, probe attached) and its ground truth."""

    index: int
    recording: object  # spikeinterface BaseRecording
    gt_sorting: object  # spikeinterface BaseSorting; unit ids are the global neuron ids
    neuron_ids: np.ndarray  # (U,) global neuron ids present in this session
    displacement_um: np.ndarray  # (U,) depth displacement of each present neuron vs session 0
    rigid_um: float  # the session's rigid displacement vs session 0
    gradient: float  # extra displacement per µm of depth (non-rigid part), vs session 0
    depth_um: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (U,) neuron depths on this session's probe
    rates_hz: np.ndarray = field(default_factory=lambda: np.zeros(0))


def chronic_probe(*, n_channels: int = 64, ypitch: float = 25.0):
    """Two staggered columns (22 µm apart), like a common silicon probe."""
    from probeinterface import generate_multi_columns_probe

    probe = generate_multi_columns_probe(
        num_columns=2,
        num_contact_per_column=n_channels // 2,
        xpitch=22.0,
        ypitch=ypitch,
        y_shift_per_column=[0.0, ypitch / 2],
    )
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return probe


def _neuron_params(rng, n: int) -> dict:
    from spikeinterface.core.generate import default_unit_params_range

    out = {k: rng.uniform(lo, hi, n) for k, (lo, hi) in default_unit_params_range.items()}
    out["alpha"] = rng.uniform(250.0, 600.0, n)  # detectable: median SNR ~ 10 with 5 µV noise
    return out


def make_chronic_sessions(
    *,
    n_sessions: int = 5,
    n_units: int = 30,
    n_channels: int = 64,
    duration_s: float = 60.0,
    max_shift_um: float = 100.0,
    gradient: float = 0.0,
    replace_fraction: float = 0.2,
    rate_change: float = 0.5,
    noise_uv: float = 5.0,
    margin_um: float | None = None,
    fixed_step: tuple[int, float] | None = None,
    sampling_frequency: float = 30000.0,
    seed: int = 0,
) -> tuple[object, list[ChronicSession]]:
    """The probe and ``n_sessions`` sessions of ``n_units`` neurons each (lazy recordings).

    Session displacements vs session 0 are drawn in ±max_shift_um/2, so that consecutive sessions
    differ by up to ``max_shift_um``. ``gradient`` adds a depth-proportional part (non-rigid),
    drawn in ±gradient per session. ``margin_um`` keeps neurons away from the probe ends
    (default: max_shift_um/2 + 40 µm). ``fixed_step=(k, step)`` (k >= 2): sessions k-1 and k sit at
    -step/2 and +step/2 (rigid), so that one consecutive step is exactly ``step`` (the others drawn;
    the same random draws as without it).
    """
    from spikeinterface.core.generate import generate_sorting, generate_templates
    from spikeinterface.generation import generate_ground_truth_recording

    if fixed_step is not None and not 2 <= fixed_step[0] < n_sessions:
        raise ValueError(
            f"fixed_step's session must be in 2..{n_sessions - 1} (session 0 is the reference), got {fixed_step[0]}"
        )
    rng = np.random.default_rng(seed)
    probe = chronic_probe(n_channels=n_channels)
    pos = probe.contact_positions[:, :2]
    y_lo, y_hi = pos[:, 1].min(), pos[:, 1].max()
    margin = max_shift_um / 2 + 40.0 if margin_um is None else margin_um
    y_mid = (y_lo + y_hi) / 2
    n_total = n_units + int(round(replace_fraction * n_units)) * (n_sessions - 1)
    locations = np.column_stack(
        [
            rng.uniform(pos[:, 0].min() - 15, pos[:, 0].max() + 15, n_total),
            rng.uniform(y_lo + margin, y_hi - margin, n_total),
            rng.uniform(10.0, 40.0, n_total),
        ]
    )
    params = _neuron_params(rng, n_total)
    base_rates = rng.uniform(3.0, 12.0, n_total)
    present = np.arange(n_units)
    next_id = n_units
    sessions = []
    for k in range(n_sessions):
        if k > 0:
            n_new = int(round(replace_fraction * n_units))
            gone = rng.choice(present.size, n_new, replace=False)
            present = np.sort(np.concatenate([np.delete(present, gone), np.arange(next_id, next_id + n_new)]))
            next_id += n_new
        rigid = 0.0 if k == 0 else float(rng.uniform(-max_shift_um / 2, max_shift_um / 2))
        if fixed_step is not None and k in (fixed_step[0] - 1, fixed_step[0]):
            rigid = fixed_step[1] / 2 * (1 if k == fixed_step[0] else -1)
        grad = 0.0 if k == 0 or gradient == 0 else float(rng.uniform(-gradient, gradient))
        disp = rigid + grad * (locations[present, 1] - y_mid)
        loc = locations[present].copy()
        loc[:, 1] += disp
        unit_params = {name: values[present] for name, values in params.items()}
        templates = generate_templates(
            pos, loc, sampling_frequency, MS_BEFORE, MS_AFTER, seed=seed, unit_params=unit_params
        )
        rates = base_rates[present] * rng.uniform(1 - rate_change, 1 + rate_change, present.size)
        sorting = generate_sorting(
            num_units=present.size,
            sampling_frequency=sampling_frequency,
            durations=[duration_s],
            firing_rates=rates,
            refractory_period_ms=4.0,
            seed=seed * 1000 + k + 1,
        )
        sorting = sorting.rename_units(present)
        rec, gt = generate_ground_truth_recording(
            durations=[duration_s],
            sampling_frequency=sampling_frequency,
            sorting=sorting,
            probe=probe,
            templates=templates,
            ms_before=MS_BEFORE,
            ms_after=MS_AFTER,
            noise_kwargs=dict(noise_levels=noise_uv, strategy="on_the_fly"),
            seed=seed * 1000 + k + 1,
        )
        sessions.append(
            ChronicSession(
                index=k,
                recording=rec,
                gt_sorting=gt,
                neuron_ids=present.copy(),
                displacement_um=disp,
                rigid_um=rigid,
                gradient=grad,
                rates_hz=rates,
                depth_um=loc[:, 1].copy(),
            )
        )
    return probe, sessions


def save_int16(recording, folder: Path):
    """Save a µV recording as int16 binary (0.195 µV steps) and return the saved recording."""
    from spikeinterface.preprocessing import scale

    as_int16 = scale(recording, gain=1.0 / STORAGE_GAIN_UV, offset=0.0, dtype="int16")
    as_int16.set_channel_gains(STORAGE_GAIN_UV)
    as_int16.set_channel_offsets(0.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not serializable.*")
        return as_int16.save(folder=Path(folder), format="binary", n_jobs=1, chunk_duration="1s", progress_bar=False)


def sorted_to_neurons(gt_sorting, folder, *, min_accuracy: float = 0.8) -> dict[int, int]:
    """Sorted unit id -> ground-truth neuron id, for units matched with accuracy >= min_accuracy."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting

    folder = Path(folder)
    times = np.load(folder / "spike_times.npy").ravel()
    path = folder / "spike_clusters.npy"
    labels = np.load(path if path.is_file() else folder / "spike_templates.npy").ravel()
    tested = NumpySorting.from_samples_and_labels([times], [labels], gt_sorting.sampling_frequency)
    comp = compare_sorter_to_ground_truth(gt_sorting, tested, exhaustive_gt=True, delta_time=0.4)
    out = {}
    for gt_id, unit in comp.hungarian_match_12.items():
        if unit != -1 and comp.agreement_scores.at[gt_id, unit] >= min_accuracy:
            out[int(unit)] = int(gt_id)
    return out


def score_links(rows, truth: list[dict[int, int]], sessions: list[str]) -> dict:
    """Score tracks against the truth (one sorted-unit -> neuron map per session).

    A persisting pair: the same neuron well detected in sessions i < j; it is correctly linked when
    its two units share a track. Links: consecutive units of a track; a link is false when its two
    units are different neurons (units matched to no neuron are left out of both counts).
    """
    index = {s: i for i, s in enumerate(sessions)}
    unit_track = {}
    members: dict[int, list[tuple[int, int]]] = {}
    for r in rows:
        key = (index[r.session], int(r.unit_id))
        unit_track[key] = r.track_id
        members.setdefault(r.track_id, []).append(key)
    persisting = linked = 0
    for i in range(len(sessions)):
        inv_i = {n: u for u, n in truth[i].items()}
        for j in range(i + 1, len(sessions)):
            inv_j = {n: u for u, n in truth[j].items()}
            for n in set(inv_i) & set(inv_j):
                persisting += 1
                ti, tj = unit_track.get((i, inv_i[n])), unit_track.get((j, inv_j[n]))
                linked += int(ti is not None and ti == tj)
    links = false = 0
    for keys in members.values():
        keys = sorted(keys)
        for (si, ui), (sj, uj) in zip(keys[:-1], keys[1:]):
            ni, nj = truth[si].get(ui), truth[sj].get(uj)
            if ni is None or nj is None:
                continue
            links += 1
            false += int(ni != nj)
    return dict(
        persisting_pairs=persisting,
        correctly_linked=linked,
        linked_fraction=linked / persisting if persisting else float("nan"),
        scored_links=links,
        false_links=false,
        false_fraction=false / links if links else 0.0,
    )
