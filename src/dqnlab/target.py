"""Target-network synchronisation as a Lightning callback."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from dqnlab.rl_math import hard_update, polyak_update


class TargetNetworkSync(Callback):
    """Copy (``tau = 1``) or blend (``tau < 1``) the online weights into the target network.

    Args:
        interval: Gradient steps between syncs (not env steps: divide an env-step interval by
            ``train_freq / gradient_steps``).
        tau: 1.0 for a hard copy (Nature DQN); e.g. 0.005 with ``interval=1`` for Polyak averaging.

    """

    def __init__(self, interval: int = 1000, tau: float = 1.0) -> None:
        if interval < 1:
            raise ValueError(f"target.interval must be >= 1 gradient step, got {interval}")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"target.tau must be in (0, 1], got {tau}")
        self.interval = int(interval)
        self.tau = float(tau)
        self.syncs = 0

    def sync(self, pl_module: pl.LightningModule) -> None:
        """Apply one sync now."""
        target = list(pl_module.target_net.parameters()) + list(pl_module.target_net.buffers())
        online = list(pl_module.q_net.parameters()) + list(pl_module.q_net.buffers())
        if self.tau >= 1.0:
            hard_update(target, online)
        else:
            polyak_update(target, online, self.tau)
        self.syncs += 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        """After gradient step ``global_step``, sync when it is a multiple of ``interval``."""
        if trainer.global_step % self.interval == 0:
            self.sync(pl_module)

    def state_dict(self) -> dict[str, int]:
        """Sync count (the cadence itself follows ``global_step``)."""
        return {"syncs": self.syncs}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restore the sync count."""
        self.syncs = int(state_dict["syncs"])
