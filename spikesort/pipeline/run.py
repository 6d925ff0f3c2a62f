"""The orchestrator: calls the stages in order and holds no algorithm of its own.

``sort`` runs the steps of :mod:`.steps` and :mod:`.curation` in stage order, each through its
checkpoint (reused when it was made from the same recording, parameters and version), then writes
the run record and the completion marker.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from spikesort import __version__
from spikesort.chunks import iter_chunks
from spikesort.errors import SpikesortError
from spikesort.outputs.result import SortingResult
from spikesort.params import Params
from spikesort.stages.detect import Detections
from spikesort.stages.drift import applied_motion

from . import checkpoints
from .curation import _curate, _merge_drift_splits
from .phy_export import _export
from .state import (
    Clustered,
    Curated,
    Detected,
    Matched,
    Preprocessed,
    RecordingInfo,
    StageLog,
    _Run,
    _stage,
    recording_info,
)
from .steps import _cluster, _detect, _drift, _match, _preprocess
from .traces import open_store

log = logging.getLogger(__name__)

STAGES = checkpoints.STAGES


def sort(
    recording,
    output_folder,
    *,
    params: Params | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    **overrides,
) -> SortingResult:
    """Sort a spikeinterface recording (with a probe) into ``output_folder`` (a Phy folder).

    ``progress``: False (silent), True (a tqdm bar per streamed stage on stderr) or a callable
    ``progress(stage: str, done: int, total: int)`` (see :mod:`spikesort.progress`).

    ``resume``: continue the unfinished run in ``output_folder``. Stages whose checkpoint was made
    from the same recording, parameters and spikesort version are reused, the others recomputed;
    the result is the same as an uninterrupted run's. A finished folder of the same inputs is read
    back without sorting again; a missing folder is created. ``overwrite`` deletes an existing
    folder first (the two exclude each other).
    """
    params = Params.from_dict(overrides, base=params or Params())
    out = Path(output_folder)
    if resume and overwrite:
        raise SpikesortError(
            "resume and overwrite exclude each other: resume keeps the finished stages, overwrite deletes them"
        )
    if out.exists():
        if resume:
            if not checkpoints.is_resumable_folder(out):
                raise SpikesortError(f"output folder {out} exists but holds no spikesort run to resume")
            if is_complete(out):
                return _finished_result(recording, out, params)
        elif not overwrite:
            what = " and holds an unfinished run: continue it with --resume, or" if is_unfinished(out) else ":"
            raise SpikesortError(f"output folder {out} exists{what} use --overwrite to replace it")
        else:
            shutil.rmtree(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    from threadpoolctl import threadpool_limits

    from spikesort.kernels.warmup import warm_up_note

    warm_up_note()  # says so when numba must compile the kernels (the first run after install)

    try:
        # one BLAS thread, in the main thread as in the chunk workers: waking BLAS's own threads
        # for the clustering's small covariances (3000 x 60) cost 20-100 ms a call on this 2-core
        # VM instead of 0.2 ms, and beside busy workers a 30k x 64 covariance took 0.8 s, not 10 ms
        with threadpool_limits(limits=1, user_api="blas"):
            return _sort_into(recording, out, params=params, progress=progress)
    except BaseException:
        # checkpoints stay for --resume; a scratch copy that preprocessing did not finish is useless
        checkpoints.Checkpoints(out, identity={}).drop_unfinished_traces()
        if created and not any(out.iterdir()):
            out.rmdir()  # failed before writing anything: leave no trace
        raise


def is_complete(folder) -> bool:
    """True when ``folder`` holds a finished spikesort run (its completion marker is written last)."""
    return checkpoints.is_complete(folder)


def is_unfinished(folder) -> bool:
    """True when ``folder`` holds a spikesort run that stopped before the end (``resume=True``)."""
    return checkpoints.is_unfinished(folder)


TEMP_TRACES = checkpoints.TRACES_FILE
# Preprocessing streams the recording on a grid of its own, whatever chunk_s: its zero-phase IIR
# filter sees a chunk's whole read window, so other chunk edges would change the whitened traces
# in the last bit of a few samples in 10^4, enough to flip a detection at threshold now and then.
# Every later stage gives the same events for any chunking (an event belongs to the chunk that
# holds its sample), so with this grid the result does not depend on chunk_s.
PREPROCESS_CHUNK_S = 2.0
RUN_FILE = checkpoints.RUN_FILE


def _identity(recording, info: RecordingInfo) -> dict:
    """What a checkpoint must have been made from: this recording, this geometry, this version."""
    from spikesort.io.recordings import recording_fingerprint

    return {
        "recording": recording_fingerprint(recording),
        "geometry": checkpoints.digest([info.positions_um, info.gains_to_uv, info.shank_ids]),
        "sampling_rate_hz": info.sampling_rate_hz,
        "n_samples": info.n_samples,
        "version": __version__,
    }


def _finished_result(recording, out: Path, params: Params) -> SortingResult:
    """The result of the finished run in ``out``, when it was made from the same inputs."""
    marker = checkpoints.read_marker(out)
    identity = _identity(recording, recording_info(recording))
    if marker.get("identity") != identity:
        why = (
            "another recording or probe"
            if marker["identity"].get("version") == __version__
            else f"spikesort {marker['identity'].get('version')}"
        )
        raise SpikesortError(
            f"output folder {out} holds a finished run of {why}: use --overwrite to replace it, "
            f"or another output folder"
        )
    changed = checkpoints.param_differences(marker.get("params", {}), checkpoints.param_values(params))
    if changed:
        raise SpikesortError(
            f"output folder {out} holds a finished run with other parameters "
            f"({'; '.join(changed)}): use --overwrite to replace it, or another output folder"
        )
    checkpoints.remove_state(out)  # left only if the finishing run was killed while cleaning up
    log.info("output folder %s already holds this run, finished: nothing to do", out)
    return read_result(out)


def read_result(folder) -> SortingResult:
    """The SortingResult of a finished output folder, read from its files."""
    from spikesort.layout import AMPLITUDES, SPIKE_CLUSTERS, SPIKE_TIMES
    from spikesort.outputs.folder import read_folder

    folder = Path(folder)
    files = read_folder(folder)
    run = files.run_record(required=True)
    n_units = int(run["n_units"])
    labels = np.full(n_units, "", dtype=object)
    # the sorter's own labels: the result of the sort, whatever a curator did since
    for cid, value in files.table("KSLabel").items():
        if 0 <= cid < n_units:
            labels[cid] = value
    return SortingResult(
        output_folder=folder,
        spike_times=files.array(SPIKE_TIMES, required=True),
        spike_clusters=files.array(SPIKE_CLUSTERS, required=True).astype(np.int64),
        amplitudes=files.array(AMPLITUDES, required=True),
        unit_ids=np.arange(n_units),
        sampling_rate_hz=float(run["recording"]["sampling_rate_hz"]),
        timings_s=dict(run.get("timings_s", {})),
        labels=labels.astype(str),
    )


def run_record(
    *,
    params,
    info: RecordingInfo,
    result: SortingResult,
    bad_reasons: dict,
    saturated_s: list,
    timings_s: dict,
    peak_rss_mb: dict,
    reused_stages: list,
    extra: dict | None = None,
) -> dict:
    """What ``spikesort_run.json`` holds: version, resolved parameters, the recording, timings and
    what was found. ``extra`` adds keys (the online sorter's figures)."""
    return {
        "version": __version__,
        "params": params.to_dict(),
        "timings_s": timings_s,
        "peak_rss_mb": peak_rss_mb,
        "reused_stages": reused_stages,
        "recording": {
            "sampling_rate_hz": info.sampling_rate_hz,
            "n_channels": info.n_channels,
            "n_samples": info.n_samples,
            "duration_s": info.duration_s,
            "has_gain": info.has_gain,
        },
        "n_units": int(result.n_units),
        "n_spikes": int(len(result.spike_times)),
        "bad_channels": {str(c): r for c, r in sorted(bad_reasons.items())},
        "saturated_s": saturated_s,
        **(extra or {}),
    }


def make_run(
    recording, *, params: checkpoints.ParamReads, store_path: Path, progress, info: RecordingInfo | None = None
) -> _Run:
    """What every step reads (sizes derived from the parameters, the chunk grids, the trace store),
    for ``recording``. The online sorter builds its warm-up sort and its final Phy folder on it too."""
    info = info or recording_info(recording)
    n_jobs = params.n_jobs or os.cpu_count() or 1
    fs = info.sampling_rate_hz
    chunk = max(1, int(round(params.chunk_s * fs)))
    pre = int(round(params.ms_before * fs / 1000))
    nt = pre + int(round(params.ms_after * fs / 1000)) + 1
    margin = max(int(round(params.margin_ms * fs / 1000)), 2 * nt)
    exclusion = max(1, int(round(params.exclusion_ms * fs / 1000)))
    chunks = list(iter_chunks(n_samples=info.n_samples, chunk_samples=chunk, margin_samples=margin))
    pre_chunk = max(1, int(round(PREPROCESS_CHUNK_S * fs)))
    preprocess_chunks = list(iter_chunks(n_samples=info.n_samples, margin_samples=margin, chunk_samples=pre_chunk))

    def tq(total, desc):
        # False: silent; True: a tqdm bar; a callable: progress(stage, done, total)
        from .progress import stage_progress

        return stage_progress(progress, total=total, desc=desc)

    return _Run(
        recording=recording,
        info=info,
        params=params,
        n_jobs=n_jobs,
        chunks=chunks,
        preprocess_chunks=preprocess_chunks,
        pre=pre,
        nt=nt,
        exclusion=exclusion,
        tq=tq,
        store=open_store(
            store_path,
            n_samples=info.n_samples,
            n_channels=info.n_channels,
            kind=params.trace_store,
            chunk_sizes=(chunk, pre_chunk),
        ),
    )


def _sort_into(recording, out: Path, *, params: Params, progress: bool) -> SortingResult:
    info = recording_info(recording)
    state = checkpoints.Checkpoints(out, identity=_identity(recording, info))
    params = checkpoints.ParamReads(params)
    run = make_run(recording, params=params, store_path=state.traces_path, progress=progress, info=info)
    fs = info.sampling_rate_hz
    stages = StageLog(timings_s={}, peak_rss_mb={}, store=run.store)
    timings = stages.timings_s
    reused: list[str] = []

    def stage(name: str, cls, compute):
        """The stage's checkpoint when it matches, else compute it and save it."""
        with _stage(stages, name):
            result = state.load(name, cls, params)
            if result is not None:
                reused.append(name)
                return result
            state.discard_from(name)
            params.start(name)
            checkpoints.kill_point(f"{name}:start")
            result = compute()
            # the trace file's flush to disk overlaps the next stages
            state.save(
                name,
                result,
                reads=params.read_values(name),
                files=run.store.files if name == "preprocess" else (),
                background=name == "preprocess",
            )
        checkpoints.kill_point(name)
        return result

    # drift correction rewrites the whitened traces, so it runs inside the preprocess stage: its
    # checkpoint then covers the corrected traces and the drift parameters
    def preprocess_and_correct():
        prep = _drift(run, _preprocess(run), out=out, stages=stages)
        run.store.flush()  # before the checkpoint records the store's files
        return prep

    prep = stage("preprocess", Preprocessed, preprocess_and_correct)
    det = stage("detect", Detected, lambda: _detect(run, prep=prep))
    clu = stage("cluster", Clustered, lambda: _cluster(run, prep=prep, det=det))
    # only clustering reads the detected spikes: their features need not outlive it
    det = dataclasses.replace(det, spikes=Detections.empty(*det.spikes.features.shape[1:]))
    mat = stage("match", Matched, lambda: _match(run, prep=prep, det=det, clu=clu))

    def curate():
        corrected = applied_motion(out) is not None
        return _merge_drift_splits(
            run, _curate(run, prep=prep, clu=clu, mat=mat, sign=det.sign, drift_corrected=corrected), out=out
        )

    cur = stage("curate", Curated, curate)
    mat = None  # the matched spikes (24 bytes each) are curated's now: the export needs only those
    with _stage(stages, "export"):
        state.discard_from("export")
        params.start("export")
        checkpoints.kill_point("export:start")
        result = _export(run, out, prep=prep, det=det, cur=cur)
    # the run record, then the marker: a folder is complete only once both are in place
    checkpoints.write_json_atomic(
        out / RUN_FILE,
        run_record(
            params=params,
            info=info,
            result=result,
            bad_reasons=prep.model.bad_reasons,
            saturated_s=[[round(a / fs, 4), round(b / fs, 4)] for a, b in prep.saturated.tolist()],
            timings_s=timings,
            peak_rss_mb=stages.peak_rss_mb,
            reused_stages=reused,
            # thread-seconds in the trace store's reads and window cuts, per stage: a slow disk shows here
            extra={"store_read_s": stages.store_read_s, "trace_store": run.store.kind},
        ),
    )
    checkpoints.kill_point("export")
    state.wait()
    checkpoints.write_marker(out, identity=state.identity, params=params)
    checkpoints.remove_state(out)
    result.timings_s = timings
    return result
