"""The ``spikesort`` command line. The library never imports this package.

``app`` is the group (logging, exit codes, one-line errors); ``options`` what ``run`` and
``batch`` share; every other module is one command, registered on the group when imported here.
"""

from . import app, batch, demo, export, info, online, options, params, probes, report, run, track  # noqa: F401 (each registers its command)
from .app import main

__all__ = ["main"]

# where the names of the former flat module spikesort/cli.py live now, searched in this order
_HOMES = (app, options, run, params, probes, demo, info, report, export, batch)


def __getattr__(name):
    # kept for one release: cli.resolve_params, cli.FORMATS, cli.folder_info, ...
    for home in _HOMES:
        if hasattr(home, name):
            return getattr(home, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
