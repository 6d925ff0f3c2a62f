"""Old flat module paths (``spikesort.motion``, ``spikesort.curation``, ...) kept importable for one
release after the package was laid out in sub-packages. Each old name resolves to a small module
that forwards attribute lookups to the new home and warns once, on import, with the new path.
Remove in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

REMOVED_IN = "0.3"

MOVED: dict[str, tuple[str, ...]] = {
    "spikesort.checkpoints": ("spikesort.pipeline.checkpoints",),
    "spikesort.traces": ("spikesort.pipeline.traces",),
    "spikesort.progress": ("spikesort.pipeline.progress",),
    "spikesort.preprocess": ("spikesort.stages.preprocess",),
    "spikesort.detect": ("spikesort.stages.detect",),
    "spikesort.cluster": (
        "spikesort.stages.cluster",
        "spikesort.stages.bimodality",
        "spikesort.stages.merges.clusters",
    ),
    "spikesort.match": ("spikesort.stages.match", "spikesort.stages.templates", "spikesort.stages.merges.templates"),
    "spikesort.curate": ("spikesort.stages.curate", "spikesort.stages.merges.refractory"),
    "spikesort.features": ("spikesort.stages.features",),
    "spikesort.metrics": ("spikesort.stages.metrics",),
    "spikesort.saturation": ("spikesort.stages.saturation",),
    "spikesort.geometry": ("spikesort.stages.geometry",),
    "spikesort.export": ("spikesort.stages.export",),
    "spikesort.motion": (
        "spikesort.stages.drift.stage",
        "spikesort.stages.drift.estimate",
        "spikesort.stages.drift.interpolate",
        "spikesort.stages.drift.plan",
        "spikesort.stages.drift.records",
        "spikesort.stages.drift.figure",
        "spikesort.stages.merges.drift",
    ),
    "spikesort.result": ("spikesort.outputs.result", "spikesort.outputs.folder"),
    "spikesort.curation": ("spikesort.outputs.curated", "spikesort.outputs.folder"),
    # the `spikesort export` command itself is spikesort.cli.export now
    "spikesort.exporters": (
        "spikesort.outputs.convert",
        "spikesort.io.raw_copy",
        "spikesort.atomic",
        "spikesort.cli.export",
    ),
    "spikesort.report": ("spikesort.outputs.report", "spikesort.outputs.render.stats", "spikesort.outputs.folder"),
    "spikesort.cli_batch": ("spikesort.cli.batch",),
}


class _Forward(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        targets = MOVED[module.__name__]
        warnings.warn(
            f"{module.__name__} moved to {' and '.join(targets)}; the old path goes in spikesort {REMOVED_IN}",
            DeprecationWarning,
            stacklevel=2,
        )
        homes = [importlib.import_module(t) for t in targets]

        def __getattr__(name):
            for home in homes:
                try:
                    return getattr(home, name)
                except AttributeError:
                    pass
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

        module.__getattr__ = __getattr__
        module.__all__ = sorted({n for h in homes for n in getattr(h, "__all__", dir(h)) if not n.startswith("_")})


def install() -> None:
    if not any(isinstance(f, _Forward) for f in sys.meta_path):
        sys.meta_path.insert(0, _Forward())  # before any path finder: a stale old file must not win
