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
"""
from __future__ import annotations

import ast
import difflib
import json
import logging
from pathlib import Path

import numpy as np
from probeinterface import Probe, ProbeGroup

from ..errors import SpikesortError
from ._common import expanduser, first_line

logger = logging.getLogger(__name__)

__all__ = ["attach_probe", "bundled_probes_dir", "list_bundled_probes", "load_probe", "probe_channel_count"]

PROBE_FILE_SUFFIXES = (".json", ".prb", ".mat")
N_DEVICE_CHANNELS = "n_device_channels"  # probe annotation: channels of the map, incl. unconnected

# a PRB `range(...)` larger than this is not a probe, it is a memory bomb
_MAX_PRB_RANGE = 100_000
_PRB_CONTACT_RADIUS_UM = 5.0


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
        probegroup = _read_probe_file(path)
    elif path.suffix.lower() in PROBE_FILE_SUFFIXES or "/" in text or "\\" in text:
        raise SpikesortError(f"probe file not found: {path}")
    else:
        path = _bundled_probe_path(text)
        label = path.stem
        probegroup = _read_json(path)
    _fill_device_channel_indices(probegroup, label)
    _validate(probegroup, label)
    for probe in probegroup.probes:
        if not probe.annotations.get("name"):
            probe.annotate(name=label)
    logger.info(
        "probe %s: %d contacts on %d channel(s) of the recording",
        label, probegroup.get_contact_count(), probe_channel_count(probegroup),
    )
    return probegroup


def _read_probe_file(path: Path) -> ProbeGroup:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".prb":
        return _read_prb(path)
    if suffix == ".mat":
        return _read_kilosort_mat(path)
    raise SpikesortError(
        f"probe file {path} has an unknown type '{path.suffix}': use a probeinterface .json, "
        f"a .prb or a Kilosort channel map .mat"
    )


def _read_json(path: Path) -> ProbeGroup:
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpikesortError(f"probe file {path} is not valid JSON: {first_line(exc)}") from exc
    except OSError as exc:
        raise SpikesortError(f"cannot read probe file {path}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("probes"), list):
        raise SpikesortError(f"probe file {path} is not a probeinterface file: it has no 'probes' list")
    if not data["probes"]:
        raise SpikesortError(f"probe file {path} has no probes")
    for i, probe_dict in enumerate(data["probes"]):
        if not isinstance(probe_dict, dict):
            raise SpikesortError(f"probe file {path}: probe {i} is not a JSON object")
        if not probe_dict.get("contact_positions"):
            raise SpikesortError(
                f"probe file {path}: probe {i} has no contact positions (no geometry); "
                f"spikesort needs the x, y position of every contact"
            )
        _check_json_positions(path, i, probe_dict)
    try:
        return ProbeGroup.from_dict(data)
    except Exception as exc:  # probeinterface raises KeyError/ValueError/TypeError/IndexError
        logger.debug("probeinterface could not build %s", path, exc_info=True)
        raise SpikesortError(f"probe file {path} is not a valid probeinterface file: {first_line(exc)}") from exc


def _check_json_positions(path: Path, index: int, probe_dict: dict) -> None:
    where = f"probe file {path}" + (f" (probe {index})" if index else "")
    try:
        positions = np.asarray(probe_dict["contact_positions"], dtype="float64")
    except (TypeError, ValueError):
        raise SpikesortError(f"{where}: contact_positions must be a list of numeric (x, y) positions") from None
    if positions.ndim != 2 or positions.shape[1] not in (2, 3):
        raise SpikesortError(f"{where}: contact_positions must be a list of (x, y) positions, got shape {positions.shape}")
    wiring = probe_dict.get("device_channel_indices")
    if isinstance(wiring, list) and len(wiring) == len(positions):
        names = [str(c) for c in wiring]
    else:
        names = [f"#{i}" for i in range(len(positions))]  # contact order in the file
    _check_distinct_positions(positions, names, where)


# --------------------------------------------------------------------------- PRB


class _NotLiteral(Exception):
    """A PRB expression that is not plain data."""


def _prb_value(node: ast.AST, env: dict):
    """Evaluate a PRB expression made of literals, names bound earlier, range() and list().

    Nothing is executed: any other construct (attribute access, other calls, lambdas,
    comprehensions...) raises _NotLiteral.
    """
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        if any(isinstance(e, ast.Starred) for e in node.elts):
            raise _NotLiteral("starred expression")
        values = [_prb_value(e, env) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _NotLiteral("dict unpacking")
        try:
            return {_prb_value(k, env): _prb_value(v, env) for k, v in zip(node.keys, node.values)}
        except TypeError:  # a list or dict as a key
            raise _NotLiteral("unhashable dict key") from None
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        raise _NotLiteral(f"name '{node.id}' is not defined by an earlier literal assignment")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _prb_value(node.operand, env)
        if not _is_number(value):
            raise _NotLiteral("sign applied to a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _prb_value(node.left, env), _prb_value(node.right, env)
        # numbers only: list * int could allocate without bound
        if not (_is_number(left) and _is_number(right)):
            raise _NotLiteral("arithmetic on non-numbers")
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise _NotLiteral("division by zero")
        return left / right
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        args = [_prb_value(a, env) for a in node.args]
        if node.func.id == "range" and 1 <= len(args) <= 3 and all(_is_int(a) for a in args):
            if len(args) == 3 and args[2] == 0:
                raise _NotLiteral("range() with a step of 0")
            values = range(*args)
            if len(values) > _MAX_PRB_RANGE:
                raise _NotLiteral(f"range of {len(values)} values")
            return list(values)
        if node.func.id in ("list", "tuple") and len(args) == 1 and isinstance(args[0], (list, tuple)):
            return list(args[0]) if node.func.id == "list" else tuple(args[0])
        raise _NotLiteral(f"call to {node.func.id}()")
    raise _NotLiteral(type(node).__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_prb(path: Path) -> ProbeGroup:
    try:
        source = path.read_text(encoding="utf8")
    except UnicodeDecodeError as exc:
        raise SpikesortError(f"probe file {path} is not a text .prb file") from exc
    except OSError as exc:
        raise SpikesortError(f"cannot read probe file {path}: {exc.strerror or exc}") from exc
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as exc:
        where = f" on line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise SpikesortError(f"probe file {path} is not a valid .prb file: syntax error{where}") from exc

    env: dict = {}
    skipped = []
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        if isinstance(target, ast.Name):
            try:
                env[target.id] = _prb_value(stmt.value, env)
            except _NotLiteral as exc:
                if target.id.lower() == "channel_groups":
                    raise SpikesortError(
                        f"probe file {path}: channel_groups on line {stmt.lineno} is not plain data "
                        f"({exc}); spikesort reads .prb files without running them, so write the "
                        f"groups out as literal dicts or convert the probe to JSON"
                    ) from None
                env.pop(target.id, None)
                skipped.append(stmt.lineno)
        elif (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and isinstance(env.get(target.value.id), dict)
        ):
            # the `channel_groups[1] = {...}` style
            try:
                env[target.value.id][_prb_value(target.slice, env)] = _prb_value(stmt.value, env)
            except (_NotLiteral, TypeError):
                skipped.append(stmt.lineno)
        else:
            skipped.append(stmt.lineno)
    if skipped:
        logger.warning(
            "probe file %s: ignored %d statement(s) that are not plain data (lines %s); "
            ".prb files are read, never run",
            path, len(skipped), ", ".join(map(str, skipped[:10])),
        )

    groups = {k.lower(): v for k, v in env.items()}.get("channel_groups")
    if groups is None:
        raise SpikesortError(f"probe file {path} has no `channel_groups = {{...}}` assignment")
    if not isinstance(groups, dict) or not groups:
        raise SpikesortError(f"probe file {path}: channel_groups must be a non-empty dict of groups")

    probes = [_prb_group_to_probe(path, key, group) for key, group in groups.items()]
    # probeinterface would raise a bare ValueError on a channel shared by two groups
    _check_unique_channels(np.concatenate([p.device_channel_indices for p in probes]), f"probe file {path}")
    probegroup = ProbeGroup()
    for probe in probes:
        probegroup.add_probe(probe)
    return probegroup


def _prb_group_to_probe(path: Path, key, group) -> Probe:
    where = f"probe file {path}, group {key!r}"
    if not isinstance(group, dict):
        raise SpikesortError(f"{where} is not a dict with 'channels' and 'geometry'")
    geometry = group.get("geometry")
    if not geometry:
        raise SpikesortError(f"{where} has no geometry; spikesort needs the x, y position of every channel")
    channels = group.get("channels")
    if channels is None:
        if not isinstance(geometry, dict):
            raise SpikesortError(f"{where} has no 'channels' list")
        if not all(_is_int(c) for c in geometry):
            raise SpikesortError(f"{where}: the keys of 'geometry' must be channel numbers (ints >= 0)")
        channels = sorted(geometry)
    if not isinstance(channels, (list, tuple)) or not all(_is_int(c) and c >= 0 for c in channels):
        raise SpikesortError(f"{where}: 'channels' must be a list of channel numbers (ints >= 0)")
    if not channels:
        raise SpikesortError(f"{where} has no channels")
    if isinstance(geometry, dict):
        missing = [c for c in channels if c not in geometry]
        if missing:
            raise SpikesortError(f"{where}: channel {missing[0]} has no position in 'geometry'")
        positions = [geometry[c] for c in channels]
    elif isinstance(geometry, (list, tuple)) and len(geometry) == len(channels):
        positions = list(geometry)
    else:
        raise SpikesortError(f"{where}: 'geometry' must map every channel to its (x, y) position")
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(map(_is_number, p)) for p in positions):
        raise SpikesortError(f"{where}: every position in 'geometry' must be an (x, y) pair of numbers in µm")

    graph = group.get("graph")
    if graph is not None:
        # adjacency is derived from positions; the graph is checked and otherwise unused
        if not isinstance(graph, (list, tuple)) or not all(
            isinstance(e, (list, tuple)) and len(e) == 2 for e in graph
        ):
            raise SpikesortError(f"{where}: 'graph' must be a list of (channel, channel) pairs")
        logger.debug("%s: 'graph' ignored, neighbours come from positions", where)

    _check_unique_channels(np.asarray(channels), where)
    _check_distinct_positions(np.asarray(positions, dtype="float64"), [str(c) for c in channels], where)
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(
        positions=np.asarray(positions, dtype="float64"),
        shapes="circle",
        shape_params={"radius": _PRB_CONTACT_RADIUS_UM},
    )
    probe.set_contact_ids([str(c) for c in channels])
    probe.set_device_channel_indices(np.asarray(channels, dtype="int64"))
    probe.annotate(prb_group=str(key))
    return probe


# --------------------------------------------------------------------------- Kilosort .mat


def _read_mat_fields(path: Path) -> dict:
    """The arrays of a MATLAB file, flattened, for v5 (scipy) and v7.3 (HDF5) files."""
    import h5py

    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                return {k: np.asarray(f[k][()]).ravel() for k in f if isinstance(f[k], h5py.Dataset)}
        except Exception as exc:  # h5py raises OSError/KeyError/TypeError on odd files
            logger.debug("h5py could not read %s", path, exc_info=True)
            raise SpikesortError(f"probe file {path} is not a readable MATLAB v7.3 file: {first_line(exc)}") from exc
    import scipy.io

    try:
        raw = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises ValueError/MatReadError/TypeError/OSError on garbage
        logger.debug("scipy could not read %s", path, exc_info=True)
        raise SpikesortError(f"probe file {path} is not a readable MATLAB .mat file: {first_line(exc)}") from exc
    return {k: np.asarray(v).ravel() for k, v in raw.items() if not k.startswith("__")}


def _read_kilosort_mat(path: Path) -> ProbeGroup:
    fields = _read_mat_fields(path)
    where = f"Kilosort channel map {path}"
    if "xcoords" not in fields or "ycoords" not in fields:
        raise SpikesortError(f"{where} has no xcoords/ycoords (no geometry)")

    def numeric(name):
        try:
            return np.asarray(fields[name], dtype="float64")
        except (TypeError, ValueError):
            raise SpikesortError(f"{where}: {name} is not numeric") from None

    x, y = numeric("xcoords"), numeric("ycoords")
    if "chanMap0ind" in fields:
        chan0 = numeric("chanMap0ind")
    elif "chanMap" in fields:
        chan0 = numeric("chanMap") - 1  # MATLAB numbering starts at 1
    else:
        chan0 = np.arange(x.size, dtype="float64")
        logger.info("%s has no chanMap: channel i is contact i", where)
    n = x.size
    connected = np.ones(n, dtype=bool)
    if "connected" in fields:
        connected = numeric("connected") != 0
    shanks = numeric("kcoords") if "kcoords" in fields else None
    sizes = {"xcoords": x.size, "ycoords": y.size, "chanMap": chan0.size, "connected": connected.size}
    if shanks is not None:
        sizes["kcoords"] = shanks.size
    if len(set(sizes.values())) != 1:
        detail = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise SpikesortError(f"{where}: its arrays have different lengths ({detail})")
    if n == 0:
        raise SpikesortError(f"{where} has no channels")
    if not np.all(np.isfinite(chan0)) or np.any(chan0 < 0) or np.any(chan0 != np.round(chan0)):
        raise SpikesortError(f"{where}: chanMap must hold channel numbers (1-based; chanMap0ind 0-based)")
    chan0 = chan0.astype("int64")
    _check_unique_channels(chan0, where)
    if not connected.any():
        raise SpikesortError(f"{where} marks every channel as disconnected")

    if not np.all(np.isfinite(x[connected])) or not np.all(np.isfinite(y[connected])):
        raise SpikesortError(f"{where}: a connected channel has no valid x/y coordinate")
    _check_distinct_positions(np.column_stack([x, y])[connected], [str(c) for c in chan0[connected]], where)
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(
        positions=np.column_stack([x, y])[connected],
        shapes="circle",
        shape_params={"radius": _PRB_CONTACT_RADIUS_UM},
        shank_ids=None if shanks is None else [_shank_label(s) for s in shanks[connected]],
    )
    probe.set_contact_ids([str(c) for c in chan0[connected]])
    probe.set_device_channel_indices(chan0[connected])
    n_device = int(max(n, chan0.max() + 1))
    probe.annotate(**{N_DEVICE_CHANNELS: n_device})
    name = fields.get("name")
    if name is not None and name.dtype.kind in "US" and name.size:
        probe.annotate(model_name=str(name[0]))
    if not connected.all():
        logger.info(
            "%s: %d of %d channels are disconnected and left out of the probe",
            where, int((~connected).sum()), n,
        )
    probegroup = ProbeGroup()
    probegroup.add_probe(probe)
    return probegroup


def _shank_label(value: float) -> str:
    return str(int(value)) if np.isfinite(value) and value == int(value) else str(value)


# --------------------------------------------------------------------------- validation


def _check_unique_channels(channels: np.ndarray, where: str) -> None:
    values, counts = np.unique(channels, return_counts=True)
    if np.any(counts > 1):
        raise SpikesortError(f"{where}: channel {values[counts > 1][0]} is listed more than once")


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
    _check_unique_channels(connected, f"probe {label}")

    _check_distinct_positions(positions, names, f"probe {label}")


def _check_distinct_positions(positions: np.ndarray, names: list[str], where: str) -> None:
    """SpikesortError naming the channels that share a position (checked before probeinterface,
    whose own check raises a bare ValueError in set_contacts)."""
    positions = np.asarray(positions, dtype="float64")
    if positions.ndim != 2 or len(positions) < 2:
        return
    _, inverse, counts = np.unique(positions, axis=0, return_inverse=True, return_counts=True)
    inverse = np.asarray(inverse).ravel()
    if np.any(counts > 1):
        group = int(np.flatnonzero(counts > 1)[0])
        members = np.flatnonzero(inverse == group)
        coords = ", ".join(f"{v:g}" for v in positions[members[0]])
        more = int(np.sum(counts > 1)) - 1
        tail = f" (and {more} more shared positions)" if more else ""
        raise SpikesortError(
            f"{where} has contacts at the same position: channels "
            f"{' and '.join(names[m] for m in members)} at ({coords}) µm{tail}"
        )


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
            label, n_connected, n_rec, _short_list(dropped),
        )
    # select_channels_with_probegroup returns a new view (set_probegroup would mutate the input)
    return recording.select_channels_with_probegroup(probe_group.copy())


def _short_list(values: list[int], limit: int = 12) -> str:
    text = ", ".join(map(str, values[:limit]))
    return text + (f" ... ({len(values)} in all)" if len(values) > limit else "")
