"""The accuracy table: its columns, cell formatting, markdown, and the JSON and CSV outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = (
    ("scenario", "scenario"),
    ("seed", "seed"),
    ("sorter", "sorter"),
    ("well detected", "well"),
    ("units found", "num_units"),
    ("FP units", "false_positive"),
    ("redundant", "redundant"),
    ("overmerged", "overmerged"),
    ("mean accuracy", "mean_accuracy"),
    ("motion RMS µm", "motion_rms_um"),
    ("good = GT ≥ 0.8", "good_precision"),
    ("FP not good", "fp_labels"),
    ("wall s", "wall_s"),
    ("CPU s", "cpu_s"),
    ("× real time", "x_realtime"),
    ("peak RSS MB", "peak_rss_mb"),
    ("source", "source"),
)


def _fmt(row: dict, key: str) -> str:
    if row.get("status") != "ok" and key in (
        "well",
        "num_units",
        "false_positive",
        "redundant",
        "overmerged",
        "mean_accuracy",
    ):
        return row.get("status", "failed") if key == "well" else "–"
    if key == "well":
        return f"{row['well_detected']}/{row['num_gt']}"
    if key in ("good_precision", "fp_labels"):
        n, of = (
            (row.get("good_matched"), row.get("n_good"))
            if key == "good_precision"
            else (row.get("fp_not_good"), row.get("n_fp_labelled"))
        )
        return "–" if of is None else f"{n}/{of}"
    v = row.get(key)
    if v is None:
        return "–"
    if key == "mean_accuracy":
        return f"{v:.3f}"
    if key == "motion_rms_um":
        return f"{v:.1f}"
    if key in ("wall_s", "cpu_s"):
        return f"{v:.1f}"
    if key == "x_realtime":
        return f"{v:.2f}"
    if key == "peak_rss_mb":
        return f"{v:.0f}"
    return str(v)


def markdown_table(*, rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row, k) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def write_outputs(*, rows: list[dict], out: Path, extra: dict | None = None) -> None:
    """OUT.json (the rows; with ``extra``, an object {"rows": rows, **extra}) and OUT.csv."""
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = rows if extra is None else {"rows": rows, **extra}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys and k != "traceback"]
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
