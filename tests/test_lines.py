"""Mains hum: its lines found in the fit's blocks and fitted out of every chunk, whatever the probe."""

from __future__ import annotations

import numpy as np
import pytest

from spikesort.stages.lines import find_lines, line_power, remove_lines
from spikesort.stages.preprocess import design_filter, filter_and_reference, fit_preprocessing, preprocess_chunk

FS = 30000.0


def hum(n, *, f0, start=0, harmonics=10, amplitude_uv=150.0):
    """Mains hum with ``harmonics`` harmonics of ``f0``, the k-th at ``amplitude_uv / k``."""
    t = (np.arange(n) + start) / FS
    return sum(amplitude_uv / k * np.sin(2 * np.pi * k * f0 * t + k) for k in range(1, harmonics + 1))


def spectrum_of(blocks, *, reference="median"):
    sos = design_filter(sampling_rate_hz=FS, highpass_hz=300.0)
    return sum(line_power(filter_and_reference(b, sos=sos, reference=reference)) for b in blocks)


@pytest.mark.parametrize("f0", [50.0, 49.93, 60.0, 60.12])
def test_find_lines_gives_the_mains_harmonics_in_the_band(f0):
    rng = np.random.default_rng(0)
    gain = rng.uniform(0.7, 1.3, 8)
    blocks = [
        (rng.normal(0, 7, (30000, 8)) + hum(30000, f0=f0, start=i * 97_000)[:, None] * gain).astype(np.float32)
        for i in range(6)
    ]
    lines = find_lines(spectrum_of(blocks), n_samples=30000, sampling_rate_hz=FS)
    k = np.round(lines / f0)
    # the harmonics the 300 Hz high-pass leaves above the noise, at the true mains frequency
    assert set(k.astype(int)) >= set(range(4, 11)) and k.max() == 10
    assert np.all(np.abs(lines - k * f0) <= 0.02 * k), lines - k * f0


def test_find_lines_finds_nothing_in_noise_or_in_a_line_off_the_mains():
    rng = np.random.default_rng(1)
    noise = [rng.normal(0, 7, (30000, 8)).astype(np.float32) for _ in range(6)]
    assert len(find_lines(spectrum_of(noise), n_samples=30000, sampling_rate_hz=FS)) == 0
    # a stimulator's 1234 Hz line is no mains harmonic: left alone
    t = np.arange(30000) / FS
    tone = [b + (20 * np.sin(2 * np.pi * 1234.0 * t))[:, None].astype(np.float32) * np.arange(8) for b in noise]
    assert len(find_lines(spectrum_of(tone), n_samples=30000, sampling_rate_hz=FS)) == 0
    # hum too faint to matter (under 1 % of the power): left alone
    faint = [(b + hum(30000, f0=50.0, amplitude_uv=1.0)[:, None]).astype(np.float32) for b in noise]
    assert len(find_lines(spectrum_of(faint, reference="none"), n_samples=30000, sampling_rate_hz=FS)) == 0
    # too short to hold a spectrum
    assert len(find_lines(np.ones(10), n_samples=18, sampling_rate_hz=FS)) == 0


@pytest.mark.parametrize("error_hz", [0.0, 0.03, 0.1])
def test_remove_lines_takes_the_hum_and_leaves_a_spike(error_hz):
    """A mains frequency off the measured one (the grid drifts) is still fitted out: each fit
    spans a fifth of a second. A spike in the chunk keeps its shape (the fits take a few % of a
    large spike's peak with them: 32 columns over 6000 samples)."""
    sos = design_filter(sampling_rate_hz=FS, highpass_hz=300.0)
    n = 60600
    h = filter_and_reference(hum(n, f0=50.0 + error_hz)[:, None].astype(np.float32), sos=sos, reference="none")
    spike = np.zeros((n, 1), np.float32)
    spike[30000:30030, 0] = -80.0 * np.hanning(30)
    x = h + spike
    cycles = np.arange(3, 11) * 50.0 / FS
    out = remove_lines(x.copy(), cycles=cycles)
    inner = slice(1000, n - 1000)
    assert np.abs(out - spike)[inner].std() < 0.05 * h[inner].std()
    np.testing.assert_allclose(out[30000:30030, 0], spike[30000:30030, 0], atol=0.05 * 80)
    # no lines, or a chunk too short to fit them: unchanged
    np.testing.assert_array_equal(remove_lines(x.copy(), cycles=np.zeros(0)), x)
    np.testing.assert_array_equal(remove_lines(x[:100].copy(), cycles=cycles), x[:100])


def fit(blocks, *, positions, reference="auto"):
    return fit_preprocessing(
        blocks,
        sampling_rate_hz=FS,
        positions_um=positions,
        highpass_hz=300.0,
        lowpass_hz=0.0,
        reference=reference,
        whitening_radius_um=100.0,
        detect_bad_channels=True,
    )


@pytest.mark.parametrize(
    "positions, by",
    [
        # a long probe: the reference at each channel's gain takes the hum (no lines left)
        (np.c_[np.zeros(16), 50.0 * np.arange(16)], "gains"),
        # a compact one (a spike reaches 11 of 16 channels): the reference carries spikes, lines
        (np.c_[np.zeros(16), 10.0 * np.arange(16)], "lines"),
        # a tetrode has no reference at all: lines
        (np.array([[-8.0, -8.0], [-8.0, 8.0], [8.0, -8.0], [8.0, 8.0]]), "lines"),
    ],
    ids=["linear16_50um", "linear16_10um", "tetrode"],
)
def test_mains_hum_is_taken_out_on_every_probe(positions, by):
    """Hum the channels see at different sizes leaves the preprocessed traces at the noise floor,
    and the noise the SNRs are measured against is the noise without it; noise alone gives no lines."""
    rng = np.random.default_rng(2)
    n_ch = len(positions)
    gain = rng.uniform(0.7, 1.3, n_ch)
    noise = [rng.normal(0, 10, (30000, n_ch)).astype(np.float32) for _ in range(6)]
    clean = fit(noise, positions=positions)
    assert clean.line_cycles is None and clean.reference_gains is None
    dirty = [
        (b + hum(30000, f0=50.02, start=i * 71_000)[:, None] * gain).astype(np.float32) for i, b in enumerate(noise)
    ]
    model = fit(dirty, positions=positions)
    assert (model.reference_gains is not None) == (by == "gains")
    assert (model.line_cycles is not None) == (by == "lines")
    if by == "lines":
        k = np.round(model.line_cycles * FS / 50)
        np.testing.assert_allclose(model.line_cycles * FS / k, 50.02, atol=0.01)
    assert np.abs(model.noise_sd / clean.noise_sd - 1).max() < 0.05

    chunk = (rng.normal(0, 10, (60000, n_ch)) + hum(60000, f0=50.02, start=10**6)[:, None] * gain).astype(np.float32)
    w = preprocess_chunk(chunk, model=model)[1000:-1000]
    spectrum = np.abs(np.fft.rfft(w, axis=0))
    freqs = np.fft.rfftfreq(len(w), 1 / FS)
    near = (freqs > 350) & (freqs < 450)
    line = np.median(spectrum[np.argmin(np.abs(freqs - 400.04))] / np.median(spectrum[near], axis=0))
    assert line < 3
    # the whitened noise keeps unit sd on every channel
    np.testing.assert_allclose(np.median(np.abs(w), axis=0) * 1.4826, 1.0, atol=0.1)
    # without the lines taken out, the hum stays far above the floor
    if by == "lines":
        import dataclasses

        w = preprocess_chunk(chunk, model=dataclasses.replace(model, line_cycles=None))[1000:-1000]
        spectrum = np.abs(np.fft.rfft(w, axis=0))
        assert np.median(spectrum[np.argmin(np.abs(freqs - 400.04))] / np.median(spectrum[near], axis=0)) > 10


def test_online_model_keeps_its_lines(tmp_path):
    """The online sorter's saved model carries the mains lines its warm-up found (and a model saved
    without them loads as having none)."""
    from spikesort.online.model import OnlineModel, load_model, save_model, save_templates

    rng = np.random.default_rng(4)
    positions = np.array([[-8.0, -8.0], [-8.0, 8.0], [8.0, -8.0], [8.0, 8.0]])
    blocks = [
        (rng.normal(0, 10, (30000, 4)) + hum(30000, f0=60.0, start=i * 50_000)[:, None]).astype(np.float32)
        for i in range(4)
    ]
    prep = fit(blocks, positions=positions)
    assert prep.line_cycles is not None
    clean = fit(
        [b - hum(30000, f0=60.0, start=i * 50_000)[:, None].astype(np.float32) for i, b in enumerate(blocks)],
        positions=positions,
    )
    assert clean.line_cycles is None
    for p in (prep, clean):
        m = OnlineModel(
            prep=p,
            sign=-1,
            bases=np.eye(3, 20, dtype=np.float32),
            filter_sd=np.ones(4, np.float32),
            dense=np.zeros((0, 20, 4), np.float32),
            pre=6,
            ref_depth_um=np.zeros(0),
        )
        save_model(tmp_path / "model.npz", m)
        save_templates(tmp_path / "templates.npz", m)
        back = load_model(tmp_path / "model.npz", tmp_path / "templates.npz").prep
        if p.line_cycles is None:
            assert back.line_cycles is None
        else:
            np.testing.assert_array_equal(back.line_cycles, p.line_cycles)
