"""Where emitted batches go: OUT/online/spikes.csv, an optional ZeroMQ PUB socket, and the unit
files in OUT/online/units/.

ZeroMQ message (one multipart message per batch, documented in docs/online.md):
  frame 0: the topic, b"spikes"
  frame 1: a UTF-8 JSON header: {"version": 1, "batch": i, "n_spikes": n, "emitted_unix_s": t,
           "sampling_rate_hz": fs, "chunk_start": s, "chunk_stop": e, "new_units": [...],
           "backlog_s": b, "drift_um": d,
           "dtype": [["sample", "<i8"], ["unit", "<i4"], ["amplitude", "<f4"]]}
  frame 2: n records of that little-endian packed dtype (16 bytes each)
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikesort.atomic import write_atomic

log = logging.getLogger(__name__)

CSV_HEADER = "sample,unit,amplitude,emitted_unix_s\n"
TOPIC = b"spikes"
MESSAGE_VERSION = 1
RECORD_DTYPE = np.dtype([("sample", "<i8"), ("unit", "<i4"), ("amplitude", "<f4")])


@dataclass
class OnlineBatch:
    """One emitted batch: the spikes sorted in samples [chunk_start, chunk_stop)."""

    index: int
    chunk_start: int
    chunk_stop: int
    samples: np.ndarray  # (n,) int64
    units: np.ndarray  # (n,) int32
    amplitudes: np.ndarray  # (n,) float32, the template's fitted scale
    emitted_unix_s: float
    new_units: list = field(default_factory=list)  # unit ids first reported in this batch
    backlog_s: float = 0.0  # recording written but not sorted yet when the batch was emitted
    drift_um: float = 0.0  # the probe's tracked rigid displacement after this chunk (µm)

    def __len__(self) -> int:
        return len(self.samples)

    def records(self) -> np.ndarray:
        rec = np.empty(len(self), RECORD_DTYPE)
        rec["sample"], rec["unit"], rec["amplitude"] = self.samples, self.units, self.amplitudes
        return rec


class CsvWriter:
    """Appends every batch to spikes.csv, flushed per batch; ``size`` is the byte length after the
    last whole batch (resume cuts the file back to it)."""

    def __init__(self, path: Path, *, resume_size: int | None = None):
        self.path = path
        if resume_size is not None and path.exists():
            with open(path, "r+b") as fh:
                fh.truncate(resume_size)
        else:
            path.write_text(CSV_HEADER)
        self.fh = open(path, "a", buffering=1 << 16)
        self.size = path.stat().st_size

    def write(self, b: OnlineBatch) -> None:
        if len(b):
            t = f"{b.emitted_unix_s:.6f}"
            amps = np.char.mod("%.4f", b.amplitudes)
            self.fh.write("".join(f"{s},{u},{a},{t}\n" for s, u, a in zip(b.samples.tolist(), b.units.tolist(), amps)))
            self.fh.flush()
        self.size = self.fh.tell()

    def close(self) -> None:
        self.fh.close()


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(samples int64, units int64, amplitudes float32, emitted_unix_s float64) of a spikes.csv."""
    with warnings.catch_warnings():  # a file of the header alone (nothing emitted yet) is no surprise
        warnings.simplefilter("ignore", UserWarning)
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    if data.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0)
    # samples and unit ids are integers well below 2**53: exact in float64
    return data[:, 0].astype(np.int64), data[:, 1].astype(np.int64), data[:, 2].astype(np.float32), data[:, 3]


class Publisher:
    """The batches on a ZeroMQ PUB socket (pyzmq), in the message format above."""

    def __init__(self, address: str, *, sampling_rate_hz: float):
        try:
            import zmq
        except ImportError:
            from spikesort.errors import SpikesortError

            raise SpikesortError("--publish needs pyzmq: pip install 'spikesort[online]'") from None
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 1000)
        try:
            self.sock.bind(address)
        except zmq.ZMQError as exc:
            from spikesort.errors import SpikesortError

            self.sock.close()
            raise SpikesortError(f"cannot publish on {address}: {exc}") from None
        self.fs = sampling_rate_hz
        log.info("publishing spike batches on %s (topic %r)", address, TOPIC.decode())

    def send(self, b: OnlineBatch) -> None:
        header = {
            "version": MESSAGE_VERSION,
            "batch": b.index,
            "n_spikes": len(b),
            "emitted_unix_s": b.emitted_unix_s,
            "sampling_rate_hz": self.fs,
            "chunk_start": int(b.chunk_start),
            "chunk_stop": int(b.chunk_stop),
            "new_units": [int(u) for u in b.new_units],
            "backlog_s": round(float(b.backlog_s), 4),
            "drift_um": round(float(b.drift_um), 2),
            "dtype": [[n, RECORD_DTYPE.fields[n][0].str] for n in RECORD_DTYPE.names],
        }
        self.sock.send_multipart([TOPIC, json.dumps(header).encode(), b.records().tobytes()])

    def close(self) -> None:
        self.sock.close()


def decode_message(frames) -> tuple[dict, np.ndarray]:
    """(header, records) of one received multipart message."""
    header = json.loads(bytes(frames[1]).decode())
    dt = np.dtype([(n, s) for n, s in header["dtype"]])
    return header, np.frombuffer(bytes(frames[2]), dtype=dt)


def write_units(
    folder: Path, *, templates_uv: np.ndarray, positions_um: np.ndarray, first_sample: np.ndarray, pre: int
) -> None:
    """OUT/online/units/: templates.npy (K, nt, C) µV, positions.npy (K, 2) µm, units.json; each
    file replaced atomically (templates first, then the index that names them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("templates.npy", templates_uv.astype(np.float32)), ("positions.npy", positions_um)):
        write_atomic(folder / name, lambda f, a=arr: np.save(f, a))
    meta = {
        "n_units": int(len(templates_uv)),
        "unit_ids": list(range(len(templates_uv))),
        "samples_before_peak": pre,
        "first_sample": [int(s) for s in first_sample],
    }
    text = json.dumps(meta).encode()
    write_atomic(folder / "units.json", lambda f: f.write(text))
