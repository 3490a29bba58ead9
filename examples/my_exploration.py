"""Boltzmann exploration: ``collector._target_=my_exploration.BoltzmannStepper``.

Instead of a uniformly random action with probability epsilon, every action is drawn from a softmax over the
Q-values at temperature epsilon (the schedule's value, 1.0 down to ``collector.epsilon_end``): better actions are
tried more often. The random prefill stays uniform.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch

from dqnlab.data.collect import EnvStepper


class BoltzmannStepper(EnvStepper):
    """Actions drawn from softmax(Q / epsilon), among the valid actions when the env masks some."""

    def act(self, pl_module: pl.LightningModule, epsilon: float) -> np.ndarray:
        """One action per env for ``self.observations``."""
        if epsilon >= 1.0:  # the random prefill: uniform, as epsilon-greedy's
            return super().act(pl_module, epsilon)
        with torch.no_grad():
            obs = torch.as_tensor(self.observations, device=pl_module.device)
            q = pl_module.q_values(pl_module(obs)).float().cpu().numpy()
        if self.valid_actions is not None:
            q = np.where(self.valid_actions, q, -np.inf)
        logits = (q - q.max(axis=1, keepdims=True)) / max(epsilon, 1e-3)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        draws = self.rng.random((len(probs), 1))  # the collector's generator: checkpoints save it
        return np.minimum((probs.cumsum(axis=1) < draws).sum(axis=1), probs.shape[1] - 1)
