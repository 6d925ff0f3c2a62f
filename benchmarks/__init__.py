"""Ground-truth benchmark: spikesort against peer sorters on generated recordings.

Run it as ``python scripts/benchmark.py`` (the documented command) or ``python -m benchmarks``
from the repository root; ``--help`` lists the flags, scenarios and columns.

Each scenario is generated once with ``spikeinterface.generation`` (no download: the probe is
built locally), saved as an int16 binary folder with its ground-truth sorting into a cache
folder, then every sorter runs on that folder in its own subprocess (so wall time and peak
memory are its own) and is scored with ``compare_sorter_to_ground_truth``.

Peer results (tridesclous2, spykingcircus2, lupin, kilosort4, herdingspikes) are cached, keyed by scenario
definition, seed, sorter name, sorter version and parameters; spikesort is always re-run.

Examples::

    nice -n 19 python scripts/benchmark.py --scenarios static32 static64 --seeds 0
    nice -n 19 python scripts/benchmark.py --scenarios static64 --seeds 0 1 --sorters spikesort
    nice -n 19 python scripts/benchmark.py --scenarios static64 --sorters tridesclous2 --rerun-peers
    python scripts/benchmark.py --scenarios static32 static64 --seeds 0 1 --sorters tridesclous2 \
        spykingcircus2 lupin kilosort4 --cached-peers-only      # the peer table, nothing is run

The table is printed as markdown; ``--out results.json`` also writes JSON and CSV.

``--speed`` measures speed and memory instead (see ``--help`` and ``benchmarks/speed.py``):
spikesort's per-stage wall time and peak RSS on a ground-truth scenario (static64, with the
peers) and on a 384-channel Neuropixels-1.0-like recording of 5 and 10 minutes, each beside a
floor pass (read the int16 binary and high-pass filter it)::

    python scripts/benchmark.py --speed --cached-peers-only --out speed.json   # on an idle machine
    python scripts/benchmark.py --speed --scenarios static32 --speed-channels 32 \
        --speed-minutes 0.2 0.4 --sorters spikesort       # a quick check of the whole path

Modules: ``scenarios`` (recordings and their cache), ``runner`` (sorters in child processes,
peer cache), ``scoring`` (against the ground truth), ``tables`` (the accuracy table and outputs),
``speed`` (the speed mode), ``cli`` (flags and ``main``).
"""
