"""The ``spikesort`` command line: run, demo, params, probes, info.

A user mistake ends with one line ``spikesort: error: ...`` on stderr and exit code 2; an
unexpected exception with one line ``spikesort: internal error: ...`` and exit code 1, its
traceback going to the log file only. The console never shows a traceback.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import click

from spikesort import __version__
from spikesort.errors import SpikesortError
from spikesort.params import Params

log = logging.getLogger("spikesort.cli")  # the name users see in spikesort.log

PROG = "spikesort"
EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
from spikesort.layout import LOG_FILE as LOG_NAME  # noqa: F401 (re-exported)
from spikesort.io.formats import FORMATS  # noqa: E402


# --------------------------------------------------------------------------- logging


class _ConsoleHandler(logging.Handler):
    """One line per record on stderr, through tqdm.write so progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # the message only: exc_info and stack traces belong in the log file
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                msg = f"{PROG}: {record.levelname.lower()}: {msg}"
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        except Exception:
            self.handleError(record)


class _CommandLog:
    """Console and file logging for one command.

    The file starts in the temp folder, because the output folder does not exist yet (and
    must not be created before the pipeline checks it); ``adopt`` moves it into the output
    folder once the run has made that folder.
    """

    def __init__(self, *, verbose: int = 0, quiet: bool = False):
        fd, name = tempfile.mkstemp(prefix="spikesort-", suffix=".log")
        os.close(fd)
        self.path = Path(name)
        self.in_temp = True
        self._fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._file = self._file_handler()
        self._console = _ConsoleHandler(level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
        self._root = logging.getLogger()
        self._pkg = logging.getLogger("spikesort")
        self._saved_level = self._pkg.level
        self._root.addHandler(self._file)
        self._root.addHandler(self._console)
        # our records at every level reach the handlers; other libraries' only from WARNING
        # (the root level), so numba's very verbose debug logging stays out
        self._pkg.setLevel(logging.DEBUG)
        logging.captureWarnings(True)
        log.debug("spikesort %s, python %s, argv %s", __version__, sys.version.split()[0], sys.argv)

    def _file_handler(self) -> logging.FileHandler:
        handler = logging.FileHandler(self.path, mode="a", encoding="utf8", delay=False)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(self._fmt)
        return handler

    def adopt(self, folder: Path) -> None:
        """Move the log into ``folder`` (which this command created) and go on writing there."""
        if not self.in_temp or not folder.is_dir():
            return
        target = folder / LOG_NAME
        self._root.removeHandler(self._file)
        self._file.close()
        try:
            if target.is_file():
                # a resumed run: the earlier attempts' log goes on
                with open(self.path, "rb") as src, open(target, "ab") as dst:
                    shutil.copyfileobj(src, dst)
                self.path.unlink()
            else:
                shutil.move(str(self.path), str(target))
            self.path, self.in_temp = target, False
        except OSError:
            pass  # keep the temp log: losing the output folder's copy is better than losing the log
        self._file = self._file_handler()
        self._root.addHandler(self._file)

    def write_traceback(self, exc: BaseException) -> None:
        self._file.flush()
        with open(self.path, "a", encoding="utf8") as fh:
            fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    def close(self, *, keep_temp: bool) -> None:
        self._root.removeHandler(self._file)
        self._root.removeHandler(self._console)
        self._file.close()
        self._pkg.setLevel(self._saved_level)
        logging.captureWarnings(False)
        if self.in_temp and not keep_temp:
            self.path.unlink(missing_ok=True)


_active_log: _CommandLog | None = None


def _start_log(*, verbose: int = 0, quiet: bool = False) -> _CommandLog:
    global _active_log
    _active_log = _CommandLog(verbose=verbose, quiet=quiet)
    return _active_log


# --------------------------------------------------------------------------- the group


def _fail(message: str, code: int) -> None:
    click.echo(f"{PROG}: {message}", err=True)
    sys.exit(code)


_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
# click >= 8.2 raises this for a group called without a subcommand; older click exits with the help
_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Terminated(BaseException):
    """SIGTERM (a batch system's time limit, ``kill``), raised so that cleanup still runs."""


def _on_sigterm(signum, frame):
    raise _Terminated()


class _Group(click.Group):
    """A click group whose every failure is one line on stderr (never click's usage block)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        global _active_log
        failure = None
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            rv = super().main(args=args, prog_name=prog_name or PROG, complete_var=complete_var,
                              standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except _NoArgsIsHelp as exc:  # bare `spikesort` or `spikesort probes`: show the help
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            code = 0
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            failure, code = f"error: {_one_line(exc.format_message())}{hint}", EXIT_USAGE
        except click.ClickException as exc:  # e.g. click.FileError
            failure, code = f"error: {_one_line(exc.format_message())}", EXIT_USAGE
        except SpikesortError as exc:
            failure, code = f"error: {_one_line(str(exc))}", EXIT_USAGE
        except (click.Abort, KeyboardInterrupt):
            failure, code = "interrupted", EXIT_INTERRUPTED
        except _Terminated:
            failure, code = "terminated (SIGTERM)", EXIT_TERMINATED
        except BrokenPipeError:  # `spikesort params | head`: the reader left, nothing to say
            _silence_stdout()
            code = EXIT_INTERNAL
        except OSError as exc:
            if exc.errno not in _USER_OS_ERRORS:
                failure, code = _internal_error(exc), EXIT_INTERNAL
            else:  # disk full, read-only or forbidden folder: the user can fix these
                where = f": {exc.filename}" if exc.filename else ""
                failure, code = f"error: {exc.strerror or exc}{where}", EXIT_USAGE
        except Exception as exc:  # a bug: one line here, the traceback in the log file
            failure, code = _internal_error(exc), EXIT_INTERNAL
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if _active_log is not None:
                # the temp log is worth keeping only when it explains an internal error
                _active_log.close(keep_temp=failure is not None and failure.startswith("internal"))
                _active_log = None
        if failure is not None:
            _fail(failure, code)
        sys.exit(code)


def _internal_error(exc: BaseException) -> str:
    """Write the traceback to the command's log (a new temp log if none) and say where it is."""
    global _active_log
    if _active_log is None:
        _active_log = _CommandLog()
    try:
        _active_log.write_traceback(exc)
        where = f" (details in {_active_log.path})"
    except OSError:  # e.g. the disk is full: the one line must still come out
        where = ""
    return f"internal error: {type(exc).__name__}: {_one_line(str(exc))}{where}"


def _silence_stdout() -> None:
    # the interpreter flushes stdout at exit; point it at /dev/null so that flush cannot fail
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else "(no message)"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def main():
    """spikesort: a fast CPU spike sorter for extracellular recordings, writing Phy folders.

    Start with `spikesort demo`, then `spikesort run RECORDING --probe PROBE -o OUT`.
    """


# --------------------------------------------------------------------------- parameters


def _flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _num(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _param_help(f: dataclasses.Field) -> str:
    m = f.metadata
    default = f.default
    if isinstance(default, tuple):
        shown = ",".join(f"{x:g}" for x in default)
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    else:
        shown = str(default)
    rng = ""
    if m.get("lo") is not None:
        rng = f"; range {_num(m['lo'])}-{_num(m['hi'])}"
    return f"{m['help']} [{m['stage']}; default {shown}{rng}]"


def _param_options():
    """One click option per Params field, generated from its metadata; default None = not given."""
    options = []
    for f in dataclasses.fields(Params):
        m, default, dest = f.metadata, f.default, "p_" + f.name
        if isinstance(default, bool):
            flag = _flag_name(f.name)
            opt = click.Option([f"{flag}/--no-{flag[2:]}", dest], default=None, help=_param_help(f))
        elif m.get("choices"):
            opt = click.Option([_flag_name(f.name), dest], type=click.Choice(m["choices"]), default=None,
                               help=_param_help(f))
        elif isinstance(default, tuple):
            opt = click.Option([_flag_name(f.name), dest], type=str, default=None, metavar="A,B,..",
                               help=_param_help(f))
        elif isinstance(default, int):
            opt = click.Option([_flag_name(f.name), dest], type=int, default=None, help=_param_help(f))
        elif isinstance(default, float):
            opt = click.Option([_flag_name(f.name), dest], type=float, default=None, help=_param_help(f))
        else:
            opt = click.Option([_flag_name(f.name), dest], type=str, default=None, help=_param_help(f))
        options.append(opt)
    return options


def _with_param_options(cmd: click.Command) -> click.Command:
    cmd.params.extend(_param_options())
    return cmd


def _parse_set(values) -> dict:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpikesortError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def resolve_params(*, config: str | None, set_values=(), flags: dict | None = None) -> Params:
    """defaults < --config file < --set KEY=VALUE < dedicated flags (--detect-threshold ...)."""
    from spikesort.params import load_config

    params = Params()
    if config is not None:
        values = load_config(config)
        try:
            params = Params.from_dict(values, base=params)
        except SpikesortError as exc:
            raise SpikesortError(f"config file {config}: {exc}") from None
    if set_values:
        params = Params.from_dict(_parse_set(set_values), base=params)
    given = {k[2:]: v for k, v in (flags or {}).items() if v is not None}
    if given:
        params = Params.from_dict(given, base=params)
    return params


class _RunCommand(click.Command):
    """Lists the sorter parameters in their own help section."""

    def format_options(self, ctx, formatter):
        own, tuned = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record:
                (tuned if (param.name or "").startswith("p_") else own).append(record)
        with formatter.section("Options"):
            formatter.write_dl(own)
        with formatter.section("Sorting parameters (also from --config FILE.toml or --set KEY=VALUE)"):
            formatter.write_dl(tuned)


# --------------------------------------------------------------------------- run


def _check_output_folder(out: Path, *, overwrite: bool, protected: list[Path], resume: bool = False) -> None:
    if resume and overwrite:
        raise SpikesortError("--resume and --overwrite exclude each other: --resume keeps the finished stages, "
                             "--overwrite deletes them")
    if out.exists():
        if not out.is_dir():
            raise SpikesortError(f"output path {out} is a file, not a folder")
        from spikesort.pipeline.checkpoints import is_resumable_folder, is_unfinished

        if resume and not is_resumable_folder(out):
            raise SpikesortError(f"output folder {out} exists but holds no spikesort run to resume: "
                                 f"choose another output folder")
        if not overwrite and not resume:
            what = " and holds an unfinished run: continue it with --resume, or" if is_unfinished(out) else ":"
            raise SpikesortError(f"output folder {out} exists{what} use --overwrite to replace it")
    else:
        parent = out.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise SpikesortError(f"cannot create output folder {out}: {parent} is a file")
    # --overwrite deletes the folder: never when it holds the inputs
    target = out.resolve()
    for p in protected:
        p = p.resolve()
        if p == target or target in p.parents:
            raise SpikesortError(f"output folder {out} contains the input {p}: choose another output folder")


# the reader names its Python arguments; at the terminal the user typed these flags
_ARG_TO_FLAG = {"sampling_rate_hz": "--sampling-rate", "n_channels": "--n-channels", "dtype": "--dtype",
                "offset_bytes": "--offset", "fmt=": "--format"}


def _as_flags(message: str) -> str:
    for arg, flag in _ARG_TO_FLAG.items():
        message = re.sub(rf"(?<![\w-]){re.escape(arg)}(?![\w])" if arg[-1] != "=" else re.escape(arg), flag, message)
    return message


def _summary_lines(result, out: Path, log_path: Path, seconds: float) -> list[str]:
    n_spikes = len(getattr(result, "spike_times", ()))
    lines = [f"{PROG}: {result.n_units} units, {n_spikes} spikes, sorted in {seconds:.1f} s",
             f"  output folder: {out}"]
    params_py = out / "params.py"
    if params_py.is_file():
        lines.append(f"  open in Phy:   phy template-gui {shlex.quote(str(params_py))}")
    lines.append(f"  log:           {log_path}")
    return lines


@main.command(cls=_RunCommand)
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--probe", "probe", metavar="PROBE",
              help="bundled probe name (see `spikesort probes list`) or a .json/.prb/Kilosort .mat file; "
                   "needed unless the recording carries its probe (SpikeGLX, Open Ephys, NWB)")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), metavar="OUT",
              help="output folder (the Phy folder); must not exist unless --overwrite")
@click.option("--format", "fmt", metavar="FMT",
              help=f"recording format, guessed from PATH when absent: {', '.join(FORMATS)}")
@click.option("--sampling-rate", type=float, metavar="HZ", help="raw binary: sampling rate in Hz")
@click.option("--n-channels", type=int, metavar="N", help="raw binary: number of interleaved channels")
@click.option("--dtype", metavar="DTYPE", help="raw binary: sample type, e.g. int16")
@click.option("--offset", type=int, default=0, metavar="BYTES", show_default=True,
              help="raw binary: header bytes to skip")
@click.option("--config", type=click.Path(path_type=Path), metavar="FILE.toml",
              help="parameter file (template: `spikesort params`)")
@click.option("--overwrite", is_flag=True, help="replace an existing output folder")
@click.option("--resume", is_flag=True,
              help="continue the interrupted run in OUT: finished stages made from the same recording, "
                   "parameters and version are reused; the result is the same as an uninterrupted run's")
@click.option("--export-raw", is_flag=True,
              help="also write OUT/recording.dat (int16, µV) and point params.py at it, for Phy's trace and "
                   "waveform views when Phy cannot read the recording's own format")
@click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE",
              help="set any parameter, e.g. --set detect_threshold=6 (repeatable)")
@click.option("-q", "--quiet", is_flag=True, help="no progress bars, warnings and errors only")
@click.option("-v", "--verbose", count=True, help="debug messages on the console")
def run(path, probe, output, fmt, sampling_rate, n_channels, dtype, offset, config, overwrite, set_values,
        quiet, verbose, export_raw=False, resume=False, **param_flags):
    """Sort the recording at PATH into the Phy folder OUT.

    \b
    Examples:
      spikesort run data.bin --sampling-rate 30000 --n-channels 32 --dtype int16 \\
          --probe linear-32 -o sorted
      spikesort run run1_g0/ -o sorted                     # SpikeGLX folder (.meta gives the probe)
      spikesort run data.dat ... --probe my_probe.json --detect-threshold 6 -o sorted
    """
    cmd_log = _start_log(verbose=verbose, quiet=quiet)
    t0 = time.perf_counter()
    params = resolve_params(config=config, set_values=set_values, flags=param_flags)
    protected = [path] + [p for p in (Path(probe) if probe else None, config) if p is not None and p.exists()]
    _check_output_folder(output, overwrite=overwrite, protected=protected, resume=resume)

    from spikesort.io.probes import attach_probe, load_probe
    from spikesort.io.recordings import open_recording

    try:
        recording = open_recording(path, fmt=fmt, sampling_rate_hz=sampling_rate, n_channels=n_channels,
                                   dtype=dtype, offset_bytes=offset)
    except SpikesortError as exc:
        raise SpikesortError(_as_flags(str(exc))) from None
    if probe is not None:
        recording = attach_probe(recording, load_probe(probe))
    elif not recording.has_probe():
        raise SpikesortError(f"the recording {path} has no probe geometry: pass --probe NAME_OR_FILE "
                             f"(see `spikesort probes list`)")

    from spikesort.pipeline import sort

    log.debug("parameters: %s", json.dumps(params.to_dict()))
    # every check above passed: the folder is this run's. Made now, so that the log is in it even
    # if the run is killed; sort() then starts afresh in it or, with --resume, goes on from its checkpoints
    if overwrite and output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    cmd_log.adopt(output)
    try:
        result = sort(recording, output, params=params, resume=True, progress=not quiet)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        raise SpikesortError(f"{exc.strerror or 'disk full'}{where} (free some space, then run the same command "
                             f"with --resume to continue)") from None
    except (KeyboardInterrupt, _Terminated):
        from spikesort.pipeline.checkpoints import is_complete

        if output.is_dir() and not is_complete(output):
            log.warning("the run stopped before the end: run the same command with --resume to continue it")
        raise
    finally:
        cmd_log.adopt(output)
    if export_raw:
        from spikesort.outputs.convert import export_raw_recording

        export_raw_recording(recording, output, chunk_s=params.chunk_s, progress=not quiet)
    report = None
    try:
        from spikesort.outputs.report import make_report

        report = make_report(output)
    except Exception as exc:  # the sorting is finished and safe: a figure problem must not fail the run
        log.warning("report not written (%s): rebuild it with `spikesort report %s`", exc, output)
    for line in _summary_lines(result, output, cmd_log.path, time.perf_counter() - t0):
        click.echo(line)
    if report is not None:
        click.echo(f"  report:        {report}")


_with_param_options(run)


# --------------------------------------------------------------------------- params


@main.command("params")
def params_cmd():
    """Print every parameter as a commented TOML template (edit it, pass it with --config)."""
    click.echo(Params().to_toml(), nl=False)


# --------------------------------------------------------------------------- probes


@main.group("probes")
def probes_group():
    """The bundled probe files, usable by name with --probe."""


@probes_group.command("list")
def probes_list():
    """List the bundled probes."""
    from spikesort.io.probes import bundled_probes_dir, list_bundled_probes

    names = list_bundled_probes()
    if not names:
        raise SpikesortError(f"no bundled probes found (looked in {bundled_probes_dir()})")
    width = max(len(n) for n in names)
    for name in names:
        n_ch, description = _probe_brief(bundled_probes_dir() / f"{name}.json")
        click.echo(f"{name:<{width}}  {n_ch:>4} ch  {description}".rstrip())


def _probe_brief(path: Path) -> tuple[int, str]:
    # plain JSON read: listing must not fail on one odd file
    try:
        data = json.loads(path.read_text(encoding="utf8"))
        probes = data["probes"]
        n = sum(len(p["contact_positions"]) for p in probes)
        description = probes[0].get("annotations", {}).get("description", "")
        return n, str(description)
    except (OSError, ValueError, KeyError, TypeError):
        return 0, "(unreadable)"


def _smallest_gap(values) -> float | None:
    import numpy as np

    u = np.unique(np.round(np.asarray(values, dtype=float), 3))
    gaps = np.diff(u)
    return float(gaps.min()) if gaps.size else None


def probe_summary(probegroup) -> dict:
    """Channel count, shanks, extent and pitch of a probe group."""
    import numpy as np

    from spikesort.io.probes import probe_channel_count

    pos = np.concatenate([p.contact_positions[:, :2] for p in probegroup.probes])
    shanks = set()
    for i, p in enumerate(probegroup.probes):
        ids = p.shank_ids if p.shank_ids is not None and len(p.shank_ids) else None
        shanks.update((i, s) for s in (ids if ids is not None else [""]))
    nearest = None
    if len(pos) > 1:
        d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)) if len(pos) <= 4000 else None
        if d is not None:
            np.fill_diagonal(d, np.inf)
            nearest = float(d.min())
    name = probegroup.probes[0].annotations.get("name") or probegroup.probes[0].annotations.get("model_name")
    return dict(
        name=str(name or "probe"),
        channels=int(probe_channel_count(probegroup)),
        contacts=int(len(pos)),
        probes=len(probegroup.probes),
        shanks=len(shanks),
        x_um=(float(pos[:, 0].min()), float(pos[:, 0].max())),
        y_um=(float(pos[:, 1].min()), float(pos[:, 1].max())),
        x_pitch_um=_smallest_gap(pos[:, 0]),
        y_pitch_um=_smallest_gap(pos[:, 1]),
        nearest_um=nearest,
    )


def _fmt_um(v) -> str:
    return "-" if v is None else f"{v:.4g} µm"


@probes_group.command("show")
@click.argument("name")
@click.option("--plot", "plot", type=click.Path(path_type=Path), metavar="OUT.png",
              help="also draw the contact layout into this image file")
def probes_show(name, plot):
    """Describe a probe (bundled NAME or probe file): channels, shanks, extent, pitch."""
    from spikesort.io.probes import load_probe

    group = load_probe(name)
    s = probe_summary(group)
    click.echo(f"probe:      {s['name']}")
    click.echo(f"channels:   {s['channels']} ({s['contacts']} contacts connected)")
    click.echo(f"shanks:     {s['shanks']}")
    click.echo(f"x extent:   {s['x_um'][0]:g} to {s['x_um'][1]:g} µm")
    click.echo(f"y extent:   {s['y_um'][0]:g} to {s['y_um'][1]:g} µm")
    click.echo(f"pitch:      x {_fmt_um(s['x_pitch_um'])}, y {_fmt_um(s['y_pitch_um'])}, "
               f"nearest contacts {_fmt_um(s['nearest_um'])}")
    if plot is not None:
        _plot_probe(group, plot, title=s["name"])
        click.echo(f"layout:     {plot}")


def _plot_probe(group, path: Path, *, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SpikesortError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    pos = np.concatenate([p.contact_positions[:, :2] for p in group.probes])
    pad = 40.0
    lo, hi = pos.min(axis=0) - pad, pos.max(axis=0) + pad
    # tall probes get a tall figure, within reason
    fig_h = float(np.clip(4 * (hi[1] - lo[1]) / (hi[0] - lo[0]), 3, 14))
    fig, ax = plt.subplots(figsize=(5, fig_h))
    try:
        from probeinterface.plotting import plot_probegroup

        plot_probegroup(group, ax=ax, same_axes=True, with_device_index=len(pos) <= 64)
        # zoom on the contacts, not on the whole shank outline
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_title(title)
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise SpikesortError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- demo


@main.command()
@click.option("-o", "--output", "output", default="spikesort-demo", show_default=True,
              type=click.Path(path_type=Path), help="folder for the simulated recording and its sorting")
@click.option("--duration", type=float, default=30.0, show_default=True, metavar="S", help="seconds to simulate")
@click.option("--channels", type=int, default=32, show_default=True, metavar="N", help="channels of the probe")
@click.option("--units", type=int, default=12, show_default=True, metavar="N", help="ground-truth units")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the simulation and the sorter")
@click.option("--overwrite", is_flag=True, help="replace an earlier demo folder")
@click.option("-q", "--quiet", is_flag=True, help="no progress bars, warnings and errors only")
@click.option("-v", "--verbose", count=True, help="debug messages on the console")
def demo(output, duration, channels, units, seed, overwrite, quiet, verbose):
    """Simulate a recording with known units, sort it, and score the result.

    Nothing is downloaded. Takes about a minute with the defaults.
    """
    cmd_log = _start_log(verbose=verbose, quiet=quiet)
    from spikesort.demo import run_demo

    s = run_demo(output, duration_s=duration, n_channels=channels, n_units=units, seed=seed,
                 overwrite=overwrite, progress=not quiet, on_folder_ready=cmd_log.adopt)
    click.echo(f"{PROG} demo: {s['duration_s']:g} s simulated on {s['n_channels']} channels, "
               f"{s['n_gt_units']} ground-truth units")
    click.echo(f"  units well detected (accuracy >= 0.8): {s['well_detected']} of {s['n_gt_units']}")
    click.echo(f"  false positive units:                  {s['false_positives']} "
               f"(of {s['n_units_found']} units found)")
    click.echo(f"  mean accuracy:                         {s['mean_accuracy']:.2f}")
    click.echo(f"  wall time:                             {s['sort_s']:.1f} s sorting, {s['total_s']:.1f} s in all")
    click.echo(f"  recording (int16 binary):              {s['recording_folder']}")
    click.echo(f"  Phy folder:                            {s['phy_folder']}")
    if s.get("phy_params"):
        click.echo(f"  open in Phy:                           phy template-gui {shlex.quote(s['phy_params'])}")
    try:
        from spikesort.outputs.report import make_report

        click.echo(f"  report:                                {make_report(s['phy_folder'])}")
    except Exception as exc:  # the demo's sort is done: a figure problem must not fail it
        log.warning("report not written (%s): rebuild it with `spikesort report %s`", exc, s["phy_folder"])


# --------------------------------------------------------------------------- info


def folder_info(folder: Path) -> dict:
    """What a finished output folder holds: units, spikes, labels, duration, version."""
    import numpy as np

    folder = Path(folder)
    if not folder.exists():
        raise SpikesortError(f"output folder not found: {folder}")
    if not folder.is_dir():
        raise SpikesortError(f"{folder} is not a folder")
    from spikesort.pipeline.checkpoints import finished_stages, is_unfinished

    # a folder of ours without the completion marker (written last) is unfinished, even if it
    # already holds Phy files; a Phy folder made elsewhere (no marker, no spikesort log) is described
    if is_unfinished(folder):
        done = ", ".join(finished_stages(folder)) or "none"
        raise SpikesortError(f"{folder} holds an unfinished spikesort run (finished stages: {done}): continue it "
                             f"with `spikesort run RECORDING ... -o {folder} --resume`")
    times_file = folder / "spike_times.npy"
    if not times_file.is_file():
        raise SpikesortError(f"{folder} is not a finished spikesort output folder (no spike_times.npy)")
    try:
        times = np.load(times_file, mmap_mode="r")
        clusters_file = folder / "spike_clusters.npy"
        if not clusters_file.is_file():
            clusters_file = folder / "spike_templates.npy"
        clusters = np.load(clusters_file, mmap_mode="r") if clusters_file.is_file() else None
    except (OSError, ValueError) as exc:
        raise SpikesortError(f"cannot read the arrays in {folder}: {exc}") from None
    info: dict = dict(folder=str(folder), n_spikes=int(times.shape[0]))
    info["n_units"] = int(len(np.unique(clusters))) if clusters is not None else None
    from spikesort.layout import RUN_FILE

    run_file = folder / RUN_FILE
    run = {}
    if run_file.is_file():
        try:
            run = json.loads(run_file.read_text(encoding="utf8"))
        except (OSError, ValueError):
            run = {}
    info["version"] = run.get("version")
    rec = run.get("recording") if isinstance(run.get("recording"), dict) else {}
    info["duration_s"] = run.get("duration_s", rec.get("duration_s"))
    info["sampling_rate_hz"] = run.get("sampling_rate_hz", rec.get("sampling_rate_hz"))
    info["n_channels"] = run.get("n_channels", rec.get("n_channels"))
    timings = run.get("timings_s") or {}
    info["sort_s"] = float(sum(timings.values())) if timings else None
    info["labels"] = _label_counts(folder)
    info["phy"] = (folder / "params.py").is_file()
    return info


def _label_counts(folder: Path) -> dict:
    # a curator's cluster_group.tsv wins over the sorter's own labels
    for name in ("cluster_group.tsv", "cluster_KSLabel.tsv"):
        path = folder / name
        if path.is_file():
            counts: dict = {}
            try:
                rows = path.read_text(encoding="utf8").splitlines()[1:]
            except OSError:
                return {}
            for row in rows:
                parts = row.split("\t")
                if len(parts) >= 2 and parts[1].strip():
                    counts[parts[1].strip()] = counts.get(parts[1].strip(), 0) + 1
            return counts
    return {}


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
def info(folder):
    """Describe a finished output FOLDER: units, spikes, labels, duration."""
    s = folder_info(folder)
    click.echo(f"folder:     {s['folder']}")
    click.echo(f"units:      {s['n_units'] if s['n_units'] is not None else 'unknown'}")
    click.echo(f"spikes:     {s['n_spikes']}")
    if s["labels"]:
        click.echo("labels:     " + ", ".join(f"{v} {k}" for k, v in sorted(s["labels"].items())))
    if s["duration_s"] is not None:
        rate = f" at {s['sampling_rate_hz']:g} Hz" if s["sampling_rate_hz"] else ""
        click.echo(f"duration:   {float(s['duration_s']):.1f} s{rate}")
    if s["n_channels"] is not None:
        click.echo(f"channels:   {s['n_channels']}")
    if s["sort_s"] is not None:
        click.echo(f"sort time:  {s['sort_s']:.1f} s" + (f" (spikesort {s['version']})" if s["version"] else ""))
    if s["phy"]:
        click.echo(f"open in Phy: phy template-gui {shlex.quote(str(Path(s['folder']) / 'params.py'))}")


# --------------------------------------------------------------------------- report


@main.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--max-unit-pages", type=click.IntRange(min=0), default=50, show_default=True, metavar="N",
              help="unit pages for the first N units by id (the rest are in the overview and the table)")
@click.option("--all-units", is_flag=True, help="a page for every unit, however many")
@click.option("--good-only", is_flag=True, help="unit pages for units labelled good only")
def report_cmd(folder, max_unit_pages, all_units, good_only):
    """(Re)build the figures of a finished output FOLDER in FOLDER/report (open summary.html)."""
    from spikesort.outputs.report import make_report

    t0 = time.perf_counter()
    page = make_report(folder, max_unit_pages=None if all_units else max_unit_pages, good_only=good_only)
    n_pages = len(list(page.parent.glob("unit_*.png")))
    click.echo(f"{PROG}: report with {n_pages} unit pages written in {time.perf_counter() - t0:.1f} s")
    click.echo(f"  open: {page}")


# --------------------------------------------------------------------------- export

from spikesort.outputs.convert import export_command  # noqa: E402  (numpy only; pynwb/spikeinterface load on use)

main.add_command(export_command, "export")

# --------------------------------------------------------------------------- batch

from .batch import add_batch_command  # noqa: E402  (dask loads only when the command runs)

add_batch_command(main)


if __name__ == "__main__":  # pragma: no cover
    main()
