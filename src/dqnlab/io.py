"""Small file helpers: every file a run leaves is written atomically."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

# The process umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file; mkstemp's temp files are 0600
# ".<target name>.<writer pid>.<mkstemp's 8 random characters>.tmp", see atomic_open.
_TEMP_NAME = re.compile(r"\..+\.(\d+)\.[A-Za-z0-9_]{8}\.tmp")


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` for binary writing; on a clean exit, fsync it and rename it to ``path``.

    A reader (or a crash, or a kill mid-write) sees either the old file or the whole new one, never half of it.
    The temp file lives in the same directory because a rename is atomic only within one file system. Large
    objects (a checkpoint holding a replay buffer) are streamed to it, never held in memory twice. Its name
    holds the writer's pid, so that a temp file left by a killed writer can be told from one being written
    (:func:`remove_stale_temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # the result is an ordinary file, not a private temp file
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # called before this process writes anything: a previous process with our pid left it
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files :func:`atomic_open` left in ``directory`` when its process died mid-write.

    A SIGKILL (or the OOM killer, or a power cut) during a write leaves ``.<name>.<pid>.<random>.tmp`` beside
    the untouched target. Files whose writer is still running on this machine are left alone. Call it before
    this process writes to ``directory``.

    Returns:
        The files removed.

    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for tmp in directory.glob(".*.tmp"):
        match = _TEMP_NAME.fullmatch(tmp.name)
        if match is None or _running(int(match.group(1))):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
        log.info("removed %s, left by a process killed while writing it", tmp)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_if_only_started(run_dir: str | Path) -> bool:
    """Remove a run dir that holds nothing but what Hydra writes at the start (``.hydra/``, ``train.log``).

    A run refused once the env exists (its spaces, the replay's exact size) fails after Hydra made its dir; a dir
    with nothing of a run in it is removed, so a rejected command line leaves no run dir behind. A dir with
    anything else (checkpoints, metrics, a run's summary) is left as it is. Returns whether it was removed.
    """
    path = Path(run_dir)
    try:
        if not path.is_dir() or not set(os.listdir(path)) <= {".hydra", "train.log"}:
            return False
        shutil.rmtree(path)
    except OSError:
        return False
    return True
