"""The biophysical family: MEArec recordings of Blue Brain cell models (issue 15).

MEArec (``pip install "MEArec[templates]"``, which brings NEURON and LFPy) ships 13 layer-5
cell models. Their extracellular templates are simulated locally, on the probe of the scenario,
and cached: that takes minutes (NEURON, then LFPy at every random position), so a template
library is built once per (probe, templates per cell, seed) and shared by every recording on that
probe. A recording then draws excitatory and inhibitory cells from the library, with bursting
(amplitude and shape decaying within a burst), and spatially correlated noise. It is stored like
every other scenario (int16 binary folder + ground truth, see ``scenarios.save_generated``), so
every sorter reads the same file with the same probe.

Nothing is downloaded. The CLI's ``gen-templates --folder`` fails in MEArec 1.11.0, so the Python
API is used.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .scenarios import Scenario, register, register_generator

log = logging.getLogger(__name__)

# bump when the template library's generation changes: cached libraries are then rebuilt
TEMPLATES_VERSION = 1
# a drifting library: positions simulated per template along its path (MEArec interpolates none:
# a recording steps between them), and templates per cell model (each costs DRIFT_STEPS positions)
DRIFT_STEPS = 11
DRIFT_TEMPLATES_PER_CELL = 16


def _mearec(
    name,
    probe,
    *,
    n_exc,
    n_inh,
    n_bursting,
    description,
    duration_s=300.0,
    one_chunk=False,
    noise_level_uv=10.0,
    drift_um=0.0,
    drift_velocity_um_per_min=0.0,
    cells_seed=0,
    noise_mode="distance-correlated",
    noise_color=False,
    fs_hz=None,
):
    """A MEArec scenario: what MEArec is asked for lives in the options (part of the cache key).

    ``cells_seed`` draws the probe's template library anew: other positions and orientations of
    every cell model, so other waveforms (0 is the library every other scenario uses).

    ``one_chunk`` renders the recording in one piece. MEArec (1.11.0) convolves in chunks of 10 s
    and gives the i-th spike of a unit in every chunk the burst modulation computed for the i-th
    spike of its whole train, so beyond the first chunk a spike's size and shape no longer follow
    its own intervals (``mearec_tetrode`` seed 1: 318 of one cell's 2148 spikes under half size,
    21-22 in every 20 s, whatever their intervals). Real bursts shrink their late spikes; a
    one-chunk recording keeps that (there, the cell's spikes with two of its own in the 100 ms
    before were at 0.22-0.45 of its size, the others at 1.0).

    ``fs_hz`` samples the recording at another rate than the templates' 32 kHz (MEArec resamples
    them).

    ``drift_um`` > 0 moves every cell along the probe: its templates are simulated at
    ``DRIFT_STEPS`` positions spanning ``drift_um`` (a library of its own), and the recording
    moves all of them together (rigid) back and forth over that span, triangle-wise at
    ``drift_velocity_um_per_min``."""
    drift = ()
    if drift_um > 0:
        drift = (("drift_um", float(drift_um)), ("drift_velocity_um_per_min", float(drift_velocity_um_per_min)))
    return Scenario(
        name,
        probe,  # a MEAutility probe name
        n_exc + n_inh,
        duration_s,
        "mearec" if drift_um > 0 else "none",  # MEArec moves the cells itself
        description,
        family="biophysical",
        kind="mearec",
        sampling_rate_hz=float(fs_hz or 32000.0),  # MEArec's templates are simulated at 1/32 ms
        options=(
            ("n_exc", n_exc),
            ("n_inh", n_inh),
            ("n_bursting", n_bursting),  # how many cells burst (amplitude and shape decay within bursts)
            ("noise_mode", noise_mode),
            ("noise_level_uv", float(noise_level_uv)),
            ("rate_exc_hz", 5.0),
            ("rate_inh_hz", 15.0),
            # the template library: positions simulated per cell model
            ("templates_per_cell", DRIFT_TEMPLATES_PER_CELL if drift_um > 0 else 40),
            ("templates_version", TEMPLATES_VERSION),
        )
        + ((("one_chunk", True),) if one_chunk else ())
        + ((("cells_seed", int(cells_seed)),) if cells_seed else ())
        + ((("noise_color", True),) if noise_color else ())
        + ((("fs_hz", float(fs_hz)),) if fs_hz else ())
        + drift,
    )


register(
    _mearec(
        "mearec_nn32",
        "Neuronexus-32",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        description="MEArec Neuronexus-32 (3 columns), 16 Blue Brain cells, 6 bursting, correlated noise, 300 s",
    ),
    _mearec(
        "mearec_tetrode",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        description="MEArec silicon tetrode (4 contacts in a line, 16 µm), 6 bursting cells, correlated noise, 300 s",
    ),
    _mearec(
        "mearec_np64",
        "Neuropixels-64",
        n_exc=24,
        n_inh=8,
        n_bursting=0,
        description="MEArec Neuropixels-64, 32 Blue Brain cells, no bursting, correlated noise, 300 s",
    ),
    _mearec(
        "mearec_tetrode_bursts",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        one_chunk=True,
        description="mearec_tetrode rendered in one chunk: each burst shrinks its own late spikes, 300 s",
    ),
    _mearec(
        "mearec_nn32_bursts",
        "Neuronexus-32",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        one_chunk=True,
        description="mearec_nn32 rendered in one chunk: each burst shrinks its own late spikes, 300 s",
    ),
    # checks, never tuned on: probes and a noise level the sorter was not shaped on
    _mearec(
        "mearec_np2",
        "Neuropixels2-64",
        n_exc=24,
        n_inh=8,
        n_bursting=8,
        description="MEArec Neuropixels 2.0 (64 contacts), 32 Blue Brain cells, 8 bursting, correlated noise, 300 s",
    ),
    _mearec(
        "mearec_sqmea",
        "SqMEA-10-15",
        n_exc=18,
        n_inh=6,
        n_bursting=6,
        description="MEArec 10 x 10 MEA at 15 µm pitch, 24 Blue Brain cells, 6 bursting, correlated noise, 300 s",
    ),
    _mearec(
        "mearec_nn32_noisy",
        "Neuronexus-32",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        noise_level_uv=20.0,
        description="mearec_nn32 with twice the noise (20 µV), 300 s",
    ),
    _mearec(
        "mearec_tetrode_noisy",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        noise_level_uv=20.0,
        description="mearec_tetrode with twice the noise (20 µV), 300 s",
    ),
    _mearec(
        "mearec_np64_drift",
        "Neuropixels-64",
        n_exc=18,
        n_inh=6,
        n_bursting=6,
        one_chunk=True,
        drift_um=50.0,
        drift_velocity_um_per_min=30.0,
        description="MEArec Neuropixels-64, 24 Blue Brain cells (6 bursting) moving together up and down "
        "45 µm at 30 µm/min, correlated noise, 300 s",
    ),
    # other cells: the template library drawn anew (the cells' waveforms the sorter was shaped on
    # come from library 0)
    _mearec(
        "mearec_tetrode_cells1",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        cells_seed=1,
        description="mearec_tetrode with cells from another template library, 300 s",
    ),
    _mearec(
        "mearec_nn32_cells1",
        "Neuronexus-32",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        cells_seed=1,
        description="mearec_nn32 with cells from another template library, 300 s",
    ),
    _mearec(
        "mearec_np64_cells1",
        "Neuropixels-64",
        n_exc=24,
        n_inh=8,
        n_bursting=0,
        cells_seed=1,
        description="mearec_np64 with cells from another template library, 300 s",
    ),
    _mearec(
        "mearec_tetrode_cells2",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        cells_seed=2,
        description="mearec_tetrode with cells from a third template library, 300 s",
    ),
    _mearec(
        "mearec_tetrode_bursts_cells2",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        one_chunk=True,
        cells_seed=2,
        description="mearec_tetrode_bursts with cells from a third template library, 300 s",
    ),
    # made after the twenty-fifth pass and checked only: libraries no rule was shaped on
    _mearec(
        "mearec_tetrode_cells3",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        cells_seed=3,
        description="mearec_tetrode with cells from a fourth template library, 300 s",
    ),
    _mearec(
        "mearec_nn32_cells2",
        "Neuronexus-32",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        cells_seed=2,
        description="mearec_nn32 with cells from a third template library, 300 s",
    ),
    # made after the twenty-seventh pass and checked only: half the noise, so a burst's changes of
    # shape stand out of the noise twice as far
    _mearec(
        "mearec_nn32_quiet",
        "Neuronexus-32",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        noise_level_uv=5.0,
        description="mearec_nn32 with half the noise (5 µV), 300 s",
    ),
    _mearec(
        "mearec_tetrode_quiet",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        noise_level_uv=5.0,
        description="mearec_tetrode with half the noise (5 µV), 300 s",
    ),
    # made after the twenty-eighth pass and checked only: silicon tetrodes of other layouts
    _mearec(
        "mearec_tetrode_square",
        "tetrode-mea-s",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        description="MEArec silicon tetrode, 4 contacts on a 16 µm square, 6 bursting cells, 300 s",
    ),
    _mearec(
        "mearec_tetrode_diamond",
        "tetrode-mea-d",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        description="MEArec silicon tetrode, 4 contacts on a diamond 32 µm across, 6 bursting cells, 300 s",
    ),
    # made in the thirty-first pass and checked only: longer recordings (every MEArec one before
    # lasted 300 s; labs record for an hour, and the piece and merge rules count pairs that grow
    # with the length)
    _mearec(
        "mearec_nn32_long",
        "Neuronexus-32",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        # 10 min, not 20: MEArec's temporary files for 20 min of 32 channels (about 15 GB) did not
        # fit on this machine's disk
        duration_s=600.0,
        description="MEArec Neuronexus-32 (3 columns), 16 Blue Brain cells, 6 bursting, correlated noise, 10 min",
    ),
    _mearec(
        "mearec_tetrode_long",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        duration_s=1200.0,
        description="MEArec silicon tetrode (4 contacts in a line, 16 µm), 6 bursting cells, correlated noise, 20 min",
    ),
    # made in the thirty-second pass and checked only: MEArec's default noise (independent on
    # every channel), where every other MEArec scenario has noise correlated by distance
    _mearec(
        "mearec_tetrode_white",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        noise_mode="uncorrelated",
        description="mearec_tetrode with independent noise on every channel (MEArec's default), 300 s",
    ),
    _mearec(
        "mearec_tetrode_colored",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        noise_color=True,
        description="mearec_tetrode with MEArec's coloured noise (its spectrum shaped like a recording's), 300 s",
    ),
    _mearec(
        "mearec_nn32_white",
        "Neuronexus-32",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        noise_mode="uncorrelated",
        description="mearec_nn32 with independent noise on every channel (MEArec's default), 300 s",
    ),
    # made after the twenty-ninth pass and checked only: the wire tetrode (MEAutility's `tetrode`)
    _mearec(
        "mearec_tetrode_wire",
        "tetrode",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        description="MEArec microwire tetrode, 4 round contacts 16 µm apart, 6 bursting cells, 300 s",
    ),
    # made in the thirty-sixth pass and checked only: a probe no scenario had used
    _mearec(
        "mearec_neuroseeker",
        "Neuroseeker-128",
        n_exc=24,
        n_inh=8,
        n_bursting=8,
        description="MEArec Neuroseeker-128 (4 columns, 128 contacts), 32 Blue Brain cells, 8 bursting, 300 s",
    ),
    # made in the thirty-seventh pass and checked only: rates other than the templates' 32 kHz
    _mearec(
        "mearec_tetrode_20k",
        "tetrode-mea-l",
        n_exc=4,
        n_inh=2,
        n_bursting=6,
        fs_hz=20000.0,
        description="mearec_tetrode sampled at 20 kHz, 300 s",
    ),
    _mearec(
        "mearec_nn32_24k",
        "Neuronexus-32",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        fs_hz=24000.0,
        description="mearec_nn32 sampled at 24 kHz, 300 s",
    ),
    # made in the thirty-eighth pass and checked only: twice the cells on the same probe
    _mearec(
        "mearec_nn32_crowded",
        "Neuronexus-32",
        n_exc=24,
        n_inh=8,
        n_bursting=10,
        description="MEArec Neuronexus-32, 32 Blue Brain cells (twice mearec_nn32's), 10 bursting, 300 s",
    ),
    _mearec(
        "mearec_tetrode_crowded",
        "tetrode-mea-l",
        n_exc=7,
        n_inh=3,
        n_bursting=6,
        description="MEArec silicon tetrode with 10 cells (mearec_tetrode's 6 and 4 more), 6 bursting, 300 s",
    ),
    # made in the thirty-eighth pass and checked only: a sparse grid no scenario had used
    _mearec(
        "mearec_sqmea30",
        "SqMEA-5-30",
        n_exc=12,
        n_inh=4,
        n_bursting=6,
        description="MEArec 5 x 5 MEA at 30 µm pitch, 16 Blue Brain cells, 6 bursting, correlated noise, 300 s",
    ),
)


def _with_neuron_on_path() -> None:
    # LFPy compiles the cell models' mechanisms with nrnivmodl, which lives beside the interpreter
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def templates_spec(*, probe: str, templates_per_cell: int, seed: int, drift_um: float = 0.0) -> dict:
    import MEArec

    spec = {
        "templates_version": TEMPLATES_VERSION,
        "mearec": MEArec.__version__,
        "probe": probe,
        "n": int(templates_per_cell),
        "seed": int(seed),
    }
    if drift_um > 0:  # the keys of the static libraries stay as they were
        spec.update(drift_um=float(drift_um), drift_steps=DRIFT_STEPS)
    return spec


def ensure_templates(
    *, cache_dir: Path, probe: str, templates_per_cell: int, seed: int, n_jobs: int, drift_um: float = 0.0
) -> Path:
    """The template library of a probe, simulated once and cached as MEArec's HDF5 file. With
    ``drift_um`` every template is simulated at ``DRIFT_STEPS`` positions, each path
    ``drift_um`` long and along the probe (MEArec's drifting recordings need every path the
    same length)."""
    import MEArec

    spec = templates_spec(probe=probe, templates_per_cell=templates_per_cell, seed=seed, drift_um=drift_um)
    folder = Path(cache_dir) / "mearec_templates"
    tag = f"_drift{drift_um:g}x{DRIFT_STEPS}" if drift_um > 0 else ""
    path = folder / f"{probe}_n{templates_per_cell}{tag}_seed{seed}.h5"
    spec_file = path.with_suffix(".json")
    if path.is_file() and spec_file.is_file() and json.loads(spec_file.read_text()) == spec:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    _with_neuron_on_path()
    params = MEArec.get_default_templates_params()
    params.update(probe=probe, n=int(templates_per_cell), seed=int(seed), drifting=drift_um > 0)
    if drift_um > 0:
        d = float(drift_um)
        params.update(
            min_drift=d, max_drift=d, drift_steps=DRIFT_STEPS, drift_xlim=[0, 0], drift_ylim=[0, 0], drift_zlim=[d, d]
        )
    log.info("simulating MEArec templates on %s (%d per cell model; minutes)", probe, templates_per_cell)
    with tempfile.TemporaryDirectory(dir=folder.resolve()) as tmp:
        # MEArec writes its parameters to tmp_params_path.yaml in the working directory: keep that
        # out of the user's (and the repository's) folder
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            tempgen = MEArec.gen_templates(
                cell_models_folder=MEArec.get_default_cell_models_folder(),
                params=params,
                templates_tmp_folder=tmp,
                n_jobs=n_jobs,
                # a fresh pool per library: loky's workers outlive the call, in the folder they
                # started in, and MEArec hands them its parameter file by a relative path (a
                # second library in one process failed: "No such file ... tmp_params_path.yaml")
                joblib_backend="multiprocessing",
                verbose=False,
            )
        finally:
            os.chdir(cwd)
        partial = Path(tmp) / path.name
        MEArec.save_template_generator(tempgen, filename=str(partial))
        partial.replace(path)
    spec_file.write_text(json.dumps(spec, indent=1, sort_keys=True))
    return path


def recording_params(*, scenario: Scenario, seed: int) -> dict:
    """MEArec's recording parameters for a scenario and seed."""
    import MEArec

    o = scenario.option
    params = MEArec.get_default_recordings_params()
    params["spiketrains"].update(
        n_exc=int(o["n_exc"]),
        n_inh=int(o["n_inh"]),
        f_exc=float(o["rate_exc_hz"]),
        f_inh=float(o["rate_inh_hz"]),
        duration=float(scenario.duration_s),
    )
    bursting = int(o["n_bursting"]) > 0
    params["recordings"].update(
        noise_mode=o["noise_mode"],
        noise_level=float(o["noise_level_uv"]),
        noise_color=bool(o.get("noise_color", False)),
        filter=True,
        bursting=bursting,
        shape_mod=bursting,
        n_bursting=int(o["n_bursting"]) if bursting else None,
        dtype="float32",
        # 0: one chunk (see _mearec)
        chunk_duration=0 if o.get("one_chunk") else 10,
    )
    if o.get("fs_hz"):
        params["recordings"]["fs"] = float(o["fs_hz"])
    if o.get("drift_um", 0) > 0:
        params["recordings"].update(
            drifting=True,
            n_drifting=None,  # every cell
            drift_mode_probe="rigid",
            drift_mode_speed="slow",
            slow_drift_waveform="triangluar",  # MEArec's spelling
            # MEArec steps along a path in span / DRIFT_STEPS (not span / (DRIFT_STEPS - 1)): a sweep
            # over the whole span indexes one position below the path at its bottom, which wraps
            # round in uint16 and is clipped to the top (the cell jumps end to end). Sweep one step less.
            slow_drift_amplitude=float(o["drift_um"]) * (DRIFT_STEPS - 1) / DRIFT_STEPS,
            slow_drift_velocity=float(o["drift_velocity_um_per_min"]),
            preferred_dir=[0, 0, 1],
        )
    # one seed per random stream, all derived from the scenario seed
    params["seeds"] = {
        "spiketrains": int(seed) * 4 + 1,
        "templates": int(seed) * 4 + 2,
        "convolution": int(seed) * 4 + 3,
        "noise": int(seed) * 4 + 4,
    }
    return params


def generate_mearec(*, scenario: Scenario, seed: int, cache_dir: Path):
    """(recording in µV, ground-truth sorting) of a MEArec scenario, its cells drawn from the
    probe's template library (simulated once into ``cache_dir``)."""
    import MEArec
    from spikeinterface.core import NumpyRecording, NumpySorting
    from spikeinterface.extractors import read_mearec

    drift_um = float(scenario.option.get("drift_um", 0.0))
    templates_path = ensure_templates(
        cache_dir=cache_dir,
        probe=scenario.probe,
        templates_per_cell=int(scenario.option["templates_per_cell"]),
        seed=int(scenario.option.get("cells_seed", 0)),
        n_jobs=os.cpu_count() or 1,
        drift_um=drift_um,
    )
    folder = Path(cache_dir) / "recordings"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".mearec-") as tmp:
        recgen = MEArec.gen_recordings(
            params=recording_params(scenario=scenario, seed=seed),
            templates=str(templates_path),
            tmp_folder=tmp,
            # MEArec splits a recording into 5 s chunks whenever it has more than one job
            n_jobs=1 if scenario.option.get("one_chunk") else (os.cpu_count() or 1),
            verbose=False,
        )
        h5 = Path(tmp) / "recording.h5"
        MEArec.save_recording_generator(recgen, filename=str(h5))
        recording, sorting = read_mearec(str(h5))
        # MEArec places cells in (x = distance from the probe plane, y, z); read_mearec's probe is
        # the (y, z) plane: the ground-truth positions in that frame, then the distance
        locations = np.asarray(recgen.template_locations, dtype=float)
        truth = None
        if locations.ndim == 3:  # drifting templates: a path of positions per cell
            locations, truth = _drift_truth(recgen)
        # held in memory: the temporary HDF5 file goes away
        traces = recording.get_traces(return_in_uV=True).astype(np.float32)
        rec_mem = NumpyRecording([traces], sampling_frequency=recording.sampling_frequency)
        rec_mem.set_probe(recording.get_probe(), in_place=True)
        gt = NumpySorting.from_sorting(sorting)
    gt.set_property("gt_unit_locations", locations[:, [1, 2, 0]])
    return (rec_mem, gt) if truth is None else (rec_mem, gt, truth)


def _drift_truth(recgen) -> tuple[np.ndarray, dict]:
    """(each cell's position at no drift, the true displacement in ``ensure_true_displacement``'s
    format) of a drifting MEArec recording. A cell steps along its path of simulated positions
    from the middle one; the probe's depth is MEArec's z."""
    from MEArec.tools import extract_units_drift_vector

    paths = np.asarray(recgen.template_locations, dtype=float)
    middle = paths[:, paths.shape[1] // 2]
    drift = recgen.drift_list[0]
    fs = float(drift["drift_fs"])
    times = (np.arange(len(drift["drift_vector_um"])) + 0.5) / fs  # MEArec's bin centres
    idxs = np.asarray(drift["drift_vector_idxs"]) + paths.shape[1] // 2
    if idxs.min() < 0 or idxs.max() >= paths.shape[1]:
        raise ValueError("MEArec's drift leaves the simulated paths: lower the sweep (see recording_params)")
    depth, _ = extract_units_drift_vector(recgen=recgen, time_vector=times)
    truth = {"times_s": times, "displacement_um": depth - middle[None, :, 2], "unit_depth_um": middle[:, 2]}
    return middle, truth


register_generator("mearec", generate_mearec)
