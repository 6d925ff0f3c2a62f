"""Shared fixtures."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def line_positions():
    """6 contacts on a line, 20 µm apart."""
    return np.column_stack([np.zeros(6), 20.0 * np.arange(6)]).astype(np.float64)
