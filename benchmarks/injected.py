"""spikeinterface's other ground-truth generator (issue 15: "other simulators"), checked only.

``generate_ground_truth_recording`` injects templates of a family of its own
(``generate_templates``: for each unit a random ellipsoidal spread, depolarisation and
repolarisation times, a waveform lasting 3 ms after its trough) at Poisson times (15 Hz, 4 ms
refractory period) into independent noise of 5 µV on every channel. Its units lie 5-50 µm from
the contacts, so some are too small to be seen by any sorter. It shares neither templates nor
noise with ``generate_drifting_recording``, the generator of the other spikeinterface families.
Run with the generator's own defaults but for the probe, the units and the length.
"""

from __future__ import annotations

from .scenarios import Scenario, build_probe, register, register_generator

NOISE_UV = 5.0  # the generator's default


def generate_injected(*, scenario: Scenario, seed: int):
    """The recording and its ground truth, on the scenario's probe at its rate."""
    from spikeinterface.core import generate_ground_truth_recording

    return generate_ground_truth_recording(
        durations=[scenario.duration_s],
        sampling_frequency=scenario.sampling_rate_hz,
        num_units=scenario.num_units,
        probe=build_probe(kind=scenario.probe),
        noise_kwargs={"noise_levels": NOISE_UV, "strategy": "on_the_fly"},
        seed=seed,
    )


register_generator("injected", generate_injected)

register(
    Scenario(
        "injected_tetrode",
        "tetrode",
        10,
        300.0,
        "none",
        "spikeinterface's generate_ground_truth_recording on spikeinterface's tetrode (4 contacts on "
        "a 10 µm circle): 10 units (the generator's default for 4 channels), 25 kHz, 300 s, static",
        family="injected",
        kind="injected",
        sampling_rate_hz=25000.0,
    ),
    Scenario(
        "injected32",
        "multi32",
        20,
        300.0,
        "none",
        "spikeinterface's generate_ground_truth_recording on a 32 ch staggered 2-column probe, "
        "20 units, 25 kHz, 300 s, static",
        family="injected",
        kind="injected",
        sampling_rate_hz=25000.0,
    ),
    Scenario(
        "injected64",
        "np1_64",
        50,
        300.0,
        "none",
        "spikeinterface's generate_ground_truth_recording on a 64 ch NP1-like slice, 50 units, 25 kHz, 300 s, static",
        family="injected",
        kind="injected",
        sampling_rate_hz=25000.0,
    ),
)
