#!/usr/bin/env python
"""Check, through phylib, that a spikesort Phy folder shows ground-truth units in µV.

For every ground-truth unit matched to a sorted cluster (spikeinterface's Hungarian match on the
spike trains phylib loads, so a Phy-curated folder works too), two comparisons:

* template: phylib's cluster mean waveform (``TemplateModel.get_cluster_mean_waveforms``, the
  unwhitened templates Phy's Template view draws, µV by spikesort's convention) against the
  ground-truth template in µV computed by spikeinterface on the same recording, high-pass
  filtered and median-referenced as the sorter's defaults;
* raw: the mean of the raw waveforms phylib reads from ``dat_path`` for up to 300 spikes of the
  cluster (``TemplateModel.get_waveforms``), times the recording's gain, against the ground-truth
  template of the unfiltered recording. This checks dat_path, channel map and spike times.

Each gives a Pearson correlation (best lag within ±0.2 ms, on phylib's channels of the cluster)
and a peak-amplitude ratio (sorted / ground truth, largest |value| on the ground truth's peak
channel among those). A unit passes with correlation >= --min-corr and ratio within
[1/--max-ratio, --max-ratio]; the exit code is 1 when a well-detected unit (accuracy >= 0.8)
fails.

The ground truth is either a benchmark cache folder (``recording/`` and ``gt_sorting.npz``, as
``scripts/benchmark.py`` writes them under ~/.cache/spikesort-bench/recordings/<scenario>_seed<k>/)
or a ``spikesort demo`` folder (its ground truth is rebuilt from the seed in demo_summary.json).

Examples::

    python scripts/phy_check.py /tmp/demo/sorting /tmp/demo
    python scripts/phy_check.py runs/static64_seed0/spikesort ~/.cache/spikesort-bench/recordings/static64_seed0
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

WELL_DETECTED = 0.8
DELTA_TIME_MS = 0.4
MAX_LAG_MS = 0.2
N_RAW_SPIKES = 300


def load_ground_truth(gt_folder: Path):
    """(recording, gt_sorting) from a benchmark cache folder or a spikesort demo folder."""
    import spikeinterface as si

    if (gt_folder / "gt_sorting.npz").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for benchmarks/
        from benchmarks.scenarios import load_recording
        from benchmarks.scoring import load_sorting_npz

        return load_recording(folder=gt_folder), load_sorting_npz(path=gt_folder / "gt_sorting.npz")
    summary = gt_folder / "demo_summary.json"
    if summary.is_file():
        from spikesort.demo import RECORDING_DIR, make_demo_recording

        s = json.loads(summary.read_text())
        _, gt = make_demo_recording(
            duration_s=s["duration_s"], n_channels=s["n_channels"], n_units=s["n_gt_units"], seed=s["seed"]
        )
        return si.load(gt_folder / RECORDING_DIR), gt
    raise SystemExit(f"{gt_folder} holds neither gt_sorting.npz (benchmark cache) nor demo_summary.json (demo)")


def gt_templates_uv(recording, gt_sorting, *, n_before: int, n_after: int, preprocess: bool) -> np.ndarray:
    """(U, n_before + n_after, C) ground-truth templates in µV, spike sample at row n_before."""
    import spikeinterface.core as sic
    from spikeinterface.preprocessing import common_reference, highpass_filter

    from spikesort.params import Params
    from spikesort.stages.preprocess import resolve_reference

    fs = recording.get_sampling_frequency()
    if preprocess:
        p = Params()
        recording = highpass_filter(recording, freq_min=p.highpass_hz, filter_order=3, dtype="float32")
        reference = resolve_reference(p.common_reference, positions_um=recording.get_channel_locations())
        if reference != "none":
            recording = common_reference(recording, operator=reference)
    analyzer = sic.create_sorting_analyzer(
        gt_sorting, recording, sparse=False, format="memory", return_in_uV=True, seed=0
    )
    analyzer.compute("random_spikes", max_spikes_per_unit=500, seed=0)
    # +0.25 sample keeps the ms -> samples conversion from dropping a sample
    analyzer.compute("templates", ms_before=(n_before + 0.25) * 1000 / fs, ms_after=(n_after + 0.25) * 1000 / fs)
    templates = analyzer.get_extension("templates").get_data(operator="average")
    if templates.shape[1] != n_before + n_after:
        raise RuntimeError(f"spikeinterface gave {templates.shape[1]} template samples, expected {n_before + n_after}")
    return templates


def best_lag(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Largest Pearson correlation of two (nt, C) arrays over shifts |lag| <= max_lag (edges left out)."""
    best = (-1.0, 0)
    core = slice(max_lag, a.shape[0] - max_lag)
    for lag in range(-max_lag, max_lag + 1):
        x, y = np.roll(a, lag, axis=0)[core].ravel(), b[core].ravel()
        if x.std() == 0 or y.std() == 0:
            continue
        r = float(np.corrcoef(x, y)[0, 1])
        if r > best[0]:
            best = (r, lag)
    return best


def compare(sorted_uv: np.ndarray, gt_uv: np.ndarray, max_lag: int) -> dict:
    r, lag = best_lag(sorted_uv, gt_uv, max_lag)
    ch = int(np.abs(gt_uv).max(axis=0).argmax())
    ratio = float(np.abs(sorted_uv[:, ch]).max() / np.abs(gt_uv[:, ch]).max())
    peak = float(np.abs(gt_uv[:, ch]).max())
    return dict(corr=round(r, 3), lag=lag, ratio=round(ratio, 3), gt_peak_uv=round(peak, 1))


def check(*, phy_folder: Path, gt_folder: Path, min_corr: float, max_ratio: float) -> tuple[list[dict], dict]:
    from phylib.io.model import load_model
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting, set_global_job_kwargs

    set_global_job_kwargs(progress_bar=False)
    recording, gt = load_ground_truth(gt_folder)
    model = load_model(phy_folder / "params.py")
    try:
        fs = model.sample_rate
        nt = model.n_samples_waveforms
        n_before = nt // 2
        sorting = NumpySorting.from_samples_and_labels(
            [model.spike_samples.astype(np.int64)], [model.spike_clusters.astype(np.int64)], fs
        )
        comp = compare_sorter_to_ground_truth(gt, sorting, exhaustive_gt=True, delta_time=DELTA_TIME_MS)
        accuracy = comp.get_performance(method="by_unit")["accuracy"].astype(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            filtered = gt_templates_uv(recording, gt, n_before=n_before, n_after=nt - n_before, preprocess=True)
            raw = gt_templates_uv(recording, gt, n_before=n_before, n_after=nt - n_before, preprocess=False)
        gains = (
            np.asarray(recording.get_channel_gains(), dtype=np.float64)
            if recording.has_scaleable_traces()
            else np.ones(recording.get_num_channels())
        )
        groups = model.metadata.get("group", {})
        max_lag = max(1, int(round(MAX_LAG_MS * fs / 1000)))
        rng = np.random.default_rng(0)
        rows = []
        for gi, gt_unit in enumerate(gt.unit_ids):
            k = int(comp.hungarian_match_12[gt_unit])
            row = dict(gt_unit=str(gt_unit), cluster=k if k >= 0 else None, accuracy=round(float(accuracy[gt_unit]), 3))
            if k < 0:
                rows.append(row)
                continue
            row["label"] = groups.get(k, "unsorted")
            mean = model.get_cluster_mean_waveforms(k)
            channels = np.asarray(mean.channel_ids)
            row["template"] = compare(mean.mean_waveforms, filtered[gi][:, channels], max_lag)
            if model.traces is not None:
                spikes = model.get_cluster_spikes(k)
                if spikes.size > N_RAW_SPIKES:
                    spikes = np.sort(rng.choice(spikes, N_RAW_SPIKES, replace=False))
                w = model.get_waveforms(spikes, channels).astype(np.float64) * gains[model.channel_mapping[channels]]
                w = w.mean(axis=0)
                w -= np.median(w, axis=0, keepdims=True)  # the recording's DC offset, if any
                row["raw"] = compare(w, raw[gi][:, channels], max_lag)
            checks = [row["template"]] + ([row["raw"]] if "raw" in row else [])
            row["ok"] = all(c["corr"] >= min_corr and 1 / max_ratio <= c["ratio"] <= max_ratio for c in checks)
            rows.append(row)
    finally:
        model.close()
    well = [r for r in rows if r["accuracy"] >= WELL_DETECTED]
    summary = dict(
        n_gt=len(rows),
        n_matched=sum(r["cluster"] is not None for r in rows),
        n_well_detected=len(well),
        n_well_detected_failing=sum(not r.get("ok", False) for r in well),
        median_template_corr=_median(r["template"]["corr"] for r in well if "template" in r),
        median_template_ratio=_median(r["template"]["ratio"] for r in well if "template" in r),
        median_raw_corr=_median(r["raw"]["corr"] for r in well if "raw" in r),
        median_raw_ratio=_median(r["raw"]["ratio"] for r in well if "raw" in r),
    )
    return rows, summary


def _median(values) -> float | None:
    v = list(values)
    return round(float(np.median(v)), 3) if v else None


def table(rows: list[dict]) -> str:
    head = (
        "| GT unit | cluster | accuracy | label | template corr | lag | template ratio | raw corr | raw ratio "
        "| GT peak µV | ok |"
    )
    lines = [head, "|" + "|".join("---" for _ in range(11)) + "|"]
    for r in rows:
        t, w = r.get("template", {}), r.get("raw", {})
        lines.append(
            "| "
            + " | ".join(
                str(x)
                for x in (
                    r["gt_unit"],
                    "–" if r["cluster"] is None else r["cluster"],
                    r["accuracy"],
                    r.get("label", "–"),
                    t.get("corr", "–"),
                    t.get("lag", "–"),
                    t.get("ratio", "–"),
                    w.get("corr", "–"),
                    w.get("ratio", "–"),
                    t.get("gt_peak_uv", "–"),
                    {True: "yes", False: "NO"}.get(r.get("ok"), "–"),
                )
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("phy_folder", type=Path, help="the spikesort output (Phy) folder, or its params.py")
    p.add_argument("gt_folder", type=Path, help="benchmark cache folder (recording/, gt_sorting.npz) or demo folder")
    p.add_argument("--min-corr", type=float, default=0.9, help="smallest correlation that passes (default 0.9)")
    p.add_argument("--max-ratio", type=float, default=1.25, help="peak ratios within [1/R, R] pass (default 1.25)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and summary to this JSON file")
    args = p.parse_args(argv)
    folder = args.phy_folder.expanduser().resolve()
    if folder.name == "params.py":
        folder = folder.parent
    rows, summary = check(
        phy_folder=folder,
        gt_folder=args.gt_folder.expanduser().resolve(),
        min_corr=args.min_corr,
        max_ratio=args.max_ratio,
    )
    print(table(rows))
    print()
    print(", ".join(f"{k} {v}" for k, v in summary.items()))
    if args.json is not None:
        args.json.write_text(json.dumps(dict(rows=rows, summary=summary), indent=1))
    return 1 if summary["n_well_detected_failing"] else 0


if __name__ == "__main__":
    sys.exit(main())
