"""The report without matplotlib: inline SVG for figures drawn as marks and lines, PNG rasters (a pure numpy +
zlib encoder) for figures of many thousands of spikes. ``write_report(data, out)`` writes it all."""

from .pages import write_report

__all__ = ["write_report"]
