"""What identifies a recording: the files it was read from (path, size, mtime) and its shape.

The readers name their files in an annotation (``annotate_sources``); ``recording_fingerprint``
walks the extractor chain for those annotations and for absolute paths in its kwargs, so a
checkpoint is reused only for the same input.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from spikeinterface.core.base import BaseExtractor

# annotation naming the files a recording was read from (for the fingerprint)
SOURCE_FILES_ANNOTATION = "spikesort_source_files"


def annotate_sources(recording, files) -> None:
    recording.annotate(**{SOURCE_FILES_ANNOTATION: [str(Path(f).resolve()) for f in files]})


def recording_fingerprint(recording) -> str:
    """A short hash of what identifies the input: its files (path, size, mtime) and shape.

    Stable across processes for the same files; changes if a file is rewritten, touched,
    moved, or if the channel count, sampling rate or length differ.
    """
    description = {
        "n_channels": int(recording.get_num_channels()),
        "sampling_rate_hz": float(recording.get_sampling_frequency()),
        "n_samples": [int(recording.get_num_samples(s)) for s in range(recording.get_num_segments())],
        "dtype": np.dtype(recording.get_dtype()).str,
        "channel_ids": [str(c) for c in recording.get_channel_ids()],
        "extractors": [],
    }
    paths: set[str] = set()
    _walk_extractor(recording, description["extractors"], paths, seen=set())
    description["files"] = [_stat_entry(p) for p in sorted(paths)]
    if recording.has_probe():
        description["positions"] = np.round(recording.get_channel_locations(), 3).tolist()
    if not paths:
        # nothing on disk (generated or in-memory data): the values themselves identify it
        n = recording.get_num_samples(0)
        head = recording.get_traces(segment_index=0, start_frame=0, end_frame=min(n, 1024))
        tail = recording.get_traces(segment_index=0, start_frame=max(0, n - 1024), end_frame=n)
        data = np.ascontiguousarray(head).tobytes() + np.ascontiguousarray(tail).tobytes()
        description["data_sha1"] = hashlib.sha1(data).hexdigest()
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _walk_extractor(extractor, out: list, paths: set, seen: set) -> None:
    if id(extractor) in seen:
        return
    seen.add(id(extractor))
    annotated = extractor.get_annotation(SOURCE_FILES_ANNOTATION) if hasattr(extractor, "get_annotation") else None
    if annotated:
        paths.update(annotated)
    entry = {"class": type(extractor).__name__, "kwargs": {}}
    out.append(entry)
    for key, value in sorted(getattr(extractor, "_kwargs", {}).items()):
        entry["kwargs"][key] = _describe(value, out, paths, seen, from_annotation=bool(annotated))


def _describe(value, out: list, paths: set, seen: set, *, from_annotation: bool):
    if isinstance(value, BaseExtractor):
        _walk_extractor(value, out, paths, seen)
        return f"<{type(value).__name__}>"
    if isinstance(value, dict):
        return {str(k): _describe(v, out, paths, seen, from_annotation=from_annotation) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v, out, paths, seen, from_annotation=from_annotation) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return [_describe(v, out, paths, seen, from_annotation=from_annotation) for v in value.tolist()]
        # arrays (traces, channel ids, gains) by content, bounded in cost
        data = np.ascontiguousarray(value).tobytes()[: 1 << 20]
        return {"shape": list(value.shape), "dtype": value.dtype.str, "sha1": hashlib.sha1(data).hexdigest()}
    if isinstance(value, (str, Path)):
        text = str(value)
        # only absolute paths: a relative string such as "imec0.ap" must not match a file in cwd
        if not from_annotation and os.path.isabs(text) and os.path.exists(text):
            paths.add(str(Path(text).resolve()))
        return text
    if isinstance(value, (bool, int, float, type(None))):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(type(value).__name__)


def _stat_entry(path: str) -> list:
    p = Path(path)
    if not p.exists():
        return [path, None, None]
    if p.is_dir():
        # a folder's own files (not its whole tree: outputs may live inside it)
        children = [[c.name, c.stat().st_size, c.stat().st_mtime_ns] for c in sorted(p.iterdir()) if c.is_file()]
        return [path, "dir", children]
    st = p.stat()
    return [path, st.st_size, st.st_mtime_ns]
