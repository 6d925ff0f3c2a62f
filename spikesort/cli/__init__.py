"""The ``spikesort`` command line. The library never imports this package."""
from .app import main

__all__ = ["main"]


def __getattr__(name):
    # names of the former flat module spikesort/cli.py, kept for one release
    import importlib

    if name in {"app", "batch"}:
        return importlib.import_module(f"{__name__}.{name}")
    app = importlib.import_module(__name__ + ".app")

    return getattr(app, name)
