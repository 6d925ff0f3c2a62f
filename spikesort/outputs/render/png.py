"""A tiny PNG encoder (numpy + zlib) and the colour maps of the report's raster images."""

from __future__ import annotations

import struct
import zlib

import numpy as np

# viridis at 9 evenly spaced points: linear interpolation between them is within a few levels of the real map
_VIRIDIS_KNOTS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)
BACKGROUND = (255, 255, 255)


def hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _lut(knots) -> np.ndarray:
    rgb = np.array([hex_rgb(c) for c in knots], dtype=np.float64)
    x = np.linspace(0.0, 1.0, len(knots))
    u = np.linspace(0.0, 1.0, 256)
    return np.round(np.column_stack([np.interp(u, x, rgb[:, i]) for i in range(3)])).astype(np.uint8)


VIRIDIS = _lut(_VIRIDIS_KNOTS)  # (256, 3) uint8
GREYS = _lut(("#f0f0f0", "#000000"))  # light grey (few) to black (many)


def lut_hex(lut: np.ndarray, fraction: float) -> str:
    r, g, b = lut[int(round(np.clip(fraction, 0.0, 1.0) * (len(lut) - 1)))]
    return f"#{r:02x}{g:02x}{b:02x}"


def encode_png(image: np.ndarray, *, palette: np.ndarray | None = None, level: int = 1) -> bytes:
    """PNG bytes of an (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint8 image (8 bits, no interlace); with
    ``palette`` ((P, 3) uint8, P <= 256) the (H, W) image holds indices into it (an indexed PNG: a third of
    the bytes to compress, and no colour lookup to do). zlib level 1: a plot's raster is mostly background,
    level 6 makes it a third smaller at ten times the cost."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in _COLOR_TYPES or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"encode_png needs an (H, W[, 1|3|4]) image, got shape {np.shape(image)}")
    h, w, c = img.shape
    color_type, plte = _COLOR_TYPES[c], b""
    if palette is not None:
        pal = np.asarray(palette)
        if c != 1 or pal.dtype != np.uint8 or pal.ndim != 2 or pal.shape[1] != 3 or not 1 <= len(pal) <= 256:
            raise ValueError("an indexed PNG needs an (H, W) image and a (P <= 256, 3) uint8 palette")
        if int(img.max()) >= len(pal):
            raise ValueError(f"pixel index {int(img.max())} outside the palette of {len(pal)} colours")
        color_type, plte = 3, pal.tobytes()
    # every scanline starts with filter type 0 (none); zlib does the work
    raw = np.zeros((h, 1 + w * c), np.uint8)
    raw[:, 1:] = img.reshape(h, w * c)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + (chunk(b"PLTE", plte) if plte else b"")
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def palette_of(lut: np.ndarray, background=BACKGROUND) -> np.ndarray:
    """(256, 3) palette: index 0 the background, 1..255 the colour table resampled."""
    pick = np.round(np.linspace(0, len(lut) - 1, 255)).astype(np.intp)
    return np.vstack([np.array([background], np.uint8), lut[pick]])


def palette_indices(values: np.ndarray, *, lo: float, hi: float, empty: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 indices into ``palette_of``: values scaled from [lo, hi] onto 1..255, 0 where ``empty``."""
    span = hi - lo if hi > lo else 1.0
    v = np.asarray(values, dtype=np.float32)
    idx = np.clip((v - np.float32(lo)) * np.float32(254.0 / span) + np.float32(1.5), 1, 255).astype(np.uint8)
    if empty is not None:
        idx[empty] = 0
    return idx
