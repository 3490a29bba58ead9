"""An Optuna SQLite study that several sweeps (SLURM jobs) share: its tables are created by one process at a time.

Optuna creates a new storage's tables on first use; two workers starting together on a fresh SQLite file both try,
and one fails with ``UNIQUE constraint failed: alembic_version.version_num``. :func:`init_shared_storage` creates
them before the sweeper does, holding an exclusive lock on ``<file>.lock`` beside the database (``flock``: local
disks and NFS v4; a database server, e.g. ``postgresql://...``, needs no such step and is left alone).
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


def sqlite_file(url: str | None) -> Path | None:
    """The database file of an ``sqlite:///`` URL (``None`` for other URLs, or an in-memory database)."""
    if not url or not str(url).startswith(SQLITE) or str(url) in (SQLITE, f"{SQLITE}:memory:"):
        return None
    return Path(str(url)[len(SQLITE) :])


def init_shared_storage(url: str | None) -> None:
    """Create the tables of the SQLite study storage at ``url`` under a file lock (no-op for other URLs)."""
    path = sqlite_file(url)
    if path is None:
        return
    import optuna

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        optuna.storages.RDBStorage(str(url))


def prepare_optuna_sweep(config: Any) -> None:
    """For an Optuna sweep with an SQLite storage: its tables, created once (see the module docstring)."""
    sweeper = config.hydra.get("sweeper") if "hydra" in config else None
    if sweeper is not None and "optuna" in str(sweeper.get("_target_", "")).lower():
        init_shared_storage(sweeper.get("storage"))
