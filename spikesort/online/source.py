"""Follow a recording that the acquisition system is writing now.

``GrowingSource`` polls the size of one interleaved binary file (a raw ``.bin``/``.dat``, or the
``continuous.dat`` of an Open Ephys binary recording, described by its ``structure.oebin``) and
reads whole new samples with plain file reads. It notices when the file shrinks or is replaced
(its size goes down, or its inode changes): the writer restarted, and what was sorted no longer
matches the file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamInfo:
    """How to read the growing file."""

    data_path: Path
    sampling_rate_hz: float
    n_channels: int
    dtype: np.dtype
    offset_bytes: int = 0
    gain_to_uv: float | None = None  # µV per recording unit, when the format says so

    @property
    def frame_bytes(self) -> int:
        return self.n_channels * self.dtype.itemsize


class WriterRestarted(SpikesortError):
    """The file shrank or was replaced while it was being sorted."""


def stream_info(
    path, *, sampling_rate_hz=None, n_channels=None, dtype=None, offset_bytes: int = 0, stream: str | None = None
) -> StreamInfo:
    """The StreamInfo of a raw binary file (the three descriptions needed) or of an Open Ephys
    binary folder (or its ``structure.oebin``): the oebin names rate, channels and bit volts."""
    path = Path(path).expanduser()
    oebin = path if path.name == "structure.oebin" else None
    if path.is_dir():
        found = sorted(path.rglob("structure.oebin"))
        if not found:
            raise SpikesortError(
                f"{path} is a folder without structure.oebin: give an Open Ephys binary "
                f"recording folder or a raw binary file"
            )
        oebin = found[0]
    if oebin is not None:
        return _oebin_info(oebin, stream=stream)
    missing = [
        flag
        for flag, v in (("--sampling-rate", sampling_rate_hz), ("--n-channels", n_channels), ("--dtype", dtype))
        if v is None
    ]
    if missing:
        raise SpikesortError(
            f"a growing raw binary file needs --sampling-rate, --n-channels and --dtype (missing: {', '.join(missing)})"
        )
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise SpikesortError(f"unsupported dtype '{dtype}': use e.g. int16 or float32") from None
    if dt.kind not in "iuf" or int(n_channels) < 1 or float(sampling_rate_hz) <= 0:
        raise SpikesortError(f"bad raw binary description: {sampling_rate_hz} Hz, {n_channels} channels, {dtype}")
    return StreamInfo(
        data_path=path,
        sampling_rate_hz=float(sampling_rate_hz),
        n_channels=int(n_channels),
        dtype=dt.newbyteorder("<") if dt.itemsize > 1 else dt,
        offset_bytes=int(offset_bytes),
    )


def _oebin_info(oebin: Path, *, stream: str | None) -> StreamInfo:
    try:
        meta = json.loads(oebin.read_text())
        streams = meta["continuous"]
    except (OSError, ValueError, KeyError) as exc:
        raise SpikesortError(f"cannot read {oebin}: {exc}") from None
    if stream is not None:
        streams = [s for s in streams if stream in (s.get("folder_name", ""), s.get("stream_name", ""))]
    elif len(streams) > 1:
        # a Neuropixels probe has an AP and an LFP stream: sort the AP one
        ap = [s for s in streams if str(s.get("folder_name", "")).rstrip("/").upper().endswith("AP")]
        streams = ap or streams
    if len(streams) != 1:
        raise SpikesortError(f"{oebin} has {len(streams)} matching continuous streams: choose one with --stream")
    s = streams[0]
    chans = s.get("channels") or []
    gains = {float(c.get("bit_volts", 1.0)) for c in chans}
    gain = gains.pop() if len(gains) == 1 else None
    data = oebin.parent / "continuous" / str(s["folder_name"]).rstrip("/") / "continuous.dat"
    return StreamInfo(
        data_path=data,
        sampling_rate_hz=float(s["sample_rate"]),
        n_channels=int(s["num_channels"]),
        dtype=np.dtype("<i2"),
        gain_to_uv=gain,
    )


class GrowingSource:
    """Whole samples of a file that grows. ``poll()`` returns how many samples exist now."""

    def __init__(self, info: StreamInfo):
        self.info = info
        self._inode: int | None = None
        self._size = 0

    @property
    def n_samples(self) -> int:
        """Samples seen at the last poll."""
        return max(0, self._size - self.info.offset_bytes) // self.info.frame_bytes

    def poll(self) -> int:
        """Samples in the file now. Raises WriterRestarted when it shrank or was replaced."""
        try:
            st = os.stat(self.info.data_path)
        except FileNotFoundError:
            if self._inode is not None:
                raise WriterRestarted(
                    f"the recording file {self.info.data_path} was removed while being sorted"
                ) from None
            return 0
        if self._inode is not None and st.st_ino != self._inode:
            raise WriterRestarted(
                f"the recording file {self.info.data_path} was replaced by another file while being "
                f"sorted (the writer restarted?)"
            )
        if st.st_size < self._size:
            raise WriterRestarted(
                f"the recording file {self.info.data_path} shrank from {self._size} to "
                f"{st.st_size} bytes while being sorted (the writer truncated or restarted it)"
            )
        self._inode, self._size = st.st_ino, st.st_size
        return self.n_samples

    def read(self, start: int, stop: int) -> np.ndarray:
        """Raw samples [start, stop) as float32 (n, C); they must exist already."""
        n = stop - start
        fb = self.info.frame_bytes
        with open(self.info.data_path, "rb") as fh:
            fh.seek(self.info.offset_bytes + start * fb)
            buf = fh.read(n * fb)
        if len(buf) != n * fb:
            raise WriterRestarted(f"the recording file {self.info.data_path} holds fewer samples than it did")
        return np.frombuffer(buf, dtype=self.info.dtype).reshape(n, self.info.n_channels).astype(np.float32)

    def recording(self, *, probe, n_samples: int | None = None):
        """A spikeinterface recording of the file (its first ``n_samples`` when given): a read-only
        binary view with the probe attached. Unsliced, the Phy folder can point at the file."""
        from spikeinterface.core import read_binary

        from spikesort.io.probes import attach_probe

        rec = read_binary(
            str(self.info.data_path),
            sampling_frequency=self.info.sampling_rate_hz,
            dtype=self.info.dtype,
            num_channels=self.info.n_channels,
            file_offset=self.info.offset_bytes,
        )
        if n_samples is not None and rec.get_num_samples(0) > n_samples:
            rec = rec.frame_slice(0, n_samples)
        if self.info.gain_to_uv is not None:
            rec.set_channel_gains(self.info.gain_to_uv)
            rec.set_channel_offsets(0.0)
        return attach_probe(rec, probe)
