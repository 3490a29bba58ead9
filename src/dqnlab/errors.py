"""One exception type for "this run cannot start as configured", and the CLI's way of reporting it.

Every check that rejects user input (:mod:`dqnlab.validate`, the env factories, the networks, the replay buffer)
raises a :class:`ConfigError` subclass whose message names the offending key and the fix. ``train.py`` turns
it into one line on stderr, ``error: <message>``, and exit status 2, without a traceback; set
``HYDRA_FULL_ERROR=1`` to get the traceback instead. A :class:`TrainingError` (training went wrong after it
started, e.g. a non-finite loss) is reported the same way, with exit status 3.

This module imports nothing heavy: Hydra's callback loads it before torch is imported.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from hydra.errors import CompactHydraException

EXIT_CONFIG_ERROR = 2  # the status argparse and most CLIs use for bad usage
EXIT_TRAINING_ERROR = 3  # training started but cannot go on (a non-finite loss); a checkpoint was saved


class ConfigError(ValueError):
    """A run cannot start as configured; the message names the offending key and the fix."""


class MissingExtraError(ConfigError, ImportError):
    """An optional dependency of the configured run is not installed (e.g. ``pip install 'dqnlab[atari]'``).

    Also an ``ImportError``, so code that probes for the package with ``except ImportError`` keeps working.
    """


class TrainingError(RuntimeError):
    """Training started but cannot go on as configured; the message names the env step, what to try and the
    checkpoint saved before stopping. The CLI exits with :data:`EXIT_TRAINING_ERROR` without a traceback.
    """

    exit_code = EXIT_TRAINING_ERROR


class WriteFailed(TrainingError):
    """A file of the run could not be written (a full disk, a quota, a file size limit, a read-only mount).

    The message names the file, the cause and what to change; files are written atomically, so the one it was
    to replace is intact. The CLI exits with :data:`EXIT_TRAINING_ERROR` without a traceback.
    """


# The errnos of "the disk cannot take this file": ENOSPC, EDQUOT, EFBIG, EROFS (errno's names differ by platform).
_WRITE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS") if hasattr(errno, n))


def find_write_error(exc: BaseException) -> WriteFailed | None:
    """A :class:`WriteFailed` behind ``exc``, or one made from a disk-full :class:`OSError` behind it.

    Unlike :func:`find_user_error` this follows implicit contexts too: on a full disk, what fails while the run
    stops (the CSV logger's last flush) comes out on top of the checkpoint write that failed first.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    found: OSError | None = None
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, WriteFailed):
            return cur
        if isinstance(cur, OSError) and cur.errno in _WRITE_ERRNOS and found is None:
            found = cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    if found is None:
        return None
    where = f" {found.filename}" if found.filename else " a file of the run"
    return WriteFailed(
        f"could not write{where}: {found.strerror} (errno {found.errno}); files are replaced atomically, so the "
        "last checkpoint written is intact: free space, then resume with ckpt_path=last and the run's "
        "hydra.run.dir"
    )


class ConfigJobFailed(CompactHydraException):
    """A multirun job failed its config checks (Hydra prints this one line, without a traceback)."""


def full_error_requested() -> bool:
    """Whether the user asked for tracebacks (``HYDRA_FULL_ERROR=1``, the same switch Hydra reads)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: tuple[type[BaseException], ...] = (ConfigError, TrainingError)
    if "gymnasium" in sys.modules:  # imported lazily: this module must stay light (see the module docstring)
        from gymnasium.error import DependencyNotInstalled

        # gymnasium's own "pip install gymnasium[box2d]" messages are as clear as ours.
        types += (DependencyNotInstalled,)
    return types


def find_user_error(exc: BaseException) -> BaseException | None:
    """The :class:`ConfigError` (or equally clear dependency error) behind ``exc``, if there is one.

    Hydra's ``instantiate`` wraps what a ``_target_`` raises in an ``InstantiationException`` (``raise ... from
    e``), so explicit causes are followed. Implicit contexts are not: an error raised while handling a config
    error is a different failure and must surface as itself.
    """
    types = _user_error_types()
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, types):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__
    return None


def format_error(err: BaseException) -> str:
    """``error: <message>``; continuation lines of a multi-line message are indented under it."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return "\n".join([f"error: {lines[0]}", *(f"       {line}" for line in lines[1:])])


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` for dqnlab's scripts: a bad argument is one ``error: ...`` line and exit status 2, as
    ``train.py`` reports bad input (argparse's own usage block goes; ``--help`` still prints it).
    """

    def error(self, message: str) -> NoReturn:
        """Print ``error: <message> (see: python <script> --help)`` to stderr and exit 2."""
        typed = sys.argv[0] if sys.argv and sys.argv[0].endswith(self.prog) else self.prog  # scripts/plot.py
        print_error(ValueError(f"{message} (see: python {typed} --help)"))
        sys.exit(EXIT_CONFIG_ERROR)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def print_error(err: BaseException) -> None:
    """Print ``error: <message>`` to stderr."""
    sys.stdout.flush()  # keep the order of what Hydra's log handler already printed
    print(format_error(err), file=sys.stderr, flush=True)


def report_and_exit(err: BaseException) -> None:
    """Print ``error: <message>`` to stderr and exit with :data:`EXIT_CONFIG_ERROR` (a
    :class:`TrainingError`: :data:`EXIT_TRAINING_ERROR`).

    In a multirun the other jobs must still run (and a sweeper must see one failed trial, not a dead
    process), so there the job fails with a :class:`ConfigJobFailed` that Hydra reports in one line.
    """
    print_error(err)
    if _in_multirun():
        raise ConfigJobFailed(format_error(err)) from None
    sys.exit(getattr(err, "exit_code", EXIT_CONFIG_ERROR))


def _find_signal_stop(exc: BaseException) -> SystemExit | None:
    """A stop on Ctrl-C/SIGTERM behind ``exc`` (a second Ctrl-C inside ``torch.save`` comes out wrapped)."""
    stopping = sys.modules.get("dqnlab.run.stopping")  # imported by a run; absent: no run, no signal stop
    return stopping.find_stop(exc) if stopping is not None else None


def log_traceback_to_files(exc: BaseException) -> None:
    """Write ``exc``'s traceback to the run's log files (``train.log``); the terminal gets Hydra's own report."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    record = logging.LogRecord(
        "dqnlab", logging.ERROR, __file__, 0, "the run failed:", None, (type(exc), exc, exc.__traceback__)
    )
    for handler in handlers:
        handler.handle(record)


@contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Turn a :class:`ConfigError` raised inside the block into :func:`report_and_exit`; re-raise anything else.

    A stop on a signal ends the process with its exit status (130, 143) and its one-line message, whatever it
    interrupted (a second Ctrl-C during a checkpoint write surfaces as torch's ``RuntimeError``). Anything else
    is re-raised, its traceback first written to ``train.log``. With ``HYDRA_FULL_ERROR=1`` nothing is caught.
    """
    try:
        yield
    except SystemExit as exc:
        stopping = sys.modules.get("dqnlab.run.stopping")
        if stopping is not None and isinstance(exc, stopping.HardStop | stopping.Interrupted):
            if isinstance(exc, stopping.HardStop):
                print(f"{exc}", file=sys.stderr, flush=True)  # raised from the signal handler: not printed yet
            stopping.exit_at_once_on_more_signals(exc)
        raise
    except Exception as exc:
        stop = None if full_error_requested() else _find_signal_stop(exc)
        if stop is not None:
            print(f"{stop}", file=sys.stderr, flush=True)
            sys.modules["dqnlab.run.stopping"].exit_at_once_on_more_signals(stop)
            sys.exit(stop.code)
        err = find_user_error(exc) or find_write_error(exc)
        if err is None or full_error_requested():
            log_traceback_to_files(exc)
            raise
        report_and_exit(err)
