"""An env that says when it is closed and can crash mid-episode: ``env.id=closing:Closing-v0``.

``Closing-v0(crash_after=N)`` raises on its N-th step; every ``close()`` is recorded in ``CLOSED`` with the copy's
``render_mode``, so a test can tell whether the video env (``rgb_array``) was closed after a crash elsewhere.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

CLOSED: list[str | None] = []


class Closing(gym.Env):
    """Two actions, a 4-float observation, 20 steps an episode; reward 1 for action 1."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, crash_after: int | None = None, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.crash_after, self.render_mode, self.steps, self.t = crash_after, render_mode, 0, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        self.steps += 1
        if self.crash_after is not None and self.steps >= self.crash_after:
            raise RuntimeError(f"Closing-v0 crashed on its step {self.steps}")
        self.t += 1
        return np.full(4, self.t / 20, np.float32), float(action), self.t >= 20, False, {}

    def render(self) -> np.ndarray:
        return np.zeros((32, 32, 3), np.uint8)

    def close(self) -> None:
        CLOSED.append(self.render_mode)


gym.register("Closing-v0", entry_point=Closing)
