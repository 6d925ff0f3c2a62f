"""The orchestrator: stage order, checkpoints, the chunk iterator and the whitened-trace store.

``sort`` is imported lazily: it pulls in numba and spikeinterface, and ``spikesort --help`` and
the batch driver must start without them.
"""

__all__ = ["sort", "read_result", "is_complete", "is_unfinished"]


_SUBMODULES = frozenset({"checkpoints", "curation", "progress", "run", "state", "steps", "traces"})


def __getattr__(name):
    import importlib

    if name in _SUBMODULES:  # `from spikesort.pipeline import checkpoints` must not load the sorter
        return importlib.import_module(f"{__name__}.{name}")
    # every name of the former flat module spikesort/pipeline.py (now run, state, steps and
    # curation), kept for one release
    for module in ("run", "state", "steps", "curation"):
        home = importlib.import_module(f"{__name__}.{module}")
        if hasattr(home, name):
            return getattr(home, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
