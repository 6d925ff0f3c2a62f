"""The raw copy Phy reads (``spikesort run --export-raw``): ``OUT/recording.dat``, int16, written
from any recording spikesort can open, with the Phy folder's params.py pointed at it, so that
Phy's trace and waveform views work whatever the input format."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikesort.atomic import atomic_destination
from spikesort.chunks import iter_chunks
from spikesort.errors import SpikesortError
from spikesort.layout import PARAMS_PY
from spikesort.layout import RAW_COPY as RAW_FILE

from .phy import read_params_py

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawExport:
    path: Path
    uv_per_bit: float | None  # 1.0 when the recording has gains; None when the units are unknown
    scale: float  # file value = recording value x scale (µV when uv_per_bit is 1)
    n_clipped: int  # samples beyond the int16 range, clipped


def _raw_scale(recording, *, has_gain: bool, block: int) -> float:
    if has_gain or np.dtype(recording.get_dtype()) == np.int16:
        return 1.0
    n = recording.get_num_samples(0)
    peak = 0.0
    for start in np.linspace(0, max(0, n - block), num=min(5, max(1, n // block))).astype(np.int64):
        x = recording.get_traces(start_frame=int(start), end_frame=int(min(n, start + block)), return_in_uV=False)
        peak = max(peak, float(np.abs(x).max()) if x.size else 0.0)
    # the largest sampled value at half the int16 range leaves room for larger ones elsewhere
    return 16384.0 / peak if peak > 0 else 1.0


def _params_with_raw(folder: Path, *, n_channels: int, note: str) -> str:
    values = read_params_py(folder / PARAMS_PY)
    values.update(dat_path=[RAW_FILE], n_channels_dat=int(n_channels), dtype="int16", offset=0, hp_filtered=False)
    lines = [
        "# Phy parameters written by spikesort; literals only, read by phylib.io.model.load_model",
        f"# {RAW_FILE}: {note}",
    ]
    lines += [f"{k} = {v!r}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def export_raw_recording(recording, folder, *, chunk_s: float = 2.0, progress: bool = False) -> RawExport | None:
    """Write ``folder/recording.dat`` (int16, samples x channels) from ``recording`` chunk by chunk
    and point the Phy folder's params.py at it, so Phy's trace and waveform views work for any
    input format. With gains the file holds µV (1 µV per bit, clipped to ±32767 µV); without,
    an int16 recording is copied as it is and any other is scaled so its largest sampled value
    is 16384. Returns None (with a warning) when the sort wrote no Phy folder."""
    folder = Path(folder)
    if not (folder / PARAMS_PY).is_file():
        log.warning("no Phy folder in %s (no units found): %s not written", folder, RAW_FILE)
        return None
    n_ch = int(recording.get_num_channels())
    channel_map = np.load(folder / "channel_map.npy")
    if not np.array_equal(channel_map, np.arange(n_ch)):
        raise SpikesortError(
            f"{folder} was not sorted from this recording ({len(channel_map)} channels in the "
            f"Phy folder, {n_ch} in the recording)"
        )
    fs = float(recording.get_sampling_frequency())
    n = int(recording.get_num_samples(0))
    block = max(1, int(round(chunk_s * fs)))
    has_gain = bool(recording.has_scaleable_traces())
    scale = _raw_scale(recording, has_gain=has_gain, block=block)
    if has_gain:
        note = "int16, 1 microvolt per bit (written by spikesort --export-raw)"
    elif scale == 1.0:
        note = "int16 copy of the recording (no gain known)"
    else:
        note = f"int16, recording values x {scale:.6g} (no gain known)"
        log.warning("the recording has no gain: %s holds its values x %.6g", RAW_FILE, scale)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=-(-n // block), desc="raw copy", unit="chunk", leave=False)
    clipped = 0
    dest = folder / RAW_FILE
    with atomic_destination(dest) as tmp, open(tmp, "xb") as f:
        for ch in iter_chunks(n_samples=n, chunk_samples=block, margin_samples=0):
            x = recording.get_traces(start_frame=ch.keep_start, end_frame=ch.keep_stop, return_in_uV=has_gain)
            if not (np.dtype(x.dtype) == np.int16 and scale == 1.0):
                # float32 is exact for whole µV (and half the memory of a chunk); a scale needs float64
                x = np.rint(np.asarray(x, dtype=np.float32) if scale == 1.0 else np.asarray(x, np.float64) * scale)
                over = np.abs(x) > 32767
                clipped += int(np.count_nonzero(over))
                x = np.clip(x, -32767, 32767)
            f.write(np.ascontiguousarray(x, dtype=np.int16).tobytes())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if clipped:
        log.warning("%d samples of %s were beyond the int16 range and clipped", clipped, RAW_FILE)
    text = _params_with_raw(folder, n_channels=n_ch, note=note)
    with atomic_destination(folder / PARAMS_PY) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("wrote %s (%d samples x %d channels, int16); params.py points Phy at it", dest, n, n_ch)
    return RawExport(path=dest, uv_per_bit=1.0 if has_gain else None, scale=scale, n_clipped=clipped)
