"""Scoring against the ground truth, and sortings on disk.

Sortings are kept as a small npz that does not depend on any sorter's output format: the child
process writes one, the parent scores it, and peer results are cached as one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WELL_DETECTED_SCORE = 0.8
REDUNDANT_SCORE = 0.2
OVERMERGED_SCORE = 0.2
DELTA_TIME_MS = 0.4


# ---------------------------------------------------------------------------------------------
# sortings on disk


def save_sorting_npz(*, sorting, path: Path) -> None:
    spikes = sorting.to_spike_vector()
    unit_ids = np.asarray(sorting.unit_ids)
    np.savez(
        path,
        sample_index=spikes["sample_index"].astype(np.int64),
        unit_index=spikes["unit_index"].astype(np.int64),
        segment_index=spikes["segment_index"].astype(np.int64),
        unit_ids=unit_ids.astype(str) if unit_ids.dtype == object else unit_ids,
        sampling_frequency=np.float64(sorting.sampling_frequency),
    )


def load_sorting_npz(*, path: Path):
    from spikeinterface.core import NumpySorting
    from spikeinterface.core.base import minimum_spike_dtype

    with np.load(path) as data:
        spikes = np.zeros(data["sample_index"].size, dtype=minimum_spike_dtype)
        spikes["sample_index"] = data["sample_index"]
        spikes["unit_index"] = data["unit_index"]
        spikes["segment_index"] = data["segment_index"]
        return NumpySorting(spikes, float(data["sampling_frequency"]), data["unit_ids"])


# ---------------------------------------------------------------------------------------------
# scoring


def score_sorting(*, gt, tested) -> dict:
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    comp = compare_sorter_to_ground_truth(
        gt,
        tested,
        exhaustive_gt=True,
        delta_time=DELTA_TIME_MS,
        well_detected_score=WELL_DETECTED_SCORE,
        redundant_score=REDUNDANT_SCORE,
        overmerged_score=OVERMERGED_SCORE,
    )
    perf = comp.get_performance(method="by_unit").astype(float)
    return {
        "num_gt": int(gt.get_num_units()),
        "num_units": int(tested.get_num_units()),
        "well_detected": len(comp.get_well_detected_units(WELL_DETECTED_SCORE)),
        "false_positive": int(comp.count_false_positive_units(REDUNDANT_SCORE)),
        "redundant": int(comp.count_redundant_units(REDUNDANT_SCORE)),
        "overmerged": int(comp.count_overmerged_units(OVERMERGED_SCORE)),
        "mean_accuracy": float(perf["accuracy"].mean()),
        "mean_recall": float(perf["recall"].mean()),
        "mean_precision": float(perf["precision"].mean()),
    }


def score_labels(*, gt, tested, labels_tsv: Path) -> dict:
    """How the automatic labels (cluster_KSLabel.tsv) agree with the ground truth: of the units
    labelled good, how many match a GT unit with accuracy >= WELL_DETECTED_SCORE; of the
    false-positive units, how many are labelled mua or noise."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    labels = {}
    for line in Path(labels_tsv).read_text().splitlines()[1:]:
        cid, _, value = line.partition("\t")
        if cid.strip():
            labels[int(cid)] = value.strip()
    comp = compare_sorter_to_ground_truth(gt, tested, exhaustive_gt=True, delta_time=DELTA_TIME_MS)
    match = comp.hungarian_match_21
    good = [u for u in tested.unit_ids if labels.get(int(u)) == "good"]
    # an unmatched unit maps to -1, or to "" when the ground-truth ids are strings
    good_matched = sum(
        1
        for u in good
        if match[u] in comp.agreement_scores.index and comp.agreement_scores.at[match[u], u] >= WELL_DETECTED_SCORE
    )
    fp = list(comp.get_false_positive_units(REDUNDANT_SCORE))
    return {
        "n_good": len(good),
        "good_matched": good_matched,
        "n_fp_labelled": len(fp),
        "fp_not_good": sum(1 for u in fp if labels.get(int(u)) in ("mua", "noise")),
    }


# ---------------------------------------------------------------------------------------------
# motion


def motion_error_um(*, motion_folder: Path, truth_path: Path) -> float | None:
    """RMS (µm) of spikesort's motion estimate minus the true displacement, over the truth's
    time samples and every ground-truth unit, each evaluated at the unit's depth. Both say how far
    the tissue moved towards larger y; each unit's mean difference is removed first (the
    estimate's reference position is the median one, the truth's the start). None without an
    estimate (drift not corrected)."""
    from spikesort.stages.drift import Motion

    if not Motion.exists(motion_folder):
        return None
    motion = Motion.load(motion_folder)
    with np.load(truth_path) as truth:
        times, disp, depths = truth["times_s"], truth["displacement_um"], truth["unit_depth_um"]
        # a multi-shank truth says which shank each unit is on (shank index = sorted group order)
        shanks = truth["unit_shank"] if "unit_shank" in truth else np.zeros(len(depths), np.int64)
    errors = []
    for u, depth in enumerate(depths):
        est = motion.at(times_s=times, depths_um=np.full(len(times), depth), shanks=np.full(len(times), shanks[u]))
        d = est - disp[:, u]
        errors.append(d - d.mean())
    return float(np.sqrt(np.mean(np.square(errors))))
