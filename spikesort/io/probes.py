"""Probe geometry: load it from a file or a bundled name, check it, attach it to a recording.

Accepted probe specs (``load_probe``):

- a probeinterface JSON file (``.json``);
- a PRB file (``.prb``), read as data: the ``channel_groups = {...}`` assignment is parsed
  with ``ast`` and evaluated as literals only (plus ``range``/``list``), never executed;
- a Kilosort channel map (``.mat``, MATLAB v5 or v7.3) with ``chanMap``/``chanMap0ind``,
  ``xcoords``, ``ycoords`` and optionally ``kcoords`` (shanks) and ``connected``;
- the name of a bundled probe in the repo-level ``probes/`` folder (``neuropixels-1.0``...).

Disconnected channels of a Kilosort map are dropped from the probe; the probe remembers the
map's full channel count (annotation ``n_device_channels``) so that ``attach_probe`` can
check it against the recording and drop the same channels from the recording.

The file parsers are in ``probe_files``; this module checks what they return, whatever its source.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import numpy as np
from probeinterface import Probe, ProbeGroup

from ..errors import SpikesortError
from ._common import expanduser
from .probe_files import (
    N_DEVICE_CHANNELS,
    PROBE_FILE_SUFFIXES,
    check_distinct_positions,
    check_unique_channels,
    read_probe_file,
    read_probe_json,
)

logger = logging.getLogger(__name__)

__all__ = ["attach_probe", "bundled_probes_dir", "list_bundled_probes", "load_probe", "probe_channel_count"]


# --------------------------------------------------------------------------- bundled probes


def bundled_probes_dir() -> Path:
    """The folder of bundled probeinterface JSON files.

    An installed wheel ships them as the package ``spikesort.probes``; a source checkout
    (also an editable install) keeps them in the repo-level ``probes/`` folder.
    """
    installed = Path(__file__).resolve().parents[1] / "probes"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "probes"


def list_bundled_probes() -> list[str]:
    """Names of the bundled probes (file stems), sorted."""
    folder = bundled_probes_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def _bundled_probe_path(name: str) -> Path:
    names = list_bundled_probes()
    by_lower = {n.lower(): n for n in names}
    if name.lower() in by_lower:
        return bundled_probes_dir() / f"{by_lower[name.lower()]}.json"
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(by_lower[c] for c in close)}? " if close else ""
    raise SpikesortError(
        f"unknown probe '{name}': not a file and not a bundled probe name; {hint}"
        f"see `spikesort probes list`, or pass a .json, .prb or Kilosort .mat probe file"
    )


# --------------------------------------------------------------------------- load_probe


def load_probe(spec: str | Path) -> ProbeGroup:
    """Load and check a probe from a file path or a bundled probe name.

    Returns a ProbeGroup with 2D positions in µm and device_channel_indices set on every
    probe. Raises SpikesortError for a missing, unreadable or invalid probe.
    """
    text = str(spec).strip()
    if not text:
        raise SpikesortError("no probe given: pass a probe file or a bundled probe name")
    path = expanduser(Path(text))
    if path.is_dir():
        raise SpikesortError(f"probe {path} is a folder: pass a .json, .prb or .mat probe file")
    if path.is_file():
        label = path.name
        probegroup = read_probe_file(path)
    elif path.suffix.lower() in PROBE_FILE_SUFFIXES or "/" in text or "\\" in text:
        raise SpikesortError(f"probe file not found: {path}")
    else:
        path = _bundled_probe_path(text)
        label = path.stem
        probegroup = read_probe_json(path)
    _fill_device_channel_indices(probegroup, label)
    _validate(probegroup, label)
    for probe in probegroup.probes:
        if not probe.annotations.get("name"):
            probe.annotate(name=label)
    logger.info(
        "probe %s: %d contacts on %d channel(s) of the recording",
        label,
        probegroup.get_contact_count(),
        probe_channel_count(probegroup),
    )
    return probegroup


# --------------------------------------------------------------------------- checks of a loaded probe


def _fill_device_channel_indices(probegroup: ProbeGroup, label: str) -> None:
    # a JSON without wiring: contact i of the file is channel i of the recording
    if all(p.device_channel_indices is not None for p in probegroup.probes):
        return
    used = [p.device_channel_indices for p in probegroup.probes if p.device_channel_indices is not None]
    start = int(max((d.max() for d in used if d.size), default=-1)) + 1
    for probe in probegroup.probes:
        if probe.device_channel_indices is None:
            n = probe.get_contact_count()
            probe.device_channel_indices = np.arange(start, start + n, dtype="int64")
            start += n
    logger.info("probe %s has no channel map: contact i is read from channel i", label)


def _contact_names(probegroup: ProbeGroup) -> list[str]:
    names = []
    for probe in probegroup.probes:
        ids = probe.contact_ids
        for i, dci in enumerate(probe.device_channel_indices):
            if dci >= 0:
                names.append(f"{int(dci)}")
            else:
                names.append(f"(unconnected contact {ids[i] if ids[i] else i})")
    return names


def _validate(probegroup: ProbeGroup, label: str) -> None:
    if not probegroup.probes or probegroup.get_contact_count() == 0:
        raise SpikesortError(f"probe {label} has no contacts")
    for probe in probegroup.probes:
        if probe.ndim != 2:
            raise SpikesortError(f"probe {label} has {probe.ndim}D positions; spikesort needs 2D (x, y) positions")
        if probe.si_units != "um":
            raise SpikesortError(f"probe {label} gives positions in '{probe.si_units}'; spikesort needs µm ('um')")
    positions = np.concatenate([p.contact_positions for p in probegroup.probes], axis=0)
    names = _contact_names(probegroup)
    bad = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
    if bad.size:
        raise SpikesortError(f"probe {label}: channel {names[bad[0]]} has no valid position ({positions[bad[0]]})")
    dci = np.concatenate([p.device_channel_indices for p in probegroup.probes])
    connected = dci[dci >= 0]
    if connected.size == 0:
        raise SpikesortError(f"probe {label} has no contact wired to a recording channel")
    check_unique_channels(connected, f"probe {label}")

    check_distinct_positions(positions, names, f"probe {label}")


# --------------------------------------------------------------------------- attach


def probe_channel_count(probegroup: ProbeGroup) -> int:
    """How many channels a recording must have for this probe (unconnected ones included)."""
    declared = [int(p.annotations.get(N_DEVICE_CHANNELS, 0)) for p in probegroup.probes]
    dci = np.concatenate([p.device_channel_indices for p in probegroup.probes])
    return int(max(max(declared, default=0), int(dci.max()) + 1 if dci.size else 0))


def _probe_label(probegroup: ProbeGroup) -> str:
    probe = probegroup.probes[0]
    return str(probe.annotations.get("name") or probe.annotations.get("model_name") or "probe")


def attach_probe(recording, probe_group: ProbeGroup):
    """Return a view of ``recording`` with ``probe_group`` attached; the input is not modified.

    The recording must have exactly the probe's channel count (``probe_channel_count``).
    Channels the probe leaves unconnected (a Kilosort map's ``connected == false``, a PRB
    that omits dead channels) are dropped from the returned recording.
    """
    if not isinstance(probe_group, ProbeGroup):
        if isinstance(probe_group, Probe):
            group = ProbeGroup()
            # Probe.copy() drops the wiring; a dict round trip keeps it
            group.add_probe(Probe.from_dict(probe_group.to_dict()))
            probe_group = group
        else:
            raise SpikesortError(f"attach_probe needs a probeinterface ProbeGroup, got {type(probe_group).__name__}")
    label = _probe_label(probe_group)
    if any(p.device_channel_indices is None for p in probe_group.probes):
        raise SpikesortError(f"probe {label} has no channel map (device_channel_indices); load it with load_probe")
    expected = probe_channel_count(probe_group)
    n_rec = recording.get_num_channels()
    if expected != n_rec:
        hint = ""
        if n_rec == expected + 1:
            hint = " (an extra sync channel? open a SpikeGLX .bin with its .meta beside it)"
        raise SpikesortError(f"probe {label} has {expected} channels but the recording has {n_rec}{hint}")
    if recording.has_probe():
        logger.info("replacing the probe that came with the recording by %s", label)
    n_connected = int(sum(int(np.sum(p.device_channel_indices >= 0)) for p in probe_group.probes))
    if n_connected < n_rec:
        connected = np.concatenate([p.device_channel_indices for p in probe_group.probes])
        dropped = sorted(set(range(n_rec)) - set(int(c) for c in connected if c >= 0))
        logger.info(
            "probe %s connects %d of the recording's %d channels: dropping channel(s) %s",
            label,
            n_connected,
            n_rec,
            _short_list(dropped),
        )
    # select_channels_with_probegroup returns a new view (set_probegroup would mutate the input)
    return recording.select_channels_with_probegroup(probe_group.copy())


def _short_list(values: list[int], limit: int = 12) -> str:
    text = ", ".join(map(str, values[:limit]))
    return text + (f" ... ({len(values)} in all)" if len(values) > limit else "")
