"""Stop, or warn, when training turns non-finite: the callback behind the ``nonfinite`` knob (``conf/train.yaml``).

:class:`~dqnlab.learn.module.DQNModule` checks every gradient step's loss, mean Q-value and gradients on the device
and skips a non-finite update there, so the parameters never take a non-finite value and the hot loop never
waits for the device. The count reaches the host once per logged row (``collector.log_every`` env steps), in
the one host sync :meth:`~dqnlab.learn.module.DQNModule.pop_metrics` already makes; this callback acts on it right
after the env stepper has logged the row:

- ``error`` (default): save ``<checkpoint dir>/nonfinite.ckpt`` (the last finite state, written atomically like
  every checkpoint) and stop with a :class:`~dqnlab.errors.TrainingError` naming the env step, what to try and
  the checkpoint; ``python train.py`` prints it as one ``error: ...`` message and exits with status 3.
- ``warn``: log a warning naming the env step and go on; the non-finite updates stay skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from dqnlab.data.collect import EnvStepper
from dqnlab.errors import ConfigError, TrainingError
from dqnlab.learn.module import DQNModule, NonFiniteSteps

log = logging.getLogger(__name__)

NONFINITE_CKPT = "nonfinite.ckpt"
MODES = ("error", "warn")


class NonFiniteGuard(Callback):
    """Acts on the non-finite gradient steps the module skipped (see the module docstring).

    Put it right after the env stepper in the callback list: the stepper's row-logging hook reads the count.

    Args:
        collector: The env stepper (env-step counter and schedule, for the message).
        mode: ``error`` (save a checkpoint and stop) or ``warn`` (log and go on).
        checkpoint_dir: Where ``nonfinite.ckpt`` goes (the run's checkpoint directory).

    """

    def __init__(self, collector: EnvStepper, mode: str = "error", checkpoint_dir: str | Path = "checkpoints") -> None:
        if mode not in MODES:
            raise ConfigError(f"nonfinite={mode!r} is not known: use one of {', '.join(MODES)}")
        self.collector = collector
        self.mode = mode
        self.checkpoint_dir = Path(checkpoint_dir)
        self.skipped = 0  # non-finite gradient steps skipped by this process (for the warnings)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Check the row the env stepper has just logged, if any."""
        self.check(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the last partial row (before the final evaluation)."""
        self.check(trainer, pl_module)

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Raise or warn about the non-finite steps reported since the last check (no host sync of its own).

        Raises:
            TrainingError: With ``mode="error"``, after saving ``nonfinite.ckpt``.

        """
        steps: NonFiniteSteps | None = getattr(pl_module, "pending_nonfinite", None)
        if steps is None:
            return
        pl_module.pending_nonfinite = None
        self.skipped += steps.count
        # The env-step counter the first skipped step ran at (exact for one env; the collector steps whole
        # vector steps, so with N envs it may be up to N - 1 higher).
        first_env_step = self.collector.env_steps_due(steps.first_gradient_step)
        plural = "s" if steps.count > 1 else ""
        what = (
            f"non-finite loss, Q-value or gradient at env step {first_env_step} (gradient step "
            f"{steps.first_gradient_step}); {steps.count} gradient step{plural} skipped up to env step "
            f"{self.collector.env_steps}"
        )
        if self.mode == "warn":
            log.warning(
                "%s (%d in all): the run goes on without them (nonfinite=warn). Try %s",
                what,
                self.skipped,
                self._hints(pl_module),
            )
            return
        path = self.save(trainer)
        raise TrainingError(
            f"{what}.\n"
            f"Saved the last finite state to {path} (the parameters never took a non-finite value).\n"
            f"Try {self._hints(pl_module)}; resume with `python train.py ckpt_path={path} <the change>` (the run's "
            "own config comes back), or start afresh. nonfinite=warn logs a warning and goes on instead."
        )

    def save(self, trainer: pl.Trainer) -> Path:
        """Write ``nonfinite.ckpt`` through the trainer (atomically, by its checkpoint IO); return its path."""
        path = self.checkpoint_dir / NONFINITE_CKPT
        for logger in trainer.loggers:  # metrics.csv up to this step, on disk with the checkpoint
            logger.save()
        trainer.save_checkpoint(path, weights_only=False)
        return path

    @staticmethod
    def _hints(pl_module: pl.LightningModule) -> str:
        """What usually makes DQN's updates finite again, with this run's values."""
        optimizers = pl_module.trainer.optimizers
        lr = f" (now {optimizers[0].param_groups[0]['lr']:g})" if optimizers else ""
        hints = [f"a lower optimizer.lr{lr}"]
        if isinstance(pl_module, DQNModule):
            if pl_module.loss_kind == "mse":
                hints.append("algo.loss=huber (bounded gradients for large TD errors)")
            if not pl_module.max_grad_norm:
                hints.append("algo.max_grad_norm=10")
        return ", ".join(hints) + ", and check the env's rewards and observations for inf/NaN"
