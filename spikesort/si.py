"""spikesort as a spikeinterface sorter.

    import spikesort.si
    from spikeinterface.sorters import run_sorter

    spikesort.si.register()
    sorting = run_sorter("spikesort", recording, folder="sorted_si", detect_threshold=6.0)

The parameters are those of :class:`spikesort.params.Params` (the one source of truth; lists
stand for tuples). ``FOLDER/sorter_output/phy`` is the usual spikesort output folder (Phy
files, ``spikesort_run.json``), ``FOLDER/sorter_output/spikesort.log`` the run's log (which
spikeinterface copies into ``spikeinterface_log.json``). The sorting returned carries the
units table (label, firing rate, amplitude, depth, SNR, ...) as unit properties.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from spikeinterface.sorters import BaseSorter

from spikesort.layout import LOG_FILE as LOG_NAME  # noqa: F401 (re-exported)

from . import __version__
from .errors import SpikesortError
from .params import Params

log = logging.getLogger(__name__)

SORTER_NAME = "spikesort"
PHY_DIR = "phy"
SORTING_DIR = "sorting"


def _params_description() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in dataclasses.fields(Params)}


class SpikesortSorter(BaseSorter):
    """spikeinterface wrapper: runs :func:`spikesort.sort` in ``FOLDER/sorter_output``."""

    sorter_name = SORTER_NAME
    compiled_name = None
    requires_locations = True  # spikesort needs the probe geometry
    gpu_capability = "not-supported"
    requires_binary_data = False  # it streams any recording spikeinterface can read
    handle_multi_segment = False  # spikeinterface refuses these with its concatenate hint
    # runs in threads would share the "spikesort" logger, and so each other's log files
    compatible_with_parallel = {"loky": True, "multiprocessing": True, "threading": False}

    _default_params = Params().to_dict()
    _params_description = _params_description()
    sorter_description = (
        "spikesort: a CPU template-matching sorter (universal-template detection, "
        "recursive bimodal splits, numba peeling) that writes a Phy folder."
    )
    _sorter_description = sorter_description  # spikeinterface reads the name without underscore
    installation_mesg = "pip install spikesort (it is a pure Python package with numba kernels)"

    @classmethod
    def is_installed(cls) -> bool:
        return True  # this module is part of spikesort: importable means installed

    @classmethod
    def get_sorter_version(cls) -> str:
        return __version__

    @classmethod
    def _check_params(cls, recording, output_folder, params: dict) -> dict:
        # validation (ranges, choices, types) is Params'; a typo was already refused by spikeinterface
        return Params.from_dict(params).to_dict()

    @classmethod
    def _setup_recording(cls, recording, sorter_output_folder, params, verbose):
        pass  # the recording is read from spikeinterface's dump in the parent folder: no copy

    @classmethod
    def _run_from_folder(cls, sorter_output_folder, params, verbose):
        from .pipeline import sort

        sorter_output_folder = Path(sorter_output_folder)
        recording = cls.load_recording_from_folder(sorter_output_folder.parent, with_warnings=False)
        if recording is None:
            raise SpikesortError(f"cannot reload the recording from {sorter_output_folder.parent}")
        with _log_to(sorter_output_folder / LOG_NAME):
            result = sort(
                recording,
                sorter_output_folder / PHY_DIR,
                params=Params.from_dict(params),
                overwrite=True,
                progress=bool(verbose),
            )
        # a folder sorting keeps the unit properties and needs no spikesort to load
        result.to_spikeinterface().save(folder=sorter_output_folder / SORTING_DIR, overwrite=True)

    @classmethod
    def _get_result_from_folder(cls, sorter_output_folder):
        from spikeinterface.core import load

        return load(Path(sorter_output_folder) / SORTING_DIR)


class _log_to:
    """Send spikesort's INFO records to ``path`` for the duration of a run."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.pkg = logging.getLogger("spikesort")
        self.level = self.pkg.level
        self.handler = logging.FileHandler(self.path, encoding="utf8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.pkg.addHandler(self.handler)
        if self.pkg.getEffectiveLevel() > logging.INFO:
            self.pkg.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            log.error("sort failed: %s", exc[1], exc_info=exc)
        self.pkg.removeHandler(self.handler)
        self.handler.close()
        self.pkg.setLevel(self.level)


def register() -> type[SpikesortSorter]:
    """Make ``spikeinterface.sorters.run_sorter("spikesort", ...)`` (and ``get_default_sorter_params``,
    ``installed_sorters``) know spikesort. Calling it again does nothing."""
    from spikeinterface.sorters import sorterlist

    if sorterlist.sorter_dict.get(SORTER_NAME) is not SpikesortSorter:
        sorterlist.sorter_full_list[:] = [s for s in sorterlist.sorter_full_list if s.sorter_name != SORTER_NAME] + [
            SpikesortSorter
        ]
        # runsorter and basesorter hold this very dict object: update it in place
        sorterlist.sorter_dict[SORTER_NAME] = SpikesortSorter
    return SpikesortSorter
