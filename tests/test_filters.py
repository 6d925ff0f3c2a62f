"""The filter design and the Poisson tails, each against the scipy function it stands in for."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
from scipy import signal
from scipy.stats import poisson as scipy_poisson

from spikesort.stages.filters import butter_sos, sos_steady_state
from spikesort.stages.merges import poisson

RATES = [10_000, 20_000, 24_000, 25_000, 30_000, 32_000, 40_000, 48_000]


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_butter_sos_is_scipys_bit_for_bit(order):
    for fs, hp, lp in itertools.product(RATES, [150.0, 300.0, 500.0], [0.0, 3000.0, 6000.0, 9000.0]):
        if lp and lp < 0.95 * fs / 2:
            want = signal.butter(order, [hp, lp], btype="bandpass", fs=fs, output="sos")
            got = butter_sos(order, (hp, lp), btype="bandpass", sampling_rate_hz=fs)
        else:
            want = signal.butter(order, hp, btype="highpass", fs=fs, output="sos")
            got = butter_sos(order, hp, btype="highpass", sampling_rate_hz=fs)
        assert got.shape == want.shape
        assert np.array_equal(got, want), (order, fs, hp, lp)
        assert np.array_equal(sos_steady_state(want), signal.sosfilt_zi(want)), (order, fs, hp, lp)


def test_steady_state_holds_a_step():
    sos = butter_sos(3, (300.0, 6000.0), btype="bandpass", sampling_rate_hz=30_000)
    y, _ = signal.sosfilt(sos, np.ones(50), zi=sos_steady_state(sos))
    assert np.allclose(y, y[0]) and abs(y[0]) < 1e-12  # a band-pass passes nothing of a constant


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(order=3, cutoff_hz=300.0, btype="lowpass"), "btype"),
        (dict(order=0, cutoff_hz=300.0, btype="highpass"), "order"),
        (dict(order=3, cutoff_hz=(300.0, 6000.0), btype="highpass"), "cut-off"),
        (dict(order=3, cutoff_hz=16_000.0, btype="highpass"), "Nyquist"),
        (dict(order=3, cutoff_hz=(300.0, 15_000.0), btype="bandpass"), "Nyquist"),
    ],
)
def test_butter_sos_bad_arguments(kwargs, message):
    order = kwargs.pop("order")
    with pytest.raises(ValueError, match=message):
        butter_sos(order, kwargs.pop("cutoff_hz"), sampling_rate_hz=30_000, **kwargs)


def test_poisson_tails_are_scipys():
    rng = np.random.default_rng(0)
    for mu in [0.0, 1e-9, 0.5, 1.0, 8.5, 10.0, *rng.uniform(0, 60, 300)]:
        for k in [-1, 0, 1, 2, 5, 10, 20, 40, 80]:
            assert poisson.cdf(k, mu) == float(scipy_poisson.cdf(k, mu)), (k, mu)
            assert poisson.sf(k, mu) == float(scipy_poisson.sf(k, mu)), (k, mu)
        for q in [1e-3, 1e-2, 0.05, 0.5]:
            assert poisson.isf(q, mu) == float(scipy_poisson.isf(q, mu)), (q, mu)
    with pytest.raises(ValueError, match="between 0 and 1"):
        poisson.isf(1.0, 3.0)


def test_sorting_does_not_import_scipy_signal_or_stats():
    # together 0.6-0.7 s of every run's start; the sorter needs neither
    code = (
        "import sys, spikesort.pipeline.run, spikesort.job, spikesort.io.phy, spikesort.outputs.render.pages;"
        "print(sorted(m for m in ('scipy.signal', 'scipy.stats') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
