"""Does `spikesort batch` cost more than sorting the same recordings one after another?

Generates N simulated recordings (int16 binaries and a probe JSON in a temporary folder; not
timed), then times

  1. `spikesort run` on each recording, one after another (one process each, as a shell loop would);
  2. `spikesort batch` on a manifest of the same recordings (default cluster layout, or
     --batch-args);

and prints both wall times and their ratio (the issue's target: batch <= 1.05 x sequential).
Both are timed from outside, process start to exit, so interpreter start, imports, the dask
cluster's start and stop all count. It also prints the CPU time (user + system) each one used,
its worker processes included: other work on the machine inflates wall times, much less CPU
times, so the CPU ratio tells whether batch does more work than the loop when the wall ratio
is noisy.

    python scripts/batch_overhead.py                              # 4 x 32 channels x 60 s
    python scripts/batch_overhead.py --channels 8 --duration 5    # a quick check that it works
    python scripts/batch_overhead.py --batch-args "--workers 2 --threads 1"

Run it on a quiet machine: other work on the same cores makes both timings noisy.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STORAGE_GAIN_UV = 0.195  # int16 step in µV, as in spikesort.demo


def _spikesort_command() -> list[str]:
    # the console script of this interpreter's environment
    script = Path(sys.executable).with_name("spikesort")
    if script.is_file():
        return [str(script)]
    found = shutil.which("spikesort")
    if found is None:
        sys.exit("batch_overhead: cannot find the `spikesort` command (pip install -e . first)")
    return [found]


def make_recordings(
    folder: Path, *, n: int, channels: int, duration_s: float, units: int
) -> tuple[list[Path], Path, float]:
    from probeinterface import ProbeGroup, write_probeinterface

    from spikesort.demo import make_demo_recording

    paths = []
    rate = None
    for i in range(n):
        recording, _ = make_demo_recording(duration_s=duration_s, n_channels=channels, n_units=units, seed=i)
        rate = float(recording.get_sampling_frequency())
        path = folder / f"rec{i}.bin"
        # int16 like most acquisition systems write
        np.round(recording.get_traces() / STORAGE_GAIN_UV).astype(np.int16).tofile(path)
        paths.append(path)
        if i == 0:
            group = ProbeGroup()
            group.add_probe(recording.get_probe())
            write_probeinterface(folder / "probe.json", group)
    return paths, folder / "probe.json", rate


def _children_cpu_s() -> float:
    # every finished descendant counts: the batch's worker processes are waited for by its nanny
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children)."""
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, _children_cpu_s() - cpu0
    if proc.returncode != 0:
        sys.exit(
            f"batch_overhead: {shlex.join(cmd)} failed with exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return seconds, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=4, help="number of recordings (default 4)")
    parser.add_argument("--channels", type=int, default=32, help="channels per recording (default 32)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per recording (default 60)")
    parser.add_argument("--units", type=int, default=12, help="simulated units per recording (default 12)")
    parser.add_argument(
        "--batch-args", default="", help='extra options for `spikesort batch`, e.g. "--workers 2 --threads 1"'
    )
    parser.add_argument("--folder", type=Path, default=None, help="where to make the temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the recordings and outputs")
    args = parser.parse_args(argv)

    spikesort = _spikesort_command()
    work = Path(tempfile.mkdtemp(prefix="spikesort-overhead-", dir=args.folder))
    try:
        data = work / "data"
        data.mkdir()
        print(
            f"generating {args.recordings} recordings of {args.channels} channels x {args.duration:g} s "
            f"in {data} (not timed)",
            flush=True,
        )
        paths, probe, rate = make_recordings(
            data, n=args.recordings, channels=args.channels, duration_s=args.duration, units=args.units
        )
        raw = ["--sampling-rate", f"{rate:g}", "--n-channels", str(args.channels), "--dtype", "int16"]

        # untimed warm-up: numba's on-disk kernel cache and the OS file cache serve both timings alike
        _timed(spikesort + ["run", str(paths[0]), "--probe", str(probe), "-o", str(work / "warmup"), "--quiet", *raw])

        sequential_out = work / "sequential"
        t_seq = cpu_seq = 0.0
        for path in paths:
            wall, cpu = _timed(
                spikesort
                + ["run", str(path), "--probe", str(probe), "-o", str(sequential_out / path.stem), "--quiet", *raw]
            )
            t_seq, cpu_seq = t_seq + wall, cpu_seq + cpu
        print(f"sequential `spikesort run` x {len(paths)}: {t_seq:.1f} s (CPU {cpu_seq:.1f} s)", flush=True)

        manifest = data / "batch.toml"
        manifest.write_text(
            f'probe = "probe.json"\nsampling_rate = {rate:g}\nn_channels = {args.channels}\n'
            f'dtype = "int16"\nglob = "rec*.bin"\n'
        )
        batch_out = work / "batch"
        cmd = spikesort + ["batch", str(manifest), "-o", str(batch_out), "--quiet", *shlex.split(args.batch_args)]
        t_batch, cpu_batch = _timed(cmd)
        with open(batch_out / "batch_summary.csv", newline="", encoding="utf8") as fh:
            rows = list(csv.DictReader(fh))
        layout = _layout(batch_out)
        print(f"`spikesort batch` ({layout}): {t_batch:.1f} s (CPU {cpu_batch:.1f} s)", flush=True)
        for row in rows:
            seq_units = json.loads((sequential_out / row["name"] / "spikesort_run.json").read_text())["n_units"]
            same = "same as run" if str(seq_units) == row["units"] else f"run found {seq_units}"
            print(
                f"  {row['name']}: {row['status']}, {row['units']} units ({same}), {row['wall_s']} s in the "
                f"worker, peak {row['peak_rss_mb']} MB, {row['n_jobs']} threads"
            )
        ratio = t_batch / t_seq
        print(
            f"ratio batch / sequential: {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}); "
            f"CPU time ratio {cpu_batch / cpu_seq:.3f}"
        )
        return 0
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _layout(out: Path) -> str:
    # the batch log's first line names the cluster it used
    for line in (out / "batch.log").read_text(encoding="utf8").splitlines():
        if " on a local cluster of " in line or " on the cluster at " in line:
            return line.split(" recordings on ", 1)[-1].split(" recording on ", 1)[-1]
    return "cluster unknown"


if __name__ == "__main__":
    sys.exit(main())
