"""``spikesort batch``: many recordings on a dask cluster (local by default).

``manifest`` reads and checks the list of recordings, ``task`` sorts one of them on a worker,
``cluster`` is the driver (the cluster, the summary). Imported lazily so that
``import spikesort.batch`` stays light until a batch is read or run.
"""

__all__ = [
    "BatchJob",
    "BatchResult",
    "RecordingOutcome",
    "read_manifest",
    "run_batch",
    "cluster_layout",
    "local_cluster_config",
    "sort_recording_task",
    "write_summary",
    "usable_cores",
]

_SUBMODULES = ("manifest", "task", "cluster")


def __getattr__(name):
    # the public names, and every name of the former flat module (kept for one release)
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    # the manifest first: reading one must not import dask
    for sub in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{sub}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
