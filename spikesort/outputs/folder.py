"""The one reader of a finished output folder (file names: :mod:`spikesort.layout`).

``read_folder(OUT)`` gives a :class:`FolderFiles`: the run record, the values of params.py, each
array by file name (loaded when asked for), the ``cluster_*.tsv`` tables and the labels. It only
reads what it is asked for, and decides nothing: the result, the curated reader, the report,
``spikesort info`` and the batch each keep their own rules (which files they need, what a missing
file means) and their own messages. numpy and json only: the batch driver and ``spikesort info``
use it without the sorter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.io.phy import read_params_py
from spikesort.layout import AUTO_LABELS, CURATED_LABELS, PARAMS_PY, RUN_FILE

TABLE_PREFIX, TABLE_SUFFIX = "cluster_", ".tsv"


class UnreadableFile(SpikesortError):
    """A file of the folder that is there but cannot be read: ``path`` and the ``reason``."""

    def __init__(self, path: Path, reason: BaseException):
        super().__init__(f"cannot read {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def read_tsv(path) -> dict[int, str]:
    """A Phy cluster table (header ``cluster_id<TAB>name``) as {cluster id: cell}; {} if absent.
    Empty cells are left out, as phylib does."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    out = {}
    for line in lines[1:]:
        cid, _, value = line.partition("\t")
        if cid.strip() and value.strip():
            try:
                out[int(cid)] = value.strip()
            except ValueError:
                continue
    return out


@dataclass(frozen=True)
class FolderFiles:
    """The files of one output folder (a spikesort folder, or any Phy folder)."""

    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def run_record(self, *, required: bool = False) -> dict:
        """spikesort_run.json; {} when it is absent (UnreadableFile instead if ``required``) or holds
        no JSON object; UnreadableFile when it cannot be read."""
        path = self.path / RUN_FILE
        if not required and not path.is_file():
            return {}
        try:
            run = json.loads(path.read_text(encoding="utf8"))
        except (OSError, ValueError) as exc:
            raise UnreadableFile(path, exc) from None
        return run if isinstance(run, dict) else {}

    def params(self) -> dict:
        """The values of params.py ({} when there is none); SpikesortError when it is not literals only."""
        if not self.has(PARAMS_PY):
            return {}
        return read_params_py(self.path / PARAMS_PY)

    def array(self, name: str, *, mmap: bool = False, required: bool = False) -> np.ndarray | None:
        """The array of the .npy file ``name``, memory-mapped with ``mmap``; None when the file is
        absent (unless ``required``); UnreadableFile when it cannot be read."""
        path = self.path / name
        if not required and not path.is_file():
            return None
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UnreadableFile(path, exc) from None

    def table_paths(self) -> dict[str, Path]:
        """Every cluster_<name>.tsv of the folder by name, sorted."""
        return {
            p.name[len(TABLE_PREFIX) : -len(TABLE_SUFFIX)]: p
            for p in sorted(self.path.glob(f"{TABLE_PREFIX}*{TABLE_SUFFIX}"))
        }

    def table(self, name: str) -> dict[int, str]:
        """cluster_<name>.tsv as {cluster id: cell} (see :func:`read_tsv`); {} when absent."""
        return read_tsv(self.path / f"{TABLE_PREFIX}{name}{TABLE_SUFFIX}")

    def tables(self) -> dict[str, dict[int, str]]:
        return {name: read_tsv(p) for name, p in self.table_paths().items()}

    def labels(self) -> dict[int, str]:
        """Each cluster's label: a curator's cluster_group.tsv, when there is one, over the sorter's
        cluster_KSLabel.tsv (a cluster missing from the file used has no label)."""
        chosen = CURATED_LABELS if self.has(CURATED_LABELS) else AUTO_LABELS
        return read_tsv(self.path / chosen)

    def sampling_rate_hz(self) -> float | None:
        """From the run record, else from params.py; None when neither says."""
        rec = _recording(self.run_record_or_empty())
        fs = rec.get("sampling_rate_hz")
        if fs is None and self.has(PARAMS_PY):
            fs = self.params().get("sample_rate")
        return fs

    def n_units(self) -> int | None:
        """The number of units the sort found (run record); None when it does not say."""
        try:
            return int(self.run_record()["n_units"])
        except (KeyError, TypeError, ValueError):  # UnreadableFile is a ValueError
            return None

    def duration_s(self) -> float | None:
        """The recording's duration from the run record; None when it does not say."""
        return _recording(self.run_record_or_empty()).get("duration_s")

    def run_record_or_empty(self) -> dict:
        """The run record, {} when it is absent or cannot be read."""
        try:
            return self.run_record()
        except UnreadableFile:
            return {}


def _recording(run: dict) -> dict:
    rec = run.get("recording")
    return rec if isinstance(rec, dict) else {}


def read_folder(folder) -> FolderFiles:
    """The reader of ``folder``; nothing is read until asked for."""
    return FolderFiles(Path(folder))
