"""Inline SVG built from strings: a canvas, panels with data coordinates, axes with ticks and labels.

Numbers are written with one decimal (a tenth of a pixel): small files, and the same bytes for the same data.
"""

from __future__ import annotations

import html
import math

import numpy as np

FONT = "font-family:sans-serif"
AXIS_COLOR = "#333"


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def num(v: float) -> str:
    """A coordinate with at most one decimal, no trailing zeros, no '-0'."""
    s = f"{float(v):.1f}"
    s = s.removesuffix(".0")
    return "0" if s == "-0" else s


def nice_ticks(lo: float, hi: float, *, n: int = 5) -> np.ndarray:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) inside [lo, hi], about n of them."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return np.array([lo]) if np.isfinite(lo) else np.zeros(0)
    raw = (hi - lo) / max(n, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * 0.999)
    first = math.ceil(lo / step - 1e-9)
    ticks = (first + np.arange(int(math.floor(hi / step + 1e-9)) - first + 1)) * step
    return np.round(ticks, 10)


def tick_labels(ticks: np.ndarray) -> list[str]:
    """Labels of round ticks with just the decimals their step needs."""
    ticks = np.asarray(ticks, dtype=np.float64)
    step = float(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = 0
    if step > 0:
        e = math.floor(math.log10(step) + 1e-9)
        decimals = max(0, -e + (1 if abs(step / 10.0**e - 2.5) < 1e-6 else 0))
    out = [f"{v:.{decimals}f}" for v in ticks.tolist()]
    return [s[1:] if s.startswith("-") and float(s) == 0 else s for s in out]


class Canvas:
    """An SVG document of w x h pixels; add elements, then ``str()``."""

    def __init__(self, w: int, h: int, *, cls: str = ""):
        self.w, self.h, self.cls = w, h, cls
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(
        self,
        x: float,
        y: float,
        s,
        *,
        anchor: str = "middle",
        size: int = 11,
        color: str = AXIS_COLOR,
        rotate: bool = False,
        weight: str = "",
    ) -> None:
        rot = f' transform="rotate(-90 {num(x)} {num(y)})"' if rotate else ""
        bold = f' font-weight="{weight}"' if weight else ""
        self.add(
            f'<text x="{num(x)}" y="{num(y)}" text-anchor="{anchor}" font-size="{size}" fill="{color}"'
            f"{bold}{rot}>{esc(s)}</text>"
        )

    def __str__(self) -> str:
        cls = f' class="{self.cls}"' if self.cls else ""
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"{cls} '
            f'width="{self.w}" height="{self.h}" viewBox="0 0 {self.w} {self.h}" style="{FONT}">'
            + "".join(self.parts)
            + "</svg>"
        )


class Panel:
    """A plot area at (x, y, w, h) pixels of a canvas showing xlim x ylim in data units (y grows upwards)."""

    def __init__(self, canvas: Canvas, box: tuple[float, float, float, float], *, xlim, ylim):
        self.c = canvas
        self.x, self.y, self.w, self.h = box
        self.xlim = _limits(*xlim)
        self.ylim = _limits(*ylim)

    def px(self, v):
        lo, hi = self.xlim
        return self.x + (np.asarray(v, dtype=np.float64) - lo) * (self.w / (hi - lo))

    def py(self, v):
        lo, hi = self.ylim
        return self.y + self.h - (np.asarray(v, dtype=np.float64) - lo) * (self.h / (hi - lo))

    def axes(
        self,
        *,
        title: str = "",
        xlabel: str = "",
        ylabel: str = "",
        xticks: bool = True,
        yticks: bool = True,
        frame: bool = True,
    ) -> None:
        c = self.c
        if frame:
            c.add(
                f'<rect x="{num(self.x)}" y="{num(self.y)}" width="{num(self.w)}" height="{num(self.h)}" '
                f'fill="none" stroke="{AXIS_COLOR}" stroke-width="1"/>'
            )
        marks = []
        if xticks:
            ticks = nice_ticks(*self.xlim)
            for x, s in zip(self.px(ticks).tolist(), tick_labels(ticks)):
                marks.append(f"M{num(x)} {num(self.y + self.h)}v4")
                c.text(x, self.y + self.h + 15, s, size=10)
        if yticks:
            ticks = nice_ticks(*self.ylim)
            for y, s in zip(self.py(ticks).tolist(), tick_labels(ticks)):
                marks.append(f"M{num(self.x)} {num(y)}h-4")
                c.text(self.x - 6, y + 3.5, s, anchor="end", size=10)
        if marks:
            c.add(f'<path d="{"".join(marks)}" stroke="{AXIS_COLOR}" fill="none"/>')
        if title:
            c.text(self.x + self.w / 2, self.y - 7, title, size=13, weight="bold")
        if xlabel:
            c.text(self.x + self.w / 2, self.y + self.h + 32, xlabel)
        if ylabel:
            c.text(self.x - 42, self.y + self.h / 2, ylabel, rotate=True)

    def note(self, s: str) -> None:
        """A grey note in the middle of the panel (no data)."""
        self.c.text(self.x + self.w / 2, self.y + self.h / 2, s, color="#888", size=13)

    def image(self, href: str, *, cls: str = "raster") -> None:
        """A raster (PNG file next to the page) stretched over the plot area."""
        self.c.add(
            f'<image class="{cls}" href="{esc(href)}" x="{num(self.x)}" y="{num(self.y)}" '
            f'width="{num(self.w)}" height="{num(self.h)}" preserveAspectRatio="none" '
            f'style="image-rendering:pixelated"/>'
        )


def _limits(lo, hi) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0.0, 1.0
    if hi <= lo:
        pad = max(abs(lo) * 0.05, 1.0)
        return lo - pad, hi + pad
    return lo, hi


def polyline_tenths(xs, ys) -> str:
    """Path data 'Mx0 y0 x1 y1 ...' (after M the pairs are implicit line-tos) in tenths of a pixel, as integers:
    draw it inside a ``scale(0.1)`` group. Integers print twice as fast as decimals, and a unit page has
    thousands of points."""
    xy = np.empty(2 * len(xs))
    xy[0::2], xy[1::2] = xs, ys
    return "M" + " ".join(map(str, np.round(xy * 10).astype(np.int64).tolist()))
