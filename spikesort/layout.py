"""Where everything lives in an output folder: the one source of every file name that spikesort
writes or reads back. Import the name, never spell the string.

``OUT/`` after ``spikesort run``::

    params.py, *.npy, cluster_*.tsv   the Phy folder (see spikesort.io.phy)
    spikesort_run.json                version, resolved parameters, recording, timings
    spikesort_complete.json           written last: its presence means the run finished
    spikesort.log                     the run's log (tracebacks go here, not to the console)
    .spikesort_state/                 checkpoints while a run is unfinished
    motion*.npy, drift.json, drift_map.png   drift correction, when it ran
    report/summary.html               the report
"""

from __future__ import annotations

# run bookkeeping
RUN_FILE = "spikesort_run.json"
MARKER_FILE = "spikesort_complete.json"
LOG_FILE = "spikesort.log"
STATE_DIR = ".spikesort_state"
TRACES_FILE = "temp_wh.dat"  # whitened traces, inside STATE_DIR while the run is unfinished

# drift
MOTION_FILES = ("motion.npy", "motion_time_bins_s.npy", "motion_depth_bins_um.npy", "motion_shanks.npy")
DRIFT_RECORD = "drift.json"
DRIFT_MAP = "drift_map.png"

# report
REPORT_DIR = "report"
REPORT_HTML = "summary.html"
OVERVIEW_PNG = "overview.png"

# the Phy folder
PARAMS_PY = "params.py"
SPIKE_TIMES = "spike_times.npy"
SPIKE_CLUSTERS = "spike_clusters.npy"
SPIKE_TEMPLATES = "spike_templates.npy"
AMPLITUDES = "amplitudes.npy"
TEMPLATES = "templates.npy"
WHITENING_MAT_INV = "whitening_mat_inv.npy"
CHANNEL_POSITIONS = "channel_positions.npy"
CHANNEL_SHANKS = "channel_shanks.npy"
SPIKE_POSITIONS = "spike_positions.npy"
AUTO_LABELS = "cluster_KSLabel.tsv"  # the sorter's labels
CURATED_LABELS = "cluster_group.tsv"  # a curator's labels; they win over the sorter's
RAW_COPY = "recording.dat"  # `spikesort run --export-raw`: the raw traces beside the Phy files

# spikesort batch (in OUTROOT)
BATCH_SUMMARY = "batch_summary.csv"
BATCH_LOG = "batch.log"
BATCH_SCRATCH_DIR = ".spikesort-batch"  # per-recording logs while a sort runs

# spikesort track (in TRACKS)
TRACKS_CSV = "tracks.csv"
TRACKS_MOTION_CSV = "motion.csv"
TRACKING_JSON = "tracking.json"
TRACKS_PNG = "tracks.png"
