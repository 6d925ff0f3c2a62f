"""Sort a session at the end of an acquisition script, with spikesort's Python API.

    python scripts/example_acquisition.py OUT [--config lab.toml] [--duration 30]

It sorts a simulated 30 s, 32-channel recording (nothing is downloaded); in a rig, replace
``acquire()`` with your own reader, e.g.

    from spikesort.io.recordings import open_recording
    from spikesort.io.probes import attach_probe, load_probe
    recording = attach_probe(open_recording("session.bin", sampling_rate_hz=30000, n_channels=64,
                                            dtype="int16"), load_probe("silicon-64-2col"))

or any spikeinterface recording you already have (read_spikeglx, read_openephys, a
preprocessing chain, ...). The lab's parameters live in a TOML file made with
``spikesort params > lab.toml`` and edited; ``--config lab.toml`` uses it here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import spikesort


def acquire(duration_s: float):
    """Stand-in for the acquisition system: a simulated recording with its probe attached."""
    from spikesort.demo import make_demo_recording

    recording, _ground_truth = make_demo_recording(duration_s=duration_s, n_channels=32, n_units=12, seed=0)
    return recording


def show_progress(stage: str, done: int, total: int) -> None:
    """What a GUI would do with the progress hook: here, one updating line on stderr."""
    print(f"\rsorting: {stage:<10} {done:>4}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def sort_session(output_folder, *, duration_s: float = 30.0, config: str | None = None):
    recording = acquire(duration_s)
    params = spikesort.Params.from_toml(config) if config else spikesort.Params()
    result = spikesort.sort(recording, output_folder, params=params, progress=show_progress)

    units = result.units  # a pandas DataFrame, one row per unit
    good = units[units["label"] == "good"]
    print(f"{result.n_units} units, {len(good)} good, sorted in {sum(result.timings_s.values()):.1f} s")
    print(good[["n_spikes", "firing_rate_hz", "amplitude_uv", "snr", "depth_um"]].round(2).to_string())

    sorting = result.to_spikeinterface()  # a spikeinterface sorting; the table is in its properties
    print("spikeinterface:", sorting, "properties:", ", ".join(sorting.get_property_keys()))

    report = result.make_report()  # OUT/report/summary.html and its figures
    print("report: ", report)
    if result.params_py is not None:
        print("curate: phy template-gui", result.params_py)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_folder", type=Path, help="where to write the sorting (must not exist)")
    parser.add_argument("--config", help="a parameter file written by `spikesort params` and edited")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to simulate")
    args = parser.parse_args(argv)
    try:
        sort_session(args.output_folder, duration_s=args.duration, config=args.config)
    except spikesort.SpikesortError as exc:  # a mistake the user can fix: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
