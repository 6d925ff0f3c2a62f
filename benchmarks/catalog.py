"""Every scenario family, registered: import SCENARIOS and FAMILIES from here.

A family lives in its own module, which registers its scenarios and generators with
``benchmarks.scenarios.register`` / ``register_generator`` when imported. A new family is one
module and one name in FAMILY_MODULES; a listed module that does not exist (yet) is skipped. A
family module must import its optional dependencies (MEArec, ...) inside its generators, so
that listing the scenarios never needs them.
"""

from __future__ import annotations

import importlib
import importlib.util

from .scenarios import FAMILIES, SCENARIOS

FAMILY_MODULES = ("families", "mearec", "injected")

for _module in FAMILY_MODULES:
    if importlib.util.find_spec(f"{__package__}.{_module}") is not None:
        importlib.import_module(f"{__package__}.{_module}")

__all__ = ["FAMILIES", "FAMILY_MODULES", "SCENARIOS"]
