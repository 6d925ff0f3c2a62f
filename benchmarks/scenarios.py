"""The benchmark's recordings: the scenario table, the probes, generation and caching.

A recording is generated once with ``spikeinterface.generation`` (the probe is built locally, no
download) and saved as an int16 binary folder with its ground truth. A cached folder is reused
while its ``scenario.json`` equals the spec of the request, so the spec dicts below are the cache
key: changing one of them regenerates every recording (and re-runs every peer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .scoring import load_sorting_npz, save_sorting_npz

# bump when the way recordings are generated or stored changes: old caches are then rebuilt
GENERATOR_VERSION = 1
# int16 storage gain, µV per bit (Intan-like); noise is 6-8 µV, spikes up to ~500 µV
STORAGE_GAIN_UV = 0.195


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One ground-truth recording; every field but the description and the family is part of its
    cache key (the optional ones only when they differ from their defaults, so the keys of the
    scenarios that predate them stay as they were)."""

    name: str
    probe: str  # a kind for build_probe
    num_units: int
    duration_s: float
    drift: str  # "none", "zigzag", "bump", "slow", or what the scenario's generator understands
    description: str
    family: str = "generated"
    kind: str = "drifting"  # the generator: a key of GENERATORS
    sampling_rate_hz: float = 30000.0
    options: tuple = ()  # (key, value) pairs the generator reads; values are JSON scalars or tuples

    @property
    def option(self) -> dict:
        return dict(self.options)


# the registry: scenario name -> Scenario, family name -> its scenario names (in order), generator
# kind -> generate(*, scenario, seed) returning (recording in µV, ground-truth sorting) or
# (recording, sorting, truth), truth a dict of arrays saved as TRUE_DISPLACEMENT. Families live in
# their own modules (benchmarks.families, ...), which register themselves; benchmarks.catalog
# imports them all.
SCENARIOS: dict[str, Scenario] = {}
FAMILIES: dict[str, list[str]] = {}
GENERATORS: dict = {}


def register(*scenarios: Scenario) -> None:
    """Add scenarios to the registry (a name registered twice must be the same scenario)."""
    for s in scenarios:
        if SCENARIOS.get(s.name, s) != s:
            raise ValueError(f"scenario {s.name!r} is registered twice, differently")
        SCENARIOS[s.name] = s
        names = FAMILIES.setdefault(s.family, [])
        if s.name not in names:
            names.append(s.name)


def register_generator(kind: str, generate) -> None:
    GENERATORS[kind] = generate


register(
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


def build_probe(*, kind: str):
    """Build the probe of a scenario locally (never downloads). Kinds: ``multi32``, ``np1_N`` (the
    first N contacts of a Neuropixels 1.0), ``np2x4_N`` (the first N contacts of each shank of a
    4-shank Neuropixels 2.0, 250 µm apart), ``linearN_Pum`` (one column of N contacts at P µm),
    ``tetrode``."""
    import re

    if kind == "multi32":
        from probeinterface import generate_multi_columns_probe

        probe = generate_multi_columns_probe(
            num_columns=2, num_contact_per_column=16, xpitch=22.0, ypitch=25.0, y_shift_per_column=[0.0, 12.5]
        )
    elif kind.startswith("np1_") and kind[4:].isdigit() and 1 <= int(kind[4:]) <= 384:
        from probeinterface.neuropixels_tools import build_neuropixels_probe

        # first N contacts (bank 0) of a Neuropixels 1.0: x = 16/48, 0/32 staggered rows, 20 µm pitch
        probe = build_neuropixels_probe("NP1000").get_slice(np.arange(int(kind[4:])))
    elif kind.startswith("np2x4_") and kind[6:].isdigit() and 4 <= int(kind[6:]) <= 1280:
        from probeinterface.neuropixels_tools import build_neuropixels_probe

        # 2 columns 32 µm apart, 15 µm rows, shanks 250 µm apart; shank ids "0".."3"
        full = build_neuropixels_probe("NP2014")
        shanks = np.asarray(full.shank_ids).astype(int)
        keep = np.concatenate([np.flatnonzero(shanks == s)[: int(kind[6:])] for s in range(4)])
        probe = full.get_slice(keep)
    elif (m := re.fullmatch(r"linear(\d+)_(\d+(?:\.\d+)?)um", kind)) and int(m[1]) >= 1:
        from probeinterface import generate_linear_probe

        probe = generate_linear_probe(num_elec=int(m[1]), ypitch=float(m[2]))
    elif kind == "tetrode":
        from probeinterface import generate_tetrode

        probe = generate_tetrode()  # 4 contacts on a 10 µm circle
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
    if drift == "slow":
        # a long recording's slow drift: a zigzag between +10 and -10 µm, period 20 min, from the start
        return {
            "displacement_sampling_frequency": 5.0,
            "drift_start_um": [0.0, 10.0],
            "drift_stop_um": [0.0, -10.0],
            "drift_step_um": 1.0,
            "motion_list": [
                {
                    "drift_mode": "zigzag",
                    "non_rigid_gradient": None,
                    "t_start_drift": 0.0,
                    "t_end_drift": None,
                    "period_s": 1200,
                }
            ],
        }
    raise ValueError(f"unknown drift {drift!r}")


# optional Scenario fields: in the spec only when they differ from these defaults
_OPTIONAL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Scenario) if f.default is not dataclasses.MISSING}


def scenario_spec(*, scenario: Scenario, seed: int) -> dict:
    """What the generated data depends on; a change regenerates it and re-runs the peers."""
    import spikeinterface

    fields = dataclasses.asdict(scenario)
    del fields["description"], fields["family"]  # text and grouping only
    for name, default in _OPTIONAL_DEFAULTS.items():
        if name in fields and fields[name] == default:
            del fields[name]
    spec = dict(
        generator_version=GENERATOR_VERSION,
        spikeinterface=spikeinterface.__version__,
        storage_gain_uv=STORAGE_GAIN_UV,
        seed=int(seed),
        **fields,
    )
    return json.loads(json.dumps(spec))  # tuples as lists: equal to the spec read back from scenario.json


def spec_hash(spec: dict) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def recording_folder(*, cache_dir: Path, scenario: str, seed: int) -> Path:
    return cache_dir / "recordings" / f"{scenario}_seed{seed}"


def ensure_recording(*, cache_dir: Path, scenario: Scenario, seed: int, n_jobs: int) -> Path:
    """Generate and save a scenario once; return its folder (``recording/``, ``gt_sorting.npz``)."""
    if scenario.kind not in GENERATORS:
        raise ValueError(f"scenario {scenario.name!r}: no generator {scenario.kind!r} is registered")
    # a generator that keeps a cache of its own (MEArec's template libraries) asks for the folder
    wants_cache = "cache_dir" in inspect.signature(GENERATORS[scenario.kind]).parameters
    extra = {"cache_dir": Path(cache_dir)} if wants_cache else {}
    return save_generated(
        folder=recording_folder(cache_dir=cache_dir, scenario=scenario.name, seed=seed),
        spec=scenario_spec(scenario=scenario, seed=seed),
        generate=lambda: GENERATORS[scenario.kind](scenario=scenario, seed=seed, **extra),
        n_jobs=n_jobs,
    )


def drifting_kwargs(*, scenario: Scenario) -> dict:
    """Arguments of ``generate_drifting_recording`` for a scenario of the plain generator. Options:
    ``unit_min_distance_um`` (closer units: more of them share a peak channel)."""
    kwargs = dict(
        num_units=scenario.num_units,
        duration=scenario.duration_s,
        probe=build_probe(kind=scenario.probe),
        generate_displacement_vector_kwargs=displacement_kwargs(drift=scenario.drift),
    )
    if scenario.sampling_rate_hz != 30000.0:
        kwargs["sampling_frequency"] = scenario.sampling_rate_hz
    option = scenario.option
    if "unit_min_distance_um" in option:
        kwargs["generate_unit_locations_kwargs"] = dict(
            margin_um=20.0,
            minimum_z=5.0,
            maximum_z=45.0,
            minimum_distance=float(option["unit_min_distance_um"]),
            max_iteration=100,
            distance_strict=False,
            distribution="uniform",
        )
    return kwargs


def generate_drifting(*, scenario: Scenario, seed: int):
    """spikeinterface's generator: the static recording, or the drifting one."""
    from spikeinterface.generation import generate_drifting_recording

    static, drifting, gt = generate_drifting_recording(**drifting_kwargs(scenario=scenario), seed=seed)
    return (static if scenario.drift == "none" else drifting), gt


register_generator("drifting", generate_drifting)


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


def tiled_sorting(*, sorting, copies: int, n_samples: int):
    """A one-segment sorting played back to back ``copies`` times: copy c's spikes shifted by
    c × ``n_samples`` (the length of the recording it belongs to), the unit ids kept."""
    from spikeinterface.core import NumpySorting

    if copies < 1 or n_samples < 1:
        raise ValueError(f"copies and n_samples must be >= 1, got {copies} and {n_samples}")
    if sorting.get_num_segments() != 1:
        raise ValueError(f"only a one-segment sorting can be tiled, got {sorting.get_num_segments()} segments")
    spikes = sorting.to_spike_vector()
    if spikes.size and spikes["sample_index"].max() >= n_samples:
        raise ValueError(f"a spike lies at or after sample {n_samples}, the length of one copy")
    # each copy is sorted by sample and comes after the one before: the whole vector stays sorted
    tiled = np.concatenate([spikes] * copies)
    shift = np.repeat(np.arange(copies, dtype=np.int64) * int(n_samples), spikes.size)
    tiled["sample_index"] = tiled["sample_index"].astype(np.int64) + shift
    return NumpySorting(tiled, sorting.sampling_frequency, sorting.unit_ids)


def tiled_folder(*, folder: Path, copies: int) -> Path:
    return Path(folder).parent / f"{Path(folder).name}_x{int(copies)}"


def ensure_tiled_recording(*, folder: Path, copies: int) -> Path:
    """A recording folder that plays the saved recording in ``folder`` back to back ``copies``
    times without copying its traces (why: a 60-minute, 384-channel int16 recording is 83 GB of
    disk; 10 minutes played 6 times is 14 GB).

    Beside ``folder`` as ``<name>_x<copies>``: ``recording/si_folder.json`` (spikeinterface's
    concatenation of the saved recording ``copies`` times, its path relative, so ``si.load``
    and ``load_recording`` read it as they read a binary folder, probe, gains and offsets
    included), ``gt_sorting.npz`` (see ``tiled_sorting``), ``gt_unit_locations.npy`` when the
    source has one, ``scenario.json`` (``{"tiled": {"base": <source spec>, "copies": k, ...}}``,
    the cache key). The folder appears complete or not at all."""
    from spikeinterface.core import concatenate_recordings

    if copies < 2:
        raise ValueError(f"a tiled recording needs at least 2 copies, got {copies}")
    folder = Path(folder)
    base = load_recording(folder=folder)
    if base.get_num_segments() != 1:
        raise ValueError(f"{folder / 'recording'} has {base.get_num_segments()} segments, a tile needs one")
    n = int(base.get_num_samples(0))
    spec = {
        "tiled": {
            "base": json.loads((folder / "scenario.json").read_text()),
            "base_folder": folder.name,
            "copies": int(copies),
            "tile_samples": n,
        }
    }

    def build(tmp: Path) -> None:
        (tmp / "recording").mkdir()
        tiled = concatenate_recordings([base] * int(copies))
        tiled.dump_to_json(tmp / "recording" / "si_folder.json", relative_to=tmp / "recording")
        gt = load_sorting_npz(path=folder / "gt_sorting.npz")
        save_sorting_npz(sorting=tiled_sorting(sorting=gt, copies=copies, n_samples=n), path=tmp / "gt_sorting.npz")
        if (folder / "gt_unit_locations.npy").is_file():
            shutil.copy(folder / "gt_unit_locations.npy", tmp / "gt_unit_locations.npy")

    # built beside the source: the relative path in si_folder.json holds after the rename
    return cached_folder(folder=tiled_folder(folder=folder, copies=copies), spec=spec, build=build)


def save_generated(*, folder: Path, spec: dict, generate, n_jobs: int) -> Path:
    """Save ``generate()`` -> (recording in µV, ground-truth sorting) as an int16 binary folder
    with its ground truth, once: a folder whose ``scenario.json`` equals ``spec`` is reused. The
    folder appears complete or not at all (built under a temporary name, then renamed)."""
    from spikeinterface.preprocessing import scale

    def build(tmp: Path) -> None:
        source, gt, *truth = generate()
        # the generated recording is rebuilt from its seed, not from a provenance file
        warnings.filterwarnings("ignore", message="The extractor is not serializable")
        as_int16 = scale(source, gain=1.0 / STORAGE_GAIN_UV, offset=0.0, dtype="int16")
        as_int16.set_channel_gains(STORAGE_GAIN_UV)
        as_int16.set_channel_offsets(0.0)
        as_int16.save(folder=tmp / "recording", format="binary", n_jobs=n_jobs, chunk_duration="1s", progress_bar=False)
        save_sorting_npz(sorting=gt, path=tmp / "gt_sorting.npz")
        locations = np.asarray(gt.get_property("gt_unit_locations"))
        np.save(tmp / "gt_unit_locations.npy", locations)
        if truth:
            np.savez(tmp / TRUE_DISPLACEMENT, **truth[0])

    return cached_folder(folder=folder, spec=spec, build=build)


def cached_folder(*, folder: Path, spec: dict, build) -> Path:
    """``folder`` made once by ``build(tmp)``: one whose ``scenario.json`` equals ``spec`` is
    reused, any other replaced. It appears complete or not at all (built under a temporary name
    beside it, then renamed)."""
    spec_file = folder / "scenario.json"
    if spec_file.exists() and json.loads(spec_file.read_text()) == spec:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(tmp)
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
    if scenario.kind != "drifting":
        return None  # other generators write it with the recording, or have none
    from spikeinterface.generation import generate_drifting_recording

    *_, extra = generate_drifting_recording(**drifting_kwargs(scenario=scenario), seed=seed, extra_outputs=True)
    disp = np.asarray(extra["unit_displacements"])[:, :, 1]
    times = np.arange(disp.shape[0]) / float(extra["displacement_sampling_frequency"])
    tmp = folder / f".{TRUE_DISPLACEMENT}.tmp.npz"
    np.savez(tmp, times_s=times, displacement_um=disp, unit_depth_um=np.asarray(extra["unit_locations"])[:, 1])
    tmp.rename(path)
    return path
