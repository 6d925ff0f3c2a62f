"""The manifest of ``spikesort batch``: a TOML or CSV list of recordings, read and checked before
anything is sorted (every mistake is one SpikesortError line naming the manifest and its line)."""

from __future__ import annotations

import csv
import difflib
import glob
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from spikesort.errors import SpikesortError
from spikesort.layout import BATCH_LOG as BATCH_LOG_NAME
from spikesort.layout import BATCH_SUMMARY as SUMMARY_NAME

# manifest keys of one recording; every key but name/path may also be a TOML top-level default
RECORDING_KEYS = ("name", "path", "probe", "format", "sampling_rate", "n_channels", "dtype", "offset")
DEFAULT_KEYS = RECORDING_KEYS[2:]
TOML_TOP_KEYS = DEFAULT_KEYS + ("glob", "recording")
_GLOB_CHARS = frozenset("*?[")
_PROBE_SUFFIXES = (".json", ".prb", ".mat")


@dataclass(frozen=True)
class BatchJob:
    """One recording of a manifest, with everything ``spikesort run`` needs to open it."""

    name: str
    path: Path
    output: Path
    probe: str | None = None
    fmt: str | None = None
    sampling_rate_hz: float | None = None
    n_channels: int | None = None
    dtype: str | None = None
    offset_bytes: int = 0
    where: str = ""  # "manifest.csv, row 3": for messages


def read_manifest(path: str | Path, *, out_root: str | Path) -> list[BatchJob]:
    """Read a TOML or CSV manifest into jobs; SpikesortError (one line) for any mistake in it.

    Relative recording and probe paths are relative to the manifest's folder; every path in
    the jobs is absolute, so that workers on other machines (same shared file system) find it. A ``path`` with
    ``*``, ``?`` or ``[`` is a glob: every match is one recording, named after its file stem.
    TOML::

        probe = "linear-32"          # top-level keys: defaults for every recording
        sampling_rate = 30000
        n_channels = 32
        dtype = "int16"
        glob = "raw/*.bin"           # optional: every match is a recording

        [[recording]]                # and/or one table per recording
        name = "m2_day1"             # optional, default: the file stem
        path = "other/m2.dat"
        probe = "probes/m2.json"     # overrides the default

    CSV: a header with ``path`` and any of name, probe, format, sampling_rate, n_channels,
    dtype, offset; one row per recording (or glob); empty cells are unset; rows whose first
    cell starts with ``#`` are comments.
    """
    # absolute paths (symlinks kept): a worker on another machine has another working folder
    manifest = _absolute(path)
    if not manifest.exists():
        raise SpikesortError(f"manifest not found: {manifest}")
    if not manifest.is_file():
        raise SpikesortError(f"manifest {manifest} is not a file")
    suffix = manifest.suffix.lower()
    if suffix == ".toml":
        entries = _toml_entries(manifest)
    elif suffix == ".csv":
        entries = _csv_entries(manifest)
    else:
        raise SpikesortError(f"manifest {manifest} must be a .toml or .csv file")
    out_root = _absolute(out_root)
    jobs = []
    for where, values in entries:
        jobs.extend(_jobs_from_entry(values, where=where, base=manifest.parent, out_root=out_root))
    if not jobs:
        raise SpikesortError(f"manifest {manifest} lists no recordings")
    _check_names(jobs)
    _check_probes(jobs)
    _check_outputs(jobs, out_root)
    return jobs


def _absolute(path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _toml_entries(manifest: Path) -> list[tuple[str, dict]]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpikesortError(f"manifest {manifest} is not valid TOML: {exc}") from None
    for key in data:
        if key not in TOML_TOP_KEYS:
            hint = (
                " (name and path belong in a [[recording]] table)"
                if key in ("name", "path")
                else _suggest(key, TOML_TOP_KEYS)
            )
            raise SpikesortError(
                f"manifest {manifest}: unknown key '{key}'{hint}; top-level keys are {', '.join(TOML_TOP_KEYS)}"
            )
    defaults = {k: data[k] for k in DEFAULT_KEYS if k in data}
    entries = []
    globs = data.get("glob", [])
    if isinstance(globs, str):
        globs = [globs]
    if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs):
        raise SpikesortError(f"manifest {manifest}: glob must be a string or a list of strings")
    for pattern in globs:
        entries.append((f"manifest {manifest}, glob '{pattern}'", {**defaults, "path": pattern, "_glob": True}))
    tables = data.get("recording", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise SpikesortError(f"manifest {manifest}: write each recording as a [[recording]] table")
    for i, table in enumerate(tables, start=1):
        where = f"manifest {manifest}, recording {i}"
        for key in table:
            if key not in RECORDING_KEYS:
                raise SpikesortError(
                    f"{where}: unknown key '{key}'{_suggest(key, RECORDING_KEYS)}; keys are {', '.join(RECORDING_KEYS)}"
                )
        if "path" not in table:
            raise SpikesortError(f"{where}: no path")
        entries.append((where, {**defaults, **table}))
    return entries


def _csv_entries(manifest: Path) -> list[tuple[str, dict]]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")  # a spreadsheet may write a BOM
    except UnicodeDecodeError:
        raise SpikesortError(f"manifest {manifest} is not a UTF-8 text file") from None
    rows = list(csv.reader(io.StringIO(text)))
    # the header is the first row that is neither empty nor a comment
    numbered = [
        (i, r) for i, r in enumerate(rows, start=1) if any(c.strip() for c in r) and not r[0].strip().startswith("#")
    ]
    if not numbered:
        raise SpikesortError(f"manifest {manifest} is empty: its first line must be a header with a path column")
    header_line, header = numbered[0]
    columns = [c.strip().lower() for c in header]
    for c in columns:
        if c not in RECORDING_KEYS:
            what = "an empty column name" if not c else f"unknown column '{c}'{_suggest(c, RECORDING_KEYS)}"
            raise SpikesortError(
                f"manifest {manifest}, line {header_line}: {what}; columns are {', '.join(RECORDING_KEYS)}"
            )
    seen = set()
    for c in columns:
        if c in seen:
            raise SpikesortError(f"manifest {manifest}, line {header_line}: column '{c}' appears twice")
        seen.add(c)
    if "path" not in columns:
        raise SpikesortError(f"manifest {manifest}, line {header_line}: no 'path' column in the header")
    entries = []
    for line, row in numbered[1:]:
        where = f"manifest {manifest}, line {line}"
        if len(row) > len(columns) and any(c.strip() for c in row[len(columns) :]):
            raise SpikesortError(f"{where}: {len(row)} cells but the header has {len(columns)} columns")
        values = {c: v.strip() for c, v in zip(columns, row) if v.strip()}
        if "path" not in values:
            raise SpikesortError(f"{where}: no path")
        entries.append((where, values))
    return entries


def _is_glob(text: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in text)


def _jobs_from_entry(values: dict, *, where: str, base: Path, out_root: Path) -> list[BatchJob]:
    raw_path = values["path"]
    if not isinstance(raw_path, str) or not raw_path.strip():
        raise SpikesortError(f"{where}: path must be a non-empty string")
    raw_path = raw_path.strip()
    flags = _recording_flags(values, where=where, base=base)
    if values.get("_glob") or _is_glob(raw_path):
        if "name" in values:
            raise SpikesortError(f"{where}: a glob path ({raw_path}) takes no name: each match is named after its file")
        pattern = Path(raw_path).expanduser()
        pattern = pattern if pattern.is_absolute() else base / pattern
        matches = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True))
        if not matches:
            raise SpikesortError(f"{where}: the glob {raw_path} matches no file (looked in {base})")
        return [
            BatchJob(name=_default_name(p), path=p, output=out_root / _default_name(p), where=where, **flags)
            for p in matches
        ]
    path = Path(raw_path).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise SpikesortError(f"{where}: recording not found: {path}")
    name = values.get("name", _default_name(path))
    name = _check_name(name, where=where)
    return [BatchJob(name=name, path=path, output=out_root / name, where=where, **flags)]


def _default_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _check_name(name, *, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SpikesortError(f"{where}: name must be a non-empty string")
    name = name.strip()
    # the name becomes one folder under OUTROOT: no separators, no hidden or special names
    if (
        "/" in name
        or "\\" in name
        or "\0" in name
        or name.startswith(".")
        or name.lower() == SUMMARY_NAME
        or name.lower() == BATCH_LOG_NAME
    ):
        raise SpikesortError(
            f"{where}: '{name}' cannot be a folder name under the output root "
            f"(no '/', no leading '.', not {SUMMARY_NAME} or {BATCH_LOG_NAME})"
        )
    return name


def _number(values: dict, key: str, *, where: str, kind: type, low: float, inclusive: bool = True):
    if key not in values:
        return None
    v = values[key]
    try:
        if isinstance(v, bool):
            raise ValueError
        f = float(v)
        if kind is int:
            if f != int(f):
                raise ValueError
            f = int(f)
    except (TypeError, ValueError):
        raise SpikesortError(
            f"{where}: {key} must be a {'whole number' if kind is int else 'number'}, got {v!r}"
        ) from None
    if not math.isfinite(f) or f < low or (not inclusive and f == low):
        raise SpikesortError(f"{where}: {key} must be {'>=' if inclusive else '>'} {low:g}, got {v!r}")
    return f


def _recording_flags(values: dict, *, where: str, base: Path) -> dict:
    # io.formats, not io.recordings: the driver never imports spikeinterface, which only the workers need
    from spikesort.io.formats import FORMATS as SUPPORTED_FORMATS

    fmt = values.get("format")
    if fmt is not None:
        if not isinstance(fmt, str) or fmt.strip().lower() not in SUPPORTED_FORMATS:
            raise SpikesortError(f"{where}: unknown format {fmt!r}: choose one of {', '.join(SUPPORTED_FORMATS)}")
        fmt = fmt.strip().lower()
    dtype = values.get("dtype")
    if dtype is not None:
        import numpy as np

        try:
            ok = np.dtype(str(dtype)).kind in "iuf" and np.dtype(str(dtype)).itemsize <= 8
        except TypeError:
            ok = False
        if not isinstance(dtype, str) or not ok:
            raise SpikesortError(f"{where}: dtype must be a numeric type such as int16 or float32, got {dtype!r}")
    probe = values.get("probe")
    if probe is not None:
        if not isinstance(probe, str) or not probe.strip():
            raise SpikesortError(f"{where}: probe must be a bundled probe name or a probe file path")
        probe = probe.strip()
        p = Path(probe).expanduser()
        # a path-like probe is relative to the manifest; a bare name is a bundled probe
        if not p.is_absolute() and (p.suffix.lower() in _PROBE_SUFFIXES or "/" in probe or "\\" in probe):
            probe = str(base / p)
    rate = _number(values, "sampling_rate", where=where, kind=float, low=0.0, inclusive=False)
    n_channels = _number(values, "n_channels", where=where, kind=int, low=1)
    offset = _number(values, "offset", where=where, kind=int, low=0)
    return dict(
        probe=probe, fmt=fmt, sampling_rate_hz=rate, n_channels=n_channels, dtype=dtype, offset_bytes=offset or 0
    )


def _check_names(jobs: list[BatchJob]) -> None:
    # case-insensitive: two names differing in case are one folder on macOS and Windows
    seen: dict[str, BatchJob] = {}
    for job in jobs:
        key = job.name.lower()
        if key in seen:
            first = seen[key]
            raise SpikesortError(
                f"two recordings are named '{job.name}' ({first.where}: {first.path}; "
                f"{job.where}: {job.path}): give them distinct names"
            )
        seen[key] = job


def _check_probes(jobs: list[BatchJob]) -> None:
    from spikesort.io.probes import load_probe

    checked: set = set()
    for job in jobs:
        if job.probe is None or job.probe in checked:
            continue
        try:
            load_probe(job.probe)
        except SpikesortError as exc:
            raise SpikesortError(f"{job.where}: {exc}") from None
        checked.add(job.probe)


def _check_outputs(jobs: list[BatchJob], out_root: Path) -> None:
    if out_root.exists() and not out_root.is_dir():
        raise SpikesortError(f"output root {out_root} is a file, not a folder")
    inputs = [(j, Path(j.path).resolve()) for j in jobs]
    inputs += [(j, Path(j.probe).resolve()) for j in jobs if j.probe and Path(j.probe).is_file()]
    for job in jobs:
        target = job.output.resolve()
        for owner, p in inputs:
            # a resumed or overwritten folder must never hold an input
            if p == target or target in p.parents:
                raise SpikesortError(
                    f"output folder {job.output} (recording '{job.name}') contains the input {p} "
                    f"of {owner.where}: choose another output root"
                )
