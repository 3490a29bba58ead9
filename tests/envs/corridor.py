"""A researcher's own env, as a module on PYTHONPATH: ``python train.py env=gym env.id=corridor:Corridor-v0``.

A 1-D corridor of ``length`` cells: the agent starts at cell 0 and moves left or right; reaching the last cell
ends the episode with reward 1, every other step costs 0.01; gymnasium's TimeLimit truncates after 50 steps.
Importing the module registers ``Corridor-v0`` (gymnasium's ``module:EnvId`` syntax imports it first).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """Walk right to the end of a corridor; the observation is the position as a fraction of its length."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, length: int = 8, render_mode: str | None = None) -> None:
        self.length = int(length)
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)  # 0: left, 1: right
        self.position = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.position / (self.length - 1)], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.position = int(np.clip(self.position + (1 if action == 1 else -1), 0, self.length - 1))
        done = self.position == self.length - 1
        return self._obs(), 1.0 if done else -0.01, done, False, {}

    def render(self) -> np.ndarray:
        """The corridor as a 16-pixel-high strip, the agent's cell white (``rgb_array``: what video=true films)."""
        frame = np.zeros((16, 16 * self.length, 3), dtype=np.uint8)
        frame[:, 16 * self.position : 16 * (self.position + 1)] = 255
        return frame


gym.register(id="Corridor-v0", entry_point=Corridor, max_episode_steps=50)
