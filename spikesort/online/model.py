"""What the stream sorts with, and where its files are: the fitted preprocessing, the detection
filter, the unit templates (index = unit id, ids only ever appended), and the state that lets
``--resume`` continue a run. Every file is replaced atomically."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikesort.atomic import write_atomic
from spikesort.stages.preprocess import PreprocessModel
from spikesort.stages.templates import Templates, sparsify

ONLINE_DIR = "online"
SPIKES_CSV = "spikes.csv"
UNITS_DIR = "units"
STATE_DIR = "state"
TRACES_FILE = "traces_ring.int16"  # the last minutes of whitened traces (online.store.RingStore)
MODEL_FILE = "model.npz"
TEMPLATES_FILE = "templates.npz"
STATE_FILE = "state.json"


@dataclass(frozen=True)
class Paths:
    out: Path

    @property
    def online(self) -> Path:
        return self.out / ONLINE_DIR

    @property
    def spikes_csv(self) -> Path:
        return self.online / SPIKES_CSV

    @property
    def units(self) -> Path:
        return self.online / UNITS_DIR

    @property
    def state(self) -> Path:
        return self.online / STATE_DIR

    @property
    def traces(self) -> Path:
        return self.state / TRACES_FILE


@dataclass
class OnlineModel:
    prep: PreprocessModel
    sign: int
    bases: np.ndarray  # (n_components, nt) temporal bases; bases[0] is the matched filter
    filter_sd: np.ndarray  # (C,) noise sd after the matched filter
    dense: np.ndarray  # (K, nt, C) whitened templates at the reference probe position; row = unit id
    pre: int
    ref_depth_um: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (K,) depth of each unit at reference

    @property
    def n_units(self) -> int:
        return len(self.dense)

    def templates(self) -> Templates:
        return sparsify(self.dense, pre=self.pre)


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_model(path: Path, m: OnlineModel) -> None:
    p = m.prep
    arrays = dict(
        sos=p.sos,
        whitening=p.whitening,
        good_channels=p.good_channels,
        noise_sd=p.noise_sd,
        reference=np.array(p.reference),
        bad=np.array(json.dumps({str(k): v for k, v in p.bad_reasons.items()})),
        artefact=np.array([p.artefact_threshold, p.artefact_pad], dtype=np.float64),
        reference_gains=np.zeros(0, np.float32) if p.reference_gains is None else p.reference_gains,
        line_cycles=np.zeros(0) if p.line_cycles is None else p.line_cycles,
        sign=np.array(m.sign),
        bases=m.bases,
        filter_sd=m.filter_sd,
        pre=np.array(m.pre),
    )
    data = _npz_bytes(arrays)
    write_atomic(path, lambda f: f.write(data))


def save_templates(path: Path, m: OnlineModel) -> None:
    data = _npz_bytes(dict(dense=m.dense, ref_depth_um=m.ref_depth_um))
    write_atomic(path, lambda f: f.write(data))


def load_model(model_path: Path, templates_path: Path) -> OnlineModel:
    with np.load(model_path) as z:
        prep = PreprocessModel(
            sos=z["sos"],
            whitening=z["whitening"],
            good_channels=z["good_channels"],
            noise_sd=z["noise_sd"],
            reference=str(z["reference"]),
            bad_reasons={int(k): v for k, v in json.loads(str(z["bad"])).items()},
            # models saved before artefact blanking, reference gains and mains lines have none of them
            artefact_threshold=float(z["artefact"][0]) if "artefact" in z else 0.0,
            artefact_pad=int(z["artefact"][1]) if "artefact" in z else 0,
            reference_gains=z["reference_gains"] if "reference_gains" in z and z["reference_gains"].size else None,
            line_cycles=z["line_cycles"] if "line_cycles" in z and z["line_cycles"].size else None,
        )
        sign, bases, filter_sd, pre = int(z["sign"]), z["bases"], z["filter_sd"], int(z["pre"])
    with np.load(templates_path) as t:
        dense, depth = t["dense"], t["ref_depth_um"]
    return OnlineModel(prep=prep, sign=sign, bases=bases, filter_sd=filter_sd, dense=dense, pre=pre, ref_depth_um=depth)


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1).encode()
    write_atomic(path, lambda f: f.write(text))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
