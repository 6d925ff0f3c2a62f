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

Every file is opened read-only (memory maps in mode ``r``, HDF5 in mode ``r``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
from spikeinterface.core import BaseRecording, BaseRecordingSegment
from spikeinterface.core.base import BaseExtractor

from ..errors import SpikesortError
from ._common import expanduser, first_line

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_FORMATS",
    "Hdf5Recording",
    "check_recording",
    "detect_format",
    "open_recording",
    "recording_fingerprint",
]

from .formats import FORMATS as SUPPORTED_FORMATS  # noqa: E402

BINARY_SUFFIXES = (".bin", ".dat", ".raw")
_FORMATS_HELP = (
    "binary (.bin/.dat/.raw), spikeglx (.bin + .meta, or its folder), "
    "openephys (folder with structure.oebin or settings.xml), nwb (.nwb), intan (.rhd/.rhs), "
    "hdf5 (.h5/.hdf5 in spikesort's layout), spikeinterface (folder from recording.save(), .zarr)"
)
# annotation naming the files a recording was read from (for the fingerprint)
SOURCE_FILES_ANNOTATION = "spikesort_source_files"


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
        meta = _meta_beside(path)
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
        fmt, path, recording.get_num_channels(), recording.get_sampling_frequency(),
        recording.get_num_samples(0), recording.get_num_samples(0) / recording.get_sampling_frequency(),
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
            return "spikeglx" if _meta_beside(path) is not None else "binary"
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
        if _spikeglx_pairs(path):
            return "spikeglx"
    raise SpikesortError(f"cannot tell the format of {path}: supported formats are {_FORMATS_HELP}; pass fmt= to choose")


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


def _annotate_sources(recording, files) -> None:
    recording.annotate(**{SOURCE_FILES_ANNOTATION: [str(Path(f).resolve()) for f in files]})


# --------------------------------------------------------------------------- raw binary


def _meta_beside(path: Path) -> Path | None:
    if not path.is_file():
        return None
    meta = path.with_suffix(".meta")
    return meta if meta.is_file() else None


def _check_readable(path: Path) -> None:
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
    missing = [k for k, v in (("sampling_rate_hz", sampling_rate_hz), ("n_channels", n_channels), ("dtype", dtype)) if v is None]
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
    _annotate_sources(recording, [path])
    return recording


# --------------------------------------------------------------------------- SpikeGLX


def _spikeglx_pairs(folder: Path) -> list[Path]:
    """The ``*.ap.bin`` files under ``folder`` that have a ``.meta`` beside them."""
    pairs = []
    base_depth = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        pairs += [Path(root) / f for f in files if f.endswith(".ap.bin") and f[:-4] + ".meta" in files]
        if len(Path(root).parts) - base_depth >= 3:
            dirs.clear()
    return sorted(pairs)


def _open_spikeglx(path: Path):
    if path.is_dir():
        pairs = _spikeglx_pairs(path)
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
    _check_readable(path)
    meta = _meta_beside(path)
    if meta is None:
        raise SpikesortError(f"no SpikeGLX .meta file beside {path} (expected {path.with_suffix('.meta').name})")
    return _call_extractor("SpikeGLX", path, _read_spikeglx_file, path, meta)


def _read_spikeglx_file(bin_path: Path, meta_path: Path):
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
    _annotate_sources(recording, [bin_path, meta_path])
    return recording


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
    _annotate_sources(recording, files)
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
    _annotate_sources(recording, [path])
    return recording


def _open_intan(path: Path):
    from spikeinterface.extractors import read_intan

    _check_readable(path)
    # stream "0" is the amplifier channels (the others are aux/ADC/digital)
    recording = _call_extractor("Intan", path, read_intan, str(path), stream_id="0")
    _annotate_sources(recording, [Path(p) for p in _neo_files(recording)] or [path])
    return recording


def _open_spikeinterface(path: Path):
    from spikeinterface.core import load

    extractor = _call_extractor("a spikeinterface folder", path, load, path)
    if not isinstance(extractor, BaseRecording):
        raise SpikesortError(f"{path} holds a spikeinterface {type(extractor).__name__}, not a recording")
    _annotate_sources(extractor, [path])
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


# --------------------------------------------------------------------------- HDF5 layout


class Hdf5Recording(BaseRecording):
    """A recording in spikesort's HDF5 layout, read lazily and read-only through h5py.

    Layout:

    - dataset ``traces``: shape (n_samples, n_channels), any integer or float dtype
      (chunked and compressed datasets work; chunks spanning all channels read fastest);
    - attribute ``sampling_rate_hz`` (on the file root or on ``traces``): a positive number;
    - optional attribute ``gain_to_uv``: a scalar or one value per channel (µV per unit),
      with optional ``offset_to_uv`` likewise;
    - optional dataset ``channel_positions_um``: shape (n_channels, 2), x and y in µm; when
      present it becomes the recording's probe.
    """

    def __init__(self, file_path):
        import h5py

        file_path = Path(file_path).absolute()
        where = f"HDF5 recording {file_path}"
        try:
            with h5py.File(file_path, "r", locking=False) as f:
                if "traces" not in f or not isinstance(f["traces"], h5py.Dataset):
                    raise SpikesortError(
                        f"{where} has no 'traces' dataset (spikesort's HDF5 layout: traces of shape "
                        f"(n_samples, n_channels) and a sampling_rate_hz attribute)"
                    )
                traces = f["traces"]
                attrs = {**dict(f.attrs), **dict(traces.attrs)}
                shape, dtype = traces.shape, traces.dtype
                positions = np.asarray(f["channel_positions_um"][()]) if "channel_positions_um" in f else None
        except SpikesortError:
            raise
        except Exception as exc:  # h5py: OSError for non-HDF5 files, others for odd content
            logger.debug("h5py could not read %s", file_path, exc_info=True)
            raise SpikesortError(f"could not open {where}: {first_line(exc)}") from exc

        if len(shape) != 2 or dtype.kind not in "iuf":
            raise SpikesortError(f"{where}: 'traces' must be a 2D numeric array (n_samples, n_channels), got {shape} {dtype}")
        n_samples, n_channels = int(shape[0]), int(shape[1])
        if n_channels == 0 or n_samples == 0:
            raise SpikesortError(f"{where}: 'traces' is empty ({n_samples} samples x {n_channels} channels)")
        if "sampling_rate_hz" not in attrs:
            raise SpikesortError(f"{where} has no 'sampling_rate_hz' attribute")
        rate = _positive_scalar(attrs["sampling_rate_hz"], f"{where}: sampling_rate_hz")

        BaseRecording.__init__(self, sampling_frequency=rate, channel_ids=np.arange(n_channels), dtype=dtype)
        self.add_recording_segment(_Hdf5RecordingSegment(file_path, rate, n_samples))
        if "gain_to_uv" in attrs:
            self.set_channel_gains(_per_channel(attrs["gain_to_uv"], n_channels, f"{where}: gain_to_uv"))
            offsets = attrs.get("offset_to_uv", 0.0)
            self.set_channel_offsets(_per_channel(offsets, n_channels, f"{where}: offset_to_uv"))
        if positions is not None:
            if positions.shape != (n_channels, 2) or not np.all(np.isfinite(positions)):
                raise SpikesortError(
                    f"{where}: channel_positions_um must be finite with shape ({n_channels}, 2), got {positions.shape}"
                )
            self.set_probe(_probe_from_positions(positions, where))
        self.annotate(**{SOURCE_FILES_ANNOTATION: [str(file_path)]})
        self._kwargs = {"file_path": str(file_path)}


def _positive_scalar(value, what: str) -> float:
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf" or not np.isfinite(array).all() or float(array.ravel()[0]) <= 0:
        raise SpikesortError(f"{what} must be one positive number, got {value!r}")
    return float(array.ravel()[0])


def _per_channel(value, n_channels: int, what: str) -> np.ndarray:
    array = np.asarray(value, dtype="float64") if np.asarray(value).dtype.kind in "iuf" else None
    if array is None or array.size not in (1, n_channels) or not np.isfinite(array).all():
        raise SpikesortError(f"{what} must be one number or {n_channels} numbers (one per channel)")
    return np.broadcast_to(array.ravel(), (n_channels,)).copy()


def _probe_from_positions(positions: np.ndarray, where: str):
    from probeinterface import Probe

    _, counts = np.unique(positions, axis=0, return_counts=True)
    if np.any(counts > 1):
        raise SpikesortError(f"{where}: channel_positions_um has channels at the same position")
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=positions, shapes="circle", shape_params={"radius": 5})
    probe.set_device_channel_indices(np.arange(len(positions)))
    return probe


class _Hdf5RecordingSegment(BaseRecordingSegment):
    def __init__(self, file_path: Path, sampling_frequency: float, n_samples: int):
        BaseRecordingSegment.__init__(self, sampling_frequency=sampling_frequency)
        self._file_path = file_path
        self._n_samples = n_samples
        self._file = None

    def get_num_samples(self) -> int:
        return self._n_samples

    def get_traces(self, start_frame=None, end_frame=None, channel_indices=None):
        import h5py

        if self._file is None:
            # opened on first read so that building the recording stays cheap
            self._file = h5py.File(self._file_path, "r", locking=False)
        start = 0 if start_frame is None else int(start_frame)
        end = self._n_samples if end_frame is None else int(end_frame)
        traces = self._file["traces"][start:end]
        if channel_indices is not None:
            traces = traces[:, channel_indices]
        return traces

    def __del__(self):
        try:
            if self._file is not None:
                self._file.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass


# --------------------------------------------------------------------------- fingerprint


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
        description["data_sha1"] = hashlib.sha1(np.ascontiguousarray(head).tobytes() + np.ascontiguousarray(tail).tobytes()).hexdigest()
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
        return [path, "dir", [[c.name, c.stat().st_size, c.stat().st_mtime_ns] for c in sorted(p.iterdir()) if c.is_file()]]
    st = p.stat()
    return [path, st.st_size, st.st_mtime_ns]
