"""``spikesort.track``: follow the same neurons across the sorted folders of one probe."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikesort.errors import SpikesortError

from .assign import Link, TrackRow, assign_pairs, build_tracks
from .calibrate import MatchModel, fit_session_model, match_probability
from .compare import pair_features
from .motion import Motion, is_nonrigid, refine_motion, scan_blocks, scan_rigid
from .units import SessionUnits, read_session

log = logging.getLogger(__name__)

__all__ = ["track", "TrackingResult", "PairResult", "check_same_probe"]

SAME_CONTACT_UM = 1.0
MAX_MISSING_CONTACTS = 0.1  # a few channels dropped in one session is still the same probe


@dataclass
class PairResult:
    """What the matching of session ``a`` to session ``b`` found."""

    a: int
    b: int
    motion: Motion  # depth shift from a to b, as a function of a's depth
    links: list[tuple[int, int, float]]  # (unit index in a, unit index in b, probability)
    seconds: float
    probability: np.ndarray = field(repr=False)  # (U_a, U_b)


@dataclass
class TrackingResult:
    """The tracks (rows of tracks.csv), the motion between consecutive sessions, per-pair stats."""

    sessions: list[str]
    rows: list[TrackRow]
    pairs: list[PairResult]
    models: list[MatchModel | None] = field(repr=False)
    output: Path | None = None
    units: list[SessionUnits] = field(default_factory=list, repr=False)  # what was read from each folder

    @property
    def n_tracks(self) -> int:
        return len({r.track_id for r in self.rows})

    def table(self) -> dict[str, np.ndarray]:
        """tracks.csv as columns: track_id, session, unit_id, probability."""
        return dict(
            track_id=np.array([r.track_id for r in self.rows], dtype=np.int64),
            session=np.array([r.session for r in self.rows], dtype=object),
            unit_id=np.array([r.unit_id for r in self.rows], dtype=np.int64),
            probability=np.array([r.probability for r in self.rows], dtype=float),
        )

    def motion(self, a: int, b: int | None = None) -> Motion | None:
        """The motion from session a to b (default a + 1) when that pair was matched."""
        b = a + 1 if b is None else b
        return next((p.motion for p in self.pairs if p.a == a and p.b == b), None)


def check_same_probe(sessions: list[SessionUnits]) -> None:
    """Refuse folders whose contacts differ (one line saying which and why)."""
    ref = sessions[0]
    for s in sessions[1:]:
        p, q = ref.channel_positions, s.channel_positions
        d = np.hypot(p[:, None, 0] - q[None, :, 0], p[:, None, 1] - q[None, :, 1])
        missing = max(np.mean(d.min(axis=1) > SAME_CONTACT_UM), np.mean(d.min(axis=0) > SAME_CONTACT_UM))
        if missing > MAX_MISSING_CONTACTS:
            raise SpikesortError(
                f"{s.folder} and {ref.folder} are not sorted on the same probe "
                f"({q.shape[0]} channels spanning {np.ptp(q[:, 1]):.0f} µm vs {p.shape[0]} channels spanning "
                f"{np.ptp(p[:, 1]):.0f} µm, {missing:.0%} of contacts without a counterpart): "
                f"tracking follows units across sessions of one probe"
            )


def _span(s: SessionUnits) -> tuple[float, float]:
    y = s.channel_positions[:, 1]
    return float(y.min()), float(y.max())


def _probabilities(a: SessionUnits, b: SessionUnits, shifts: np.ndarray, models) -> np.ndarray:
    f = pair_features(
        a.waveforms, a.positions, a.channel_positions, b.waveforms, b.positions, b.channel_positions, shifts
    )
    return match_probability(f, models)


def match_pair(
    a: SessionUnits,
    b: SessionUnits,
    ia: int,
    ib: int,
    models: list[MatchModel | None],
    *,
    max_shift_um: float,
    threshold: float,
    nonrigid: bool | None,
    rows: np.ndarray | None = None,
    cols: np.ndarray | None = None,
) -> PairResult:
    """Motion and one-to-one links between two sessions (optionally restricted to rows x cols)."""
    t0 = time.perf_counter()
    if is_nonrigid(_span(a), nonrigid):
        motion = scan_blocks(a, b, max_shift_um=max_shift_um, span_um=_span(a))
    else:
        shift, _ = scan_rigid(a, b, max_shift_um=max_shift_um)
        motion = Motion.constant(shift, float(np.mean(_span(a))))
    prob = np.zeros((a.n_units, b.n_units))
    links: list[tuple[int, int, float]] = []
    if a.n_units and b.n_units:
        # twice: the scan gives pairs, their depth differences refine the motion
        for _ in range(2):
            prob = _probabilities(a, b, motion.at(a.positions[:, 1]), models)
            links = assign_pairs(prob, threshold=threshold)
            ua = np.array([i for i, _, _ in links], dtype=np.int64)
            ub = np.array([j for _, j, _ in links], dtype=np.int64)
            dy = b.positions[ub, 1] - a.positions[ua, 1]
            motion = refine_motion(a.positions[ua, 1], dy, prior=motion)
        prob = _probabilities(a, b, motion.at(a.positions[:, 1]), models)
        links = assign_pairs(prob, threshold=threshold, rows=rows, cols=cols)
    return PairResult(a=ia, b=ib, motion=motion, links=links, seconds=time.perf_counter() - t0, probability=prob)


def track(
    folders,
    output=None,
    *,
    max_shift_um: float = 150.0,
    max_skip: int = 2,
    threshold: float | None = None,
    nonrigid: bool | None = None,
    overwrite: bool = False,
    figure: bool = True,
) -> TrackingResult:
    """Follow units across sorted Phy folders of one probe, given in session order.

    ``folders``: spikesort output folders or any Phy template folder (Kilosort's too); units
    labelled noise are left out. ``output``: a folder for tracks.csv, motion.csv, tracking.json
    and tracks.png (None: nothing written). ``max_shift_um``: the largest probe motion between two
    sessions looked for. ``max_skip``: sessions a track may skip (0 = consecutive only).
    ``threshold``: None = each session's own threshold calibrated from its halves (the 0.5 boundary
    of its model); a number overrides it. ``nonrigid``: None = depth-dependent motion on shanks
    longer than 1 mm. Raises SpikesortError for folders of different probes or unreadable folders.
    """
    labels = [str(f) for f in folders]
    if len(labels) < 2:
        raise SpikesortError(f"tracking needs at least 2 sorted folders, got {len(labels)}")
    if len(set(labels)) != len(labels):
        raise SpikesortError("the same folder is given twice: give each session once, in session order")
    out = None if output is None else Path(output)
    if out is not None:
        from .outputs import check_output

        check_output(out, overwrite=overwrite)
    from threadpoolctl import threadpool_limits

    # many small products: one BLAS thread is faster than several fighting over the cores
    with threadpool_limits(limits=1, user_api="blas"):
        result = _track(
            folders, labels, out, max_shift_um=max_shift_um, max_skip=max_skip, threshold=threshold, nonrigid=nonrigid
        )
    if out is not None:
        from .outputs import write_outputs

        write_outputs(result, result.units, out, figure=figure)
    return result


def _track(folders, labels, out, *, max_shift_um, max_skip, threshold, nonrigid) -> TrackingResult:
    t0 = time.perf_counter()
    sessions = [read_session(f, label=lab) for f, lab in zip(folders, labels)]
    check_same_probe(sessions)
    models = [fit_session_model(s, seed=k) for k, s in enumerate(sessions)]
    for s, m in zip(sessions, models):
        if m is None:
            log.warning(
                "%s: %d units, too few to calibrate from its halves; its links rest on waveform "
                "similarity and distance alone",
                s.folder,
                s.n_units,
            )
    thr = 0.5 if threshold is None else float(threshold)
    kw = dict(max_shift_um=max_shift_um, threshold=thr, nonrigid=nonrigid)
    pairs = []
    for i in range(len(sessions) - 1):
        pairs.append(match_pair(sessions[i], sessions[i + 1], i, i + 1, models[i : i + 2], **kw))
    links = [Link(p.a, i, p.b, j, pr) for p in pairs for i, j, pr in p.links]
    # skipped sessions: only units left without a link that way, shorter gaps first
    for gap in range(2, max_skip + 2):
        has_fwd = {(k.session_a, k.unit_a) for k in links}
        has_bwd = {(k.session_b, k.unit_b) for k in links}
        for i in range(len(sessions) - gap):
            j = i + gap
            rows = np.array([u for u in range(sessions[i].n_units) if (i, u) not in has_fwd], dtype=np.int64)
            cols = np.array([u for u in range(sessions[j].n_units) if (j, u) not in has_bwd], dtype=np.int64)
            if rows.size == 0 or cols.size == 0:
                continue
            p = match_pair(sessions[i], sessions[j], i, j, [models[i], models[j]], rows=rows, cols=cols, **kw)
            pairs.append(p)
            links += [Link(i, a, j, b, pr) for a, b, pr in p.links]
    chains = build_tracks([s.n_units for s in sessions], links)
    rows_out = []
    for tid, chain in enumerate(chains):
        first_p = chain[1][2] if len(chain) > 1 else float("nan")
        for k, (s, u, p) in enumerate(chain):
            rows_out.append(
                TrackRow(
                    track_id=tid,
                    session=labels[s],
                    unit_id=int(sessions[s].unit_ids[u]),
                    probability=first_p if k == 0 else p,
                )
            )
    result = TrackingResult(sessions=labels, rows=rows_out, pairs=pairs, models=models, output=out, units=sessions)
    _log_summary(result, sessions, chains, time.perf_counter() - t0)
    return result


def _log_summary(result: TrackingResult, sessions: list[SessionUnits], chains, seconds: float) -> None:
    n = len(sessions)
    lengths = np.array([len(c) for c in chains])
    log.info(
        "tracked %d sessions in %.1f s: %d units, %d tracks (%d in every session, %d in 2 or more, %d single units)",
        n,
        seconds,
        sum(s.n_units for s in sessions),
        len(chains),
        int(np.sum(lengths == n)),
        int(np.sum(lengths >= 2)),
        int(np.sum(lengths == 1)),
    )
    for p in result.pairs:
        kind = (
            "rigid"
            if p.motion.rigid
            else f"non-rigid, {p.motion.shifts_um.min():+.0f} to {p.motion.shifts_um.max():+.0f} µm"
        )
        log.info(
            "  %s -> %s: motion %+.1f µm (%s), %d links of %d / %d units, %.2f s",
            result.sessions[p.a],
            result.sessions[p.b],
            float(np.median(p.motion.shifts_um)),
            kind,
            len(p.links),
            sessions[p.a].n_units,
            sessions[p.b].n_units,
            p.seconds,
        )
