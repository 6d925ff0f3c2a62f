import numpy as np


def test_keyed_subset_is_a_fixed_uniform_choice_that_survives_small_changes():
    from spikesort.stages.sampling import keyed_subset

    rng = np.random.default_rng(0)
    t = np.sort(rng.choice(10_000_000, 5000, replace=False))
    a = keyed_subset(t, 300, seed=1)
    assert len(a) == 300 and np.all(np.diff(a) > 0) and np.isin(a, t).all()
    # the order the spikes come in does not matter; the seed does
    np.testing.assert_array_equal(a, keyed_subset(rng.permutation(t), 300, seed=1))
    assert len(np.intersect1d(a, keyed_subset(t, 300, seed=2))) < 60
    # a unit that gains 5 % more spikes keeps most of its chosen ones
    more = np.union1d(t, rng.choice(10_000_000, 250, replace=False))
    assert len(np.intersect1d(a, keyed_subset(more, 300, seed=1))) >= 270
    # uniform over the recording: as many from each half
    assert abs(np.mean(a < np.median(t)) - 0.5) < 0.1
    np.testing.assert_array_equal(keyed_subset(t[:100], 300, seed=1), t[:100])


def test_a_units_template_does_not_change_when_another_unit_does(tmp_path):
    """Each unit's spikes are drawn from its own spikes: another cluster's split or growth (a
    label earlier in the order, more spikes) leaves this unit's template exactly as it was."""
    from spikesort.pipeline.traces import TraceStore
    from spikesort.stages.templates import build_templates

    rng = np.random.default_rng(5)
    n, n_ch, pre, nt = 400_000, 4, 20, 50
    x = rng.standard_normal((n, n_ch)).astype(np.float32)
    store = TraceStore(tmp_path / "s.dat", n_samples=n, n_channels=n_ch)
    store.create()
    store.write(0, x)
    a = np.sort(rng.choice(np.arange(100, n - 100), 900, replace=False))
    b = np.setdiff1d(np.arange(100, n - 100, 97), a)
    times = np.concatenate([b, a])
    labels = np.concatenate([np.zeros(len(b), np.int64), np.ones(len(a), np.int64)])
    kw = dict(n_units=2, pre=pre, nt=nt, seed=0, max_spikes=300)
    before = build_templates(store, times, labels, **kw).dense
    # unit 0 loses a third of its spikes to a new unit 2, and unit 1 stays as it was
    labels2 = labels.copy()
    labels2[: len(b) // 3] = 2
    after = build_templates(store, times, labels2, **{**kw, "n_units": 3}).dense
    np.testing.assert_array_equal(before[1], after[1])
    assert not np.array_equal(before[0], after[0])


def test_templates_from_the_memo_are_the_ones_built_anew(tmp_path):
    """A unit whose chosen spikes did not change since the last call is taken from the memo, not
    read again; a unit that changed, or a new one, is read. Either way the templates are those a
    call without the memo builds."""
    from spikesort.pipeline.traces import TraceStore
    from spikesort.stages.sampling import keyed_subset
    from spikesort.stages.templates import build_templates

    rng = np.random.default_rng(6)
    n, n_ch, pre, nt = 300_000, 4, 20, 50
    store = TraceStore(tmp_path / "s.dat", n_samples=n, n_channels=n_ch)
    store.create()
    store.write(0, rng.standard_normal((n, n_ch)).astype(np.float32))
    reads = []
    snippets = store.snippets

    def counted(times, **kw):
        reads.append(len(times))
        return snippets(times, **kw)

    store.snippets = counted
    times = np.sort(rng.choice(np.arange(100, n - 100), 2000, replace=False))
    labels = rng.integers(0, 4, len(times))
    kw = dict(pre=pre, nt=nt, seed=0, max_spikes=300)
    memo = {}
    first = build_templates(store, times, labels, n_units=4, memo=memo, **kw).dense
    assert len(reads) == 4 and len(memo) == 4
    # unit 1 absorbs unit 3 (ids 0-2 left), one of unit 0's chosen spikes is dropped: 0 and 1 change
    labels2 = np.where(labels == 3, 1, labels)
    keep = ~np.isin(times, keyed_subset(times[labels == 0], 300, seed=0)[:1])
    reads.clear()
    second = build_templates(store, times[keep], labels2[keep], n_units=3, memo=memo, **kw).dense
    assert len(reads) == 2  # unit 2 came from the memo
    np.testing.assert_array_equal(second, build_templates(store, times[keep], labels2[keep], n_units=3, **kw).dense)
    np.testing.assert_array_equal(second[2], first[2])
    assert len(memo) == 3  # the last call's templates only


def test_the_merge_veto_keeps_two_close_neighbours_apart_whichever_spikes_it_draws(tmp_path):
    """Two units 3.2 noise sds apart along the axis between them (a shallow valley): read from
    VETO_SPIKES spikes each, the veto keeps them apart for every seed; read from 300, one draw in
    twenty merged them."""
    from spikesort.pipeline.traces import TraceStore
    from spikesort.stages.merges.templates import snippet_merge_test

    rng = np.random.default_rng(1)
    n, n_ch, pre, nt = 1_000_000, 4, 10, 30
    x = rng.standard_normal((n, n_ch)).astype(np.float32)
    bump = np.exp(-0.5 * ((np.arange(nt) - pre) / 3.0) ** 2).astype(np.float32)
    ta = np.arange(200, n - 200, 331)[:1500]
    tb = ta + 160
    for t in ta:
        x[t - pre : t - pre + nt, 0] += 6 * bump
    for t in tb:
        x[t - pre : t - pre + nt, 0] += 6 * bump
        x[t - pre : t - pre + nt, 1] += 1.4 * bump  # the neighbour also reaches channel 1
    store = TraceStore(tmp_path / "s.dat", n_samples=n, n_channels=n_ch)
    store.create()
    store.write(0, x)
    times, labels = np.concatenate([ta, tb]), np.repeat([0, 1], len(ta))
    kw = dict(pre=pre, nt=nt, threshold=0.25)

    def merged(max_spikes=None):
        extra = {} if max_spikes is None else {"max_spikes": max_spikes}
        return [snippet_merge_test(store, times, labels, seed=s, **kw, **extra)(0, 1, 0) for s in range(20)]

    assert not any(merged())
    assert any(merged(300))


def test_the_scale_free_veto_joins_one_shape_at_two_sizes_and_parts_two_shapes(tmp_path):
    """A neuron's spikes at full size and at 0.55 of it (a burst's shrunken ones) form two modes
    along the line between their means, but one once each spike is divided by its size; a
    neighbour of another footprint stays apart either way."""
    from spikesort.pipeline.traces import TraceStore
    from spikesort.stages.merges.templates import snippet_merge_test

    rng = np.random.default_rng(2)
    n, n_ch, pre, nt = 1_000_000, 4, 10, 30
    x = rng.standard_normal((n, n_ch)).astype(np.float32)
    bump = np.exp(-0.5 * ((np.arange(nt) - pre) / 3.0) ** 2).astype(np.float32)
    footprint = np.array([1.0, 0.6, 0.3, 0.0], np.float32)
    other = np.array([1.0, 0.0, 0.3, 0.6], np.float32)
    ta = np.arange(200, n - 200, 331)[:1000]
    tb, tc = ta + 110, ta + 220
    for t in ta:
        x[t - pre : t - pre + nt] += 12 * bump[:, None] * footprint
    for t in tb:
        x[t - pre : t - pre + nt] += 6.6 * bump[:, None] * footprint
    for t in tc:
        x[t - pre : t - pre + nt] += 12 * bump[:, None] * other
    store = TraceStore(tmp_path / "s.dat", n_samples=n, n_channels=n_ch)
    store.create()
    store.write(0, x)
    times, labels = np.concatenate([ta, tb, tc]), np.repeat([0, 1, 2], len(ta))
    kw = dict(pre=pre, nt=nt, threshold=0.25, seed=0)
    sized = snippet_merge_test(store, times, labels, **kw)
    free = snippet_merge_test(store, times, labels, scale_free=True, **kw)
    assert not sized(0, 1, 0) and free(0, 1, 0)
    assert not sized(0, 2, 0) and not free(0, 2, 0)
