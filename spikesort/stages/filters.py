"""Butterworth filter design as second-order sections, and their steady-state initial conditions.

The same coefficients ``scipy.signal.butter(..., output="sos")`` and ``sosfilt_zi`` give (the
tests compare them bit for bit), computed here with numpy alone: importing ``scipy.signal`` took
0.6-0.7 s of every run's start (it pulls in ``scipy.stats`` and its array backends), more than the
whole filtering of a 4-channel, 300 s recording.

The digital design follows the classic route: the analog prototype's poles on the left half of
the unit circle, moved to the cut-off (pre-warped for the bilinear transform), mapped to the z
plane, then grouped into sections, each pair of poles with the zeros nearest it, the poles
closest to the unit circle in the last section.
"""

from __future__ import annotations

import numpy as np


def butter_sos(order: int, cutoff_hz, *, btype: str, sampling_rate_hz: float) -> np.ndarray:
    """(n_sections, 6) sections [b0, b1, b2, 1, a1, a2] of a digital Butterworth ``"highpass"``
    (``cutoff_hz`` a number) or ``"bandpass"`` (a (low, high) pair) filter of ``order``."""
    if order < 1:
        raise ValueError(f"filter order must be at least 1, got {order}")
    band = np.atleast_1d(np.asarray(cutoff_hz, dtype=np.float64))
    expected = {"highpass": 1, "bandpass": 2}.get(btype)
    if expected is None:
        raise ValueError(f"btype must be 'highpass' or 'bandpass', got {btype!r}")
    if band.size != expected:
        raise ValueError(f"a {btype} filter needs {expected} cut-off frequencies, got {band.size}")
    nyquist_fraction = 2 * band / sampling_rate_hz
    if np.any(nyquist_fraction <= 0) or np.any(nyquist_fraction >= 1):
        raise ValueError(f"cut-offs {band.tolist()} Hz must lie between 0 and Nyquist ({sampling_rate_hz / 2} Hz)")
    # analog prototype: poles on the unit circle's left half, no zeros, gain 1
    m = np.arange(-order + 1, order, 2)
    poles = -np.exp(1j * np.pi * m / (2 * order))
    gain = 1.0
    # pre-warped cut-offs: the bilinear transform (at twice the design rate of 2) maps them back
    warped = 2 * 2.0 * np.tan(np.pi * nyquist_fraction / 2.0)
    if btype == "highpass":
        # s -> wo / s: every pole inverted, a zero at the origin for each pole
        gain = gain * np.real(1.0 / np.prod(-poles))
        poles = warped[0] / poles
        zeros = np.zeros(order)
    else:
        # s -> (s^2 + wo^2) / (s bw): each pole split in two, ``order`` zeros at the origin
        bw = warped[1] - warped[0]
        wo = np.sqrt(warped[0] * warped[1])
        scaled = (poles * bw / 2).astype(complex)
        root = np.sqrt(scaled**2 - wo**2)
        poles = np.concatenate((scaled + root, scaled - root))
        zeros = np.zeros(order)
        gain = gain * bw**order
    # bilinear transform at a design rate of 2 (analog zeros at 0 land on z = 1; the surplus of
    # poles over zeros puts zeros at z = -1)
    fs2 = 4.0
    z_zeros = (fs2 + zeros) / (fs2 - zeros)
    z_poles = (fs2 + poles) / (fs2 - poles)
    z_zeros = np.append(z_zeros, -np.ones(len(poles) - len(zeros)))
    gain = gain * np.real(np.prod(fs2 - zeros) / np.prod(fs2 - poles))
    return _pair_sections(z_zeros.real, z_poles, gain)


def _pair_sections(zeros: np.ndarray, poles: np.ndarray, gain: float) -> np.ndarray:
    """Second-order sections of real ``zeros`` and conjugate-symmetric ``poles``: the pole closest
    to the unit circle (with its conjugate, or the next such real pole) goes last, with the
    zeros nearest it; the gain goes into the first section."""
    zeros = np.asarray(zeros, dtype=np.float64)
    poles = np.asarray(poles, dtype=complex)
    if len(poles) % 2 == 1:  # an odd count: a pole and a zero at the origin make the pairs even
        poles = np.append(poles, 0.0)
        zeros = np.append(zeros, 0.0)
    real = np.abs(poles.imag) <= 100 * np.finfo(np.float64).eps * np.abs(poles)
    upper = poles[~real & (poles.imag > 0)]
    upper = upper[np.argsort(upper.real, kind="stable")]
    left = list(np.concatenate((upper, np.sort(poles[real].real).astype(complex))))
    zeros = list(zeros)
    sections = np.zeros((len(poles) // 2, 6))
    for s in range(len(sections) - 1, -1, -1):
        worst = int(np.argmin([abs(1 - abs(q)) for q in left]))
        p1 = left.pop(worst)
        if p1.imag == 0:
            others = [i for i, q in enumerate(left) if q.imag == 0]
            p2 = left.pop(others[int(np.argmin([abs(1 - abs(left[i])) for i in others]))])
        else:
            p2 = np.conj(p1)
        z1 = zeros.pop(int(np.argmin([abs(z - p1) for z in zeros])))
        z2 = zeros.pop(int(np.argmin([abs(z - p1) for z in zeros])))
        b = np.poly([z1, z2])
        a = np.poly([p1, p2]).real
        sections[s] = np.concatenate((b, a))
    sections[0, :3] *= gain
    return sections


def sos_steady_state(sos: np.ndarray) -> np.ndarray:
    """(n_sections, 2) initial states of the cascade ``sos`` for a step input of height 1: each
    section's steady state, scaled by the gain of the sections before it."""
    sos = np.asarray(sos, dtype=np.float64)
    zi = np.empty((len(sos), 2))
    scale = 1.0
    for i, (b, a) in enumerate(zip(sos[:, :3], sos[:, 3:])):
        if a[0] != 1.0:
            b, a = b / a[0], a / a[0]
        # the state recursion z' = A z + B x has its fixed point for x = 1 at (I - A) z = B
        companion_t = np.array([[-a[1], 1.0], [-a[2], 0.0]])
        zi[i] = scale * np.linalg.solve(np.eye(2) - companion_t, b[1:] - a[1:] * b[0])
        scale *= b.sum() / a.sum()
    return zi
