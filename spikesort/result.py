"""What a sort gives back: spike times, units and labels, with the paths of its outputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class SortingResult:
    output_folder: Path
    spike_times: np.ndarray
    spike_clusters: np.ndarray
    amplitudes: np.ndarray
    unit_ids: np.ndarray
    sampling_rate_hz: float
    timings_s: dict = field(default_factory=dict)
    labels: np.ndarray | None = None  # 'good' / 'mua' / 'noise' per unit

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)

    def to_spikeinterface(self):
        from spikeinterface.core import NumpySorting

        return NumpySorting.from_samples_and_labels(
            [self.spike_times], [self.spike_clusters], self.sampling_rate_hz, unit_ids=self.unit_ids)
