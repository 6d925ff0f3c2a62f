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

import dataclasses
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .scenarios import GENERATOR_VERSION, STORAGE_GAIN_UV, save_generated

log = logging.getLogger(__name__)

# bump when the template library's generation changes: cached libraries are then rebuilt
TEMPLATES_VERSION = 1


@dataclasses.dataclass(frozen=True)
class MearecScenario:
    """One MEArec recording; every field but the description is part of its cache key."""

    name: str
    probe: str  # a MEAutility probe name
    n_exc: int
    n_inh: int
    duration_s: float
    n_bursting: int  # how many of the cells burst (amplitude and shape decay within bursts)
    noise_mode: str  # "uncorrelated" or "distance-correlated"
    noise_level_uv: float
    templates_per_cell: int  # size of the template library: positions simulated per cell model
    description: str
    rate_exc_hz: float = 5.0
    rate_inh_hz: float = 15.0

    drift: str = "none"  # the templates do not move

    @property
    def num_units(self) -> int:
        return self.n_exc + self.n_inh


MEAREC_SCENARIOS = {
    s.name: s
    for s in (
        MearecScenario(
            "mearec_nn32",
            "Neuronexus-32",
            12,
            4,
            300.0,
            6,
            "distance-correlated",
            10.0,
            40,
            "MEArec Neuronexus-32 (3 columns), 16 Blue Brain cells, 6 bursting, correlated noise, 300 s",
        ),
        MearecScenario(
            "mearec_tetrode",
            "tetrode-mea-l",
            4,
            2,
            300.0,
            6,
            "distance-correlated",
            10.0,
            40,
            "MEArec silicon tetrode (4 contacts in a line, 16 µm), 6 bursting cells, correlated noise, 300 s",
        ),
        MearecScenario(
            "mearec_np64",
            "Neuropixels-64",
            24,
            8,
            300.0,
            0,
            "distance-correlated",
            10.0,
            40,
            "MEArec Neuropixels-64, 32 Blue Brain cells, no bursting, correlated noise, 300 s",
        ),
    )
}


def _with_neuron_on_path() -> None:
    # LFPy compiles the cell models' mechanisms with nrnivmodl, which lives beside the interpreter
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def templates_spec(*, probe: str, templates_per_cell: int, seed: int) -> dict:
    import MEArec

    return {
        "templates_version": TEMPLATES_VERSION,
        "mearec": MEArec.__version__,
        "probe": probe,
        "n": int(templates_per_cell),
        "seed": int(seed),
    }


def ensure_templates(*, cache_dir: Path, probe: str, templates_per_cell: int, seed: int, n_jobs: int) -> Path:
    """The template library of a probe, simulated once and cached as MEArec's HDF5 file."""
    import MEArec

    spec = templates_spec(probe=probe, templates_per_cell=templates_per_cell, seed=seed)
    folder = Path(cache_dir) / "mearec_templates"
    path = folder / f"{probe}_n{templates_per_cell}_seed{seed}.h5"
    spec_file = path.with_suffix(".json")
    if path.is_file() and spec_file.is_file() and json.loads(spec_file.read_text()) == spec:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    _with_neuron_on_path()
    params = MEArec.get_default_templates_params()
    params.update(probe=probe, n=int(templates_per_cell), seed=int(seed), drifting=False)
    log.info("simulating MEArec templates on %s (%d per cell model; minutes)", probe, templates_per_cell)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tempgen = MEArec.gen_templates(
            cell_models_folder=MEArec.get_default_cell_models_folder(),
            params=params,
            templates_tmp_folder=tmp,
            n_jobs=n_jobs,
            verbose=False,
        )
        partial = Path(tmp) / path.name
        MEArec.save_template_generator(tempgen, filename=str(partial))
        partial.replace(path)
    spec_file.write_text(json.dumps(spec, indent=1, sort_keys=True))
    return path


def recording_spec(*, scenario: MearecScenario, seed: int) -> dict:
    import MEArec
    import spikeinterface

    fields = dataclasses.asdict(scenario)
    del fields["description"]
    return dict(
        family="mearec",
        generator_version=GENERATOR_VERSION,
        templates_version=TEMPLATES_VERSION,
        mearec=MEArec.__version__,
        spikeinterface=spikeinterface.__version__,
        storage_gain_uv=STORAGE_GAIN_UV,
        seed=int(seed),
        **fields,
    )


def recording_params(*, scenario: MearecScenario, seed: int) -> dict:
    """MEArec's recording parameters for a scenario and seed."""
    import MEArec

    params = MEArec.get_default_recordings_params()
    st = params["spiketrains"]
    st.update(
        n_exc=scenario.n_exc,
        n_inh=scenario.n_inh,
        f_exc=scenario.rate_exc_hz,
        f_inh=scenario.rate_inh_hz,
        duration=float(scenario.duration_s),
    )
    rec = params["recordings"]
    rec.update(
        noise_mode=scenario.noise_mode,
        noise_level=float(scenario.noise_level_uv),
        filter=True,
        chunk_duration=10,
        bursting=scenario.n_bursting > 0,
        shape_mod=scenario.n_bursting > 0,
        n_bursting=scenario.n_bursting if scenario.n_bursting > 0 else None,
        dtype="float32",
    )
    # one seed per random stream, all derived from the scenario seed
    params["seeds"] = {
        "spiketrains": int(seed) * 4 + 1,
        "templates": int(seed) * 4 + 2,
        "convolution": int(seed) * 4 + 3,
        "noise": int(seed) * 4 + 4,
    }
    return params


def ensure_mearec_recording(*, cache_dir: Path, scenario: MearecScenario, seed: int, n_jobs: int) -> Path:
    """Generate and save a MEArec scenario once; return its folder (``recording/``, ``gt_sorting.npz``)."""
    templates_path = ensure_templates(
        cache_dir=cache_dir, probe=scenario.probe, templates_per_cell=scenario.templates_per_cell, seed=0, n_jobs=n_jobs
    )

    def generate():
        import MEArec
        from spikeinterface.extractors import read_mearec

        params = recording_params(scenario=scenario, seed=seed)
        folder = Path(cache_dir) / "recordings"
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".mearec-") as tmp:
            recgen = MEArec.gen_recordings(
                params=params, templates=str(templates_path), tmp_folder=tmp, n_jobs=n_jobs, verbose=False
            )
            h5 = Path(tmp) / "recording.h5"
            MEArec.save_recording_generator(recgen, filename=str(h5))
            recording, sorting = read_mearec(str(h5))
            # MEArec's probe is in its y-z plane; read_mearec maps it to x-y for the probe.
            # the ground-truth positions, in the same (x, y) frame plus the distance from the probe
            locations = np.asarray(recgen.template_locations, dtype=float)
            if locations.ndim == 3:  # drifting templates: the first position
                locations = locations[:, 0]
            sorting.set_property("gt_unit_locations", locations[:, [1, 2, 0]])
            # materialise before the temporary HDF5 file goes away
            from spikeinterface.core import NumpyRecording, NumpySorting

            traces = recording.get_traces(return_in_uV=True).astype(np.float32)
            rec_mem = NumpyRecording([traces], sampling_frequency=recording.sampling_frequency)
            rec_mem.set_probe(recording.get_probe(), in_place=True)
            gt = NumpySorting.from_sorting(sorting)
            gt.set_property("gt_unit_locations", locations[:, [1, 2, 0]])
        return rec_mem, gt

    return save_generated(
        folder=Path(cache_dir) / "recordings" / f"{scenario.name}_seed{seed}",
        spec=recording_spec(scenario=scenario, seed=seed),
        generate=generate,
        n_jobs=n_jobs,
    )
