"""The probe file formats, each read as data into a ProbeGroup (checked by ``probes.load_probe`` after).

- probeinterface JSON (``.json``);
- PRB (``.prb``): the ``channel_groups = {...}`` assignment is parsed with ``ast`` and evaluated as
  literals only (plus ``range``/``list``), never executed;
- Kilosort channel map (``.mat``, MATLAB v5 or v7.3) with ``chanMap``/``chanMap0ind``, ``xcoords``,
  ``ycoords`` and optionally ``kcoords`` (shanks) and ``connected``; disconnected channels are left
  out and the map's full channel count is kept as the annotation ``n_device_channels``.

The contact checks (one channel per contact, distinct positions) live here too: the parsers run
them before probeinterface (whose own checks raise bare ValueErrors), and ``load_probe`` runs them
on every probe.
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import numpy as np
from probeinterface import Probe, ProbeGroup

from ..errors import SpikesortError
from ._common import first_line

logger = logging.getLogger(__name__)

PROBE_FILE_SUFFIXES = (".json", ".prb", ".mat")
N_DEVICE_CHANNELS = "n_device_channels"  # probe annotation: channels of the map, incl. unconnected

# a PRB `range(...)` larger than this is not a probe, it is a memory bomb
_MAX_PRB_RANGE = 100_000
_PRB_CONTACT_RADIUS_UM = 5.0


# --------------------------------------------------------------------------- by suffix; probeinterface JSON


def read_probe_file(path: Path) -> ProbeGroup:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_probe_json(path)
    if suffix == ".prb":
        return _read_prb(path)
    if suffix == ".mat":
        return _read_kilosort_mat(path)
    raise SpikesortError(
        f"probe file {path} has an unknown type '{path.suffix}': use a probeinterface .json, "
        f"a .prb or a Kilosort channel map .mat"
    )


def read_probe_json(path: Path) -> ProbeGroup:
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
        raise SpikesortError(
            f"{where}: contact_positions must be a list of (x, y) positions, got shape {positions.shape}"
        )
    wiring = probe_dict.get("device_channel_indices")
    if isinstance(wiring, list) and len(wiring) == len(positions):
        names = [str(c) for c in wiring]
    else:
        names = [f"#{i}" for i in range(len(positions))]  # contact order in the file
    check_distinct_positions(positions, names, where)


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
            "probe file %s: ignored %d statement(s) that are not plain data (lines %s); .prb files are read, never run",
            path,
            len(skipped),
            ", ".join(map(str, skipped[:10])),
        )

    groups = {k.lower(): v for k, v in env.items()}.get("channel_groups")
    if groups is None:
        raise SpikesortError(f"probe file {path} has no `channel_groups = {{...}}` assignment")
    if not isinstance(groups, dict) or not groups:
        raise SpikesortError(f"probe file {path}: channel_groups must be a non-empty dict of groups")

    probes = [_prb_group_to_probe(path, key, group) for key, group in groups.items()]
    # probeinterface would raise a bare ValueError on a channel shared by two groups
    check_unique_channels(np.concatenate([p.device_channel_indices for p in probes]), f"probe file {path}")
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
        if not isinstance(graph, (list, tuple)) or not all(isinstance(e, (list, tuple)) and len(e) == 2 for e in graph):
            raise SpikesortError(f"{where}: 'graph' must be a list of (channel, channel) pairs")
        logger.debug("%s: 'graph' ignored, neighbours come from positions", where)

    check_unique_channels(np.asarray(channels), where)
    check_distinct_positions(np.asarray(positions, dtype="float64"), [str(c) for c in channels], where)
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
    check_unique_channels(chan0, where)
    if not connected.any():
        raise SpikesortError(f"{where} marks every channel as disconnected")

    if not np.all(np.isfinite(x[connected])) or not np.all(np.isfinite(y[connected])):
        raise SpikesortError(f"{where}: a connected channel has no valid x/y coordinate")
    check_distinct_positions(np.column_stack([x, y])[connected], [str(c) for c in chan0[connected]], where)
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
            where,
            int((~connected).sum()),
            n,
        )
    probegroup = ProbeGroup()
    probegroup.add_probe(probe)
    return probegroup


def _shank_label(value: float) -> str:
    return str(int(value)) if np.isfinite(value) and value == int(value) else str(value)


# --------------------------------------------------------------------------- contact checks


def check_unique_channels(channels: np.ndarray, where: str) -> None:
    values, counts = np.unique(channels, return_counts=True)
    if np.any(counts > 1):
        raise SpikesortError(f"{where}: channel {values[counts > 1][0]} is listed more than once")


def check_distinct_positions(positions: np.ndarray, names: list[str], where: str) -> None:
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
