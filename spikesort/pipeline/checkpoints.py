"""Checkpoints: each stage's result saved atomically with a fingerprint of its inputs, so that an
interrupted run continues from the first stage whose inputs changed (``spikesort run --resume``).

While a run is unfinished its output folder holds::

    OUT/.spikesort_state/<stage>.npz   the stage's arrays
    OUT/.spikesort_state/<stage>.json  its fingerprint and small values; written after the .npz
    OUT/.spikesort_state/temp_wh.dat   the whitened traces (part of preprocessing's result)

A stage counts as finished only when its .json exists, and every file goes to a hidden temporary
name and is renamed into place, so a kill at any instant leaves either the previous state or the
new one, never a half-written file that looks finished. A stage's fingerprint is the recording's
identity, the spikesort version, the parameters the stage read (see :class:`ParamReads`) and the
fingerprint of the stage before it, so a change anywhere invalidates that stage and all later ones.

When a run completes, ``spikesort_complete.json`` is written last (after the Phy files and
spikesort_run.json) and the state folder is deleted: a folder without that marker is unfinished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import typing
from pathlib import Path

import numpy as np

from spikesort.atomic import write_atomic
from spikesort.layout import LOG_FILE, MARKER_FILE, RUN_FILE, STATE_DIR, TRACES_FILE  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


# the order of the stages; a checkpoint is valid only if the one before it is
STAGES = ("preprocess", "detect", "cluster", "match", "curate", "export")
# parameters that never change a result (threads: see tests/test_reliability.py, determinism)
NOT_FINGERPRINTED = frozenset({"n_jobs"})
# Test hook, documented so nobody mistakes it for a feature: when this variable names a point
# ("detect" = right after the detect checkpoint is written, "match:2" = after the 2nd chunk of
# matching, "cluster:start", "export" = after the Phy files, before the completion marker), the
# process sends itself SIGKILL there (or the signal named after '@', e.g. "match:2@SIGINT").
# tests/test_reliability.py uses it to stop real runs at exact places.
KILL_ENV = "SPIKESORT_TEST_KILL_AT"
_FORMAT = 1


# --------------------------------------------------------------------------- atomic files


def write_json_atomic(path: Path, data) -> None:
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    write_atomic(path, lambda fh: fh.write(text.encode("utf8")))


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def digest(data) -> str:
    """A short stable hash of JSON-able data and numpy arrays (by dtype, shape and bytes)."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, np.ndarray):
            a = np.ascontiguousarray(x)
            h.update(f"<{a.dtype.str}{a.shape}>".encode())
            h.update(a.tobytes())
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(json.dumps(x, sort_keys=True, default=str).encode())

    feed(data)
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- parameters


class ParamReads:
    """A read-only stand-in for :class:`spikesort.params.Params` that notes which parameters are
    read in each stage, so that a stage's fingerprint holds exactly the parameters it depends on.

    Reads before the first :meth:`start` belong to the shared setup (chunk sizes, windows) and so
    to every stage. Calling a method (``to_dict()``...) counts as reading every parameter.
    """

    def __init__(self, params):
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "_names", frozenset(f.name for f in dataclasses.fields(params)))
        object.__setattr__(self, "_reads", {"setup": set()})
        object.__setattr__(self, "_current", "setup")

    def __getattr__(self, name):
        if name.startswith("_"):  # copy/pickle probes, and _params before __init__ ran
            raise AttributeError(name)
        value = getattr(self._params, name)
        if name in self._names:
            self._reads[self._current].add(name)
        else:
            self._reads[self._current].update(self._names)
        return value

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def start(self, stage: str) -> None:
        self._reads[stage] = set()
        object.__setattr__(self, "_current", stage)

    def read_values(self, stage: str) -> dict:
        """{name: value} of the parameters read by the setup and by ``stage``."""
        names = (self._reads["setup"] | self._reads.get(stage, set())) - NOT_FINGERPRINTED
        values = self._params.to_dict()
        return {n: values[n] for n in sorted(names)}

    @property
    def params(self):
        return self._params


def param_values(params) -> dict:
    """Every fingerprinted parameter as JSON values."""
    params = params.params if isinstance(params, ParamReads) else params
    return {k: v for k, v in params.to_dict().items() if k not in NOT_FINGERPRINTED}


def param_differences(saved: dict, current: dict) -> list[str]:
    """'name: old -> new' for every parameter of ``saved`` whose value differs in ``current``."""
    out = []
    for name, old in sorted(saved.items()):
        new = current.get(name, "(unknown)")
        if new != old:
            out.append(f"{name}: {old} -> {new}")
    return out


# --------------------------------------------------------------------------- stage values


def pack(obj, prefix: str = "") -> tuple[dict, dict]:
    """A dataclass (nested dataclasses allowed) as (arrays for an .npz, JSON values)."""
    arrays, values = {}, {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = prefix + f.name
        if isinstance(v, np.ndarray):
            arrays[key] = v
        elif dataclasses.is_dataclass(v):
            a, s = pack(v, key + ".")
            arrays.update(a)
            values.update(s)
        elif isinstance(v, dict):
            # as pairs, so integer keys stay integers
            values[key] = {"pairs": [[_plain(k), _plain(x)] for k, x in v.items()]}
        else:
            values[key] = _plain(v)
    return arrays, values


def unpack(cls, arrays, values: dict, prefix: str = ""):
    """The inverse of :func:`pack`."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        hint = hints.get(f.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[f.name] = unpack(hint, arrays, values, key + ".")
        elif key in arrays:
            kwargs[f.name] = arrays[key]
        else:
            v = values[key]
            if isinstance(v, dict) and set(v) == {"pairs"}:
                v = {k: x for k, x in v["pairs"]}
            kwargs[f.name] = v
    return cls(**kwargs)


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


# --------------------------------------------------------------------------- the checkpoints


class Checkpoints:
    """The stage checkpoints of one output folder, for one run's inputs (``identity``: recording
    fingerprint, geometry, spikesort version). Stages are loaded or saved in :data:`STAGES` order;
    each one chains to the fingerprint of the one before it."""

    def __init__(self, folder: Path, *, identity: dict):
        self.folder = Path(folder)
        self.dir = self.folder / STATE_DIR
        self.identity = identity
        self._upstream: str | None = None
        self._pending: dict = {}  # stage -> (thread, error list) of saves finishing in the background

    @property
    def traces_path(self) -> Path:
        return self.dir / TRACES_FILE

    def _meta_path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def _data_path(self, stage: str) -> Path:
        return self.dir / f"{stage}.npz"

    def load(self, stage: str, cls, params):
        """The saved result of ``stage`` as a ``cls``, or None when it is missing or was made
        from other inputs (then it and every later stage must be recomputed)."""
        self.wait([stage])
        meta = _read_json(self._meta_path(stage))
        if meta is None:
            return None
        why = None
        if meta.get("format") != _FORMAT or meta.get("identity") != self.identity:
            why = "the recording or the spikesort version changed"
        elif meta.get("upstream") != self._upstream:
            why = "an earlier stage was recomputed"
        else:
            changed = param_differences(meta.get("params", {}), param_values(params))
            if changed:
                why = "parameters changed (" + "; ".join(changed) + ")"
            else:
                for name, size, mtime in meta.get("files", []):
                    p = self.dir / name
                    if not p.is_file() or p.stat().st_size != size or p.stat().st_mtime_ns != mtime:
                        why = f"{name} is missing or was modified"
        if why is None:
            try:
                with np.load(self._data_path(stage), allow_pickle=False) as npz:
                    obj = unpack(cls, {k: npz[k] for k in npz.files}, meta["values"])
            except Exception as exc:  # a damaged or foreign file: recompute rather than fail
                why = f"its checkpoint cannot be read ({type(exc).__name__}: {exc})"
        if why is not None:
            log.info("stage %s: recomputed, %s", stage, why)
            return None
        self._upstream = meta["key"]
        log.info("stage %s: reused from the checkpoint in %s", stage, self.dir)
        return obj

    def discard_from(self, stage: str) -> None:
        """Forget ``stage`` and every later one (before recomputing ``stage``)."""
        self.wait(STAGES[STAGES.index(stage) :])
        for s in reversed(STAGES[STAGES.index(stage) :]):
            self._meta_path(s).unlink(missing_ok=True)
            self._data_path(s).unlink(missing_ok=True)

    def save(self, stage: str, obj, *, reads: dict, files=(), background: bool = False) -> None:
        """Save ``obj`` (a dataclass) as the result of ``stage``; ``files`` in the state folder
        belong to it too (they are fsynced and their size and mtime recorded).

        ``background``: write it on a thread, so the next stage starts while a large file is
        flushed to disk (~2 s for 1 GB); the checkpoint exists once :meth:`wait` returns, and
        loading or discarding that stage waits for it first."""
        self.wait([stage])
        self.dir.mkdir(parents=True, exist_ok=True)
        arrays, values = pack(obj)
        meta = {
            "format": _FORMAT,
            "stage": stage,
            "identity": self.identity,
            "upstream": self._upstream,
            "params": reads,
        }
        meta["key"] = digest(meta)
        self._upstream = meta["key"]

        def finish():
            write_atomic(self._data_path(stage), lambda fh: np.savez(fh, **arrays))
            entries = []
            for p in files:
                p = Path(p)
                fsync_file(p)
                st = p.stat()
                entries.append([p.name, st.st_size, st.st_mtime_ns])
            meta.update(values=values, files=entries)
            write_json_atomic(self._meta_path(stage), meta)

        if not background:
            finish()
            return
        errors: list = []

        def run():
            try:
                finish()
            except BaseException as exc:  # raised again by wait(), in the sorting thread
                errors.append(exc)

        thread = threading.Thread(target=run, name=f"checkpoint-{stage}", daemon=True)
        _BACKGROUND.add(thread)
        thread.start()
        self._pending[stage] = (thread, errors)

    def wait(self, stages=None) -> None:
        """Block until the background saves of ``stages`` (all by default) are on disk; raise
        the first error one of them had."""
        failed = []
        for stage in list(self._pending) if stages is None else [s for s in stages if s in self._pending]:
            thread, errors = self._pending.pop(stage)
            thread.join()
            failed += errors
        if failed:
            raise failed[0]

    def has(self, stage: str) -> bool:
        return self._meta_path(stage).is_file()

    def drop_unfinished_traces(self) -> None:
        """Delete a scratch trace file that preprocessing did not finish: no resume can use it."""
        settle()
        if not self.has("preprocess"):
            from .traces import store_files

            for p in store_files(self.traces_path):
                p.unlink(missing_ok=True)
            if self.dir.is_dir() and not any(self.dir.iterdir()):
                self.dir.rmdir()


# the threads of background saves (Checkpoints.save(background=True)) of every run in this process
_BACKGROUND: set = set()


def settle() -> None:
    """Wait for every background save of this process to finish (their errors stay with their
    Checkpoints' wait())."""
    for thread in list(_BACKGROUND):
        thread.join()
        _BACKGROUND.discard(thread)


def kill_point(name: str) -> None:
    """The test hook described at :data:`KILL_ENV`. Background saves finish first, so a kill
    at a point means: everything before it is on disk."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    point, _, sig = spec.partition("@")
    if point == name:
        settle()
        log.debug("test hook %s=%s: signalling this process", KILL_ENV, spec)
        os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))


# --------------------------------------------------------------------------- folder status


def finished_stages(folder: Path) -> list[str]:
    """The stages with a checkpoint in ``folder`` (not checked against any input)."""
    state = Path(folder) / STATE_DIR
    return [s for s in STAGES if (state / f"{s}.json").is_file()]


def read_marker(folder: Path) -> dict | None:
    marker = _read_json(Path(folder) / MARKER_FILE)
    return marker if isinstance(marker, dict) and "identity" in marker else None


def is_complete(folder) -> bool:
    """True when ``folder`` holds a finished run (its completion marker, written last)."""
    return read_marker(Path(folder)) is not None


def is_unfinished(folder) -> bool:
    """True when ``folder`` holds a spikesort run that has not finished (resumable): it has
    checkpoints, or the log of a run that stopped before its first one, but no completion marker."""
    folder = Path(folder)
    if not folder.is_dir() or is_complete(folder):
        return False
    if (folder / STATE_DIR).is_dir():
        return True
    # a folder finished by a version without the marker has its run record
    return (folder / LOG_FILE).is_file() and not (folder / RUN_FILE).is_file()


def is_resumable_folder(folder) -> bool:
    """True when ``--resume`` may write into ``folder``: one of our runs (finished or not), or
    a folder that holds nothing but a spikesort log (a run stopped before its first stage)."""
    folder = Path(folder)
    if is_complete(folder) or (folder / STATE_DIR).is_dir():
        return True
    return folder.is_dir() and all(p.name == LOG_FILE for p in folder.iterdir())


def write_marker(folder: Path, *, identity: dict, params) -> None:
    """Mark ``folder`` finished (call this after every other output is in place)."""
    write_json_atomic(
        Path(folder) / MARKER_FILE, {"format": _FORMAT, "identity": identity, "params": param_values(params)}
    )


def remove_state(folder: Path) -> None:
    """Delete the checkpoints and the scratch traces of a finished run."""
    shutil.rmtree(Path(folder) / STATE_DIR, ignore_errors=True)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf8"))
    except (OSError, ValueError):
        return None
