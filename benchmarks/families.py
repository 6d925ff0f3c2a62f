"""Scenario families from spikeinterface's generator beyond the 64-channel NP1 slice (issue 15):
crowded, multi-shank, dirty, other probes and rates, tetrode, long.

Each family registers its scenarios (and any generator of its own) in ``benchmarks.scenarios``;
``benchmarks.catalog`` imports this module. Every recording is generated once, cached as int16
and read by every sorter from the same folder.
"""

from __future__ import annotations

import numpy as np

from .scenarios import STORAGE_GAIN_UV, Scenario, build_probe, drifting_kwargs, register, register_generator

# ---------------------------------------------------------------------------------------------
# multi-shank: a different drift on each shank

# per shank of the 4-shank probe: (drift mode, from s, its own parameters); all within ±SHANK_DRIFT_UM
SHANK_DRIFT_UM = 15.0
SHANK_MOTIONS = (
    {"drift_mode": "zigzag", "t_start_drift": 60.0, "period_s": 200},
    {"drift_mode": "bump", "t_start_drift": 60.0, "bump_interval_s": (30.0, 90.0)},
    {"drift_mode": "random_walk", "t_start_drift": 0.0},
    {"drift_mode": "zigzag", "t_start_drift": 30.0, "period_s": 90, "amplitude_factor": 0.5},
)


def shank_unit_locations(*, positions_um: np.ndarray, shanks: np.ndarray, num_units: int, seed: int) -> np.ndarray:
    """(num_units, 3) unit positions, the units split evenly across the shanks, each shank's drawn
    around its own contacts (the generator's default draw spans the whole probe and would put
    most units between the shanks, far from any contact)."""
    from spikeinterface.core.generate import generate_unit_locations

    ids = np.unique(shanks)
    parts = []
    for i, (s, n) in enumerate(zip(ids, np.array_split(np.arange(num_units), len(ids)), strict=True)):
        parts.append(
            generate_unit_locations(
                len(n),
                positions_um[shanks == s],
                margin_um=20.0,
                minimum_z=5.0,
                maximum_z=45.0,
                minimum_distance=18.0,
                max_iteration=100,
                distance_strict=False,
                seed=int(seed) * 10 + i,
            )
        )
    return np.concatenate(parts)


def shank_displacements(*, unit_shank: np.ndarray, duration_s: float, seed: int):
    """``displacement_data`` for ``generate_drifting_recording``: one motion per shank
    (SHANK_MOTIONS), each unit moved by its own shank's motion only. (spikeinterface's
    ``generate_displacement_vector`` moves every unit by the sum of all motions.)"""
    from spikeinterface.generation.drifting_generator import make_linear_displacement, make_one_displacement_vector

    fs = 5.0
    start, stop = np.array([0.0, SHANK_DRIFT_UM]), np.array([0.0, -SHANK_DRIFT_UM])
    vectors = []
    for m in SHANK_MOTIONS:
        # (a short test recording starts its drifts earlier)
        m = dict(m, t_start_drift=min(m["t_start_drift"], duration_s / 4))
        shape = make_one_displacement_vector(duration=duration_s, displacement_sampling_frequency=fs, seed=seed, **m)
        vectors.append(shape[:, None] * (stop - start) + (start + stop) / 2)
    vectors = np.stack(vectors, axis=2)  # (times, xy, motions)
    num_step = int(np.linalg.norm(stop - start) // 2 * 2 + 1)  # 1 µm steps, an odd number
    steps = make_linear_displacement(start, stop, num_step=num_step)
    factor = np.zeros((len(unit_shank), len(SHANK_MOTIONS)))
    factor[np.arange(len(unit_shank)), unit_shank] = 1.0
    # (times, units, xy): each unit follows its shank's vector
    unit_displacements = np.transpose(vectors[:, :, unit_shank], (0, 2, 1))
    return unit_displacements, vectors, factor, fs, steps


def generate_multishank(*, scenario: Scenario, seed: int):
    from spikeinterface.generation import generate_drifting_recording

    probe = build_probe(kind=scenario.probe)
    positions = np.asarray(probe.contact_positions)
    shanks = np.unique(np.asarray(probe.shank_ids), return_inverse=True)[1]
    locations = shank_unit_locations(positions_um=positions, shanks=shanks, num_units=scenario.num_units, seed=seed)
    # a unit's shank: the shank of its nearest contact
    nearest = np.argmin(np.linalg.norm(locations[:, None, :2] - positions[None], axis=2), axis=1)
    unit_shank = shanks[nearest]
    data = shank_displacements(unit_shank=unit_shank, duration_s=scenario.duration_s, seed=seed)
    _, drifting, gt = generate_drifting_recording(
        num_units=scenario.num_units,
        duration=scenario.duration_s,
        probe=probe,
        unit_locations=locations,
        displacement_data=data,
        seed=seed,
    )
    drifting.set_channel_groups(shanks)
    unit_displacements, *_ = data
    truth = {
        "times_s": np.arange(unit_displacements.shape[0]) / data[3],
        "displacement_um": unit_displacements[:, :, 1],
        "unit_depth_um": locations[:, 1],
        "unit_shank": unit_shank,
    }
    return drifting, gt, truth


register_generator("multishank", generate_multishank)


# ---------------------------------------------------------------------------------------------
# dirty: a static recording plus what real rigs add


def generate_dirty(*, scenario: Scenario, seed: int):
    """The plain generator's static recording (the same as the clean scenario of that probe,
    units and seed) with mains hum, a dead and a noisy channel, movement artefacts and
    saturations (benchmarks.dirt)."""
    from spikeinterface.generation import generate_drifting_recording

    from .dirt import DirtyRecording, draw_dirt

    static, _, gt = generate_drifting_recording(**drifting_kwargs(scenario=scenario), seed=seed)
    dirt = draw_dirt(
        num_channels=static.get_num_channels(),
        duration_s=scenario.duration_s,
        seed=seed,
        rail_uv=32767 * STORAGE_GAIN_UV,
        **scenario.option,
    )
    return DirtyRecording(static, dirt=dirt.to_dict()), gt


register_generator("dirty", generate_dirty)


# ---------------------------------------------------------------------------------------------
# the scenarios

register(
    Scenario(
        "crowded64",
        "np1_64",
        120,
        300.0,
        "none",
        "64 ch NP1-like slice, 120 units at least 8 µm apart (many share a peak channel), 300 s, static",
        family="crowded",
        options=(("unit_min_distance_um", 8.0),),
    ),
    Scenario(
        "shanks4",
        "np2x4_24",
        64,
        300.0,
        "per_shank",
        "4-shank NP2-like probe, 24 contacts per shank (96 ch), 16 units per shank, 300 s; each shank "
        "drifts its own way within ±15 µm (zigzag, steps, random walk, fast half-size zigzag)",
        family="multishank",
        kind="multishank",
    ),
    Scenario(
        "dirty32",
        "multi32",
        20,
        60.0,
        "none",
        "static32 (the same units and noise) with the dirt of dirty64",
        family="dirty",
        kind="dirty",
    ),
    Scenario(
        "dirty32_20k",
        "linear32_50um",
        24,
        300.0,
        "none",
        "linear32_20k (the same units and noise) with the dirt of dirty64",
        family="dirty",
        kind="dirty",
        sampling_rate_hz=20000.0,
    ),
    Scenario(
        "dirty64",
        "np1_64",
        50,
        300.0,
        "none",
        "static64 (the same units and noise) plus 50 Hz hum with 10 harmonics, a dead and a noisy "
        "channel, 30 movement artefacts of 0.5-3 mV on every channel, 5 saturations of 20-150 ms",
        family="dirty",
        kind="dirty",
    ),
    Scenario(
        "dirty16",
        "np1_16",
        12,
        300.0,
        "none",
        "16 ch NP1-like slice (a spike reaches 38 % of it: no per-channel reference gains), 12 units, "
        "with the dirt of dirty64",
        family="dirty",
        kind="dirty",
    ),
    Scenario(
        "static16",
        "np1_16",
        12,
        300.0,
        "none",
        "16 ch NP1-like slice, 12 units, 300 s, static (dirty16's clean twin)",
        family="rates",
    ),
    Scenario(
        "dirty_tetrode",
        "tetrode",
        6,
        300.0,
        "none",
        "tetrode (the same units and noise) with the hum, movement artefacts and saturations of dirty64; "
        "no dead or noisy contact (two of four would be left)",
        family="dirty",
        kind="dirty",
        options=(("bad_channels", False),),
    ),
    Scenario(
        "linear32_20k",
        "linear32_50um",
        24,
        300.0,
        "none",
        "linear 32-channel probe at 50 µm pitch, 20 kHz, 24 units, 300 s, static",
        family="rates",
        sampling_rate_hz=20000.0,
    ),
    Scenario(
        "np64_25k",
        "np1_64",
        50,
        300.0,
        "none",
        "64 ch NP1-like slice at 25 kHz, 50 units, 300 s, static",
        family="rates",
        sampling_rate_hz=25000.0,
    ),
    Scenario(
        "tetrode",
        "tetrode",
        6,
        300.0,
        "none",
        "spikeinterface's tetrode (4 contacts on a 10 µm circle), 6 units, 300 s, static",
        family="tetrode",
    ),
    Scenario(
        "long128",
        "np1_128",
        120,
        1800.0,
        "slow",
        "128 ch NP1-like slice, 120 units, 30 min, slow zigzag drift ±10 µm (period 20 min); ~14 GB",
        family="long",
    ),
)
