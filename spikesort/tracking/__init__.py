"""The same neurons across sessions: ``spikesort.track`` and ``spikesort track``.

Modules: units (read a sorted Phy folder), compare (features after a depth shift), motion
(inter-session motion), calibrate (match probability from each session's halves), assign (one-to-one
links and tracks), outputs (tracks.csv, motion.csv, tracking.json, tracks.png), synthetic (chronic
ground truth for tests and the benchmark).
"""

from __future__ import annotations

from .track import PairResult, TrackingResult, track

__all__ = ["track", "TrackingResult", "PairResult"]
