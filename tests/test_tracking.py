"""spikesort.track / `spikesort track` (issue 18): hand-made Phy folders with known shifts, probes
refused, links never doubled, and a small end-to-end run on synthetic chronic data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikesort.errors import SpikesortError
from spikesort.io.phy import PhyData, write_phy_folder
from spikesort.tracking import track
from spikesort.tracking.assign import Link, assign_pairs, build_tracks

FS = 30000.0
N_NEURONS = 14


def _probe(n_channels=48):
    from spikesort.tracking.synthetic import chronic_probe

    return chronic_probe(n_channels=n_channels).contact_positions[:, :2].astype(np.float64)


def _neurons(seed=3):
    rng = np.random.default_rng(seed)
    # distinct depths 40 µm apart, inside the probe (48 ch: 0-587 µm) with room for the shifts
    depth = 120.0 + 25.0 * np.arange(N_NEURONS) + rng.uniform(-5, 5, N_NEURONS)
    locs = np.column_stack([rng.uniform(-5, 27, N_NEURONS), depth, rng.uniform(15, 30, N_NEURONS)])
    from spikesort.tracking.synthetic import _neuron_params

    return locs, _neuron_params(rng, N_NEURONS)


def _templates_uv(chan, locs, params, present, shift_um):
    from spikeinterface.core.generate import generate_templates

    loc = locs[present].copy()
    loc[:, 1] += shift_um
    return generate_templates(
        chan, loc, FS, 1.0, 3.0, seed=0, unit_params={k: v[present] for k, v in params.items()}
    ).astype(np.float64)


def _spikes(rng, n_units, duration_s=60.0, rate=6.0):
    times, units = [], []
    for u in range(n_units):
        n = rng.poisson(rate * duration_s)
        times.append(np.sort(rng.uniform(0, duration_s * FS, n)).astype(np.int64))
        units.append(np.full(n, u))
    t, u = np.concatenate(times), np.concatenate(units)
    order = np.argsort(t, kind="stable")
    return t[order], u[order]


def write_spikesort_like(folder, chan, templates_uv, ids, rng):
    """A Phy folder written by spikesort's own writer; cluster ids ``ids``."""
    k, nt, c = templates_uv.shape
    t, u = _spikes(rng, k)
    wm = np.eye(c)
    n = t.size
    cids = np.unique(ids)
    m = cids.size
    write_phy_folder(
        folder,
        PhyData(
            spike_times=t,
            spike_templates=u,
            amplitudes=rng.normal(1, 0.05, n),
            templates=templates_uv.astype(np.float32),
            whitening_mat=wm,
            whitening_mat_inv=wm,
            channel_map=np.arange(c),
            channel_positions=chan,
            pc_features=rng.normal(size=(n, 3, 4)),
            pc_feature_ind=np.tile(np.arange(4), (k, 1)),
            template_features=np.ones((n, 2)),
            template_feature_ind=np.column_stack([np.arange(k), (np.arange(k) + 1) % k]),
            similar_templates=np.eye(k),
            spike_positions=np.zeros((n, 2)),
            cluster_tables=dict(KSLabel=["good"] * m, ContamPct=[0.0] * m, Amplitude=[1.0] * m),
            dat_path=None,
            n_channels_dat=c,
            dtype="int16",
            sample_rate=FS,
            spike_clusters=np.asarray(ids)[u],
            cluster_ids=cids,
        ),
    )


def write_kilosort_like(folder, chan, templates_uv, rng, *, noise_unit=None):
    """Kilosort 4's layout: no spike_clusters.npy, whitened templates (61 samples, trough at 20),
    amplitudes ~ 20, its own params.py; cluster ids = template ids."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    k, nt, c = templates_uv.shape
    # cut the 120-sample generator templates (trough at 30) to Kilosort's 61 samples, trough at 20
    tpl = templates_uv[:, 10:71]
    a = rng.normal(size=(c, c)) * 0.05 + np.eye(c)
    wmi = a @ a.T  # any invertible unwhitening
    t, u = _spikes(rng, k)
    amps = rng.normal(20.0, 1.0, t.size)
    whitened = (tpl / 20.0) @ np.linalg.inv(wmi)
    for name, arr in dict(
        spike_times=t.astype(np.uint64),
        spike_templates=u.astype(np.int32),
        amplitudes=amps.astype(np.float32),
        templates=whitened.astype(np.float32),
        whitening_mat_inv=wmi.astype(np.float32),
        channel_map=np.arange(c, dtype=np.int32),
        channel_positions=chan.astype(np.float32),
    ).items():
        np.save(folder / f"{name}.npy", arr)
    (folder / "params.py").write_text(
        f"dat_path = 'continuous.dat'\nn_channels_dat = {c}\ndtype = 'int16'\n"
        "offset = 0\nsample_rate = 30000.\nhp_filtered = False\n"
    )
    (folder / "cluster_KSLabel.tsv").write_text("cluster_id\tKSLabel\n" + "".join(f"{i}\tgood\n" for i in range(k)))
    if noise_unit is not None:
        (folder / "cluster_group.tsv").write_text(
            "cluster_id\tgroup\n" + "".join(f"{i}\t{'noise' if i == noise_unit else 'good'}\n" for i in range(k))
        )


# neurons present per session (indices into the population) and the probe's shift vs session 0
PRESENT = [list(range(0, 11)), list(range(0, 9)) + [11, 12], list(range(0, 7)) + [9, 11, 12, 13]]
SHIFTS = [0.0, 30.0, -40.0]


def _hand_made(tmp_path, kilosort_session=None, noise_unit=None):
    rng = np.random.default_rng(0)
    chan = _probe()
    locs, params = _neurons()
    folders, truth = [], []
    for s, (present, shift) in enumerate(zip(PRESENT, SHIFTS)):
        tpl = _templates_uv(chan, locs, params, np.array(present), shift)
        folder = tmp_path / f"day{s}"
        if s == kilosort_session:
            write_kilosort_like(folder, chan, tpl, rng, noise_unit=noise_unit)
            ids = list(range(len(present)))
        else:
            ids = list(rng.permutation(len(present)) * 3 + 5)  # cluster ids unrelated to the neurons
            write_spikesort_like(folder, chan, tpl, ids, rng)
        folders.append(str(folder))
        truth.append({int(i): n for i, n in zip(ids, present)})
    return folders, truth


def _tracks_by_neuron(result, folders, truth):
    groups = {}
    for r in result.rows:
        groups.setdefault(r.track_id, set()).add((folders.index(r.session), truth[folders.index(r.session)][r.unit_id]))
    return groups


def _expected_neuron_tracks(truth, skip=True):
    return {n: {(s, n) for s in range(len(truth)) if n in truth[s].values()} for n in range(N_NEURONS)}


@pytest.mark.parametrize("kilosort_session", [None, 1])
def test_hand_made_folders_give_exact_tracks_and_motion(tmp_path, kilosort_session):
    folders, truth = _hand_made(tmp_path, kilosort_session=kilosort_session)
    result = track(folders, tmp_path / "tracks")
    got = sorted(sorted(g) for g in _tracks_by_neuron(result, folders, truth).values())
    # a track holds one neuron; neuron 9 skips session 1 and is still one track
    want = sorted(sorted(g) for g in _expected_neuron_tracks(truth).values() if g)
    assert got == want
    for a, b in [(0, 1), (1, 2)]:
        assert abs(float(np.median(result.motion(a, b).shifts_um)) - (SHIFTS[b] - SHIFTS[a])) < 4.0
    with open(tmp_path / "tracks" / "tracks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["track_id", "session", "unit_id", "probability"]
    assert {r["session"] for r in rows} == set(folders)
    assert len(rows) == sum(len(t) for t in truth)
    assert (tmp_path / "tracks" / "tracks.png").stat().st_size > 1000
    assert (tmp_path / "tracks" / "motion.csv").read_text().startswith("session_a,session_b,depth_um,shift_um")


def test_kilosort_noise_units_are_left_out(tmp_path):
    folders, truth = _hand_made(tmp_path, kilosort_session=0, noise_unit=2)
    result = track(folders)
    assert not any(r.session == folders[0] and r.unit_id == 2 for r in result.rows)
    assert result.output is None and not (tmp_path / "tracks").exists()


def test_existing_tracks_need_overwrite(tmp_path):
    folders, _ = _hand_made(tmp_path)
    track(folders[:2], tmp_path / "t", figure=False)
    with pytest.raises(SpikesortError, match="--overwrite"):
        track(folders[:2], tmp_path / "t")
    track(folders[:2], tmp_path / "t", overwrite=True, figure=False)


def _other_probe_folder(tmp_path, folders):
    rng = np.random.default_rng(1)
    chan = _probe(16)
    locs, params = _neurons()
    folder = tmp_path / "other_probe"
    write_spikesort_like(folder, chan, _templates_uv(chan, locs, params, np.arange(3), 0.0), [0, 1, 2], rng)
    return str(folder)


def test_different_probes_are_refused_in_one_line_by_the_cli(tmp_path):
    from clitools import runner

    from spikesort.cli.app import main
    from spikesort.cli.track import track_command

    folders, _ = _hand_made(tmp_path)
    other = _other_probe_folder(tmp_path, folders)
    with pytest.raises(SpikesortError, match="not sorted on the same probe"):
        track([folders[0], other])
    assert main.commands["track"] is track_command
    grouped = runner().invoke(main, ["track", folders[0], other, "-o", str(tmp_path / "t2")])
    assert not (tmp_path / "t2").exists()  # refused before anything was written
    for res in (grouped,):
        assert res.exit_code == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spikesort: error: ")
        assert "not sorted on the same probe" in lines[0] and "channels" in lines[0]


def test_cli_writes_the_tracks(tmp_path):
    from clitools import runner

    from spikesort.cli.app import main

    folders, _ = _hand_made(tmp_path)
    res = runner().invoke(main, ["track", *folders, "-o", str(tmp_path / "t"), "-q"])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "t" / "tracks.csv").is_file() and (tmp_path / "t" / "spikesort.log").is_file()
    assert "tracked 3 sessions" in (tmp_path / "t" / "spikesort.log").read_text()
    assert "tracks over 3 sessions" in res.stdout
    # an earlier result is not replaced without --overwrite
    again = runner().invoke(main, ["track", *folders, "-o", str(tmp_path / "t")])
    assert again.exit_code == 2 and "--overwrite" in again.stderr


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_no_unit_twice_and_no_session_twice_in_a_track(data):
    n_units = data.draw(st.lists(st.integers(0, 6), min_size=2, max_size=6))
    links = []
    for a in range(len(n_units)):
        for b in range(a + 1, min(a + 4, len(n_units))):
            if n_units[a] and n_units[b]:
                prob = np.array(
                    data.draw(
                        st.lists(st.floats(0, 1), min_size=n_units[a] * n_units[b], max_size=n_units[a] * n_units[b])
                    )
                ).reshape(n_units[a], n_units[b])
                pairs = assign_pairs(prob, threshold=0.3)
                assert len({i for i, _, _ in pairs}) == len(pairs) == len({j for _, j, _ in pairs})
                links += [Link(a, i, b, j, p) for i, j, p in pairs]
    tracks = build_tracks(n_units, links)
    seen = [(s, u) for t in tracks for s, u, _ in t]
    assert sorted(seen) == sorted((s, u) for s, n in enumerate(n_units) for u in range(n))
    for t in tracks:
        sessions = [s for s, _, _ in t]
        assert sessions == sorted(set(sessions))


def test_end_to_end_sorted_synthetic_sessions(tmp_path):
    import spikesort
    from spikesort.tracking.synthetic import make_chronic_sessions, save_int16, score_links, sorted_to_neurons

    _, sessions = make_chronic_sessions(
        n_sessions=3, n_units=16, n_channels=32, duration_s=20.0, max_shift_um=60.0, seed=1
    )
    folders, truth = [], []
    for s in sessions:
        rec = save_int16(s.recording, tmp_path / f"rec{s.index}")
        out = tmp_path / f"day{s.index}"
        spikesort.sort(rec, out)
        folders.append(str(out))
        truth.append(sorted_to_neurons(s.gt_sorting, out))
    result = spikesort.track(folders, tmp_path / "tracks")
    score = score_links(result.rows, truth, folders)
    assert score["persisting_pairs"] >= 20
    assert score["linked_fraction"] >= 0.9
    assert score["false_fraction"] <= 0.05
    true_shift = sessions[1].rigid_um - sessions[0].rigid_um
    assert abs(float(np.median(result.motion(0).shifts_um)) - true_shift) < 5.0


def test_a_curated_cluster_of_two_templates_is_their_count_weighted_mean(tmp_path):
    from spikesort.tracking.units import read_session

    rng = np.random.default_rng(2)
    chan = _probe()
    locs, params = _neurons()
    tpl = _templates_uv(chan, locs, params, np.array([0, 1, 2]), 0.0)
    tpl[1] = tpl[0] * 0.5  # template 1: the same shape at half the size, merged into cluster 7 with template 0
    write_spikesort_like(tmp_path / "f", chan, tpl, [7, 7, 9], rng)
    s = read_session(tmp_path / "f")
    assert s.unit_ids.tolist() == [7, 9]
    st = np.load(tmp_path / "f" / "spike_templates.npy")
    amps = np.load(tmp_path / "f" / "amplitudes.npy")
    sel = st < 2
    want = (amps[sel & (st == 0)].sum() + 0.5 * amps[sel & (st == 1)].sum()) / sel.sum()
    got = np.ptp(s.waveforms[0], axis=0).max() / np.ptp(tpl[0], axis=0).max()
    assert got == pytest.approx(want, rel=1e-3)


def test_a_likely_link_is_not_traded_for_forced_unlikely_pairs():
    # every row of the smaller side gets a column: unclipped -log p made (1, 0) + the forced (0, 1) cheaper
    # than (0, 0) + the forced (1, 1), dropping the 0.95 link
    prob = np.array([[0.95, 1e-6], [0.9, 1e-9]])
    assert assign_pairs(prob, threshold=0.5) == [(0, 0, 0.95)]


# a long shank (128 ch, 1587 µm): the probe moves by a rigid part plus a depth gradient (vs session 0)
NR_NEURONS = 22
NR_PRESENT = [list(range(0, 20)), list(range(0, 18)) + [20, 21], list(range(2, 18)) + [0, 18, 20, 21]]
NR_MOTION = [(0.0, 0.0), (25.0, 0.06), (-45.0, -0.05)]  # (rigid µm, gradient µm/µm around the middle)


def _nr_displacement(y0, session):
    rigid, gradient = NR_MOTION[session]
    return rigid + gradient * (y0 - 793.5)


def test_nonrigid_motion_on_a_long_shank_gives_exact_tracks_and_motion_per_block(tmp_path):
    rng = np.random.default_rng(5)
    chan = _probe(128)
    depth = np.linspace(160.0, 1430.0, NR_NEURONS) + rng.uniform(-8, 8, NR_NEURONS)
    locs = np.column_stack([rng.uniform(-5, 27, NR_NEURONS), depth, rng.uniform(15, 30, NR_NEURONS)])
    from spikesort.tracking.synthetic import _neuron_params

    params = _neuron_params(rng, NR_NEURONS)
    folders, truth = [], []
    for s, present in enumerate(NR_PRESENT):
        present = np.array(sorted(present))
        moved = locs.copy()
        moved[:, 1] += _nr_displacement(locs[:, 1], s)
        tpl = _templates_uv(chan, moved, params, present, 0.0)
        ids = list(rng.permutation(present.size) + 1)
        write_spikesort_like(tmp_path / f"day{s}", chan, tpl, ids, rng)
        folders.append(str(tmp_path / f"day{s}"))
        truth.append({int(i): int(n) for i, n in zip(ids, present)})
    result = track(folders)
    groups = {}
    for r in result.rows:
        s = folders.index(r.session)
        groups.setdefault(r.track_id, set()).add((s, truth[s][r.unit_id]))
    want = [{(s, n) for s in range(3) if n in truth[s].values()} for n in range(NR_NEURONS)]
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, want))
    for a, b in [(0, 1), (1, 2)]:
        motion = result.motion(a, b)
        assert not motion.rigid and motion.depths_um.size >= 5
        y0 = np.sort(locs[:, 1])
        ya = y0 + _nr_displacement(y0, a)
        true = _nr_displacement(y0, b) - _nr_displacement(y0, a)  # B - A at A's depth ya
        inside = (motion.depths_um >= ya[0]) & (motion.depths_um <= ya[-1])
        err = np.abs(motion.shifts_um[inside] - np.interp(motion.depths_um[inside], ya, true))
        assert err.max() < 4.0, (a, b, motion, err)
