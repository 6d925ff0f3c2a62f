"""SpikeGLX files: a ``.bin`` with its ``.meta`` beside it, and which neo stream and segment a file is."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import SpikesortError
from .fingerprint import annotate_sources

logger = logging.getLogger(__name__)


def meta_beside(path: Path) -> Path | None:
    """The SpikeGLX ``.meta`` beside a data file, or None."""
    if not path.is_file():
        return None
    meta = path.with_suffix(".meta")
    return meta if meta.is_file() else None


def spikeglx_pairs(folder: Path) -> list[Path]:
    """The ``*.ap.bin`` files under ``folder`` that have a ``.meta`` beside them."""
    pairs = []
    base_depth = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        pairs += [Path(root) / f for f in files if f.endswith(".ap.bin") and f[:-4] + ".meta" in files]
        if len(Path(root).parts) - base_depth >= 3:
            dirs.clear()
    return sorted(pairs)


def spikeglx_data_file(path: Path) -> Path:
    """The ``.bin`` to open for ``path``: the file itself, the ``.bin`` beside a ``.meta``, or the one
    ``*.ap.bin`` + ``.meta`` pair of a folder."""
    if path.is_dir():
        pairs = spikeglx_pairs(path)
        if not pairs:
            raise SpikesortError(f"no SpikeGLX *.ap.bin file with a .meta beside it in {path}")
        if len(pairs) > 1:
            names = ", ".join(str(p.relative_to(path)) for p in pairs[:4]) + (" ..." if len(pairs) > 4 else "")
            raise SpikesortError(f"{path} holds {len(pairs)} SpikeGLX AP files ({names}): pass the .ap.bin to sort")
        path = pairs[0]
    if path.suffix.lower() == ".meta":
        path = path.with_suffix(".bin")
        if not path.is_file():
            raise SpikesortError(f"SpikeGLX data file not found: {path} (expected beside its .meta)")
    return path


def read_spikeglx_file(bin_path: Path, meta_path: Path):
    from neo.rawio import SpikeGLXRawIO
    from spikeinterface.extractors import read_spikeglx

    # spikeinterface reads SpikeGLX by folder; find which stream and segment is this file
    reader = SpikeGLXRawIO(dirname=str(bin_path.parent))
    reader.parse_header()
    target = bin_path.resolve()
    matches = [i for i in reader.signals_info_list if Path(i["bin_file"]).resolve() == target]
    if not matches:
        raise SpikesortError(f"SpikeGLX reader did not find {bin_path.name} in {bin_path.parent}")
    stream_id, segment = matches[0]["stream_name"], int(matches[0]["seg_index"])
    if matches[0].get("stream_kind") == "lf":
        logger.warning("%s is a SpikeGLX LF stream: spikes are sorted from the AP stream (*.ap.bin)", bin_path.name)
    recording = read_spikeglx(bin_path.parent, stream_id=stream_id)
    if recording.get_num_segments() > 1:
        # other gates/triggers of the same run sit in the folder: keep only the file asked for
        recording = recording.select_segments([segment])
    annotate_sources(recording, [bin_path, meta_path])
    return recording
