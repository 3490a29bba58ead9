"""Memory for replay buffers, machine-wide: reservations that parallel jobs on one machine see.

Parallel jobs on one machine (hydra/launcher=joblib) each check the free memory at start, before the others have
allocated; without coordination they all pass, and the kernel's OOM killer ends one of them later. So each buffer
takes a reservation first: a file <pid>-<id>.json in RESERVATIONS_ENV's dir (default: per user, in
$XDG_RUNTIME_DIR or the temp dir), written under an flock, holding its pid, its start time and its bytes. It is
"pending" until the storage is allocated (from then on the device's free memory shows it) and goes when the
buffer is freed, or when its process is gone (a dead pid, or a pid reused by a later process, is ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from dqnlab.checks import gib
from dqnlab.errors import ConfigError
from dqnlab.io import atomic_write_bytes

MEMORY_LIMIT_ENV = "DQNLAB_MEMORY_LIMIT"  # bytes (or 12GiB, 500MiB) the replay buffers of all jobs may take
RESERVATIONS_ENV = "DQNLAB_RESERVATIONS_DIR"
_UNITS = {"": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30, "t": 2**40, "tib": 2**40}


def _device_free_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (host RAM for CPU), or ``None`` where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit_bytes() -> int | None:
    """``$DQNLAB_MEMORY_LIMIT``: what the replay buffers of all dqnlab jobs on a device may take together."""
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip().replace("_", "")
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"{MEMORY_LIMIT_ENV}={text!r} is not a size: use bytes, or e.g. 12GiB or 500MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _reservations_dir() -> Path:
    default = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"dqnlab-reservations-{os.getuid()}"
    return Path(os.environ.get(RESERVATIONS_ENV) or default)


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: field 22 of /proc/<pid>/stat), or ``None``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    if start is not None and Path("/proc/self/stat").exists():
        return _start_time(pid) == start  # a reused pid has another start time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reservations(device: torch.device) -> list[dict]:
    """The live reservations of replay buffers on ``device`` on this machine; dead ones are removed."""
    directory, live = _reservations_dir(), []
    for path in directory.glob("*.json") if directory.is_dir() else ():
        try:
            r = json.loads(path.read_text())
            alive = r["device"] != str(device) or _alive(int(r["pid"]), r.get("start"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written or removed right now, or not ours
        if not alive:
            path.unlink(missing_ok=True)
        elif r["device"] == str(device):
            live.append(r)
    return live


def memory_for_a_new_buffer(device: torch.device) -> tuple[int | None, int, int]:
    """``(bytes a new buffer on device may count on, other buffers' jobs, bytes those hold)``.

    The device's free memory less what other buffers reserved but have not allocated yet, and at most
    ``$DQNLAB_MEMORY_LIMIT`` less all their reservations; ``None`` where the free memory cannot be read.
    """
    free, live = _device_free_bytes(device), reservations(device)
    held = sum(int(r["bytes"]) for r in live)
    if free is not None:
        free -= sum(int(r["bytes"]) for r in live if not r.get("allocated"))
    limit = memory_limit_bytes()
    if limit is not None:
        free = limit - held if free is None else min(free, limit - held)
    return (None if free is None else max(free, 0)), len({r["pid"] for r in live}), held


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a new replay buffer on ``device`` may count on (see :func:`memory_for_a_new_buffer`)."""
    return memory_for_a_new_buffer(device)[0]


@contextmanager
def reservations_locked() -> Iterator[Path | None]:
    """Hold the machine-wide lock of the reservations dir (``None``: no coordination possible here)."""
    try:
        import fcntl

        directory = _reservations_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = open(directory / ".lock", "a")  # noqa: SIM115 (closed below; the lock goes with it)
    except (ImportError, OSError):
        yield None
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield directory


class Reservation:
    """A buffer's reservation file (see the module docstring)."""

    def __init__(self, directory: Path, device: torch.device, nbytes: int) -> None:
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        pid = os.getpid()
        self.record = {"pid": pid, "start": _start_time(pid), "device": str(device), "bytes": int(nbytes)}
        self._write(allocated=False)

    def _write(self, allocated: bool) -> None:
        with contextlib.suppress(OSError):
            atomic_write_bytes(self.path, json.dumps({**self.record, "allocated": allocated}).encode())

    def allocated(self) -> None:
        """The storage exists now: the device's free memory shows it, so it is no longer pending."""
        self._write(allocated=True)

    def release(self) -> None:
        """Remove the file (the buffer is freed)."""
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


class BufferTooLargeError(ConfigError, MemoryError):
    """The replay buffer would not fit in its device's free memory (also a ``MemoryError``)."""


def buffer_too_large(
    need: int,
    free: int,
    fraction: float,
    device: torch.device,
    capacity: int,
    at_least: bool = False,
    jobs: int = 0,
    held: int = 0,
) -> str:
    """The message for a replay buffer that does not fit: how much it needs, how much there is, what to do.

    ``jobs`` other processes on this machine hold ``held`` bytes of the device for their buffers
    (:func:`memory_for_a_new_buffer`); ``free`` is what they leave.
    """
    fits = int(capacity * fraction * free / max(need, 1))
    others = f" besides the {gib(held)} that {jobs} other dqnlab job(s) on this machine hold" if jobs else ""
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    within = f" within {MEMORY_LIMIT_ENV}={limit}" if limit else ""
    fewer = "run fewer jobs at once (hydra.launcher.n_jobs), " if jobs else ""
    return (
        f"buffer.capacity={capacity:_} transitions needs {'at least ' if at_least else ''}{gib(need)} on "
        f"{device} but only {gib(free)} is free{others}{within} (buffer.memory_fraction={fraction:g} of it may "
        f"be used): lower buffer.capacity to at most about {fits:_}, {fewer}or put the buffer elsewhere with "
        "buffer.device"
    )
