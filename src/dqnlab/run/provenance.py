"""Where, when and with what code a run ran: the record a results table needs beside each score.

``summary.json``'s ``provenance`` lists one entry per segment of the run (a resume starts a new segment; each
checkpoint carries the earlier ones), so a run resumed on another machine or with newer code says so. An entry
holds the code's version (the git commit of the checkout dqnlab runs from, ``+modified`` when its tracked files
differ from it), the library versions, the machine (CPU model, CPU count, torch threads, and the GPU when one is
used), the segment's command line (its overrides, under Hydra) and its start and end in UTC (a segment that a
resume continued ends at its last checkpoint: its work after that was redone).
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dqnlab

if TYPE_CHECKING:
    import torch

# The repository root when dqnlab runs from a checkout (<root>/src/dqnlab/); an installed dqnlab (site-packages) has
# none, even inside a git repository of yours.
_PACKAGE = Path(dqnlab.__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent.parent if _PACKAGE.parent.name == "src" else None


def utc_now() -> str:
    """The time now in UTC, to the second: ``2026-12-07T16:05:09Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(*args: str) -> str | None:
    if _CHECKOUT is None:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(_CHECKOUT), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):  # no git on the machine, or a hung filesystem
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> str:
    """The git commit dqnlab runs from (12 hex digits, ``+modified`` when tracked files differ from it).

    A dqnlab installed from a wheel, or copied without ``.git``, says its package version instead. The check that
    the checkout's root is dqnlab's own keeps a copy inside a project of yours from reporting that project's commit.
    """
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != _CHECKOUT:
        return f"dqnlab {dqnlab.__version__} (not a git checkout)"
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return f"dqnlab {dqnlab.__version__} (git could not read the checkout)"
    # Untracked files (run dirs, modules of yours) are not the code under test; tracked changes are.
    changed = _git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+modified" if changed else "")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def segment_start(
    device: torch.device, started_utc: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """The entry of ``provenance`` for the segment this process runs (from ``started_utc``, default now), without
    its end (:func:`segment_end`); ``overrides``, the segment's command line (Hydra's task overrides), when known.
    """
    import pytorch_lightning as pl  # here: code_version() alone stays a light import
    import torch

    entry: dict[str, Any] = {
        "started_utc": started_utc or utc_now(),
        "code": code_version(),
        "dqnlab": dqnlab.__version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion: pickled as an object, which safe loading refuses
        "lightning": str(pl.__version__),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        entry["gpu"] = torch.cuda.get_device_name(device)
    if overrides is not None:
        entry["overrides"] = [str(o) for o in overrides]
    return entry


def segment_end(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` ended now."""
    return {**entry, "ended_utc": utc_now()}


def describe(entry: dict[str, Any]) -> str:
    """One line for the run's header: ``code 6c1570c4d2e1, torch 2.13.0, python 3.12.3; AMD EPYC, 2 CPUs, 1 torch
    thread``.
    """
    threads = int(entry["torch_threads"])
    gpu = f", {entry['gpu']}" if "gpu" in entry else ""
    return (
        f"ran by: code {entry['code']}, torch {entry['torch']}, python {entry['python']}; "
        f"{entry['machine']}, {threads} torch thread{'s' if threads != 1 else ''}{gpu}; started {entry['started_utc']}"
    )
