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
