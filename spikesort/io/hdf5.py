"""spikesort's own HDF5 recording layout (``Hdf5Recording``), read lazily and read-only through h5py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from spikeinterface.core import BaseRecording, BaseRecordingSegment

from ..errors import SpikesortError
from ._common import first_line
from .fingerprint import SOURCE_FILES_ANNOTATION

logger = logging.getLogger(__name__)


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
            raise SpikesortError(
                f"{where}: 'traces' must be a 2D numeric array (n_samples, n_channels), got {shape} {dtype}"
            )
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
