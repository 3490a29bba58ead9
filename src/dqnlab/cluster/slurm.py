"""Running as a SLURM job through Hydra's submitit launcher: resume after a requeue, one requeue handler, checks.

What happens to a dqnlab job on SLURM (docs/workflow.md, "Running on a SLURM cluster"):

- SLURM sends ``SIGUSR2`` ``hydra.launcher.signal_delay_s`` before the time limit (submitit's ``--signal``), and
  at a preemption on clusters that send the user signal then. :class:`~dqnlab.run.stopping.SignalStop` finishes the
  gradient step, writes ``last.ckpt`` (replay included) and only then hands the signal to submitit's own handler,
  which requeues the job (``scontrol requeue``; a timeout spends one of ``max_num_timeout``) and exits.
- ``SIGTERM`` (``scontrol requeue``, a preemption, ``scancel``): ``last.ckpt`` is written and the job exits 143;
  SLURM itself requeues a preempted or requeued job, a cancelled one stays cancelled.
- A requeued job runs the same Hydra job again, in the same run dir, with ``SLURM_RESTART_COUNT`` > 0:
  :func:`requeue_ckpt_path` makes that run resume from the run dir's ``last.ckpt`` with no ``ckpt_path`` given.
- Lightning's own SLURM auto-requeue (``SIGUSR1``, ``hpc_ckpt_N.ckpt``) is turned off (:func:`lightning_plugins`):
  submitit is the only one that requeues, so a job is never requeued twice nor resumed from another file.

This module imports nothing heavy: the Hydra callbacks load it in the sweep's own process.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from dqnlab.errors import ConfigError

log = logging.getLogger(__name__)


def restart_count() -> int:
    """How often SLURM has restarted this job (``SLURM_RESTART_COUNT``; 0 outside SLURM or on the first try)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return 0
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def requeue_ckpt_path(ckpt_path: str | None) -> str | None:
    """``ckpt_path`` as configured, or ``last`` for a SLURM job that was requeued (preempted, timed out, node lost).

    A requeued job reruns the same command in the same run dir; with ``last`` it continues from that dir's
    ``last.ckpt`` (or starts fresh when the first try wrote none), so nobody has to add ``ckpt_path`` by hand. A
    run that had finished resumes at its end: it writes the same ``summary.json`` again without training.
    """
    if ckpt_path or restart_count() == 0:
        return ckpt_path
    log.info("SLURM job %s, restart %d: resuming from the run dir's last.ckpt", job_name(), restart_count())
    return "last"


def job_name() -> str:
    """The job as ``squeue`` names it: ``ARRAYID_TASKID`` for an array task, else the job id."""
    array_id, task_id = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_id}_{task_id}" if array_id and task_id else os.environ.get("SLURM_JOB_ID", "?")


def lightning_plugins() -> list[Any]:
    """Trainer plugins for a SLURM job: Lightning's SLURM environment with its auto-requeue off.

    Lightning would otherwise requeue on ``SIGUSR1`` from its own handler and resume from ``hpc_ckpt_N.ckpt``, a
    second mechanism next to submitit's that knows nothing of the Hydra job. Outside SLURM: no plugin.
    """
    if not os.environ.get("SLURM_JOB_ID"):
        return []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():  # an interactive allocation (job name bash/interactive): Lightning's choice
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def is_slurm_launcher(config: Any) -> bool:
    """Whether the sweep goes through submitit's SLURM launcher (``submitit_slurm`` or dqnlab's ``slurm``)."""
    launcher = config.hydra.get("launcher") if "hydra" in config else None
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    return target.endswith("SlurmLauncher")


def check_slurm_launcher(config: Any) -> None:
    """Refuse a SLURM sweep on a machine without ``sbatch``, before anything is submitted.

    Raises:
        ConfigError: ``sbatch`` is not on ``PATH``; the message names the launchers that run here.

    """
    if is_slurm_launcher(config) and shutil.which("sbatch") is None:
        raise ConfigError(
            "hydra/launcher is SLURM's, but SLURM was not found (no `sbatch` on PATH): run the sweep on a cluster "
            "login node, or on this machine with hydra/launcher=submitit_local or hydra/launcher=joblib"
        )


def sacct_works() -> bool:
    """Whether ``sacct`` answers here (it needs SLURM's accounting database, slurmdbd)."""
    if shutil.which("sacct") is None:
        return False
    try:
        probe = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def use_sacct_standin(folder: Path) -> Path | None:
    """Put a stand-in ``sacct`` first on this process's ``PATH`` when the real one does not answer.

    submitit learns that a job died (``scancel``, SIGKILL, out of memory, a lost node) only from ``sacct``; where
    it fails (no accounting database) a job that ended without writing its result stays UNKNOWN and the sweep
    waits forever. The stand-in (:mod:`dqnlab.cluster.sacct_standin`) answers submitit's one query from
    ``scontrol show job``, which knows finished jobs for ``MinJobAge`` seconds (SLURM's default: 300).

    Args:
        folder: Where to write the ``sacct`` script (the sweep's submitit folder).

    Returns:
        The folder put on ``PATH``, or ``None`` when the real ``sacct`` works (or is already stood in for).
    """
    if os.environ.get("DQNLAB_SACCT_STANDIN") or sacct_works():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "sacct"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dqnlab.cluster.sacct_standin "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["DQNLAB_SACCT_STANDIN"] = str(script)
    log.info("sacct does not answer here (no SLURM accounting): job states come from scontrol (%s)", script)
    return folder


def prepare_slurm_sweep(config: Any) -> None:
    """For a SLURM sweep: the ``sacct`` stand-in where needed, in ``<sweep dir>/.submitit/bin``."""
    if is_slurm_launcher(config) and shutil.which("sbatch") is not None:
        use_sacct_standin(Path(str(config.hydra.sweep.dir)) / ".submitit" / "bin")
