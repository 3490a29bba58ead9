"""A researcher's own gymnasium wrapper, in a module on PYTHONPATH:
``env.wrappers=[{_target_:my_wrappers.StepCost,cost:0.1}]``.

Importing the module touches the file named by ``$MY_WRAPPERS_IMPORTED``, if set: the tests' proof that a
checkpoint or agent file naming this module does not make dqnlab import it unless the command line allows it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import SupportsFloat

import gymnasium as gym
import numpy as np

if os.environ.get("MY_WRAPPERS_IMPORTED"):
    Path(os.environ["MY_WRAPPERS_IMPORTED"]).touch()


class StepCost(gym.RewardWrapper):
    """Every step costs ``cost`` more reward: a nudge to finish episodes sooner."""

    def __init__(self, env: gym.Env, cost: float = 0.01) -> None:
        super().__init__(env)
        self.cost = float(cost)

    def reward(self, reward: SupportsFloat) -> float:
        """The env's reward less the cost."""
        return float(reward) - self.cost


class Float32(gym.ObservationWrapper):
    """Observations as float32, the dtype a Box space of float32 promises (an env that lets numpy's float64 out)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low, space.high, space.shape, np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The observation, cast."""
        return np.asarray(observation, dtype=np.float32)
