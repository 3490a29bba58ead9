"""Subclasses of DQNModule that change the algorithm, as a researcher would write them (used as algo._target_)."""

from __future__ import annotations

from dqnlab.data.dataset import Batch
from dqnlab.learn.module import DQNModule
from dqnlab.learn.rl_math import TDLoss


class ZeroLossDQN(DQNModule):
    """The stock TD loss times zero: nothing can be learned, whatever path the update takes."""

    def td_loss(self, batch: Batch) -> TDLoss:
        """The stock loss, scaled to 0 (its gradients are all zero)."""
        out = super().td_loss(batch)
        return out._replace(loss=out.loss * 0.0)
