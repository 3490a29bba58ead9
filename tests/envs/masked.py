"""An env with an action mask in its info, whose invalid action is the tempting one: ``env.id=masked:Masked-v0``.

Each step a jackpot is open or closed (a coin flip of the env's own generator). Action 0 pays 0.1, action 1 pays
nothing, action 2 takes the jackpot: 1.0 when open. When it is closed, action 2 is invalid: the info's
``action_mask`` (gymnasium's and PettingZoo's convention, ``[3]`` int8, 1 = valid) says so, and an agent that
takes it anyway loses 1.0 and is counted (:data:`STATS`, and ``info["invalid_actions"]`` per episode).
An episode ends (terminated) after ``horizon`` steps. The observation is ``[open, closed, t / horizon]``, so the
mask can be read off it. Importing the module registers ``Masked-v0``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

JACKPOT = 2
# Every copy in this process adds to these: steps taken, and of them with an invalid action (training and
# evaluation envs alike).
STATS = {"steps": 0, "invalid": 0}


class Masked(gym.Env):
    """Take the jackpot when it is open; never when it is closed (the action mask says which)."""

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 10) -> None:
        self.horizon = int(horizon)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3)  # 0: small reward, 1: wait, 2: jackpot (valid when open)
        self.t = 0
        self.open = False
        self.invalid = 0

    def _obs(self) -> np.ndarray:
        return np.array([float(self.open), float(not self.open), self.t / self.horizon], dtype=np.float32)

    def _info(self) -> dict[str, Any]:
        return {"action_mask": np.array([1, 1, int(self.open)], dtype=np.int8), "invalid_actions": self.invalid}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t, self.invalid = 0, 0
        self.open = bool(self.np_random.random() < 0.5)
        return self._obs(), self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        STATS["steps"] += 1
        if action == JACKPOT and not self.open:
            STATS["invalid"] += 1
            self.invalid += 1
            reward = -1.0
        else:
            reward = {0: 0.1, 1: 0.0, JACKPOT: 1.0}[int(action)]
        self.t += 1
        self.open = bool(self.np_random.random() < 0.5)
        return self._obs(), reward, self.t >= self.horizon, False, self._info()


gym.register(id="Masked-v0", entry_point=f"{__name__}:Masked")
