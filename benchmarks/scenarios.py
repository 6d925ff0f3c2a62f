"""The benchmark's recordings: the scenario table, the probes, generation and caching.

A recording is generated once with ``spikeinterface.generation`` (the probe is built locally, no
download) and saved as an int16 binary folder with its ground truth. A cached folder is reused
while its ``scenario.json`` equals the spec of the request, so the spec dicts below are the cache
key: changing one of them regenerates every recording (and re-runs every peer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .scoring import save_sorting_npz

# bump when the way recordings are generated or stored changes: old caches are then rebuilt
GENERATOR_VERSION = 1
# int16 storage gain, µV per bit (Intan-like); noise is 6-8 µV, spikes up to ~500 µV
STORAGE_GAIN_UV = 0.195


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One ground-truth recording; every field but the description is part of its cache key."""

    name: str
    probe: str  # a kind for build_probe
    num_units: int
    duration_s: float
    drift: str  # "none", "zigzag", "bump"
    description: str


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("static32", "multi32", 20, 60.0, "none", "32 ch staggered 2-column probe, 20 units, 60 s, static"),
        Scenario("static64", "np1_64", 50, 300.0, "none", "64 ch NP1-like slice, 50 units, 300 s, static"),
        Scenario(
            "zigzag64",
            "np1_64",
            50,
            300.0,
            "zigzag",
            "as static64, rigid zigzag drift ±20 µm (period 200 s, from 60 s)",
        ),
        Scenario("bump64", "np1_64", 50, 300.0, "bump", "as static64, rigid 30 µm steps every 30-90 s (from 60 s)"),
    )
}


def build_probe(*, kind: str):
    """Build the probe of a scenario locally (never downloads)."""
    if kind == "multi32":
        from probeinterface import generate_multi_columns_probe

        probe = generate_multi_columns_probe(
            num_columns=2, num_contact_per_column=16, xpitch=22.0, ypitch=25.0, y_shift_per_column=[0.0, 12.5]
        )
    elif kind.startswith("np1_") and kind[4:].isdigit() and 1 <= int(kind[4:]) <= 384:
        from probeinterface.neuropixels_tools import build_neuropixels_probe

        # first N contacts (bank 0) of a Neuropixels 1.0: x = 16/48, 0/32 staggered rows, 20 µm pitch
        probe = build_neuropixels_probe("NP1000").get_slice(np.arange(int(kind[4:])))
    else:
        raise ValueError(f"unknown probe kind {kind!r}")
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return probe


def displacement_kwargs(*, drift: str) -> dict:
    """``generate_displacement_vector_kwargs`` for a drift kind."""
    if drift == "none":
        # zero-amplitude motion: one displacement step only, so no wasted template copies; the
        # static recording does not depend on it
        return {
            "displacement_sampling_frequency": 5.0,
            "drift_start_um": [0.0, 0.0],
            "drift_stop_um": [0.0, 0.0],
            "drift_step_um": 1.0,
            "motion_list": [
                {
                    "drift_mode": "zigzag",
                    "non_rigid_gradient": None,
                    "t_start_drift": 0.0,
                    "t_end_drift": None,
                    "period_s": 200,
                }
            ],
        }
    if drift == "zigzag":
        return {
            "displacement_sampling_frequency": 5.0,
            "drift_start_um": [0.0, 20.0],
            "drift_stop_um": [0.0, -20.0],
            "drift_step_um": 1.0,
            "motion_list": [
                {
                    "drift_mode": "zigzag",
                    "non_rigid_gradient": None,
                    "t_start_drift": 60.0,
                    "t_end_drift": None,
                    "period_s": 200,
                }
            ],
        }
    if drift == "bump":
        # the bump shape alternates between +0.5 and -0.5 of the span: 30 µm steps
        return {
            "displacement_sampling_frequency": 5.0,
            "drift_start_um": [0.0, 15.0],
            "drift_stop_um": [0.0, -15.0],
            "drift_step_um": 1.0,
            "motion_list": [
                {
                    "drift_mode": "bump",
                    "non_rigid_gradient": None,
                    "t_start_drift": 60.0,
                    "t_end_drift": None,
                    "bump_interval_s": (30.0, 90.0),
                }
            ],
        }
    raise ValueError(f"unknown drift {drift!r}")


def scenario_spec(*, scenario: Scenario, seed: int) -> dict:
    """What the generated data depends on; a change regenerates it and re-runs the peers."""
    import spikeinterface

    fields = dataclasses.asdict(scenario)
    del fields["description"]  # text only
    return dict(
        generator_version=GENERATOR_VERSION,
        spikeinterface=spikeinterface.__version__,
        storage_gain_uv=STORAGE_GAIN_UV,
        seed=int(seed),
        **fields,
    )


def spec_hash(spec: dict) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def recording_folder(*, cache_dir: Path, scenario: str, seed: int) -> Path:
    return cache_dir / "recordings" / f"{scenario}_seed{seed}"


def ensure_recording(*, cache_dir: Path, scenario: Scenario, seed: int, n_jobs: int) -> Path:
    """Generate and save a scenario once; return its folder (``recording/``, ``gt_sorting.npz``)."""
    from spikeinterface.generation import generate_drifting_recording

    def generate():
        static, drifting, gt = generate_drifting_recording(
            num_units=scenario.num_units,
            duration=scenario.duration_s,
            probe=build_probe(kind=scenario.probe),
            generate_displacement_vector_kwargs=displacement_kwargs(drift=scenario.drift),
            seed=seed,
        )
        return (static if scenario.drift == "none" else drifting), gt

    return save_generated(
        folder=recording_folder(cache_dir=cache_dir, scenario=scenario.name, seed=seed),
        spec=scenario_spec(scenario=scenario, seed=seed),
        generate=generate,
        n_jobs=n_jobs,
    )


# the speed mode's long recording: about 150 units on 384 channels, fewer on fewer channels
SPEED_UNITS_PER_CHANNEL = 150 / 384


def speed_recording_spec(*, n_channels: int, duration_s: float, num_units: int, seed: int) -> dict:
    import spikeinterface

    return {
        "generator_version": GENERATOR_VERSION,
        "spikeinterface": spikeinterface.__version__,
        "storage_gain_uv": STORAGE_GAIN_UV,
        "seed": int(seed),
        "name": f"np1_{n_channels}ch",
        "probe": f"np1_{n_channels}",
        "num_units": int(num_units),
        "duration_s": float(duration_s),
        "drift": "none",
        "noise": "white 6-8 uV",
    }


def ensure_speed_recording(
    *, cache_dir: Path, n_channels: int, duration_s: float, num_units: int, seed: int, n_jobs: int
) -> Path:
    """The speed mode's Neuropixels-1.0-like recording (the first ``n_channels`` contacts of bank
    0), static, generated lazily and saved once in 1 s chunks on ``n_jobs`` processes.

    The noise is white (independent channels, 6-8 µV): the scenarios' spatially correlated noise
    draws a multivariate normal per block and makes 384 channels about 10× slower to generate,
    and a sorter's cost does not depend on it."""
    from spikeinterface.generation import generate_drifting_recording

    def generate():
        static, _, gt = generate_drifting_recording(
            num_units=num_units,
            duration=duration_s,
            probe=build_probe(kind=f"np1_{n_channels}"),
            generate_displacement_vector_kwargs=displacement_kwargs(drift="none"),
            generate_noise_kwargs={"noise_levels": (6.0, 8.0), "spatial_decay": None},
            seed=seed,
        )
        return static, gt

    folder = cache_dir / "recordings" / f"np1_{n_channels}ch_{duration_s:g}s_seed{seed}"
    spec = speed_recording_spec(n_channels=n_channels, duration_s=duration_s, num_units=num_units, seed=seed)
    return save_generated(folder=folder, spec=spec, generate=generate, n_jobs=n_jobs)


def save_generated(*, folder: Path, spec: dict, generate, n_jobs: int) -> Path:
    """Save ``generate()`` -> (recording in µV, ground-truth sorting) as an int16 binary folder
    with its ground truth, once: a folder whose ``scenario.json`` equals ``spec`` is reused. The
    folder appears complete or not at all (built under a temporary name, then renamed)."""
    from spikeinterface.preprocessing import scale

    spec_file = folder / "scenario.json"
    if spec_file.exists() and json.loads(spec_file.read_text()) == spec:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        source, gt = generate()
        # the generated recording is rebuilt from its seed, not from a provenance file
        warnings.filterwarnings("ignore", message="The extractor is not serializable")
        as_int16 = scale(source, gain=1.0 / STORAGE_GAIN_UV, offset=0.0, dtype="int16")
        as_int16.set_channel_gains(STORAGE_GAIN_UV)
        as_int16.set_channel_offsets(0.0)
        as_int16.save(folder=tmp / "recording", format="binary", n_jobs=n_jobs, chunk_duration="1s", progress_bar=False)
        save_sorting_npz(sorting=gt, path=tmp / "gt_sorting.npz")
        locations = np.asarray(gt.get_property("gt_unit_locations"))
        np.save(tmp / "gt_unit_locations.npy", locations)
        (tmp / "scenario.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        tmp.chmod(0o755)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_recording(*, folder: Path):
    import spikeinterface as si

    return si.load(folder / "recording")


TRUE_DISPLACEMENT = "true_displacement.npz"


def ensure_true_displacement(*, folder: Path, scenario: Scenario, seed: int) -> Path | None:
    """The generator's true displacement of a drifting scenario, in its own file next to the
    recording (written when missing, so recordings cached before it existed are kept): times_s
    (T,), displacement_um (T, units) = how far each unit moved towards larger depth (y),
    unit_depth_um (units,). The generator is deterministic in its seed, so calling it again
    gives the displacement of the saved recording without rebuilding the traces."""
    if scenario.drift == "none":
        return None
    path = folder / TRUE_DISPLACEMENT
    if path.is_file():
        return path
    from spikeinterface.generation import generate_drifting_recording

    *_, extra = generate_drifting_recording(
        num_units=scenario.num_units,
        duration=scenario.duration_s,
        probe=build_probe(kind=scenario.probe),
        generate_displacement_vector_kwargs=displacement_kwargs(drift=scenario.drift),
        seed=seed,
        extra_outputs=True,
    )
    disp = np.asarray(extra["unit_displacements"])[:, :, 1]
    times = np.arange(disp.shape[0]) / float(extra["displacement_sampling_frequency"])
    tmp = folder / f".{TRUE_DISPLACEMENT}.tmp.npz"
    np.savez(tmp, times_s=times, displacement_um=disp, unit_depth_um=np.asarray(extra["unit_locations"])[:, 1])
    tmp.rename(path)
    return path
