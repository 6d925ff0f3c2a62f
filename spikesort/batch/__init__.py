"""``spikesort batch``: many recordings on a dask cluster (local by default).

Imported lazily so that ``import spikesort.batch`` stays light until a batch is read or run.
"""

__all__ = ["BatchJob", "BatchResult", "RecordingOutcome", "read_manifest", "run_batch", "cluster_layout",
           "local_cluster_config", "sort_recording_task", "write_summary", "usable_cores"]


def __getattr__(name):
    # every name of the former flat module, kept for one release
    import importlib

    if name in {"task"}:
        return importlib.import_module(f"{__name__}.{name}")
    task = importlib.import_module(__name__ + ".task")

    try:
        return getattr(task, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
