"""Helpers the command-line tests share (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

from spikesort import cli


def runner() -> CliRunner:
    try:  # click 8.1 mixes stderr into stdout unless told otherwise; 8.2 dropped the argument
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def invoke(*args):
    return runner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def file_state(path) -> tuple[str, int]:
    """Content hash and mtime: a file the sorter read must keep both."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), Path(path).stat().st_mtime_ns


# every file DESIGN.md ("Phy folder") lists
PHY_FILES = (
    "params.py",
    "spike_times.npy",
    "spike_templates.npy",
    "spike_clusters.npy",
    "amplitudes.npy",
    "templates.npy",
    "whitening_mat.npy",
    "whitening_mat_inv.npy",
    "channel_map.npy",
    "channel_positions.npy",
    "pc_features.npy",
    "pc_feature_ind.npy",
    "template_features.npy",
    "template_feature_ind.npy",
    "similar_templates.npy",
    "spike_positions.npy",
    "cluster_KSLabel.tsv",
    "cluster_group.tsv",
    "cluster_ContamPct.tsv",
    "cluster_Amplitude.tsv",
)

# a 32-channel int16 raw binary on the bundled linear probe (the noise file of the CLI tests)
AS_32_CHANNELS = ("--probe", "linear-32", "--sampling-rate", "30000", "--n-channels", "32", "--dtype", "int16")
