"""Regenerate the bundled probe files in the repo-level ``probes/`` folder.

Run from anywhere: ``python scripts/make_probes.py``. Works offline: Neuropixels geometry
comes from probeinterface's bundled catalogue (``build_neuropixels_probe``), never from
``probeinterface.get_probe`` (which downloads).

Each file is a probeinterface JSON written by ``probeinterface.write_probeinterface``.
Bundled probes map contact i to recording channel i (``device_channel_indices = arange``):
real Neuropixels recordings should be opened with their SpikeGLX/Open Ephys metadata, which
carries the channel map actually used; the bundled Neuropixels files describe the default
bank-0 layouts for data already saved in that order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import probeinterface
from probeinterface import Probe
from probeinterface.neuropixels_tools import build_neuropixels_probe

PROBES_DIR = Path(__file__).resolve().parents[1] / "probes"

# catalogue annotations we do not use: the ADC table alone is a few kB per file
_DROP_ANNOTATIONS = ("adc_sampling_table", "shank_tips")


def _neuropixels(part_number: str, contact_ids: list[str], description: str) -> Probe:
    full = build_neuropixels_probe(part_number)
    index = {cid: i for i, cid in enumerate(full.contact_ids)}
    probe = full.get_slice(np.array([index[cid] for cid in contact_ids]))
    for key in _DROP_ANNOTATIONS:
        probe.annotations.pop(key, None)
    probe.annotate(description=description)
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return probe


def neuropixels_1() -> Probe:
    # bank 0 = electrodes 0..383, the SpikeGLX default; electrode i is read on channel i
    return _neuropixels(
        "NP1000",
        [f"e{i}" for i in range(384)],
        "Neuropixels 1.0 (NP1000), bank 0: electrodes 0-383 on channels 0-383",
    )


def neuropixels_2_1shank() -> Probe:
    return _neuropixels(
        "NP2003",
        [f"e{i}" for i in range(384)],
        "Neuropixels 2.0 single shank (NP2003), bank 0: electrodes 0-383 on channels 0-383",
    )


def neuropixels_2_4shank() -> Probe:
    # the 4-shank "stripe" selection: the bottom 48 rows (96 electrodes) of every shank
    contact_ids = [f"s{shank}e{e}" for shank in range(4) for e in range(96)]
    return _neuropixels(
        "NP2013",
        contact_ids,
        "Neuropixels 2.0 four shanks (NP2013), electrodes 0-95 of each shank, ordered shank by shank on channels 0-383",
    )


def linear_32() -> Probe:
    probe = probeinterface.generate_linear_probe(num_elec=32, ypitch=25)
    probe.annotate(name="linear-32", description="32 contacts in one column, 25 um pitch")
    probe.set_device_channel_indices(np.arange(32))
    return probe


def silicon_64_2col() -> Probe:
    # second column shifted by half a pitch: the usual staggered silicon-probe layout
    probe = probeinterface.generate_multi_columns_probe(
        num_columns=2,
        num_contact_per_column=32,
        xpitch=32,
        ypitch=25,
        y_shift_per_column=[0.0, 12.5],
    )
    probe.annotate(
        name="silicon-64-2col",
        description="64 contacts in 2 staggered columns, 32 um apart, 25 um vertical pitch",
    )
    probe.set_device_channel_indices(np.arange(64))
    return probe


def tetrode() -> Probe:
    probe = Probe(ndim=2, si_units="um")
    positions = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    probe.set_contacts(positions=positions, shapes="circle", shape_params={"radius": 6})
    probe.create_auto_shape(probe_type="rect", margin=10)
    probe.set_contact_ids([str(i) for i in range(4)])
    probe.annotate(name="tetrode", description="4 contacts on the corners of a 20 um square")
    probe.set_device_channel_indices(np.arange(4))
    return probe


BUILDERS = {
    "neuropixels-1.0": neuropixels_1,
    "neuropixels-2.0-1shank": neuropixels_2_1shank,
    "neuropixels-2.0-4shank": neuropixels_2_4shank,
    "linear-32": linear_32,
    "silicon-64-2col": silicon_64_2col,
    "tetrode": tetrode,
}


def _compact(path: Path) -> None:
    # write_probeinterface indents by 4 (one number per line); keep the same content but one
    # top-level key per line so the bundled files stay small and still diff readably
    data = json.loads(path.read_text(encoding="utf8"))
    probes = data.pop("probes")
    lines = ["{"]
    for key, value in data.items():
        lines.append(f"{json.dumps(key)}: {json.dumps(value)},")
    lines.append('"probes": [')
    for i, probe in enumerate(probes):
        lines.append("{")
        items = list(probe.items())
        for j, (key, value) in enumerate(items):
            sep = "," if j < len(items) - 1 else ""
            lines.append(f"{json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}{sep}")
        lines.append("}" + ("," if i < len(probes) - 1 else ""))
    lines.append("]")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROBES_DIR, help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        probe = build()
        if "name" not in probe.annotations or not probe.annotations["name"]:
            probe.annotate(name=name)
        path = args.out / f"{name}.json"
        probeinterface.write_probeinterface(path, probe)
        _compact(path)
        # the compacting must not change what probeinterface reads back
        back = probeinterface.read_probeinterface(path).probes[0]
        assert np.array_equal(back.contact_positions, probe.contact_positions), name
        assert np.array_equal(back.device_channel_indices, probe.device_channel_indices), name
        print(f"{path}: {probe.get_contact_count()} contacts, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
