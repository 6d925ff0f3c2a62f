"""Tracking benchmark: synthetic chronic sessions, sorted with spikesort, tracked, scored.

    python -m benchmarks.tracking [--cache DIR] [--sessions 5] [--units 40] [--duration 60] [--no-nonrigid]

Per case: 5 sessions of one population (fixed templates per neuron), a rigid probe shift of up to
100 µm between sessions (in the rigid case sessions 2 -> 3 exactly +100 µm; a depth gradient on a
long probe in the non-rigid case), 20 % of the neurons replaced at each session, firing rates
changed by up to ±50 %, new noise. Generated recordings and sortings are cached under --cache.
Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

CASES = {
    # one consecutive step fixed at +100 µm (sessions 2 -> 3): the largest motion of the goal, always exercised
    "rigid, 64 ch (787 µm)": dict(n_channels=64, gradient=0.0, fixed_step=(3, 100.0)),
    "non-rigid, 128 ch (1587 µm)": dict(n_channels=128, gradient=0.05),
}


def _sorted_sessions(case_dir: Path, *, n_sessions, n_units, n_channels, duration_s, gradient, seed, fixed_step=None):
    import spikesort
    from spikesort.tracking.synthetic import make_chronic_sessions, save_int16, sorted_to_neurons

    _, sessions = make_chronic_sessions(
        n_sessions=n_sessions,
        n_units=n_units,
        n_channels=n_channels,
        duration_s=duration_s,
        max_shift_um=100.0,
        gradient=gradient,
        fixed_step=fixed_step,
        seed=seed,
    )
    folders, truth, sort_s = [], [], []
    for s in sessions:
        rec_dir, out = case_dir / f"rec{s.index}", case_dir / f"session{s.index}"
        done = out / "spikesort_complete.json"
        if not done.is_file():
            shutil.rmtree(rec_dir, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            rec = save_int16(s.recording, rec_dir)
            t0 = time.perf_counter()
            spikesort.sort(rec, out)
            (case_dir / f"sort{s.index}_s.json").write_text(json.dumps(time.perf_counter() - t0))
        sort_s.append(json.loads((case_dir / f"sort{s.index}_s.json").read_text()))
        folders.append(str(out))
        truth.append(sorted_to_neurons(s.gt_sorting, out))
    return sessions, folders, truth, sort_s


def _motion_error(result, sessions) -> float:
    """Mean |estimated - true| depth shift over the neurons present in consecutive sessions."""
    errors = []
    for p in result.pairs:
        if p.b != p.a + 1:
            continue
        a, b = sessions[p.a], sessions[p.b]
        common, ia, ib = np.intersect1d(a.neuron_ids, b.neuron_ids, return_indices=True)
        if common.size:
            true = b.depth_um[ib] - a.depth_um[ia]
            errors.append(np.abs(p.motion.at(a.depth_um[ia]) - true))
    return float(np.mean(np.concatenate(errors))) if errors else float("nan")


def run_case(name: str, case_dir: Path, *, n_sessions: int, n_units: int, duration_s: float, seed: int, **kw) -> dict:
    import spikesort
    from spikesort.tracking.synthetic import score_links

    case_dir.mkdir(parents=True, exist_ok=True)
    sessions, folders, truth, sort_s = _sorted_sessions(
        case_dir, n_sessions=n_sessions, n_units=n_units, duration_s=duration_s, seed=seed, **kw
    )
    t0 = time.perf_counter()
    result = spikesort.track(folders, case_dir / "tracks", overwrite=True)
    total = time.perf_counter() - t0
    score = score_links(result.rows, truth, folders)
    consecutive = [p.seconds for p in result.pairs if p.b == p.a + 1]
    return dict(
        case=name,
        sessions=n_sessions,
        well_detected=sum(len(t) for t in truth),
        units=sum(np.unique(np.load(Path(f) / "spike_clusters.npy")).size for f in folders),
        shifts=[round(s.rigid_um - p.rigid_um, 1) for p, s in zip(sessions[:-1], sessions[1:])],
        motion_error_um=_motion_error(result, sessions),
        track_s=total,
        pair_s=float(np.mean(consecutive)),
        sort_s=float(np.mean(sort_s)),
        **score,
    )


def table(rows: list[dict]) -> str:
    head = (
        "| case | sessions | shifts between sessions (µm) | units sorted (well detected) | persisting pairs | "
        "correctly linked | false links | motion error | s per session pair | tracking s (all) | sort s per session |"
    )
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['sessions']} | {', '.join(f'{s:+.0f}' for s in r['shifts'])} | "
            f"{r['units']} ({r['well_detected']}) | {r['persisting_pairs']} | "
            f"{100 * r['linked_fraction']:.1f} % ({r['correctly_linked']}) | "
            f"{100 * r['false_fraction']:.1f} % ({r['false_links']} of {r['scored_links']}) | "
            f"{r['motion_error_um']:.1f} µm | {r['pair_s']:.2f} | {r['track_s']:.1f} | {r['sort_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "spikesort-bench" / "tracking")
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--units", type=int, default=40)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-nonrigid", action="store_true", help="only the rigid case on 64 channels")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name, kw in CASES.items():
        if args.no_nonrigid and kw["gradient"]:
            continue
        tag = (
            f"{kw['n_channels']}ch_g{kw['gradient']:g}_s{args.sessions}_u{args.units}_d{args.duration:g}"
            f"_seed{args.seed}"
        )
        if kw.get("fixed_step"):
            tag += f"_step{kw['fixed_step'][0]}x{kw['fixed_step'][1]:g}"
        rows.append(
            run_case(
                name,
                args.cache / tag,
                n_sessions=args.sessions,
                n_units=args.units,
                duration_s=args.duration,
                seed=args.seed,
                **kw,
            )
        )
        logging.getLogger("benchmarks.tracking").warning("%s done", name)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
