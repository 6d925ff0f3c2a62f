"""One online run from start to stop: warm-up (or resume), the stream, new units, emission,
the state for --resume, and the Phy folder at the stop."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError
from spikesort.params import Params
from spikesort.pipeline.traces import TraceStore

from . import model as files
from .discover import Pool, discover
from .drift import RigidTracker, template_depths
from .emit import CsvWriter, OnlineBatch, Publisher, write_units
from .source import GrowingSource, StreamInfo
from .stream import OnlineOptions, Streamer

log = logging.getLogger(__name__)

# the rigid drift estimate is the median over the last this many seconds of spikes
DRIFT_WINDOW_S = 2.0


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

    # ------------------------------------------------------------------ start

    def _wait_for(self, n: int) -> bool:
        """Wait until the file holds ``n`` samples; False when asked to stop or the writer gave up."""
        t_last, seen = time.monotonic(), -1
        while not self.stop_requested:
            have = self.source.poll()
            if have >= n:
                return True
            if have != seen:
                seen, t_last = have, time.monotonic()
            elif self.o.idle_stop_s is not None and time.monotonic() - t_last > self.o.idle_stop_s:
                log.error(
                    "the recording stopped growing at %.1f s, before the %.0f s warm-up: nothing sorted",
                    have / self.source.info.sampling_rate_hz,
                    self.o.warmup_s,
                )
                return False
            time.sleep(self.o.poll_s)
        return False

    def _start(self):
        """Warm up (or load the resumed state); returns the first batch (the warm-up's spikes) or None."""
        from spikesort.pipeline import checkpoints
        from spikesort.pipeline.run import make_run

        fs = self.source.info.sampling_rate_hz
        self.paths.state.mkdir(parents=True, exist_ok=True)
        rec_probe = self.source.recording  # opened once the file has samples
        # bound before the warm-up: subscribers that connect meanwhile get the first batch (PUB drops
        # messages sent before a subscriber's connection is made)
        self.publisher = Publisher(self.publish, sampling_rate_hz=fs) if self.publish else None
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
            log.info("resuming the online run at %.1f s with %d units", done / fs, self.model.n_units)
            first = None
        else:
            n_warm = int(round(self.o.warmup_s * fs))
            log.info("waiting for the first %.0f s of the recording (warm-up)", self.o.warmup_s)
            if not self._wait_for(n_warm):
                return None
            from .warmup import warm_up

            warmed = warm_up(
                rec_probe(probe=self.probe, n_samples=n_warm),
                params=self.params,
                traces_path=self.paths.traces,
                progress=self.progress,
            )
            self.model = warmed.model
            self.batch_index = 0
            self.csv = CsvWriter(self.paths.spikes_csv)
        recording = rec_probe(probe=self.probe)
        self.run = make_run(
            recording, params=checkpoints.ParamReads(self.params), store_path=self.paths.traces, progress=False
        )
        r = self.run
        margin = max(int(round(self.params.margin_ms * fs / 1000)), 2 * r.nt)
        if not self.resume:
            done = n_warm - margin  # the warm-up's last margin is sorted again with its right context
            sp = warmed.spikes
            keep = np.flatnonzero(sp.times < done)
            first = OnlineBatch(
                index=0,
                chunk_start=0,
                chunk_stop=done,
                samples=sp.times[keep].astype(np.int64),
                units=sp.templates[keep].astype(np.int32),
                amplitudes=sp.amplitudes[keep].astype(np.float32),
                emitted_unix_s=time.time(),
                new_units=list(range(self.model.n_units)),
            )
            self.first_sample = [
                int(sp.times[sp.templates == u].min()) if np.any(sp.templates == u) else 0
                for u in range(self.model.n_units)
            ]
            files.save_model(self.paths.state / files.MODEL_FILE, self.model)
            files.save_templates(self.paths.state / files.TEMPLATES_FILE, self.model)
        store = TraceStore(self.paths.traces, n_samples=done, n_channels=r.info.n_channels)
        pool = Pool(keep_samples=int(self.o.pool_s * fs)) if self.o.recluster_s > 0 else None
        self.streamer = Streamer(
            self.source,
            model=self.model,
            info=r.info,
            params=self.params,
            options=self.o,
            store=store,
            done=done,
            pre=r.pre,
            nt=r.nt,
            margin=margin,
            exclusion=r.exclusion,
            pool=pool,
            tracker=None,
        )
        if self.o.track_drift:
            s = self.streamer
            self.streamer.tracker = RigidTracker(
                positions_um=r.info.positions_um,
                shank_ids=r.info.shank_ids,
                good_channels=self.model.prep.good_channels,
                window=int(DRIFT_WINDOW_S * fs),
                ref_depth_um=self._depths(self.model.dense),
            )
            if self.resume and state.get("shift_um"):
                s.shift_um = float(state["shift_um"])
                s.set_templates()
        self.next_recluster = done + int(self.o.recluster_s * fs)
        self._write_units()
        return first

    def _depths(self, dense: np.ndarray) -> np.ndarray:
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
            while started and not self.stop_requested:
                n = self.streamer.poll()
                if n is None:
                    break
                stop = self.streamer.ready(n)
                if stop is None and self.streamer.stalled:
                    # the writer stopped: sort what it wrote without waiting for the right margin
                    stop = self.streamer.ready(n, final=True)
                    stop = stop if stop is not None and stop - self.streamer.done > self.streamer.nt else None
                if stop is None:
                    time.sleep(self.o.poll_s)
                    continue
                yield self._emit(self._sort(stop, n))
            if started:
                yield from self._tail()
        finally:
            if started:
                self._finish()
            elif self.publisher is not None:
                self.publisher.close()

    def _sort(self, stop: int, n: int) -> OnlineBatch:
        batch = self.streamer.sort_chunk(stop, n, self.batch_index)
        if self.streamer.pool is not None and self.streamer.done >= self.next_recluster:
            self.next_recluster = self.streamer.done + int(self.o.recluster_s * self.source.info.sampling_rate_hz)
            self._new_units(batch)
        return batch

    def _new_units(self, batch: OnlineBatch) -> None:
        s, p = self.streamer, self.params
        pool = s.pool.take(s.done)
        if pool is None:
            return
        t0 = time.perf_counter()
        new = discover(
            pool,
            store=s.store,
            existing=self.model.dense,
            params=p,
            feature_neighbors=s.feat_nb,
            pre=s.pre,
            nt=s.nt,
            whitening_inv_uv=s.w_inv_uv,
            noise_uv=self.model.prep.noise_sd * s.info.gains_to_uv,
            min_spikes=self.o.min_new_unit_spikes,
            max_similar=self.o.new_unit_max_similarity,
            rng=np.random.default_rng([p.seed, self.batch_index]),
        )
        log.debug("pool of %d spikes clustered in %.2f s", len(pool), time.perf_counter() - t0)
        if not len(new.dense):
            return
        ids = list(range(self.model.n_units, self.model.n_units + len(new.dense)))
        dense = new.dense
        if s.tracker is not None:
            # found where the probe is now: kept at the reference position, as the others
            dense = s.tracker.move(dense, -s.shift_um) if s.shift_um else dense
            s.tracker.add_units(self._depths(dense))
        self.model.dense = np.concatenate([self.model.dense, dense])
        s.set_templates()
        # the new units' pooled spikes are emitted with this batch: late, but theirs
        samples = [batch.samples] + new.spikes
        units = [batch.units] + [np.full(len(t), u, np.int32) for u, t in zip(ids, new.spikes)]
        amps = [batch.amplitudes] + [np.ones(len(t), np.float32) for t in new.spikes]
        order = np.argsort(np.concatenate(samples), kind="stable")
        batch.samples = np.concatenate(samples)[order]
        batch.units = np.concatenate(units)[order]
        batch.amplitudes = np.concatenate(amps)[order]
        batch.new_units = ids
        for t in new.spikes:
            s.pool.drop(t)
            self.first_sample.append(int(t[0]))
        files.save_templates(self.paths.state / files.TEMPLATES_FILE, self.model)
        self._write_units()
        log.info(
            "new unit%s %s: %s spikes in the pool (first at %.1f s)",
            "s" * (len(ids) > 1),
            ", ".join(map(str, ids)),
            ", ".join(str(len(t)) for t in new.spikes),
            min(int(t[0]) for t in new.spikes) / s.fs,
        )

    def _emit(self, batch: OnlineBatch) -> OnlineBatch:
        batch.emitted_unix_s = time.time()
        self.csv.write(batch)
        if self.publisher is not None:
            self.publisher.send(batch)
        self.streamer.note_emitted(batch, time.monotonic())
        self.batch_index = batch.index + 1
        self._save_state()
        return batch

    def _save_state(self) -> None:
        files.write_json(
            self.paths.state / files.STATE_FILE,
            {
                "done": int(self.streamer.done),
                "next_batch": self.batch_index,
                "csv_size": self.csv.size,
                "n_units": self.model.n_units,
                "first_sample": self.first_sample,
                "shift_um": self.streamer.shift_um,
                "data_path": str(self.source.info.data_path),
            },
        )

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
        """The batches of the file's last samples (no right margin left to wait for)."""
        s = self.streamer
        n = s.source.n_samples
        stop = s.ready(n, final=True)
        while stop is not None and stop - s.done > s.nt:
            yield self._emit(self._sort(stop, n))
            stop = s.ready(n, final=True)

    def _finish(self) -> None:
        s = self.streamer
        for _ in self._tail():  # stopped from outside (Ctrl-C, the loop left): emitted, not yielded
            pass
        self.csv.close()
        if self.publisher is not None:
            self.publisher.close()
        from .finish import write_phy_folder

        log.info("stopped at %.1f s of recording: writing the Phy folder", s.done / s.fs)
        self.result = write_phy_folder(
            self.out,
            recording=self.source.recording(probe=self.probe),
            model=self.model,
            n_samples=s.done,
            csv_path=self.paths.spikes_csv,
            traces_path=self.paths.traces,
            params=self.params,
            extra={"warmup_s": self.o.warmup_s, "n_batches": self.batch_index, "stopped_at_s": s.done / s.fs},
        )
