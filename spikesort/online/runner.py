"""One online run from start to stop: warm-up (or resume), the stream, new units, emission,
the state for --resume, and the Phy folder at the stop."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError, clear_stop
from spikesort.params import Params

from . import model as files
from .discover import Pool
from .emit import CsvWriter, OnlineBatch, Publisher, write_units
from .source import GrowingSource, StreamInfo
from .store import RingStore, Whitener
from .stream import MIN_PIECE_S, OnlineOptions, Streamer
from .units import UnitFinder

log = logging.getLogger(__name__)

# the rigid drift estimate is the median over the last this many seconds of spikes
DRIFT_WINDOW_S = 2.0
# the state for --resume is saved after a batch at most this often (and after every new unit)
STATE_EVERY_S = 1.0
# the ring of whitened traces reaches this much further back than the pool (new units' templates
# are read from it while the stream goes on)
RING_SLACK_S = 30.0


def _probe(probe):
    from spikesort.io.probes import load_probe

    if probe is None:
        raise SpikesortError(
            "spikesort online needs the probe: pass --probe NAME_OR_FILE (see `spikesort probes list`)"
        )
    return load_probe(probe) if isinstance(probe, (str, Path)) else probe


class OnlineRun:
    def __init__(
        self,
        info: StreamInfo,
        *,
        probe,
        output_folder,
        params: Params | None = None,
        options: OnlineOptions | None = None,
        publish: str | None = None,
        resume: bool = False,
        overwrite: bool = False,
        progress=False,
    ):
        self.source = GrowingSource(info)
        self.probe = _probe(probe)
        self.out = Path(output_folder).expanduser()
        self.paths = files.Paths(self.out)
        self.params = params or Params()
        self.o = options or OnlineOptions()
        self.publish, self.resume, self.progress = publish, resume, progress
        self._check_folder(overwrite)
        self.stop_requested = False
        self.result = None
        self.streamer: Streamer | None = None
        self.finder: UnitFinder | None = None

    def _check_folder(self, overwrite: bool) -> None:
        data = self.source.info.data_path.resolve()
        if self.out.resolve() in data.parents:
            raise SpikesortError(f"the output folder {self.out} holds the recording: choose another one")
        if self.resume:
            if overwrite:
                raise SpikesortError("resume and overwrite exclude each other")
            if not (self.paths.state / files.STATE_FILE).is_file():
                raise SpikesortError(f"{self.out} holds no online run to resume")
        elif self.out.exists() and any(self.out.iterdir()):
            if not overwrite:
                hint = " and an online run: continue it with --resume, or" if self.paths.online.is_dir() else ":"
                raise SpikesortError(f"output folder {self.out} exists{hint} use --overwrite to replace it")
            shutil.rmtree(self.out)

    @property
    def fs(self) -> float:
        return self.source.info.sampling_rate_hz

    # ------------------------------------------------------------------ start

    def _wait_for(self, n: int, *, work=None) -> bool:
        """Wait until the file holds ``n`` samples, calling ``work(samples now)`` meanwhile; False
        when asked to stop or the writer gave up before."""
        t_last, seen = time.monotonic(), -1
        while not self.stop_requested:
            have = self.source.poll()
            if work is not None and have != seen:
                work(have)
            if have >= n:
                return True
            if have != seen:
                seen, t_last = have, time.monotonic()
            elif self.o.idle_stop_s is not None and time.monotonic() - t_last > self.o.idle_stop_s:
                log.error(
                    "the recording stopped growing at %.1f s, before the %.0f s warm-up: nothing sorted",
                    have / self.fs,
                    self.o.warmup_s,
                )
                return False
            time.sleep(self.o.poll_s)
        return False

    def _margin(self, run) -> int:
        return max(int(round(self.params.margin_ms * self.fs / 1000)), 2 * run.nt)

    def _streamer(self, run, *, model, store, done: int, pool) -> Streamer:
        return Streamer(
            self.source,
            model=model,
            info=run.info,
            params=self.params,
            options=self.o,
            store=store,
            done=done,
            pre=run.pre,
            nt=run.nt,
            margin=self._margin(run),
            exclusion=run.exclusion,
            pool=pool,
        )

    def _start(self):
        """Warm up (or load the resumed state); returns the first batch (the warm-up's spikes) or None."""
        from spikesort.kernels.warmup import warm_up_note
        from spikesort.pipeline import checkpoints
        from spikesort.pipeline.run import make_run

        fs = self.fs
        self.paths.state.mkdir(parents=True, exist_ok=True)
        rec_probe = self.source.recording  # opened once the file has samples
        # bound before the warm-up: subscribers that connect meanwhile get the first batch (PUB drops
        # messages sent before a subscriber's connection is made)
        self.publisher = Publisher(self.publish, sampling_rate_hz=fs) if self.publish else None
        # a first run after an install compiles the kernels: in the background, while the warm-up's
        # stretch is being recorded, instead of during the warm-up's sort
        warm_up_note()
        n_warm = int(round(self.o.warmup_s * fs))
        if self.resume:
            state = files.read_json(self.paths.state / files.STATE_FILE)
            self.model = files.load_model(self.paths.state / files.MODEL_FILE, self.paths.state / files.TEMPLATES_FILE)
            done, self.batch_index = int(state["done"]), int(state["next_batch"])
            self.first_sample = list(state["first_sample"])
            self.csv = CsvWriter(self.paths.spikes_csv, resume_size=int(state["csv_size"]))
            if self.source.poll() < done:
                raise SpikesortError(
                    f"the recording holds fewer samples ({self.source.n_samples}) than the run "
                    f"to resume had sorted ({done}): is it the same recording?"
                )
            store = RingStore(
                self.paths.traces, capacity=int(state["ring_capacity"]), n_channels=self.source.info.n_channels
            )
            store.n_samples = done
            run = make_run(
                rec_probe(probe=self.probe),
                params=checkpoints.ParamReads(self.params),
                store_path=store.path,
                progress=False,
            )
            first = None
        else:
            store = RingStore(
                self.paths.traces,
                capacity=int(round((max(self.o.warmup_s, self.o.pool_s + RING_SLACK_S) + 5.0) * fs)),
                n_channels=self.source.info.n_channels,
            )
            warmed, run = self._warm_up(n_warm, store, rec_probe)
            if warmed is None:
                return None
            self.model = warmed.model
            self.batch_index = 0
            self.csv = CsvWriter(self.paths.spikes_csv)
            state = {}
        margin = self._margin(run)
        pool = None
        if self.o.recluster_s > 0:
            keep = int(self.o.pool_s * fs)
            pool = (
                Pool.restore(keep_samples=keep, folder=self.paths.state, state=state)
                if self.resume
                else Pool(keep_samples=keep, folder=self.paths.state)
            )
        if self.resume:
            log.info(
                "resuming the online run at %.1f s with %d units and %d unexplained spikes in the pool",
                done / fs,
                self.model.n_units,
                sum(len(d) for d in pool.parts) if pool is not None else 0,
            )
        else:
            done = n_warm - margin  # the warm-up's last margin is sorted again with its right context
            first = self._first_batch(warmed.spikes, done)
        self.streamer = s = self._streamer(run, model=self.model, store=store, done=done, pool=pool)
        if self.resume:
            s.gaps.extend([list(g) for g in state.get("gaps", [])])
        if self.o.track_drift:
            from .drift import RigidTracker

            if len(self.model.ref_depth_um) != self.model.n_units:
                self.model.ref_depth_um = self._depths(self.model.dense)
            base = RigidTracker(
                positions_um=run.info.positions_um,
                shank_ids=run.info.shank_ids,
                good_channels=self.model.prep.good_channels,
                window=int(DRIFT_WINDOW_S * fs),
                ref_depth_um=self.model.ref_depth_um,
            )
            s.start_tracking(lambda: base.fork(ref_depth_um=self.model.ref_depth_um))
            if self.resume and state.get("shift_um"):
                s.live.shift_um = float(state["shift_um"])
        if not self.resume:
            files.save_model(self.paths.state / files.MODEL_FILE, self.model)
            files.save_templates(self.paths.state / files.TEMPLATES_FILE, self.model)
        self.finder = UnitFinder(self, pool) if pool is not None else None
        self.unclustered = 0  # samples sorted (by either lane) since the pool was last clustered
        self.last_state = 0.0
        self._write_units()
        return first

    def _warm_up(self, n_warm: int, store: RingStore, rec_probe):
        """The warm-up (see :mod:`.warmup`): returns (Warmed, the _Run of the whole file) or (None, None)."""
        from spikesort.pipeline import checkpoints
        from spikesort.pipeline.run import make_run

        from . import warmup

        # as many one-second blocks for the fit as the offline step would sample on the whole stretch
        n_fit = max(int(n_warm * warmup.FIT_FRACTION), min(n_warm, int(self.params.whitening_n_chunks * self.fs)))
        log.info("waiting for the first %.0f s of the recording (warm-up)", self.o.warmup_s)
        if not self._wait_for(n_fit):
            return None, None
        t0 = time.perf_counter()
        prep = warmup.fit(
            rec_probe(probe=self.probe, n_samples=n_fit), params=self.params, store=store, progress=self.progress
        )
        log.info("warm-up: preprocessing fitted on %.1f s (%.1f s)", n_fit / self.fs, time.perf_counter() - t0)
        run = make_run(
            rec_probe(probe=self.probe, n_samples=n_fit),
            params=checkpoints.ParamReads(self.params),
            store_path=store.path,
            progress=False,
        )
        margin = self._margin(run)
        t0 = time.perf_counter()
        detector = warmup.StretchDetector(run, prep=prep, store=store, margin=margin)
        log.info("warm-up: detection set up on %.1f s (%.1f s)", n_fit / self.fs, time.perf_counter() - t0)
        # the rest of the stretch is whitened and detected as it is written
        wh = Whitener(
            self.source,
            model=prep.model,
            margin=margin,
            n_jobs=self.params.n_jobs or os.cpu_count() or 1,
            min_piece=int(MIN_PIECE_S * self.fs),
        )
        chunk = int(round(self.o.chunk_s * self.fs))
        whitened = [max(0, n_fit - margin)]  # the fit's last margin again, now with its right context

        def follow(have: int) -> None:
            end = n_warm if have >= n_warm + margin else min(n_warm, have - margin)
            while end - whitened[0] >= (chunk if end < n_warm else 1):
                stop = min(end, whitened[0] + int(4 * self.o.max_chunk_s * self.fs))
                wh.into(store, whitened[0], stop, have)
                whitened[0] = stop
                # detection needs a margin of whitened traces after it (or the stretch's end)
                detector.advance(n_warm if stop >= n_warm else stop - margin)

        try:
            if not self._wait_for(n_warm + margin, work=follow):
                return None, None
            follow(self.source.n_samples)
        finally:
            wh.close()
        t0 = time.perf_counter()
        store.n_samples = n_warm
        detector.advance(n_warm)
        warmed = warmup.sort_stretch(
            rec_probe(probe=self.probe, n_samples=n_warm),
            prep=prep,
            det=detector.result(),
            params=self.params,
            store=store,
            progress=self.progress,
        )
        log.info("warm-up: the stretch sorted in %.1f s after it was complete", time.perf_counter() - t0)
        run = make_run(
            rec_probe(probe=self.probe),
            params=checkpoints.ParamReads(self.params),
            store_path=store.path,
            progress=False,
        )
        return warmed, run

    def _first_batch(self, sp, done: int) -> OnlineBatch:
        keep = np.flatnonzero(sp.times < done)
        self.first_sample = [
            int(sp.times[sp.templates == u].min()) if np.any(sp.templates == u) else 0
            for u in range(self.model.n_units)
        ]
        return OnlineBatch(
            index=0,
            chunk_start=0,
            chunk_stop=done,
            samples=sp.times[keep].astype(np.int64),
            units=sp.templates[keep].astype(np.int32),
            amplitudes=sp.amplitudes[keep].astype(np.float32),
            emitted_unix_s=time.time(),
            new_units=list(range(self.model.n_units)),
        )

    def _depths(self, dense: np.ndarray) -> np.ndarray:
        from .drift import template_depths

        s = self.streamer
        return template_depths(
            dense, feature_neighbors=s.feat_nb, bases=self.model.bases, pre=s.pre, positions_um=s.info.positions_um
        )

    # ------------------------------------------------------------------ the loop

    def batches(self) -> Iterator[OnlineBatch]:
        started = False
        self.publisher = None
        try:
            first = self._start()
            started = first is not None or self.resume
            if first is not None:
                yield self._emit(first)
            s = self.streamer
            while started and not self.stop_requested:
                if self.finder is not None:
                    found = self.finder.collect(self.batch_index)
                    if found is not None:
                        yield self._emit(found, force_state=True)
                n = s.poll()
                if n is None:
                    break
                work = s.next_work(n)
                if work is None and s.stalled:
                    # the writer stopped: sort what it wrote without waiting for the right margin
                    work = s.next_work(n, final=True)
                if work is None:
                    time.sleep(self.o.poll_s)
                    continue
                yield self._emit(self._sort(*work, n))
            if started:
                yield from self._tail()
        finally:
            if started:
                self._finish()
            elif self.publisher is not None:
                self.publisher.close()
            if self.finder is not None:
                self.finder.close()
            if self.streamer is not None:
                self.streamer.close()

    def _sort(self, lane, stop: int, n: int) -> OnlineBatch:
        s = self.streamer
        batch = s.sort(lane, stop, n, self.batch_index)
        if self.finder is not None:
            self.finder.note_batch(batch)
            # every recluster_s of recording sorted: after a jump, the stretch sorted behind the
            # live lane counts too (its unexplained spikes are in the pool as well)
            self.unclustered += batch.chunk_stop - batch.chunk_start
            if self.unclustered >= self.o.recluster_s * self.fs and self.finder.start(s.done):
                self.unclustered = 0
        return batch

    def _emit(self, batch: OnlineBatch, *, force_state: bool = False) -> OnlineBatch:
        s = self.streamer
        batch.emitted_unix_s = time.time()
        batch.backlog_s = s.backlog_s(s.watch.n_seen) if s is not None else 0.0
        self.csv.write(batch)
        if self.publisher is not None:
            self.publisher.send(batch)
        if s is not None:
            s.note_emitted(batch, time.monotonic())
        self.batch_index = batch.index + 1
        if force_state or time.monotonic() - self.last_state >= STATE_EVERY_S:
            self._save_state()
        return batch

    def _save_state(self) -> None:
        s = self.streamer
        gaps = [list(g) for g in s.gaps]
        if s.behind_lane is not None and gaps:
            gaps[0][0] = s.behind_lane.done
        pool = s.pool.state() if s.pool is not None else {}
        files.write_json(
            self.paths.state / files.STATE_FILE,
            {
                "done": int(s.done),
                "gaps": gaps,
                "next_batch": self.batch_index,
                "csv_size": self.csv.size,
                "n_units": self.model.n_units,
                "first_sample": self.first_sample,
                "shift_um": s.live.shift_um,
                "ring_capacity": s.store.capacity,
                "data_path": str(self.source.info.data_path),
                **pool,
            },
        )
        if s.pool is not None:
            s.pool.forget_older_logs()
        self.last_state = time.monotonic()

    def _write_units(self) -> None:
        m, s = self.model, self.streamer
        uv = m.dense @ s.w_inv_uv.astype(np.float32)
        ch = np.abs(uv).max(axis=1) if len(uv) else np.zeros((0, s.info.n_channels))
        w = ch**2 / np.maximum((ch**2).sum(axis=1, keepdims=True), 1e-12)
        write_units(
            self.paths.units,
            templates_uv=uv,
            positions_um=(w @ s.info.positions_um).astype(np.float32),
            first_sample=np.asarray(self.first_sample),
            pre=m.pre,
        )

    # ------------------------------------------------------------------ the stop

    def _tail(self) -> Iterator[OnlineBatch]:
        """The batches still owed at the stop: the stretches behind the live lane, the file's last
        samples (no right margin left to wait for), and the units being looked for."""
        s = self.streamer
        n = s.source.n_samples
        work = s.next_work(n, final=True)
        while work is not None:
            yield self._emit(self._sort(*work, n))
            work = s.next_work(n, final=True)
        if self.finder is not None:
            found = self.finder.collect(self.batch_index, wait=True)
            if found is not None:
                yield self._emit(found, force_state=True)

    def _finish(self) -> None:
        # a Ctrl-C that stopped the loop is answered by this: finishing it is what was asked (a
        # second Ctrl-C records a new request and stops the finish too)
        clear_stop()
        s = self.streamer
        for _ in self._tail():  # stopped from outside (Ctrl-C, the loop left): emitted, not yielded
            pass
        self._save_state()
        self.csv.close()
        if self.publisher is not None:
            self.publisher.close()
        from .finish import write_phy_folder

        log.info("stopped at %.1f s of recording: writing the Phy folder", s.done / s.fs)
        if s.n_misfits:
            log.info("%d spikes fitted poorly by every unit were left to the pool of unexplained spikes", s.n_misfits)
        self.result = write_phy_folder(
            self.out,
            recording=self.source.recording(probe=self.probe),
            source=self.source,
            ring=s.store,
            model=self.model,
            n_samples=s.done,
            csv_path=self.paths.spikes_csv,
            margin=s.margin,
            params=self.params,
            extra={"warmup_s": self.o.warmup_s, "n_batches": self.batch_index, "stopped_at_s": s.done / s.fs},
        )
