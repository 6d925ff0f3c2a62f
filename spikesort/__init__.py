"""spikesort: a fast CPU spike sorter that writes Phy folders."""

from . import _moved
from .errors import SpikesortError
from .params import Params

__version__ = "0.1.0"

_moved.install()

__all__ = ["Params", "SpikesortError", "sort", "SortingResult", "load_result", "track", "__version__"]


def __getattr__(name):
    # the pipeline pulls in numba and spikeinterface; import it only when asked for
    if name == "sort":
        from .pipeline import sort

        return sort
    if name == "SortingResult":
        from spikesort.outputs.result import SortingResult

        return SortingResult
    if name == "load_result":
        from spikesort.outputs.curated import load_result

        return load_result
    if name == "track":
        from spikesort.tracking import track

        return track
    if name == "online":
        # a callable module: spikesort.online(path, ...) yields the batches (spikesort/online)
        import importlib

        return importlib.import_module(".online", __name__)
    raise AttributeError(name)
