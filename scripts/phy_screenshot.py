#!/usr/bin/env python
"""Open a spikesort output in the real Phy GUI on a virtual screen and take screenshots.

A curator's check, not a CI test: it runs ``phy template-gui params.py`` under Xvfb, selects the
largest good unit (screenshot ``one_unit.png``), then that unit and its most similar one
(``two_units.png``), closes Phy and reports the views Phy made, what each had selected, and
every warning or error in Phy's log (a view that could not be created shows there as "Could not
create view ..."). Exit code 0 when every default view was created and nothing was logged at
warning level or above.

Needs, outside spikesort's own environment (none of it is a spikesort dependency):
  * Phy in its own virtualenv:  python3 -m venv /tmp/venv-phy &&
        /tmp/venv-phy/bin/pip install phy PyQt5 PyQtWebEngine
  * Debian packages: xvfb, libgl1-mesa-dri, libglx-mesa0, libegl1, imagemagick (``import``), and
    the libxcb/libxkbcommon-x11 libraries Qt's xcb plugin loads.

Examples::

    python scripts/phy_screenshot.py                         # runs `spikesort demo` first if needed
    python scripts/phy_screenshot.py --folder sorted/ --out shots/ --phy /tmp/venv-phy/bin/phy
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_PHY = Path("/tmp/venv-phy/bin/phy")
# phy 2.1's TemplateGUI.default_views, plus the template view we add
EXPECTED_VIEWS = (
    "WaveformView",
    "CorrelogramView",
    "ISIView",
    "FeatureView",
    "AmplitudeView",
    "FiringRateView",
    "TraceView",
    "ProbeView",
    "TemplateFeatureView",
    "TemplateView",
)

# The plugin runs inside Phy: it adds a template view, selects units, has ImageMagick grab the
# screen after each selection, writes what each view shows to views.json and closes the GUI.
PLUGIN = r"""
import json
import os
import subprocess

from phy import IPlugin, connect

try:
    from PyQt5.QtCore import QTimer
except ImportError:  # pragma: no cover
    from qtpy.QtCore import QTimer


class SpikesortScreenshot(IPlugin):
    def attach_to_controller(self, controller):
        out = os.environ["SPIKESORT_SHOT_DIR"]
        steps = json.loads(os.environ["SPIKESORT_SHOT_STEPS"])
        wait_ms = int(float(os.environ.get("SPIKESORT_SHOT_WAIT_S", "8")) * 1000)
        record = {"steps": []}

        def views(gui):
            rows = []
            for v in gui.views:
                ids = getattr(v, "cluster_ids", None)
                rows.append({"name": v.name, "class": type(v).__name__,
                             "cluster_ids": [int(c) for c in ids] if ids is not None else None})
            return rows

        @connect(sender=controller)
        def on_gui_ready(sender, gui):
            if gui.view_count.get("TemplateView", 0) == 0:
                gui.create_and_add_view("TemplateView")

            def fill_screen():
                # no window manager under Xvfb: place the window by hand, after Phy restored
                # its saved geometry
                gui.setGeometry(0, 0, int(os.environ.get("SPIKESORT_SHOT_W", "1920")),
                                int(os.environ.get("SPIKESORT_SHOT_H", "1080")))

            def curate():
                # what a curator does with the keyboard: merge, split, label, save
                plan = json.loads(os.environ["SPIKESORT_SHOT_CURATE"])
                sup = controller.supervisor
                merged = sup.merge(plan["merge"]).added[0]
                sup.label("group", "good", [merged])
                spikes = sup.clustering.spikes_per_cluster[plan["split"]]
                parts = sup.split(spikes[: len(spikes) // 2]).added
                sup.label("group", "mua", [parts[0]])
                sup.move("unsorted", [parts[1]])
                sup.label("group", "noise", [plan["noise"]])
                groups = sup.get_labels("group")
                record["curation"] = {"merged": int(merged), "split": [int(p) for p in parts],
                                      "groups": {str(c): g for c, g in groups.items()},
                                      "n_spikes": {str(c): int(len(sup.clustering.spikes_per_cluster[c]))
                                                   for c in sup.clustering.cluster_ids}}
                sup.save()

            def run(i):
                if i == len(steps):
                    if os.environ.get("SPIKESORT_SHOT_CURATE"):
                        curate()
                    with open(os.path.join(out, "views.json"), "w") as f:
                        json.dump(record, f, indent=1)
                    gui.close()
                    return
                name, clusters = steps[i]
                controller.supervisor.select(clusters)

                def shoot():
                    path = os.path.join(out, name + ".png")
                    subprocess.run(["import", "-window", "root", path], check=False)
                    record["steps"].append({"name": name, "selected": clusters,
                                            "supervisor_selected": [int(c) for c in controller.supervisor.selected],
                                            "views": views(gui), "png": path})
                    run(i + 1)

                QTimer.singleShot(wait_ms, shoot)

            QTimer.singleShot(wait_ms // 2, fill_screen)
            QTimer.singleShot(wait_ms, lambda: run(0))
"""


def _free_display() -> int:
    for n in range(77, 200):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("no free X display number between 77 and 199")


def _tsv(path: Path) -> dict[int, str]:
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines()[1:]:
            cid, _, value = line.partition("\t")
            if value.strip():
                rows[int(cid)] = value.strip()
    return rows


def choose_units(folder: Path) -> tuple[int, int | None]:
    """The good unit with most spikes (any unit if none is good) and its most similar unit."""
    clusters = np.load(folder / "spike_clusters.npy")
    ids, counts = np.unique(clusters, return_counts=True)
    group = _tsv(folder / "cluster_group.tsv")
    good = [i for i, c in enumerate(ids) if group.get(int(c)) == "good"]
    pick = good or list(range(len(ids)))
    first = int(ids[max(pick, key=lambda i: counts[i])])
    other = None
    sim_path = folder / "similar_templates.npy"
    if sim_path.is_file() and np.array_equal(clusters, np.load(folder / "spike_templates.npy")):
        sim = np.load(sim_path)[first].astype(float)
        sim[first] = -np.inf
        order = [int(k) for k in np.argsort(sim)[::-1] if int(k) in set(ids.tolist())]
        other = order[0] if order else None
    if other is None and len(ids) > 1:
        other = int(next(c for c in ids if int(c) != first))
    return first, other


def ensure_demo(demo: Path) -> Path:
    folder = demo / "sorting"
    if not (folder / "params.py").is_file():
        print(f"running `spikesort demo -o {demo}` ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "spikesort.cli", "demo", "-o", str(demo), "-q"]
            + (["--overwrite"] if demo.exists() else []),
            check=True,
        )
    return folder


def _wait_for(path: Path, timeout_s: float) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if path.exists():
            return True
        time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_phy(
    *, folder: Path, phy: Path, out: Path, size: str, wait_s: float, timeout_s: float, curate: bool = False
) -> dict:
    for tool in ("Xvfb", "import"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install xvfb imagemagick")
    if not phy.exists() and shutil.which(str(phy)) is None:
        raise SystemExit(f"phy not found at {phy}: see this script's docstring (or pass --phy)")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    first, other = choose_units(folder)
    steps = [["one_unit", [first]]] + ([["two_units", [first, other]]] if other is not None else [])
    plan = None
    if curate:
        ids, counts = np.unique(np.load(folder / "spike_clusters.npy"), return_counts=True)
        rest = [(int(n), int(c)) for c, n in zip(ids, counts) if int(c) not in (first, other)]
        if other is None or len(rest) < 2:
            raise SystemExit("--curate needs at least 4 clusters")
        rest.sort(reverse=True)
        plan = {"merge": [first, other], "split": rest[0][1], "noise": rest[-1][1]}
    width, height = (int(v) for v in size.lower().split("x"))
    display = _free_display()
    home = Path(tempfile.mkdtemp(prefix="phy-home-"))
    (home / ".phy" / "plugins").mkdir(parents=True)
    (home / ".phy" / "plugins" / "spikesort_screenshot.py").write_text(PLUGIN)
    (home / ".phy" / "phy_config.py").write_text(
        "c = get_config()\n"
        f"c.Plugins.dirs = [r'{home / '.phy' / 'plugins'}']\n"
        "c.TemplateGUI.plugins = ['SpikesortScreenshot']\n"
    )
    log_path = out / "phy_console.log"
    xvfb = subprocess.Popen(
        ["Xvfb", f":{display}", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(
        os.environ,
        DISPLAY=f":{display}",
        HOME=str(home),
        QT_QPA_PLATFORM="xcb",
        LIBGL_ALWAYS_SOFTWARE="1",
        QTWEBENGINE_CHROMIUM_FLAGS="--no-sandbox --disable-gpu",
        QTWEBENGINE_DISABLE_SANDBOX="1",
        SPIKESORT_SHOT_DIR=str(out.resolve()),
        SPIKESORT_SHOT_STEPS=json.dumps(steps),
        SPIKESORT_SHOT_WAIT_S=str(wait_s),
        SPIKESORT_SHOT_W=str(width),
        SPIKESORT_SHOT_H=str(height),
    )
    if plan is not None:
        env["SPIKESORT_SHOT_CURATE"] = json.dumps(plan)
    env.pop("QT_QUICK_BACKEND", None)
    t0 = time.time()
    try:
        if not _wait_for(Path(f"/tmp/.X11-unix/X{display}"), 20):
            raise SystemExit("Xvfb did not start")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [str(phy), "template-gui", str(folder / "params.py")],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                print(f"phy still running after {timeout_s:.0f} s: stopped", file=sys.stderr)
            finally:
                _stop(proc)
    finally:
        _stop(xvfb)
        shutil.rmtree(home, ignore_errors=True)
    text = log_path.read_text(errors="replace")
    views_file = out / "views.json"
    record = json.loads(views_file.read_text()) if views_file.is_file() else {"steps": []}
    return dict(
        folder=str(folder),
        units=steps,
        seconds=round(time.time() - t0, 1),
        log=str(log_path),
        record=record,
        log_text=text,
    )


# phy's console lines look like "12:00:00.000 [W] gui:737  Could not create view FeatureView."
_LEVEL = re.compile(r"\[(W|E|C)\]|Traceback|Error|Exception")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# phylib warns whenever the optional precomputed waveform subset (_phy_spikes_subset.*.npy, made by
# `phy extract-waveforms`) is absent, as in every Kilosort folder; Phy then reads raw data instead
BENIGN = ("Skipping spike waveforms that do not exist",)


def summarize(run: dict) -> tuple[list[str], bool]:
    lines = [
        f"Phy folder: {run['folder']}",
        f"selections: {run['units']}",
        f"phy ran {run['seconds']} s",
        f"console log: {run['log']}",
    ]
    flagged = [_ANSI.sub("", line) for line in run["log_text"].splitlines() if _LEVEL.search(line)]
    benign = [line for line in flagged if any(b in line for b in BENIGN)]
    problems = [line for line in flagged if line not in benign]
    ok = True
    if not run["record"]["steps"]:
        lines.append("no screenshot was taken (the plugin did not run to its end): see the console log")
        ok = False
    for step in run["record"]["steps"]:
        made = [v["class"] for v in step["views"]]
        missing = [v for v in EXPECTED_VIEWS if v not in made]
        lines.append(f"{step['name']}: selected {step['supervisor_selected']} -> {step['png']}")
        for v in step["views"]:
            lines.append(f"  {v['name']:<24} shows clusters {v['cluster_ids']}")
        if missing:
            lines.append(f"  MISSING views: {missing}")
            ok = False
        if step["supervisor_selected"] != step["selected"]:
            lines.append(f"  asked to select {step['selected']}")
            ok = False
    if problems:
        ok = False
        lines.append(f"{len(problems)} warning/error lines in Phy's log:")
        lines += [f"  {p}" for p in problems]
    else:
        lines.append("no warning or error in Phy's log" + (" besides the expected one:" if benign else ""))
    lines += [f"  (expected) {line}" for line in benign]
    return lines, ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--folder", type=Path, default=None, help="a spikesort Phy folder (default: the demo's)")
    p.add_argument(
        "--demo",
        type=Path,
        default=Path(tempfile.gettempdir()) / "spikesort-phy-demo",
        help="demo folder, made with `spikesort demo` when it holds no sorting yet",
    )
    p.add_argument(
        "--phy",
        type=Path,
        default=DEFAULT_PHY if DEFAULT_PHY.exists() else Path("phy"),
        help=f"the phy executable (default: {DEFAULT_PHY} if present, else phy on PATH)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="folder for the screenshots (default: FOLDER/../phy_screenshots)"
    )
    p.add_argument("--size", default="2560x1440", help="virtual screen size (default 2560x1440)")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to let the views draw after each selection")
    p.add_argument("--timeout", type=float, default=240.0, help="stop Phy after this many seconds")
    p.add_argument(
        "--curate",
        action="store_true",
        help="then merge, split, label and save in Phy, on a copy FOLDER_phycurated, and read it "
        "back with spikesort.load_result",
    )
    args = p.parse_args(argv)
    folder = (args.folder or ensure_demo(args.demo)).resolve()
    if folder.name == "params.py":
        folder = folder.parent
    out = (args.out or folder.parent / "phy_screenshots").resolve()
    if args.curate:
        # a sibling copy, so a relative dat_path (../recording.dat) still resolves
        copy = folder.with_name(folder.name + "_phycurated")
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".phy", "phy.log"))
        folder = copy
    run = run_phy(
        folder=folder,
        phy=args.phy,
        out=out,
        size=args.size,
        wait_s=args.wait,
        timeout_s=args.timeout,
        curate=args.curate,
    )
    lines, ok = summarize(run)
    if args.curate:
        more, curated_ok = check_curation(folder, run["record"].get("curation"))
        lines += more
        ok = ok and curated_ok
    print("\n".join(lines))
    return 0 if ok else 1


def check_curation(folder: Path, curation: dict | None) -> tuple[list[str], bool]:
    """Read the folder Phy saved with spikesort.load_result and compare with what Phy reported."""
    if not curation:
        return ["the curation step did not run: see the console log"], False
    from spikesort.outputs.curated import load_result

    r = load_result(folder)
    labels = dict(zip(r.unit_ids.tolist(), r.labels.tolist()))
    n_spikes = dict(zip(r.unit_ids.tolist(), r.properties["n_spikes"].tolist()))
    lines = [
        f"curated in Phy and saved: {folder}",
        f"  merged -> {curation['merged']}, split -> {curation['split']}",
        f"  load_result: {r.n_units} units, labels {r.label_counts()}",
    ]
    ok = True
    phy_ids = sorted(int(c) for c in curation["n_spikes"])
    if r.unit_ids.tolist() != phy_ids:
        lines.append(f"  MISMATCH units: Phy {phy_ids}, load_result {r.unit_ids.tolist()}")
        ok = False
    for c, n in curation["n_spikes"].items():
        want = curation["groups"].get(c) or "unsorted"
        if n_spikes.get(int(c)) != n or labels.get(int(c)) != want:
            lines.append(
                f"  MISMATCH cluster {c}: Phy {n} spikes '{want}', load_result "
                f"{n_spikes.get(int(c))} spikes '{labels.get(int(c))}'"
            )
            ok = False
    if ok:
        lines.append("  every cluster's spikes and label read back as Phy saved them")
    return lines, ok


if __name__ == "__main__":
    sys.exit(main())
