"""The ``spikesort`` group: logging, exit codes and the one-line errors every command shares.

A user mistake ends with one line ``spikesort: error: ...`` on stderr and exit code 2; an
unexpected exception with one line ``spikesort: internal error: ...`` and exit code 1, its
traceback going to the log file only. The console never shows a traceback.

The commands are modules of this package (run, params, probes, demo, info, report, export,
batch); each registers itself on :data:`main`, and ``spikesort/cli/__init__.py`` imports them
all. This module imports none of them.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import click

from spikesort import __version__
from spikesort.errors import SpikesortError, clear_stop, one_line, request_stop
from spikesort.layout import LOG_FILE as LOG_NAME

log = logging.getLogger("spikesort.cli")  # the name users see in spikesort.log

PROG = "spikesort"
EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


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


# --------------------------------------------------------------------------- errors and exit codes


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


def _on_sigint(signum, frame):
    request_stop()  # kept for the stages to raise again if a finalizer swallows this one
    if _compiling():
        # raised here it could land between numba taking its compiler lock and entering the block
        # that releases it: the lock stays held, the chunk workers that load a kernel wait on it
        # for ever, and so does the interrupted run waiting for them (a CI run hung 300 s so,
        # 2026-12-05). The request is raised at the next chunk instead
        return
    raise KeyboardInterrupt


def _compiling() -> bool:
    """This (the main) thread holds numba's compiler lock."""
    try:
        from numba.core.compiler_lock import global_compiler_lock

        return bool(global_compiler_lock.is_locked())
    except Exception:  # noqa: BLE001 - numba's internals moved: raise as before
        return False


def stop_request(exc: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM behind ``exc``, if any.

    A signal that lands while a numba kernel runs surfaces as ``SystemError: ... returned a result with an
    exception set``, caused by the KeyboardInterrupt: that is the user stopping the run, not a bug.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, _Terminated)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class _Group(click.Group):
    """A click group whose every failure is one line on stderr (never click's usage block)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        global _active_log
        failure = None
        previous = previous_int = None
        clear_stop()
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
            previous_int = signal.signal(signal.SIGINT, _on_sigint)
        try:
            rv = super().main(
                args=args, prog_name=prog_name or PROG, complete_var=complete_var, standalone_mode=False, **extra
            )
            code = rv if isinstance(rv, int) else 0
        except _NoArgsIsHelp as exc:  # bare `spikesort` or `spikesort probes`: show the help
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            code = 0
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            failure, code = f"error: {one_line(exc.format_message())}{hint}", EXIT_USAGE
        except click.ClickException as exc:  # e.g. click.FileError
            failure, code = f"error: {one_line(exc.format_message())}", EXIT_USAGE
        except SpikesortError as exc:
            failure, code = f"error: {one_line(str(exc))}", EXIT_USAGE
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
        except Exception as exc:
            stop = stop_request(exc)
            if isinstance(stop, KeyboardInterrupt):
                failure, code = "interrupted", EXIT_INTERRUPTED
            elif stop is not None:
                failure, code = "terminated (SIGTERM)", EXIT_TERMINATED
            else:  # a bug: one line here, the traceback in the log file
                failure, code = _internal_error(exc), EXIT_INTERNAL
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if previous_int is not None:  # None: a handler set outside Python, not restorable
                signal.signal(signal.SIGINT, previous_int)
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
    return f"internal error: {type(exc).__name__}: {one_line(str(exc))}{where}"


def _silence_stdout() -> None:
    # the interpreter flushes stdout at exit; point it at /dev/null so that flush cannot fail
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- the group


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
def main():
    """spikesort: a fast CPU spike sorter for extracellular recordings, writing Phy folders.

    Start with `spikesort demo`, then `spikesort run RECORDING --probe PROBE -o OUT`.
    """
