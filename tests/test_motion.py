"""Drift: motion estimation from spike positions, correction of the traces, and the pipeline stage.

Estimation is checked on synthetic spike positions with a known displacement (rigid, and a
depth-dependent one), including a stretch with almost no spikes; correction against a numpy
reference (a smooth spatial profile moved by a known amount); the stage end to end on small
generated recordings (drifting, tetrode, drift switched off).
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pytest

from spikesort.errors import SpikesortError
from spikesort.layout import MOTION_FILES
from spikesort.params import Params
from spikesort.stages.drift.estimate import Motion, ShankGeometry, estimate_motion
from spikesort.stages.drift.figure import draw_drift_map
from spikesort.stages.drift.interpolate import Kriging, correct_block, correct_chunk, interpolation_matrix
from spikesort.stages.drift.plan import plan_drift
from spikesort.stages.drift.records import read_drift_record

# ------------------------------------------------------------------------------------------
# synthetic spikes


def zigzag(t, *, amplitude_um: float, period_s: float) -> np.ndarray:
    """Triangle wave between -amplitude and +amplitude, 0 at t = 0."""
    phase = (np.asarray(t) / period_s + 0.25) % 1.0
    return amplitude_um * (4 * np.abs(phase - 0.5) - 1) * -1


def synthetic_spikes(
    *,
    displacement,
    duration_s=200.0,
    n_units=40,
    depth_um=(0.0, 600.0),
    rate_hz=6.0,
    quiet=(80.0, 100.0),
    quiet_factor=0.02,
    jitter_um=3.0,
    seed=0,
):
    """Spike (times, depths, amplitudes) of units at fixed tissue depths moved by
    ``displacement(t, depth)``; during ``quiet`` the units fire ``quiet_factor`` times as often."""
    rng = np.random.default_rng(seed)
    unit_depth = rng.uniform(*depth_um, n_units)
    unit_amp = rng.lognormal(np.log(12), 0.5, n_units)
    times, depths, amps = [], [], []
    for u in range(n_units):
        n = rng.poisson(rate_hz * duration_s)
        t = np.sort(rng.uniform(0, duration_s, n))
        in_quiet = (t >= quiet[0]) & (t < quiet[1])
        t = t[~in_quiet | (rng.random(n) < quiet_factor)]
        y = unit_depth[u] + displacement(t, unit_depth[u]) + rng.normal(0, jitter_um, len(t))
        times.append(t)
        depths.append(y)
        amps.append(unit_amp[u] * rng.lognormal(0, 0.1, len(t)))
    order = np.argsort(np.concatenate(times))
    return tuple(np.concatenate(x)[order] for x in (times, depths, amps))


def centred_rms(a, b) -> float:
    """RMS of a - b after removing its mean (the motion's reference depth is arbitrary)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


# ------------------------------------------------------------------------------------------
# estimation


def test_rigid_motion_recovered_through_a_quiet_stretch():
    truth = lambda t, y: zigzag(t, amplitude_um=15.0, period_s=80.0)  # noqa: E731
    t, y, a = synthetic_spikes(displacement=truth)
    n_quiet = np.count_nonzero((t >= 80) & (t < 100))
    assert n_quiet < 0.05 * len(t) / 10  # the quiet 20 s hold far fewer spikes than any 20 s elsewhere
    motion = estimate_motion(
        times_s=t,
        depths_um=y,
        amplitudes=a,
        geometry=[ShankGeometry(0, 0.0, 600.0, "rigid")],
        duration_s=200.0,
        bin_s=2.0,
    )
    assert motion.displacement_um.shape == (100, 1)
    np.testing.assert_allclose(motion.time_bins_s, np.arange(100) * 2.0 + 1.0)
    est = motion.displacement_um[:, 0]
    true = truth(motion.time_bins_s, 0)
    # signed comparison: units moving up give a positive displacement
    assert centred_rms(est, true) < 1.0, centred_rms(est, true)
    quiet = (motion.time_bins_s > 80) & (motion.time_bins_s < 100)
    offset = np.mean(est - true)
    assert np.max(np.abs(est[quiet] - true[quiet] - offset)) < 4.0, est[quiet] - true[quiet] - offset
    # the reference is the middle of the range: the largest correction either way is the same
    assert abs(np.percentile(est, 1) + np.percentile(est, 99)) < 0.5


def test_static_spikes_give_no_motion():
    t, y, a = synthetic_spikes(displacement=lambda t, y: np.zeros_like(t), quiet=(0, 0))
    motion = estimate_motion(
        times_s=t, depths_um=y, amplitudes=a, geometry=[ShankGeometry(0, 0.0, 600.0, "rigid")], duration_s=200.0
    )
    assert np.abs(motion.displacement_um).max() < 1.0, np.abs(motion.displacement_um).max()


def test_nonrigid_motion_recovered_per_block():
    # the top of a 1 mm shank moves three times as much as the bottom
    def truth(t, y):
        return zigzag(t, amplitude_um=10.0, period_s=100.0) * (0.5 + y / 1000.0)

    t, y, a = synthetic_spikes(displacement=truth, n_units=80, depth_um=(0.0, 1000.0), seed=1)
    motion = estimate_motion(
        times_s=t,
        depths_um=y,
        amplitudes=a,
        geometry=[ShankGeometry(0, 0.0, 1000.0, "nonrigid")],
        duration_s=200.0,
        block_um=250.0,
    )
    assert len(motion.depth_bins_um) == 4
    errors = [
        centred_rms(motion.displacement_um[:, b], truth(motion.time_bins_s, c))
        for b, c in enumerate(motion.depth_bins_um)
    ]
    assert max(errors) < 2.0, errors
    # and a rigid estimate of the same spikes is clearly worse at the ends of the shank
    rigid = estimate_motion(
        times_s=t, depths_um=y, amplitudes=a, geometry=[ShankGeometry(0, 0.0, 1000.0, "rigid")], duration_s=200.0
    )
    rigid_errors = [
        centred_rms(rigid.displacement_um[:, 0], truth(motion.time_bins_s, c)) for c in motion.depth_bins_um
    ]
    assert rigid_errors[0] > 2 * errors[0] and rigid_errors[-1] > 2 * errors[-1], (rigid_errors, errors)


def test_shanks_are_estimated_separately():
    t0, y0, a0 = synthetic_spikes(displacement=lambda t, y: zigzag(t, amplitude_um=12.0, period_s=60.0), seed=2)
    t1, y1, a1 = synthetic_spikes(displacement=lambda t, y: np.zeros_like(t), seed=3)
    t, y, a = (np.concatenate(p) for p in ((t0, t1), (y0, y1), (a0, a1)))
    shanks = np.r_[np.zeros(len(t0), int), np.ones(len(t1), int)]
    motion = estimate_motion(
        times_s=t,
        depths_um=y,
        amplitudes=a,
        shanks=shanks,
        duration_s=200.0,
        geometry=[ShankGeometry(0, 0.0, 600.0, "rigid"), ShankGeometry(1, 0.0, 600.0, "rigid")],
    )
    np.testing.assert_array_equal(motion.block_shanks, [0, 1])
    assert centred_rms(motion.displacement_um[:, 0], zigzag(motion.time_bins_s, amplitude_um=12.0, period_s=60.0)) < 1.0
    assert np.abs(motion.displacement_um[:, 1]).max() < 1.5  # the other shank's motion does not leak in


def test_no_spikes_no_motion():
    motion = estimate_motion(
        times_s=np.zeros(0),
        depths_um=np.zeros(0),
        amplitudes=np.zeros(0),
        geometry=[ShankGeometry(0, 0.0, 600.0, "rigid")],
        duration_s=10.0,
    )
    assert motion.displacement_um.shape == (5, 1)
    assert np.all(motion.displacement_um == 0)


# ------------------------------------------------------------------------------------------
# the Motion object


def test_motion_interpolates_in_time_and_depth_and_round_trips(tmp_path):
    # shank 0 has blocks at 100 and 300 µm (columns 0, 1); shank 1 one block at 50 µm (column 2)
    d = np.array([[0.0, 10.0, -1.0], [4.0, 30.0, -2.0], [8.0, 50.0, -3.0]], dtype=np.float32)
    m = Motion(d, np.array([1.0, 3.0, 5.0]), np.array([100.0, 300.0, 50.0]), np.array([0, 0, 1]))
    at = lambda t, y, s=0: float(m.at(times_s=[t], depths_um=[y], shanks=[s])[0])  # noqa: E731
    assert at(1.0, 100.0) == pytest.approx(0.0)
    assert at(2.0, 100.0) == pytest.approx(2.0)  # halfway between bins 0 and 1
    assert at(2.0, 200.0) == pytest.approx((2.0 + 20.0) / 2)  # and halfway between the blocks
    assert at(0.0, 0.0) == pytest.approx(0.0)  # constant before the first bin and below the first block
    assert at(9.0, 900.0) == pytest.approx(50.0)  # and after the last
    assert at(4.0, 300.0, 1) == pytest.approx(-2.5)  # the one-block shank ignores depth
    assert at(4.0, 300.0, 7) == 0.0  # a shank without blocks does not move
    m.save(tmp_path)
    assert Motion.exists(tmp_path)
    back = Motion.load(tmp_path)
    for name in ("displacement_um", "time_bins_s", "depth_bins_um", "block_shanks"):
        np.testing.assert_allclose(getattr(back, name), getattr(m, name))
    assert np.load(tmp_path / "motion.npy").shape == (3, 3)
    assert not list(tmp_path.glob(".*.tmp"))


def test_motion_at_many_points_holds_no_per_block_arrays():
    """The displacement at every spike of an hour (drift merges, the drift map) is interpolated by
    blocks of points: these 500 000 points on 19 blocks all at once peaked at 79 MB, by blocks 10."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n_t, n_b, n = 1800, 19, 500_000
    shanks = np.repeat([0, 1], [15, 4])
    m = Motion(rng.normal(size=(n_t, n_b)).astype(np.float32), 2.0 * np.arange(n_t) + 1, np.arange(n_b) * 200.0, shanks)
    t, y, s = rng.uniform(-10, 3700, n), rng.uniform(-100, 3900, n), rng.integers(0, 3, n)
    tracemalloc.start()
    try:
        d = m.at(times_s=t, depths_um=y, shanks=s)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * 2**20, peak / 2**20
    # the same values as point by point (a few, spread over the blocks of points)
    for i in rng.choice(n, 50, replace=False):
        assert d[i] == m.at(times_s=t[i : i + 1], depths_um=y[i : i + 1], shanks=s[i : i + 1])[0]
    assert m.at(times_s=[[1.0, 2.0]], depths_um=100.0).shape == (1, 2)


# ------------------------------------------------------------------------------------------
# correction


def two_column_probe(n_rows=24, pitch=20.0):
    y = np.repeat(np.arange(n_rows) * pitch, 2)
    x = np.tile([0.0, 30.0], n_rows)
    return np.column_stack([x, y])


def profile(positions, centre_y, width=40.0):
    """A smooth spatial footprint (Gaussian along depth, broad across columns)."""
    return np.exp(-0.5 * ((positions[:, 1] - centre_y) / width) ** 2) * (1 + 0.001 * positions[:, 0])


EXACT = dict(sigma_um=20.0, regularization=1e-6)  # a near-exact interpolator, for reference


def test_zero_shift_and_bad_channels():
    pos = two_column_probe()
    good = np.ones(len(pos), bool)
    good[[5, 17]] = False
    # the exact interpolator leaves unshifted traces alone
    m = interpolation_matrix(positions_um=pos, shift_um=0.0, good_channels=good, **EXACT)
    np.testing.assert_allclose(m, np.diag(good.astype(np.float32)), atol=1e-3)
    # the default one smooths a little, the same at every shift, and keeps white noise at unit sd
    for shift in (0.0, 7.0):
        m = interpolation_matrix(positions_um=pos, shift_um=shift, good_channels=good)
        assert np.all(m[[5, 17]] == 0) and np.all(m[:, [5, 17]] == 0)  # bad channels: neither source nor target
        off = np.abs(m - np.diag(np.diag(m))).sum(axis=1)[good]
        assert np.median(off) > 0.3
        assert np.median((m.astype(np.float64) ** 2).sum(axis=1)[good]) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("shift", [5.0, -12.0, 20.0, 33.0])
def test_correction_moves_a_profile_back(shift):
    pos = two_column_probe()
    y0 = 230.0
    inner = (pos[:, 1] > 60) & (pos[:, 1] < 400)  # away from the ends of the probe
    scale = np.array([[1.0], [-0.5], [2.0]])  # 3 samples
    # at this moment the tissue sits `shift` µm higher: the recording shows the profile there
    recorded = profile(pos, y0 + shift)[None, :] * scale
    expected = profile(pos, y0)[None, :] * scale
    # exact interpolation moves it back
    exact = correct_chunk(recorded, matrix=interpolation_matrix(positions_um=pos, shift_um=shift, **EXACT))
    assert np.abs(exact - expected)[:, inner].max() < 0.03 * np.abs(expected).max()
    # the default correction gives what it gives a profile already in place (its smoothing)
    corrected = correct_chunk(recorded, matrix=interpolation_matrix(positions_um=pos, shift_um=shift))
    in_place = correct_chunk(expected, matrix=interpolation_matrix(positions_um=pos, shift_um=0.0))
    assert np.abs(corrected - in_place)[:, inner].max() < 0.03 * np.abs(in_place).max()
    # without correction the error is large: the test can tell
    assert np.abs(recorded - expected)[:, inner].max() > 0.06 * np.abs(expected).max()


def test_a_channel_moved_off_the_probe_fades_to_zero():
    pos = two_column_probe(n_rows=10)
    m = interpolation_matrix(positions_um=pos, shift_um=120.0)
    top = pos[:, 1] >= pos[:, 1].max() - 20  # targets 100+ µm beyond the last contact
    assert np.abs(m[top]).max() < 0.05


def test_correction_does_not_depend_on_chunking():
    pos = two_column_probe(n_rows=12)
    fs = 1000.0
    t = np.arange(20) * 0.5 + 0.25
    motion = Motion(
        zigzag(t, amplitude_um=15.0, period_s=6.0)[:, None].astype(np.float32), t, np.array([100.0]), np.array([0])
    )
    x = np.random.default_rng(0).normal(size=(10_000, len(pos))).astype(np.float32)
    kriging = Kriging.build(positions_um=pos)
    kw = dict(
        sampling_rate_hz=fs, motion=motion, kriging=kriging, channel_shanks=np.zeros(len(pos), int), step_samples=125
    )
    whole = correct_block(x, start=0, **kw)
    parts = np.concatenate([correct_block(x[a:b], start=a, **kw) for a, b in ((0, 3333), (3333, 7001), (7001, 10_000))])
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)
    # and it did something: weights differ between steps
    assert np.abs(whole - x).max() > 0.1


def _step_motion() -> Motion:
    """A probe 15 µm down for the first 50 s and 15 µm up for the next 50 s (2 s bins)."""
    t_bins = np.arange(50) * 2.0 + 1.0
    step = np.where(t_bins < 50, -15.0, 15.0).astype(np.float32)
    return Motion(step[:, None], t_bins, np.array([100.0]), np.array([0]))


def test_units_split_by_a_step_of_the_probe_are_grouped():
    from spikesort.stages.merges import drift_split_groups

    rng = np.random.default_rng(0)
    motion = _step_motion()
    base = rng.normal(size=(20, 8))
    templates = np.stack(
        [
            base,
            base + 0.2 * rng.normal(size=base.shape),  # one neuron at two positions
            base + 0.2 * rng.normal(size=base.shape),  # a look-alike that fires all along
            rng.normal(size=base.shape),
        ]
    )  # and a different unit
    spans = {0: (0, 48), 1: (52, 100), 2: (0, 100), 3: (52, 100)}
    times = np.concatenate([rng.uniform(*spans[u], 300) for u in range(4)])
    units = np.repeat(np.arange(4), 300)
    kw = dict(
        spike_times_s=times,
        spike_units=units,
        templates=templates,
        main_channels=np.zeros(4, int),
        positions_um=np.array([[0.0, 100.0]] * 8),
        channel_shanks=np.zeros(8, int),
        motion=motion,
    )
    assert drift_split_groups(**kw) == [[(0, 0), (1, 0)], [(2, 0)], [(3, 0)]]
    # a still probe explains nothing
    still = Motion(np.zeros((50, 1), np.float32), motion.time_bins_s, np.array([100.0]), np.array([0]))
    assert drift_split_groups(**{**kw, "motion": still}) == [[(u, 0)] for u in range(4)]


def test_two_neurons_on_one_spot_each_cut_by_the_step_stay_two():
    # two neurons of one shape at two sizes on one spot (shanks4 seed 95: 588 and 306 µV at the end
    # of a shank), each cut in two by the same step of the probe. A group of one neuron's two
    # units covers both positions; a unit of the other neuron shares one of them with a member,
    # so it is not that neuron's missing position, however the pooled positions compare
    from spikesort.stages.merges import drift_split_groups

    rng = np.random.default_rng(4)
    motion = _step_motion()
    base = rng.normal(size=(20, 8))
    noise = [0.1 * rng.normal(size=base.shape) for _ in range(4)]
    # A at full size, B at half: alike in shape, A's two units the most alike
    templates = np.stack([base + noise[0], base + 0.5 * noise[1], 0.5 * base + noise[2], 0.5 * base + noise[3]])
    spans = {0: (0, 48), 1: (52, 100), 2: (0, 48), 3: (52, 100)}
    counts = {0: 400, 1: 400, 2: 300, 3: 100}
    times = np.concatenate([rng.uniform(*spans[u], counts[u]) for u in range(4)])
    kw = dict(
        spike_times_s=times,
        spike_units=np.repeat(np.arange(4), [counts[u] for u in range(4)]),
        templates=templates,
        main_channels=np.zeros(4, int),
        positions_um=np.array([[0.0, 100.0]] * 8),
        channel_shanks=np.zeros(8, int),
        motion=motion,
    )
    assert drift_split_groups(**kw) == [[(0, 0), (1, 0)], [(2, 0), (3, 0)]]


def test_a_piece_aligned_a_few_samples_off_joins_its_neuron_aligned_on_it():
    # where the waveform changes with the probe's position, the piece split off by a step can be
    # aligned a few samples from its neuron (MEArec's moving Neuropixels-64: 5 samples): compared
    # at zero lag the two look like different neurons
    from spikesort.stages.merges import drift_split_groups

    rng = np.random.default_rng(3)
    motion = _step_motion()
    nt = 40
    wave = np.exp(-0.5 * ((np.arange(nt) - 15) / 1.5) ** 2) - 0.4 * np.exp(-0.5 * ((np.arange(nt) - 21) / 3.0) ** 2)
    footprint = rng.uniform(0.3, 1.0, 8)
    unit = wave[:, None] * footprint
    piece = np.roll(unit, 5, axis=0) + 0.03 * rng.normal(size=unit.shape)  # its trough 5 samples later
    other = np.roll(unit, 2, axis=0) * rng.uniform(0.3, 1.0, 8)  # a neighbour firing all along
    templates = np.stack([unit, piece, other])
    spans = {0: (0, 48), 1: (52, 100), 2: (0, 100)}
    times = np.concatenate([rng.uniform(*spans[u], 300) for u in range(3)])
    kw = dict(
        spike_times_s=times,
        spike_units=np.repeat(np.arange(3), 300),
        templates=templates,
        main_channels=np.zeros(3, int),
        positions_um=np.array([[0.0, 100.0]] * 8),
        channel_shanks=np.zeros(8, int),
        motion=motion,
    )
    flat = templates.reshape(3, -1)
    assert flat[0] @ flat[1] / np.linalg.norm(flat[0]) / np.linalg.norm(flat[1]) < 0.8
    assert drift_split_groups(**kw) == [[(0, 0)], [(1, 0)], [(2, 0)]]
    # the piece's trough is 5 samples later in its window, so its spikes are timed 5 samples
    # earlier than the unit's would be: they move 5 samples later
    assert drift_split_groups(**kw, max_lag=6) == [[(0, 0), (1, 5)], [(2, 0)]]


def _bump_motion():
    """0 µm, then -15 µm, a short +15 µm stretch, -15 µm, 0 again (2 s bins over 300 s)."""
    t_bins = np.arange(150) * 2.0 + 1.0
    disp = np.select([t_bins < 60, t_bins < 170, t_bins < 200, t_bins < 260], [0.0, -15.0, 15.0, -15.0], 0.0)
    return t_bins, disp, Motion(disp.astype(np.float32)[:, None], t_bins, np.array([100.0]), np.array([0]))


def test_neuron_seen_at_three_positions_is_one_unit():
    # a bump: 0 µm, then -15 µm, a short +15 µm stretch, -15 µm, 0 again. One neuron comes out as
    # three units, one per position; any two of them miss the third position, so a pairwise
    # occupancy test never joins them (the bump64 benchmark scenario had 20 such pieces)
    from spikesort.stages.merges import drift_split_groups

    rng = np.random.default_rng(1)
    t_bins, disp, motion = _bump_motion()
    base = rng.normal(size=(20, 8))
    templates = np.stack(
        [base + 0.2 * rng.normal(size=base.shape) for _ in range(3)] + [base + 0.2 * rng.normal(size=base.shape)]
    )  # the last: a look-alike firing all along
    times_all = np.sort(rng.uniform(0, 300, 3000))
    d = np.interp(times_all, t_bins, disp)
    piece = np.select([d < -7, d > 7], [1, 2], 0)
    times = np.concatenate([times_all, rng.uniform(0, 300, 1500)])
    units = np.concatenate([piece, np.full(1500, 3)])
    kw = dict(
        spike_times_s=times,
        spike_units=units,
        templates=templates,
        main_channels=np.zeros(4, int),
        positions_um=np.array([[0.0, 100.0]] * 8),
        channel_shanks=np.zeros(8, int),
        motion=motion,
    )
    assert drift_split_groups(**kw) == [[(0, 0), (1, 0), (2, 0)], [(3, 0)]]


def test_piece_first_grouped_with_a_look_alike_finds_its_own_neuron():
    # neuron A is two units: A0 at 0 and -15 µm, A1 during the short +15 µm stretch. B fires all
    # along and looks even more like A1 than A0 does, so A1 and B are joined first; that group
    # fails the occupancy test (B alone fires everywhere), and A1 must then be free to join A0
    from spikesort.stages.merges import drift_split_groups

    rng = np.random.default_rng(2)
    t_bins, disp, motion = _bump_motion()
    base = rng.normal(size=(20, 8))
    a1 = base + 0.1 * rng.normal(size=base.shape)
    templates = np.stack([base + 0.5 * rng.normal(size=base.shape), a1, a1 + 0.05 * rng.normal(size=base.shape)])
    times_a = np.sort(rng.uniform(0, 300, 3000))
    piece = (np.interp(times_a, t_bins, disp) > 7).astype(int)
    times = np.concatenate([times_a, rng.uniform(0, 300, 1500)])
    units = np.concatenate([piece, np.full(1500, 2)])
    kw = dict(
        spike_times_s=times,
        spike_units=units,
        templates=templates,
        main_channels=np.zeros(3, int),
        positions_um=np.array([[0.0, 100.0]] * 8),
        channel_shanks=np.zeros(8, int),
        motion=motion,
    )
    assert drift_split_groups(**kw) == [[(0, 0), (1, 0)], [(2, 0)]]


# ------------------------------------------------------------------------------------------
# which shanks, which mode


def line(n, pitch, x=0.0):
    return np.column_stack([np.full(n, x), np.arange(n) * pitch])


def test_plan_modes():
    kw = dict(min_span_um=150.0, nonrigid_span_um=1000.0)
    tetrode = np.array([[0, 0], [20, 0], [0, 20], [20, 20]], float)
    plan = plan_drift(mode="auto", positions_um=tetrode, **kw)
    assert not plan.shanks and "only 4 usable channels" in plan.skipped[0]
    # 8 contacts on 10 µm: enough channels, too short
    plan = plan_drift(mode="rigid", positions_um=line(8, 10.0), **kw)
    assert not plan.shanks and "span only 70 µm" in plan.skipped[0]
    assert plan_drift(mode="auto", positions_um=line(64, 10.0), **kw).shanks[0].mode == "rigid"
    assert plan_drift(mode="auto", positions_um=line(384, 10.0), **kw).shanks[0].mode == "nonrigid"
    assert plan_drift(mode="nonrigid", positions_um=line(64, 10.0), **kw).shanks[0].mode == "nonrigid"
    assert plan_drift(mode="rigid", positions_um=line(384, 10.0), **kw).shanks[0].mode == "rigid"
    plan = plan_drift(mode="none", positions_um=line(64, 10.0), **kw)
    assert not plan.shanks and "off" in plan.skipped[0]
    # bad channels do not count
    good = np.ones(64, bool)
    good[8:] = False
    assert not plan_drift(mode="auto", positions_um=line(64, 10.0), good_channels=good, **kw).shanks


def test_plan_per_shank():
    pos = np.concatenate([line(32, 20.0, x=0.0), line(4, 20.0, x=250.0)])
    shanks = np.r_[np.zeros(32, int), np.ones(4, int)]
    plan = plan_drift(mode="auto", positions_um=pos, shank_ids=shanks, min_span_um=150.0, nonrigid_span_um=1000.0)
    assert [g.shank for g in plan.shanks] == [0] and plan.shanks[0].depth_max_um == 620.0
    assert list(plan.skipped) == [1]
    m = interpolation_matrix(positions_um=pos, shank_ids=shanks, shift_um=np.r_[np.full(32, 10.0), np.zeros(4)])
    assert np.all(m[:32, 32:] == 0) and np.all(m[32:, :32] == 0)  # never across shanks
    np.testing.assert_allclose(m[32:, 32:], interpolation_matrix(positions_um=pos[32:], shift_um=0.0), atol=1e-6)


def test_spikes_peaking_on_a_shank_end_row_are_left_out_of_estimation():
    from types import SimpleNamespace

    from spikesort.stages.drift.stage import motion_peaks, on_end_row

    # two shanks of 2 columns x 6 rows; on shank 1 the top row is dead, so the row below is its end
    col = np.array([[x, y] for y in range(0, 90, 15) for x in (0.0, 32.0)])
    pos = np.concatenate([col, col + [250.0, 0.0]])
    shanks = np.repeat([0, 1], 12)
    good = np.ones(24, bool)
    good[[22, 23]] = False
    channels = np.arange(24)
    end = on_end_row(channels, positions_um=pos, shank_ids=shanks, good_channels=good)
    assert np.flatnonzero(end).tolist() == [0, 1, 10, 11, 12, 13, 20, 21, 22, 23]
    assert on_end_row(channels, positions_um=pos, shank_ids=shanks)[[20, 21]].tolist() == [False, False]
    # the estimation pass keeps only the spikes of the inner rows, each with its own time and shank
    neighbors = np.arange(24)[None, :].repeat(24, axis=0)
    spikes = SimpleNamespace(
        times=np.arange(24) * 100,
        channels=channels,
        amplitudes=np.full(24, 8.0, np.float32),
        features=np.ones((24, 24, 3), np.float32),
    )
    peaks = motion_peaks(
        spikes,
        sampling_rate_hz=1000.0,
        positions_um=pos,
        shank_ids=shanks,
        feature_neighbors=neighbors,
        good_channels=good,
    )
    inner = np.flatnonzero(~end)
    np.testing.assert_allclose(peaks.times_s, inner * 0.1)
    assert peaks.shanks.tolist() == shanks[inner].tolist() and len(peaks.depths_um) == len(inner)


def test_drift_parameters():
    p = Params()
    assert p.drift == "auto" and p.drift_bin_s == 2.0
    assert Params(drift="nonrigid").drift == "nonrigid"
    with pytest.raises(SpikesortError, match="drift"):
        Params(drift="sideways")
    with pytest.raises(SpikesortError, match="drift_bin_s"):
        Params(drift_bin_s=0.0)
    assert "drift_block_um" in p.to_toml()


def test_cli_has_drift_flags():
    from click.testing import CliRunner

    from spikesort import cli

    result = CliRunner().invoke(cli.main, ["run", "--help"])
    assert result.exit_code == 0
    assert "--drift [auto|rigid|nonrigid|none]" in result.output
    assert "--drift-bin-s" in result.output


# ------------------------------------------------------------------------------------------
# drift map


def test_draw_drift_map(tmp_path):
    t = np.linspace(0, 100, 5000)
    raw = 300 + zigzag(t, amplitude_um=20, period_s=50)
    m = Motion(
        zigzag(np.arange(50) * 2 + 1.0, amplitude_um=20, period_s=50)[:, None].astype(np.float32),
        np.arange(50) * 2 + 1.0,
        np.array([300.0]),
        np.array([0]),
    )
    path = draw_drift_map(
        tmp_path / "map.png",
        times_s=t,
        raw_um=raw,
        corrected_um=raw * 0 + 300,
        amplitudes=np.full(len(t), 10.0),
        motion=m,
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# ------------------------------------------------------------------------------------------
# the pipeline stage, end to end


FS = 30000.0


def _generated(folder, *, probe, duration_s, num_units, drift_um, period_s, seed=0, drifting=True, t_start_s=0.0):
    """A drifting recording (or its static twin) saved as int16 with a gain, its sorting and the
    true displacement (times s, µm)."""
    from spikeinterface.generation import generate_drifting_recording
    from spikeinterface.preprocessing import scale

    from spikesort.io.recordings import open_recording

    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    kw = dict(
        displacement_sampling_frequency=5.0,
        drift_start_um=[0.0, drift_um],
        drift_stop_um=[0.0, -drift_um],
        drift_step_um=1.0,
        motion_list=[
            dict(
                drift_mode="zigzag",
                non_rigid_gradient=None,
                t_start_drift=t_start_s,
                t_end_drift=None,
                period_s=period_s,
            )
        ],
    )
    static, moving, gt, extra = generate_drifting_recording(
        num_units=num_units,
        duration=duration_s,
        probe=probe,
        generate_displacement_vector_kwargs=kw,
        seed=seed,
        extra_outputs=True,
    )
    rec = scale(moving if drifting else static, gain=1 / 0.195, offset=0.0, dtype="int16")
    rec.set_channel_gains(0.195)
    rec.set_channel_offsets(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec.save(folder=folder, format="binary", n_jobs=1, chunk_duration="1s", progress_bar=False)
    disp = extra["unit_displacements"][:, 0, 1]
    return open_recording(folder), gt, np.arange(len(disp)) / extra["displacement_sampling_frequency"], disp


@pytest.fixture(scope="module")
def drifting16(tmp_path_factory):
    """16 contacts in one column 25 µm apart (375 µm), 8 units, 30 s, zigzag ±15 µm (period 30 s)."""
    from probeinterface import generate_linear_probe

    from spikesort.pipeline import sort

    base = tmp_path_factory.mktemp("drift16")
    probe = generate_linear_probe(num_elec=16, ypitch=25.0)
    rec, gt, t, disp = _generated(base / "rec", probe=probe, duration_s=30.0, num_units=8, drift_um=15.0, period_s=30.0)
    t0 = time.perf_counter()
    result = sort(rec, base / "out")
    return dict(folder=base / "out", result=result, wall=time.perf_counter() - t0, t=t, disp=disp, gt=gt)


def test_pipeline_writes_an_accurate_motion(drifting16):
    folder = drifting16["folder"]
    assert all((folder / name).is_file() for name in MOTION_FILES)
    assert (folder / "drift_map.png").is_file()
    motion = Motion.load(folder)
    assert motion.displacement_um.shape == (15, 1)  # 30 s in 2 s bins, rigid (375 µm < 1000 µm)
    est = motion.at(times_s=drifting16["t"], depths_um=np.full(len(drifting16["t"]), 180.0))
    err = centred_rms(est, drifting16["disp"])
    # the true motion has an RMS of 8.7 µm; measured errors 2.0, 0.7, 0.8 µm on seeds 0, 1, 2
    assert err < 3.0, err
    assert drifting16["result"].timings_s["drift"] < 30.0, drifting16["result"].timings_s
    record = read_drift_record(folder)
    assert record["corrected"] is True and record["shanks"] == {"0": "rigid"}, record
    assert record["spread_um"] > 20.0  # the ±15 µm zigzag spans 30 µm


def test_tetrode_skips_drift_with_its_reason(tmp_path, caplog):
    from probeinterface import generate_tetrode
    from spikeinterface.generation import generate_ground_truth_recording

    from spikesort.pipeline import sort

    probe = generate_tetrode()
    probe.set_device_channel_indices(np.arange(4))
    rec, _ = generate_ground_truth_recording(durations=[6.0], sampling_frequency=FS, probe=probe, num_units=3, seed=0)
    with caplog.at_level(logging.INFO, logger="spikesort"):
        sort(rec, tmp_path / "out")
    assert "drift not corrected: only 4 usable channels" in caplog.text
    assert not any((tmp_path / "out" / name).exists() for name in MOTION_FILES)
    record = read_drift_record(tmp_path / "out")
    assert record["corrected"] is False and "only 4 usable channels" in record["reason"]
    assert not (tmp_path / "out" / "drift_map.png").exists()


def test_drift_none_writes_no_motion(tmp_path, caplog):
    from spikeinterface.generation import generate_ground_truth_recording

    from spikesort.pipeline import sort

    rec, _ = generate_ground_truth_recording(
        durations=[6.0],
        sampling_frequency=FS,
        num_channels=16,
        num_units=4,
        seed=0,
        generate_probe_kwargs=dict(num_columns=1, ypitch=25.0),
    )
    with caplog.at_level(logging.INFO, logger="spikesort"):
        result = sort(rec, tmp_path / "out", drift="none")
    assert "drift correction is off" in caplog.text
    assert not any((tmp_path / "out" / name).exists() for name in MOTION_FILES)
    assert read_drift_record(tmp_path / "out")["corrected"] is False
    assert result.timings_s["drift"] < 1.0


# ------------------------------------------------------------------------------------------
# the benchmark's motion-error column


@pytest.fixture
def bench():
    """The benchmark package's scenario and scoring helpers under one name."""
    from types import SimpleNamespace

    from benchmarks.scenarios import Scenario, build_probe, ensure_true_displacement
    from benchmarks.scoring import motion_error_um, score_sorting

    return SimpleNamespace(
        Scenario=Scenario,
        build_probe=build_probe,
        ensure_true_displacement=ensure_true_displacement,
        motion_error_um=motion_error_um,
        score_sorting=score_sorting,
    )


def test_benchmark_true_displacement(bench, tmp_path):
    static = bench.Scenario("s", "multi32", 3, 70.0, "none", "")
    assert bench.ensure_true_displacement(folder=tmp_path, scenario=static, seed=0) is None
    # the benchmark's zigzag starts at 60 s: 10 s of it here
    zigzag = bench.Scenario("z", "multi32", 3, 70.0, "zigzag", "")
    path = bench.ensure_true_displacement(folder=tmp_path, scenario=zigzag, seed=0)
    with np.load(path) as truth:
        times, disp = truth["times_s"], truth["displacement_um"]
        assert disp.shape == (len(times), 3) and truth["unit_depth_um"].shape == (3,)
    assert np.all(disp[times < 60] == 0) and disp[-1].min() > 2.0  # rising towards +20 µm at 0.4 µm/s
    stamp = path.stat().st_mtime_ns
    assert bench.ensure_true_displacement(folder=tmp_path, scenario=zigzag, seed=0) == path
    assert path.stat().st_mtime_ns == stamp  # written once


def test_benchmark_motion_error(bench, tmp_path):
    times = np.arange(0, 100, 0.2)
    true = zigzag(times, amplitude_um=20.0, period_s=40.0)
    np.savez(
        tmp_path / "truth.npz",
        times_s=times,
        displacement_um=np.column_stack([true, true]),
        unit_depth_um=np.array([100.0, 400.0]),
    )
    bins = np.arange(50) * 2.0 + 1.0
    est = zigzag(bins, amplitude_um=20.0, period_s=40.0) + 7.0  # another reference: an offset
    assert bench.motion_error_um(motion_folder=tmp_path, truth_path=tmp_path / "truth.npz") is None
    Motion(est[:, None].astype(np.float32), bins, np.array([250.0]), np.array([0])).save(tmp_path)
    # only the 2 s sampling of the estimate differs from the truth
    assert bench.motion_error_um(motion_folder=tmp_path, truth_path=tmp_path / "truth.npz") < 0.5
    # the opposite sign convention would show as a large error
    Motion((-est)[:, None].astype(np.float32), bins, np.array([250.0]), np.array([0])).save(tmp_path)
    assert bench.motion_error_um(motion_folder=tmp_path, truth_path=tmp_path / "truth.npz") > 20.0


def test_static_recording_is_estimated_and_left_alone(tmp_path, caplog):
    from spikeinterface.generation import generate_ground_truth_recording

    from spikesort.pipeline import sort

    rec, _ = generate_ground_truth_recording(
        durations=[10.0],
        sampling_frequency=FS,
        num_channels=16,
        num_units=8,
        seed=1,
        generate_probe_kwargs=dict(num_columns=1, ypitch=25.0),
    )
    with caplog.at_level(logging.INFO, logger="spikesort"):
        sort(rec, tmp_path / "out")
    record = read_drift_record(tmp_path / "out")
    assert record["shanks"] == {"0": "rigid"} and record["corrected"] is False, record
    assert record["spread_um"] < Params().drift_min_um and "spans only" in record["reason"]
    # motion files mean corrected traces: none here
    assert not any((tmp_path / "out" / name).exists() for name in MOTION_FILES)


@pytest.mark.slow
def test_drifting_64_channels_sort_nearly_as_well_as_static(tmp_path, bench):
    """NP1-like 64 channels, 30 units, 120 s, zigzag ±20 µm (period 100 s, from 10 s): the static
    twin (same spikes and noise) and the drifting one, both sorted with the defaults.
    Measured: static 24/30 well detected, drifting 23/30 (6/30 with drift = none), motion error
    0.6 µm."""
    from spikesort.pipeline import sort

    probe = bench.build_probe(kind="np1_64")
    kw = dict(probe=probe, duration_s=120.0, num_units=30, drift_um=20.0, period_s=100.0, seed=0)
    static, gt, _, _ = _generated(tmp_path / "static", drifting=False, t_start_s=10.0, **kw)
    moving, _, t, disp = _generated(tmp_path / "moving", t_start_s=10.0, **kw)
    well_static = bench.score_sorting(gt=gt, tested=sort(static, tmp_path / "s").to_spikeinterface())["well_detected"]
    well_moving = bench.score_sorting(gt=gt, tested=sort(moving, tmp_path / "m").to_spikeinterface())["well_detected"]
    motion = Motion.load(tmp_path / "m")
    err = centred_rms(motion.at(times_s=t, depths_um=np.full(len(t), 300.0)), disp)
    assert err < 2.0, err
    assert well_moving >= well_static - 2, (well_static, well_moving)


def test_spike_positions_fitted_in_blocks_equal_one_fit(monkeypatch):
    import spikesort.stages.drift.stage as stage

    rng = np.random.default_rng(0)
    positions = np.stack([np.tile([0.0, 32.0], 16), np.repeat(np.arange(16) * 20.0, 2)], axis=1)
    neighbors = np.array([np.argsort(np.linalg.norm(positions - p, axis=1))[:8] for p in positions])
    channels = rng.integers(0, len(positions), size=1000)
    # a Gaussian footprint around a point near each spike's peak channel, in 3 temporal components
    centre = positions[channels] + rng.normal(0, 8, size=(1000, 2))
    d = np.linalg.norm(positions[neighbors[channels]] - centre[:, None, :], axis=2)
    features = (np.exp(-0.5 * (d / 25.0) ** 2)[:, :, None] * rng.normal(1, 0.1, size=(1000, 1, 3))).astype(np.float32)
    whole = stage.localize_fit(features, channels, neighbors=neighbors, positions_um=positions)
    monkeypatch.setattr(stage, "LOCALIZE_BLOCK", 64)
    blocks = stage.localize_fit(features, channels, neighbors=neighbors, positions_um=positions)
    np.testing.assert_array_equal(blocks, whole)
    # and the fit places the spikes: depth within a few µm of the true centre
    assert np.median(np.abs(whole[:, 1] - centre[:, 1])) < 5.0


def test_a_neuron_seen_all_along_does_not_join_another_neurons_drift_pieces():
    # mearec_np64_drift seed 2: at the probe's end a neuron seen all along (seen less where the
    # probe was up) looked like the two pieces another neuron was split into by the drift, and
    # the three joined; its spikes shared the refractory period with each piece at twice chance
    # (some of its fits land on the pieces' spikes at a lag), which one neuron never does
    from spikesort.stages.merges import drift_split_groups

    rng = np.random.default_rng(1)
    motion = _step_motion()
    base = rng.normal(size=(20, 8))
    templates = np.stack([base + 0.3 * rng.normal(size=base.shape), base + 0.2 * rng.normal(size=base.shape), base])
    before, after = rng.uniform(0, 48, 600), rng.uniform(52, 100, 600)  # one neuron's two pieces
    locked = np.r_[before[:30], after[:30]] + rng.uniform(0.0008, 0.0014, 60)
    other = np.r_[rng.uniform(0, 48, 600), rng.uniform(52, 100, 200), locked]  # seen less after the step
    trains = [before, after, other]
    kw = dict(
        spike_times_s=np.concatenate(trains),
        spike_units=np.repeat(np.arange(3), [len(t) for t in trains]),
        templates=templates,
        main_channels=np.zeros(3, int),
        positions_um=np.array([[0.0, 100.0]] * 8),
        channel_shanks=np.zeros(8, int),
        motion=motion,
    )
    # it fires where each piece fires, as no piece of theirs would: the positions keep it apart,
    # and so do the trains
    assert drift_split_groups(**kw) == [[(0, 0), (1, 0)], [(2, 0)]]
    assert drift_split_groups(**kw, sampling_rate_hz=30000.0) == [[(0, 0), (1, 0)], [(2, 0)]]
