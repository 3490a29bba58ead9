"""What a sweep prints and leaves behind: one Hydra callback for the multirun (``conf/hydra/default.yaml``).

- Optuna (``hparams_search=...``) logs through its own handler: colorlog escape codes on stderr even when
  that is a file or a pipe (``^[[32m[I ...]``). :meth:`SweepLogging.on_multirun_start` removes that handler
  and lets Optuna's records reach Hydra's log handler instead, so they read like Hydra's own lines; its
  warnings and errors still show. (The ``setup plugin alembic...`` lines Optuna's import causes are muted in
  ``hydra.hydra_logging`` in the same YAML file.)
- submitit's local launcher (``hydra/launcher=submitit_local``) writes each job's stdout and stderr to a file
  under ``hydra.launcher.submitit_folder`` (``<sweep dir>/.submitit/<job id>/``), so the terminal shows no
  result, and its controller also creates the folder template itself, an empty ``.submitit/%j/``.
  :meth:`SweepLogging.on_multirun_end` prints one line per job (its overrides, the optimised metric, its run
  dir and log file) from the results submitit pickles, and removes that empty template folder.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dqnlab.cluster.optuna_storage import prepare_optuna_sweep
from dqnlab.cluster.slurm import prepare_slurm_sweep

log = logging.getLogger(__name__)

# Placeholders submitit formats in submitit_folder (submitit.core.utils.JobPaths).
_SUBMITIT_TAGS = ("%j", "%t", "%A", "%a")


def quiet_optuna_handler() -> None:
    """Send Optuna's log records through the root logger (Hydra's handlers), not its colour handler."""
    try:
        import optuna
    except ImportError:  # the sweep extra is not installed: Hydra will say so when it loads the sweeper
        return
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def remove_empty_template_dir(submitit_folder: str) -> Path | None:
    """Remove the literal, empty ``%j`` folder submitit's local controller creates from the folder template.

    Args:
        submitit_folder: ``hydra.launcher.submitit_folder``, e.g. ``<sweep dir>/.submitit/%j``.

    Returns:
        The folder removed, or ``None`` when there was none (no placeholder, or the folder holds files).
    """
    parts = Path(submitit_folder).expanduser().absolute().parts
    for depth, part in enumerate(parts):
        if any(tag in part for tag in _SUBMITIT_TAGS):
            template = Path(*parts[: depth + 1])
            if template.is_dir() and not any(template.iterdir()):
                template.rmdir()
                return template
            return None
    return None


def job_results(submitit_folder: str) -> list[tuple[int, str, Any, Path]]:
    """Read the result pickles submitit wrote for a finished sweep.

    Args:
        submitit_folder: ``hydra.launcher.submitit_folder``.

    Returns:
        ``(job number, overrides, Hydra JobReturn or the error text, log file)`` per job, by job number.
    """
    parts = Path(submitit_folder).expanduser().absolute().parts
    depth = next((i for i, p in enumerate(parts) if any(t in p for t in _SUBMITIT_TAGS)), len(parts))
    root = Path(*parts[:depth])
    results = []
    for pkl in sorted(root.glob("**/*_result.pkl")):
        try:
            with pkl.open("rb") as f:
                status, value = pickle.load(f)  # our own sweep's files: ("success", JobReturn) | ("error", text)
        except Exception:  # a half-written or foreign pickle: not worth failing the sweep over
            continue
        log_file = pkl.with_name(pkl.name.replace("_result.pkl", "_log.out"))
        if status == "success" and hasattr(value, "hydra_cfg"):
            num = int(value.hydra_cfg.hydra.job.num)
            results.append((num, " ".join(value.overrides), value, log_file))
        else:
            results.append((-1, "", str(value).strip().splitlines()[-1:], log_file))
    return sorted(results, key=lambda r: r[0])


class SweepLogging(Callback):
    """Hydra callback: clean sweep output (Optuna) and per-job results for submitit (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Route Optuna's logging through Hydra's when the sweeper is Optuna's."""
        if "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower():
            quiet_optuna_handler()
            prepare_optuna_sweep(config)  # a study shared by parallel sweeps: its SQLite tables, made once
        prepare_slurm_sweep(config)  # SLURM without accounting: a sacct stand-in, or a dead job hangs the sweep

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """For a submitit launcher: one result line per job, then remove the empty ``%j`` template folder."""
        folder = config.hydra.launcher.get("submitit_folder")
        if not folder:
            return
        metric = config.get("optimized_metric", "eval/return_mean")
        for num, overrides, ret, log_file in job_results(folder):
            if num < 0:
                log.info("a job failed (%s): see %s", " ".join(ret), log_file)
                continue
            run_dir = ret.hydra_cfg.hydra.runtime.output_dir
            if ret.status != JobStatus.COMPLETED:  # reading return_value would re-raise the job's exception
                log.info(
                    "#%d %s: failed (%s)  (run dir %s, log %s)", num, overrides, ret._return_value, run_dir, log_file
                )
                continue
            # train.py returns the optimised metric (a float); a task function returning run()'s dict also works.
            score = ret.return_value.get(metric) if isinstance(ret.return_value, dict) else ret.return_value
            shown = f"{metric} {score:.2f}" if isinstance(score, (int, float)) else "no result"
            log.info("#%d %s: %s  (run dir %s, log %s)", num, overrides, shown, run_dir, log_file)
        remove_empty_template_dir(folder)
