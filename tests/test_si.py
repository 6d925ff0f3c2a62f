"""spikesort as a spikeinterface sorter (spikesort.si).

spikeinterface checks every sorter it wraps with ``SorterCommonTestSuite``
(``spikeinterface/sorters/tests/common_tests.py``): a ground-truth recording saved as a binary
folder is sorted with ``run_sorter(name, recording, folder=..., remove_existing_folder=True,
delete_output_folder=True, **default_params)``; the sorting must carry its sorting_info
(recording, params, log), and the folder must keep the three spikeinterface_*.json files but
not ``sorter_output``. The installed wheel does not ship its tests, so when they cannot be
imported the same suite is defined here, check for check.
"""

from __future__ import annotations

import json
import shutil
import unittest

import numpy as np
import pytest

pytest.importorskip("spikeinterface.sorters")
import spikeinterface.sorters as ss  # noqa: E402
from spikeinterface.core import generate_ground_truth_recording  # noqa: E402

import spikesort.si  # noqa: E402
from spikesort import __version__  # noqa: E402
from spikesort.outputs.result import UNIT_COLUMNS  # noqa: E402
from spikesort.params import Params  # noqa: E402
from spikesort.si import SpikesortSorter, register  # noqa: E402

register()

try:  # spikeinterface's own suite, when its tests are installed
    from spikeinterface.sorters.tests.common_tests import SorterCommonTestSuite
except ImportError:

    class SorterCommonTestSuite:
        """spikeinterface's minimal test of a sorter class (see the module docstring)."""

        SorterClass = None
        _saved = None

        @pytest.fixture(autouse=True)
        def create_cache_folder(self, tmp_path_factory):
            self.cache_folder = tmp_path_factory.mktemp("cache_folder")

        def setUp(self):
            # saved once per class (the upstream suite saves it again before every test)
            if type(self)._saved is None:
                recording, _ = generate_ground_truth_recording(num_channels=4, durations=[60], seed=0)
                rec_folder = self.cache_folder / "rec"
                if rec_folder.is_dir():
                    shutil.rmtree(rec_folder)
                type(self)._saved = recording.save(folder=rec_folder, verbose=False, format="binary")
            self.recording = type(self)._saved

        def test_with_run(self):
            output_folder = self.cache_folder / self.SorterClass.sorter_name
            sorting = ss.run_sorter(
                self.SorterClass.sorter_name,
                self.recording,
                folder=output_folder,
                remove_existing_folder=True,
                delete_output_folder=True,
                verbose=False,
                raise_error=True,
                **self.SorterClass.default_params(),
            )
            assert sorting.sorting_info is not None
            assert {"recording", "params", "log"} <= set(sorting.sorting_info)
            del sorting
            # the sorter's own folder is deleted, the run's metadata is kept
            assert not (output_folder / "sorter_output").is_dir()
            for name in ("spikeinterface_recording.json", "spikeinterface_params.json", "spikeinterface_log.json"):
                assert (output_folder / name).is_file(), name

        def test_get_version(self):
            assert self.SorterClass.get_sorter_version()


class TestSpikesortCommonSuite(SorterCommonTestSuite, unittest.TestCase):
    SorterClass = SpikesortSorter


# --------------------------------------------------------------------------- registration, params


def test_register_makes_the_name_known():
    assert register() is SpikesortSorter
    register()  # twice: still one entry
    from spikeinterface.sorters.sorterlist import sorter_full_list

    assert [s for s in sorter_full_list if s.sorter_name == "spikesort"] == [SpikesortSorter]
    assert "spikesort" in ss.available_sorters() and "spikesort" in ss.installed_sorters()
    assert ss.get_sorter_description("spikesort")
    assert SpikesortSorter.get_sorter_version() == __version__


def test_default_params_come_from_params():
    assert ss.get_default_sorter_params("spikesort") == Params().to_dict()
    described = ss.get_sorter_params_description("spikesort")
    assert set(described) == set(Params.names())
    assert all(isinstance(v, str) and v for v in described.values())


def test_check_params_validates_and_normalises():
    p = SpikesortSorter._check_params(
        None, None, {**Params().to_dict(), "detect_threshold": 6, "amplitude_range": [0.6, 1.8]}
    )
    assert p["detect_threshold"] == 6.0 and p["amplitude_range"] == [0.6, 1.8]
    with pytest.raises(ValueError, match="detect_threshold=500.0 is out of range"):
        SpikesortSorter._check_params(None, None, {**Params().to_dict(), "detect_threshold": 500})


# --------------------------------------------------------------------------- run_sorter


@pytest.fixture(scope="module")
def small_recording(tmp_path_factory):
    recording, gt = generate_ground_truth_recording(num_channels=8, durations=[15.0], num_units=5, seed=2)
    folder = tmp_path_factory.mktemp("si_rec") / "rec"
    return recording.save(folder=folder, verbose=False, format="binary"), gt


def test_run_sorter_returns_the_sorting_with_unit_properties(small_recording, tmp_path):
    recording, gt = small_recording
    folder = tmp_path / "si_out"
    sorting = ss.run_sorter("spikesort", recording, folder=folder, detect_threshold=5.5, seed=4)
    out = folder / "sorter_output" / spikesort.si.PHY_DIR
    run = json.loads((out / "spikesort_run.json").read_text())
    assert run["params"]["detect_threshold"] == 5.5 and run["params"]["seed"] == 4
    assert (out / "params.py").is_file()
    assert sorting.get_num_units() == run["n_units"] > 0
    assert set(UNIT_COLUMNS) <= set(sorting.get_property_keys())
    labels = sorting.get_property("label")
    assert set(labels) <= {"good", "mua", "noise"}
    # the same spikes as the Phy folder
    times = np.load(out / "spike_times.npy")
    clusters = np.load(out / "spike_clusters.npy")
    assert sum(len(sorting.get_unit_spike_train(u)) for u in sorting.unit_ids) == len(times)
    for u in sorting.unit_ids:
        np.testing.assert_array_equal(sorting.get_unit_spike_train(u), times[clusters == u])
    np.testing.assert_array_equal(sorting.get_property("n_spikes"), [np.sum(clusters == u) for u in sorting.unit_ids])
    # spikeinterface keeps spikesort's log as the run's trace
    log = json.loads((folder / "spikeinterface_log.json").read_text())
    assert not log["error"] and any("stage match done" in line for line in log["runtime_trace"])
    # and the sorting is registered to the recording, ready for a SortingAnalyzer
    assert sorting.has_recording()
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    comp = compare_sorter_to_ground_truth(gt, sorting, exhaustive_gt=True, delta_time=0.4)
    assert len(comp.get_well_detected_units(0.8)) >= 3, comp.get_performance()


def test_run_sorter_refuses_bad_parameters(small_recording, tmp_path):
    recording, _ = small_recording
    with pytest.raises(ValueError, match="detect_treshold"):  # spikeinterface names the unknown key
        ss.run_sorter("spikesort", recording, folder=tmp_path / "a", detect_treshold=6)
    with pytest.raises(ValueError, match="out of range"):
        ss.run_sorter("spikesort", recording, folder=tmp_path / "b", detect_threshold=500)


def test_run_sorter_refuses_multi_segment_and_missing_probe(tmp_path):
    from spikeinterface.generation import NoiseGeneratorRecording

    two, _ = generate_ground_truth_recording(num_channels=4, durations=[2.0, 2.0], seed=0)
    with pytest.raises(ValueError, match="concatenate_recordings"):
        ss.run_sorter("spikesort", two, folder=tmp_path / "two")
    no_probe = NoiseGeneratorRecording(num_channels=4, sampling_frequency=30000.0, durations=[2.0])
    with pytest.raises(RuntimeError, match="locations are required"):
        ss.run_sorter("spikesort", no_probe, folder=tmp_path / "np")
