"""Subclasses that change the algorithm, as a researcher would write them: of DQNModule (``algo._target_``), of
EnvStepper, the exploration policy (``collector._target_``), and of the target sync (``target._target_``)."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl

from dqnlab.data.collect import EnvStepper
from dqnlab.data.dataset import Batch
from dqnlab.learn.module import DQNModule
from dqnlab.learn.rl_math import TDLoss
from dqnlab.learn.target import TargetNetworkSync


class ZeroLossDQN(DQNModule):
    """The stock TD loss times zero: nothing can be learned, whatever path the update takes."""

    def td_loss(self, batch: Batch) -> TDLoss:
        """The stock loss, scaled to 0 (its gradients are all zero)."""
        out = super().td_loss(batch)
        return out._replace(loss=out.loss * 0.0)


class AlwaysRightStepper(EnvStepper):
    """Exploration that always pushes right (action 1): a stand-in for an exploration policy of your own."""

    def act(self, pl_module: pl.LightningModule, epsilon: float) -> np.ndarray:
        """Action 1 for every env, whatever epsilon and the network say."""
        return np.ones(self.num_envs, dtype=np.int64)


class EagerSync(TargetNetworkSync):
    """The target sync that copies at every sync, even where the update never reads the target network."""

    @staticmethod
    def deferred(pl_module: pl.LightningModule) -> bool:
        """Never: every copy is made when it falls due."""
        return False
