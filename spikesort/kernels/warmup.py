"""The kernels' compile cost on a cold numba cache (issue 16): say it, and pay it in the background.

The first sort after an install compiles every kernel (numba caches the machine code on disk,
so later runs load it in milliseconds). ``warm_up_note`` runs once per process where the
pipeline starts: when any kernel's cache entry is missing it logs one INFO line and compiles the
missing kernels, in the order the pipeline needs them, on a background thread. Most of a
compile is LLVM, which runs without the GIL, so the sort's own threads keep working meanwhile;
a stage that reaches a kernel still being compiled waits for it (numba's compiler lock), which
is never slower than compiling it there.

The signatures below are the argument types the pipeline passes (one per kernel); a call with
other types still works, it compiles its own specialisation.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

# rough compile CPU seconds per kernel (numba 0.68, measured on a busy 2-core dev VM): the note's N
_COMPILE_S = {
    "sosfiltfilt_rows": 1.5,
    "_median_rows_network": 0.6,
    "_subtract_rows": 0.2,
    "quantize_int16": 0.4,
    "temporal_filter": 1.6,
    "detect_peaks_rows": 1.0,
    "project_neighborhoods": 0.5,
    "two_means_labels": 0.8,
    "gather_windows": 0.3,
    "best_matches": 0.9,
    "select_non_overlapping": 0.4,
    "subtract_templates": 0.3,
    "subtract_filtered": 0.3,
    "template_projections": 0.4,
    "support_energy": 0.2,
}
_FIRST_COMPILE_S = 1.0  # numba's own set-up and the shared allocation helpers, paid once
# how long a kernel's first call waits for the compile process before compiling the kernel itself
_CHILD_PATIENCE_S = 600.0

_CHILD_MODULE = __name__  # the compile process runs this module (``_child`` below)
_done = False
_lock = threading.Lock()


def _kernels() -> list[tuple[object, tuple]]:
    """(dispatcher, argument types) of every kernel a sort calls, in the order it first calls them."""
    from numba import types as nt

    from . import cluster, detect, match, preprocess

    f32_1, f32_2, f32_3 = nt.float32[::1], nt.float32[:, ::1], nt.float32[:, :, ::1]
    f64_2, i64_1, i64_2 = nt.float64[:, ::1], nt.int64[::1], nt.int64[:, ::1]
    i16_2_ro = nt.Array(nt.int16, 2, "C", readonly=True)  # the traces store, a read-only memmap
    i64, f64 = nt.int64, nt.float64
    return [
        (preprocess.sosfiltfilt_rows, (f32_2, f64_2, f64_2, i64, nt.boolean)),
        (preprocess._median_rows_network, (f32_2, i64_1, i64_2, i64, i64, f32_1)),
        (preprocess._subtract_rows, (f32_2, f32_1)),
        (preprocess.quantize_int16, (f32_2, nt.float32)),
        (detect.temporal_filter, (f32_2, f32_1, i64, f32_1)),
        (detect.detect_peaks_rows, (f32_2, f64, f64, i64_2, i64, i64_1)),
        (detect.project_neighborhoods, (f32_2, i64_1, i64_1, i64_2, f32_2, i64)),
        (cluster.two_means_labels, (f64_2, i64, f64, i64)),
        (preprocess.gather_windows, (i16_2_ro, i64_1, i64_1, nt.float32, f32_3)),
        (match.best_matches, (f32_2, i64_1, i64_1, f32_3, i64_2, f32_1, i64_2, i64, i64, f64, f64)),
        (match.select_non_overlapping, (i64_1, i64_1, i64_1, i64_2, i64, i64, i64, i64)),
        (match.subtract_templates, (f32_2, i64_1, i64_1, f32_1, f32_3, i64_2, i64)),
        (match.subtract_filtered, (f32_2, i64_1, i64_1, f32_1, f32_3, i64_2, f32_1)),
        (match.support_energy, (f32_2, i64_1, i64_1, i64_2, i64, i64)),
        (match.template_projections, (f32_2, i64_1, i64_2, f32_3, i64_2, f32_1, i64)),
    ]


def _cached(dispatcher, sig: tuple) -> bool | None:
    """Whether numba's disk cache holds ``dispatcher`` compiled for ``sig`` on this machine and
    this source (None: no disk cache, e.g. an unwritable install folder, or numba disabled).

    numba has no public query for this; the checks mirror ``Cache.load_overload``, and any
    surprise from numba's internals counts as cached, so the note never claims a compile that
    does not happen."""
    if sig in getattr(dispatcher, "overloads", {}):
        return True
    cache = getattr(dispatcher, "_cache", None)
    cache_file = getattr(cache, "_cache_file", None)
    if cache_file is None:
        return None  # NullCache: caching is off for this function
    try:
        key = cache._index_key(sig, dispatcher.targetctx.codegen())
        return key in cache_file._load_index()
    except Exception:  # noqa: BLE001 - a numba internal changed: do not guess
        log.debug("cannot read numba's cache index for %s", dispatcher, exc_info=True)
        return True


def _compile(kernels: list) -> None:
    for dispatcher, sig in kernels:
        try:
            dispatcher.compile(sig)
        except Exception:  # noqa: BLE001 - the call in the pipeline compiles (and reports) it again
            log.debug("warm-up compile of %s%s failed", dispatcher, sig, exc_info=True)


def _name(dispatcher) -> str:
    return f"{dispatcher.py_func.__module__}.{dispatcher.py_func.__qualname__}"


class _AfterChild:
    """A dispatcher's numba cache that, asked for a kernel, first waits until the compiling child
    process has written it (or has ended): the sort loads the child's machine code from disk
    instead of compiling it a second time. Everything else goes to numba's own cache object."""

    def __init__(self, cache, ready: threading.Event, name: str):
        self._cache = cache
        self._ready = ready
        self._name = name

    def load_overload(self, sig, target_context):
        if not self._ready.is_set():
            t0 = time.perf_counter()
            if not self._ready.wait(_CHILD_PATIENCE_S):  # a hung child must not hang the sort: compile here
                log.debug("the compile process has not written %s: compiling it here", self._name)
            log.debug("waited %.2f s for the compile process's %s", time.perf_counter() - t0, self._name)
        return self._cache.load_overload(sig, target_context)

    def __getattr__(self, name):
        return getattr(self._cache, name)


def _spawn(cold: list) -> bool:
    """Compile ``cold`` in a child process (``python -m spikesort.kernels.warmup NAME ...``)
    that writes numba's disk cache; the kernels' first calls here wait for it and load from
    disk. A process, not a thread: numba's front end is Python, and on a thread it holds the GIL
    the sort's own threads need. False when the child cannot start."""
    import subprocess
    import sys

    names = [_name(d) for d, _ in cold]
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", _CHILD_MODULE, *names],
            stdin=subprocess.PIPE,  # its end is the child's signal to stop (this process ended)
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except OSError:
        log.debug("cannot start the kernel compile process", exc_info=True)
        return False
    ready = {name: threading.Event() for name in names}
    for dispatcher, _ in cold:
        dispatcher._cache = _AfterChild(dispatcher._cache, ready[_name(dispatcher)], _name(dispatcher))

    def follow() -> None:
        for line in child.stdout:
            name = line.strip()
            if name in ready:
                log.debug("compile process: %s in the cache", name)
                ready[name].set()
            elif name:
                log.debug("kernel compile process: %s", name)
        code = child.wait()
        left = [(d, sig) for d, sig in cold if not ready[_name(d)].is_set()]
        if left:
            # it failed (its output is above): the kernels it did not write compile here, on this thread
            log.debug("kernel compile process exited with code %s; compiling %d kernels here", code, len(left))
        for event in ready.values():
            event.set()
        _compile(left)

    threading.Thread(target=follow, name="spikesort-kernel-warm-up", daemon=True).start()
    return True


def warm_up_note() -> float:
    """Once per process: when numba's cache lacks some kernels, log 'compiling kernels (first run
    only, about N s)' and compile them in the background: in a child process that fills numba's
    disk cache, or on a thread when there is no disk cache. Returns N (0 when all are cached)."""
    global _done
    with _lock:
        if _done:
            return 0.0
        _done = True
    try:
        kernels = _kernels()
        state = [(d, sig, _cached(d, sig)) for d, sig in kernels]
    except Exception:  # noqa: BLE001 - numba missing or disabled (NUMBA_DISABLE_JIT): nothing to warm
        log.debug("kernel warm-up skipped", exc_info=True)
        return 0.0
    cold = [(d, sig) for d, sig, hit in state if not hit]
    if not cold:
        return 0.0
    seconds = _FIRST_COMPILE_S + sum(_COMPILE_S.get(d.py_func.__name__, 0.5) for d, _ in cold)
    if any(hit is None for _, _, hit in state):
        log.info("compiling kernels (about %.0f s; numba cannot cache them here, so every run pays this)", seconds)
    else:
        log.info("compiling kernels (first run only, about %.0f s)", seconds)
        if _spawn(cold):
            return seconds
    threading.Thread(target=_compile, args=(cold,), name="spikesort-kernel-warm-up", daemon=True).start()
    return seconds


def _child(names: list[str]) -> None:
    """The compile process: compile the named kernels in order and print each name once it is in
    numba's disk cache. It stops when its stdin ends (the sort's process is gone), though never
    half-way through writing a cache file."""
    import os
    import signal
    import sys

    from numba.core import caching

    # Ctrl-C reaches the whole process group: the sort decides what happens, and this process
    # ends with it (its stdin closes)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    writing = threading.Lock()
    save = caching.Cache.save_overload

    def save_whole(self, sig, data):
        with writing:
            return save(self, sig, data)

    caching.Cache.save_overload = save_whole

    def stop_with_parent() -> None:
        sys.stdin.read()
        with writing:
            os._exit(0)

    threading.Thread(target=stop_with_parent, daemon=True).start()
    wanted = set(names)
    for dispatcher, sig in _kernels():
        if _name(dispatcher) in wanted:
            _compile([(dispatcher, sig)])
            # the protocol with the parent: one line per kernel now in the cache
            sys.stdout.write(_name(dispatcher) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    import sys

    _child(sys.argv[1:])
