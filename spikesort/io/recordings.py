"""Open a recording by path, read-only, as a single-segment spikeinterface recording.

Formats (``fmt``; guessed from the path when not given):

- ``binary``: a flat ``.bin``/``.dat``/``.raw`` file, samples × channels interleaved. Needs
  ``sampling_rate_hz``, ``n_channels`` and ``dtype`` unless a SpikeGLX ``.meta`` sits beside it.
- ``spikeglx``: a ``*.bin`` with its ``.meta`` beside it (gains and probe come from the .meta),
  the ``.meta`` itself, or a folder holding exactly one ``*.ap.bin`` + ``.meta`` pair.
- ``openephys``: a folder with ``structure.oebin`` (binary format) or ``settings.xml``.
- ``nwb``: an ``.nwb`` file (read through h5py, no pynwb needed).
- ``intan``: an ``.rhd``/``.rhs`` file.
- ``hdf5``: an ``.h5``/``.hdf5`` file in spikesort's own layout (``Hdf5Recording``).
- ``spikeinterface``: a folder written by ``recording.save()`` or a ``.zarr`` folder.

Every file is opened read-only (memory maps in mode ``r``, HDF5 in mode ``r``). SpikeGLX file
pairing is in ``spikeglx``, the HDF5 layout in ``hdf5``, the input fingerprint in ``fingerprint``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
from spikeinterface.core import BaseRecording

from ..errors import SpikesortError
from ._common import expanduser, first_line
from .fingerprint import SOURCE_FILES_ANNOTATION, annotate_sources, recording_fingerprint  # noqa: F401
from .formats import FORMATS as SUPPORTED_FORMATS
from .hdf5 import Hdf5Recording
from .spikeglx import meta_beside, read_spikeglx_file, spikeglx_data_file, spikeglx_pairs

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_FORMATS",
    "Hdf5Recording",
    "check_recording",
    "detect_format",
    "open_recording",
    "recording_fingerprint",
]

BINARY_SUFFIXES = (".bin", ".dat", ".raw")
_FORMATS_HELP = (
    "binary (.bin/.dat/.raw), spikeglx (.bin + .meta, or its folder), "
    "openephys (folder with structure.oebin or settings.xml), nwb (.nwb), intan (.rhd/.rhs), "
    "hdf5 (.h5/.hdf5 in spikesort's layout), spikeinterface (folder from recording.save(), .zarr)"
)


# --------------------------------------------------------------------------- entry point


def open_recording(
    path: str | Path,
    *,
    fmt: str | None = None,
    sampling_rate_hz: float | None = None,
    n_channels: int | None = None,
    dtype: str | None = None,
    offset_bytes: int = 0,
):
    """Open ``path`` read-only and return a single-segment spikeinterface BaseRecording.

    ``sampling_rate_hz``, ``n_channels``, ``dtype`` and ``offset_bytes`` describe a raw binary
    file; other formats carry that information themselves and ignore them (with a warning).
    Raises SpikesortError for a missing or unreadable recording, a wrong description of a
    binary file, an unknown format or a multi-segment recording.
    """
    path = expanduser(Path(path))
    if not path.exists():
        raise SpikesortError(f"recording not found: {path}")
    if fmt is None:
        fmt = detect_format(path)
    else:
        fmt = str(fmt).strip().lower()
        if fmt not in SUPPORTED_FORMATS:
            raise SpikesortError(f"unknown recording format '{fmt}': choose one of {', '.join(SUPPORTED_FORMATS)}")

    raw_flags = {"sampling_rate_hz": sampling_rate_hz, "n_channels": n_channels, "dtype": dtype}
    if fmt == "binary":
        meta = meta_beside(path)
        # the .meta wins unless the user both forced binary and described the file fully
        if meta is not None and any(v is None for v in raw_flags.values()):
            fmt = "spikeglx"
        else:
            recording = _open_binary(
                path, sampling_rate_hz=sampling_rate_hz, n_channels=n_channels, dtype=dtype, offset_bytes=offset_bytes
            )
    if fmt != "binary":
        given = [k for k, v in raw_flags.items() if v is not None] + (["offset_bytes"] if offset_bytes else [])
        if given:
            logger.warning("%s ignored: the %s recording %s describes itself", ", ".join(given), fmt, path)
        recording = _OPENERS[fmt](path)

    recording = check_recording(recording, source=str(path))
    logger.info(
        "opened %s recording %s: %d channels, %.1f Hz, %d samples (%.1f s)",
        fmt,
        path,
        recording.get_num_channels(),
        recording.get_sampling_frequency(),
        recording.get_num_samples(0),
        recording.get_num_samples(0) / recording.get_sampling_frequency(),
    )
    return recording


def check_recording(recording, *, source: str = "the recording"):
    """Check that a recording can be sorted (one segment, channels, samples); return it."""
    n_segments = recording.get_num_segments()
    if n_segments != 1:
        raise SpikesortError(
            f"{source} has {n_segments} segments but spikesort sorts single-segment recordings only: "
            f"join them first with spikeinterface.concatenate_recordings([...])"
        )
    if recording.get_num_channels() == 0:
        raise SpikesortError(f"{source} has no channels")
    if recording.get_num_samples(0) == 0:
        raise SpikesortError(f"{source} has no samples")
    return recording


def detect_format(path: str | Path) -> str:
    """Guess the format of an existing path; SpikesortError if it is not recognised."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in BINARY_SUFFIXES:
            return "spikeglx" if meta_beside(path) is not None else "binary"
        if suffix == ".meta":
            return "spikeglx"
        if suffix == ".nwb":
            return "nwb"
        if suffix in (".rhd", ".rhs"):
            return "intan"
        if suffix in (".h5", ".hdf5"):
            return "hdf5"
        if path.name == "structure.oebin":
            return "openephys"
    elif path.is_dir():
        if suffix == ".zarr" or (path / "si_folder.json").is_file():
            return "spikeinterface"
        if suffix == ".nwb":
            return "nwb"
        if _find_first(path, "structure.oebin") or _find_first(path, "settings.xml", max_depth=1):
            return "openephys"
        if spikeglx_pairs(path):
            return "spikeglx"
    raise SpikesortError(
        f"cannot tell the format of {path}: supported formats are {_FORMATS_HELP}; pass fmt= to choose"
    )


def _find_first(folder: Path, name: str, *, max_depth: int = 4) -> Path | None:
    # bounded walk: a data folder may hold huge trees we must not crawl
    base_depth = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if name in files:
            return Path(root) / name
        if len(Path(root).parts) - base_depth >= max_depth:
            dirs.clear()
    return None


# --------------------------------------------------------------------------- error wrapping


def _call_extractor(what: str, path: Path, func, *args, **kwargs):
    """Run a spikeinterface/neo reader; turn its exceptions into one SpikesortError line."""
    try:
        return func(*args, **kwargs)
    except SpikesortError:
        raise
    except Exception as exc:
        logger.debug("opening %s as %s failed", path, what, exc_info=True)
        raise SpikesortError(f"could not open {path} as {what}: {first_line(exc)}") from exc


# --------------------------------------------------------------------------- raw binary


def _check_readable(path: Path) -> None:
    # here with the openers that call it: a test refuses the read through this module's `open`
    if not path.is_file():
        raise SpikesortError(f"recording {path} is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SpikesortError(f"cannot read recording {path}: {exc.strerror or exc}") from exc


def _parse_dtype(dtype) -> np.dtype:
    try:
        parsed = np.dtype(dtype)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.kind not in "iuf" or parsed.itemsize > 8:
        raise SpikesortError(
            f"unsupported dtype '{dtype}': use a numeric type such as int16, uint16, int32, float32 or float64"
        )
    return parsed


def _open_binary(path: Path, *, sampling_rate_hz, n_channels, dtype, offset_bytes):
    from spikeinterface.core import read_binary

    _check_readable(path)
    described = (("sampling_rate_hz", sampling_rate_hz), ("n_channels", n_channels), ("dtype", dtype))
    missing = [k for k, v in described if v is None]
    if missing:
        raise SpikesortError(
            f"raw binary recording {path.name} needs sampling_rate_hz, n_channels and dtype "
            f"(missing: {', '.join(missing)}); no SpikeGLX .meta file was found beside it"
        )
    if isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)) or n_channels < 1:
        raise SpikesortError(f"n_channels must be a whole number >= 1, got {n_channels!r}")
    n_channels = int(n_channels)
    try:
        rate = float(sampling_rate_hz)
    except (TypeError, ValueError):
        rate = float("nan")
    if isinstance(sampling_rate_hz, bool) or not math.isfinite(rate) or rate <= 0:
        raise SpikesortError(f"sampling_rate_hz must be a positive number, got {sampling_rate_hz!r}")
    parsed = _parse_dtype(dtype)
    if isinstance(offset_bytes, bool) or not isinstance(offset_bytes, (int, np.integer)) or offset_bytes < 0:
        raise SpikesortError(f"offset_bytes must be a whole number >= 0, got {offset_bytes!r}")
    offset_bytes = int(offset_bytes)

    size = path.stat().st_size
    if size == 0:
        raise SpikesortError(f"recording file {path} is empty")
    if offset_bytes >= size:
        raise SpikesortError(f"offset_bytes {offset_bytes} is not smaller than the size of {path} ({size} bytes)")
    frame = n_channels * parsed.itemsize
    remainder = (size - offset_bytes) % frame
    if remainder:
        after = f" ({size - offset_bytes} after the {offset_bytes}-byte offset)" if offset_bytes else ""
        raise SpikesortError(
            f"recording file {path} has {size} bytes{after}, not a multiple of the frame size "
            f"{frame} bytes ({n_channels} channels x {parsed.itemsize}-byte {parsed.name}): "
            f"{remainder} bytes left over; check n_channels, dtype and offset_bytes"
        )
    recording = _call_extractor(
        "raw binary",
        path,
        read_binary,
        file_paths=str(path),
        sampling_frequency=rate,
        dtype=parsed,
        num_channels=n_channels,
        file_offset=offset_bytes,
    )
    annotate_sources(recording, [path])
    return recording


# --------------------------------------------------------------------------- SpikeGLX


def _open_spikeglx(path: Path):
    path = spikeglx_data_file(path)
    _check_readable(path)
    meta = meta_beside(path)
    if meta is None:
        raise SpikesortError(f"no SpikeGLX .meta file beside {path} (expected {path.with_suffix('.meta').name})")
    return _call_extractor("SpikeGLX", path, read_spikeglx_file, path, meta)


# --------------------------------------------------------------------------- other formats


def _open_openephys(path: Path):
    from spikeinterface.extractors import get_neo_streams, read_openephys

    folder = path.parent if path.is_file() else path
    binary = path.name == "structure.oebin" or _find_first(folder, "structure.oebin") is not None
    kwargs = {}
    if binary:
        names, _ = _call_extractor("Open Ephys", folder, get_neo_streams, "openephysbinary", folder)
        if len(names) > 1:
            # a Neuropixels probe gives an AP and an LFP stream: sort the AP one
            ap = [n for n in names if n.upper().endswith("AP")]
            if len(ap) != 1:
                raise SpikesortError(
                    f"Open Ephys folder {folder} has {len(names)} streams ({', '.join(names)}): open the one "
                    f"to sort with spikeinterface.extractors.read_openephys(folder, stream_name=...) and "
                    f"pass that recording to spikesort"
                )
            kwargs["stream_name"] = ap[0]
            logger.info("Open Ephys folder %s: sorting stream %s", folder, ap[0])
    recording = _call_extractor("Open Ephys", folder, read_openephys, folder, **kwargs)
    files = [Path(p) for p in _neo_files(recording)] or [folder]
    annotate_sources(recording, files)
    return recording


def _neo_files(recording) -> list[str]:
    # the data files behind a neo-based recording, when neo exposes them
    reader = getattr(recording, "neo_reader", None)
    found = []
    for block in getattr(reader, "_buffer_descriptions", {}).values():
        for segment in block.values():
            for desc in segment.values():
                if isinstance(desc, dict) and desc.get("file_path"):
                    found.append(str(desc["file_path"]))
    return sorted(set(found))


def _open_nwb(path: Path):
    from spikeinterface.extractors import read_nwb_recording

    recording = _call_extractor("NWB", path, read_nwb_recording, file_path=str(path), use_pynwb=False)
    annotate_sources(recording, [path])
    return recording


def _open_intan(path: Path):
    from spikeinterface.extractors import read_intan

    _check_readable(path)
    # stream "0" is the amplifier channels (the others are aux/ADC/digital)
    recording = _call_extractor("Intan", path, read_intan, str(path), stream_id="0")
    annotate_sources(recording, [Path(p) for p in _neo_files(recording)] or [path])
    return recording


def _open_spikeinterface(path: Path):
    from spikeinterface.core import load

    extractor = _call_extractor("a spikeinterface folder", path, load, path)
    if not isinstance(extractor, BaseRecording):
        raise SpikesortError(f"{path} holds a spikeinterface {type(extractor).__name__}, not a recording")
    annotate_sources(extractor, [path])
    return extractor


def _open_hdf5(path: Path):
    _check_readable(path)
    return Hdf5Recording(path)


_OPENERS = {
    "spikeglx": _open_spikeglx,
    "openephys": _open_openephys,
    "nwb": _open_nwb,
    "intan": _open_intan,
    "hdf5": _open_hdf5,
    "spikeinterface": _open_spikeinterface,
}
