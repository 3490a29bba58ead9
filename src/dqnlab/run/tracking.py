"""Experiment tracking: the W&B logger (named after the Hydra job, never hanging offline), media, resumed CSVs."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fsspec.utils import get_protocol
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from dqnlab.conf_keys import override_key
from dqnlab.errors import ConfigError, MissingExtraError
from dqnlab.io import atomic_write_bytes

log = logging.getLogger(__name__)

_WANDB_TAG_MAX = 64  # characters; W&B rejects longer tags


def hydra_job_identity() -> tuple[str | None, list[str], str | None]:
    """``(name, tags, group)`` of the current Hydra job: the run's overrides, and the sweep dir under ``-m``.

    The name is the run's overrides as Hydra's ``job.override_dirname`` writes them (``optimizer.lr=0.0003,seed=1``),
    so every job of a sweep is one recognisable W&B run; the overrides are also tags for filtering, and jobs of one
    sweep share a group. The overrides are the run's own command line, ``.hydra/overrides.yaml``, which a resume
    rewrites (``dqnlab.run.resume_config.run_overrides``): a run continued with ``ckpt_path=... env_steps=...`` keeps
    its name. Outside Hydra (the compose API, a notebook) all three are empty.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, [], None
    hc = HydraConfig.get()
    written = Path(str(hc.runtime.output_dir)) / str(hc.output_subdir) / "overrides.yaml"
    lines = OmegaConf.load(written) if hc.output_subdir and written.is_file() else hc.overrides.task
    overrides = [str(o) for o in lines if not str(o).startswith(("hydra.", "paths."))]
    dirname = hc.job.config.override_dirname
    name = overrides_dirname([str(o) for o in lines], dirname.exclude_keys, dirname.item_sep, dirname.kv_sep)
    group = Path(str(hc.sweep.dir)).as_posix()[-128:] if hc.mode == RunMode.MULTIRUN else None
    return name or hc.job.name, [o for o in overrides if len(o) <= _WANDB_TAG_MAX], group


def overrides_dirname(overrides: list[str], exclude_keys: list[str], item_sep: str, kv_sep: str) -> str:
    """Overrides joined as Hydra joins them into ``job.override_dirname``: sorted, without ``exclude_keys``."""
    lines = sorted(o for o in overrides if override_key(o) not in exclude_keys)
    return re.sub("=", kv_sep, item_sep.join(lines))


def make_wandb_logger(
    project: str = "dqnlab",
    entity: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: str | None = None,
    name: str | None = None,
    save_dir: str = ".",
    job_type: str = "train",
    notes: str | None = None,
    log_model: bool = False,
    init_timeout: float = 10.0,
    offline_fallback: bool = True,
) -> WandbLogger:
    """Start a W&B run and wrap it in Lightning's ``WandbLogger`` (``conf/logger/wandb.yaml``).

    The run starts here rather than at the first logged metric, so that a W&B that cannot start online (no API
    key, no network) is known before training: it then logs offline to ``save_dir`` with a warning (upload
    later with ``wandb sync``), or with ``offline_fallback=false`` fails at once naming ``WANDB_MODE=offline``.
    Login prompts and the server handshake are bounded by ``init_timeout``, so a batch job never waits on
    stdin or a dead network.

    Args:
        project: W&B project.
        entity: W&B user or team (``None``: the account's default).
        group: Run group (``None``: the sweep dir under ``-m``, so a sweep's jobs are grouped).
        tags: Extra tags; the job's overrides are added.
        mode: ``online``, ``offline`` or ``disabled`` (``None``: ``WANDB_MODE``, else ``online``).
        name: Run name (``None``: the job's overrides, e.g. ``optimizer.lr=0.0003,seed=1``).
        save_dir: Where the run's files go (``<run dir>/wandb``).
        job_type: W&B job type.
        notes: Free-text run notes.
        log_model: Upload checkpoints as W&B artifacts at the end (they hold the replay buffer: large).
        init_timeout: Seconds W&B may take to log in and reach its server, per attempt.
        offline_fallback: Log offline when W&B cannot start online; ``False`` raises instead.

    """
    try:
        import wandb
    except ImportError as e:
        raise MissingExtraError("logger=wandb needs wandb: pip install 'dqnlab[wandb]'") from e

    if wandb.run is not None:  # left open by an earlier run in this process: init would hand it back
        log.warning("a W&B run was still open in this process (%s): finishing it first", wandb.run.id)
        wandb.finish()
    job_name, job_tags, job_group = hydra_job_identity()
    effective_mode = mode or os.environ.get("WANDB_MODE") or "online"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    init: dict[str, Any] = {
        "project": project,
        "entity": entity,
        "group": group or job_group,
        "tags": list(dict.fromkeys([*(tags or []), *job_tags])),
        "name": name or job_name,
        "dir": save_dir,
        "job_type": job_type,
        "notes": notes,
        "settings": wandb.Settings(init_timeout=init_timeout, login_timeout=init_timeout),
    }
    try:
        run = wandb.init(mode=effective_mode, **init)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if effective_mode != "online" or not offline_fallback:
            raise ConfigError(
                f"W&B could not start ({reason}): run with WANDB_MODE=offline (or logger.wandb.mode=offline) and "
                "upload later with `wandb sync`, log in with `wandb login`, or pick another logger"
            ) from e
        log.warning(
            "W&B could not start online (%s): logging offline to %s/wandb instead; upload later with "
            "`wandb sync %s/wandb/offline-run-*`. Set WANDB_MODE=offline to skip the online attempt.",
            reason,
            save_dir,
            save_dir,
        )
        run = wandb.init(mode="offline", **init)
    # Every row dqnlab logs carries env_steps: make it the x axis of every chart.
    run.define_metric("env_steps")
    run.define_metric("*", step_metric="env_steps")
    return WandbLogger(experiment=run, project=project, save_dir=save_dir, log_model=log_model)


def finish_wandb(failed: bool = False) -> None:
    """End the current W&B run, if any: one W&B run per Hydra job, even when jobs share a process."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def log_video(loggers: Iterable[Logger], key: str, path: Path, env_steps: int, fps: int) -> None:
    """Log an mp4 as media where the logger supports it (W&B); the file itself stays in the run dir."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({key: wandb.Video(str(path), fps=fps, format="mp4"), "env_steps": env_steps})


class _AtomicMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, keeping every row and replacing ``metrics.csv`` whole and atomically at each save."""

    def __init__(self, log_dir: str) -> None:
        self.rows: list[dict[str, Any]] = []  # every row of this run, carried-over ones included
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; it stays until the first save replaces it, so a run
        # killed before that (a resume killed again) still leaves its history on disk.
        return

    def save(self) -> None:
        """Write all rows so far to a temp file and rename it over ``metrics.csv`` (remote paths: Lightning's way)."""
        if get_protocol(self.metrics_file_path) not in ("file", "local"):
            super().save()
            return
        if not self.metrics:
            return
        self.rows.extend(self.metrics)
        self.metrics = []
        self.metrics_keys = sorted(set().union(*self.rows))  # Lightning's column order: sorted names
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.metrics_file_path, text.getvalue().encode())


class AtomicCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` is never lost or half-written (``conf/logger/csv.yaml``).

    Lightning's logger deletes an existing ``metrics.csv`` when it starts, appends to it in place and rewrites
    it in place when a new column appears: a kill at the wrong moment loses the history or leaves a cut-off
    row. Here each save replaces the whole file atomically (temp file + rename; it is small: one row per
    ``collector.log_every`` env steps), and the old file stays until then. The checkpoint callback saves the
    loggers before every checkpoint, so the file always holds the rows up to the newest checkpoint, the ones a
    resume keeps (:func:`carry_over_csv_rows`).
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _AtomicMetricsWriter:
        """The writer, created on first use (as Lightning's)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AtomicMetricsWriter(log_dir=self.log_dir)
        return self._experiment


def read_metric_rows(path: Path, max_step: int) -> list[dict[str, Any]]:
    """Rows of a CSV logger's ``metrics.csv`` with ``step <= max_step``, empty cells dropped."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            if step <= max_step:
                values = {k: float(v) for k, v in row.items() if k != "step" and v not in ("", None)}
                rows.append({**values, "step": step})
    return rows


def carry_over_csv_rows(loggers: Iterable[Logger], rows: list[dict[str, Any]]) -> None:
    """Write the rows of an earlier run into each CSV logger again.

    A run resumed in its own run dir starts a new ``metrics.csv`` (Lightning's CSV logger deletes the old one;
    :class:`AtomicCSVLogger` replaces it at its first save), so the rows up to the checkpoint's env step are
    read first and written back here; rows the killed run logged after its checkpoint are left out, as the
    resumed run logs them again.
    """
    if not rows:
        return
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            for row in rows:
                logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
            logger.save()
