"""The corridor of ``corridor.py`` with structured observations, as envs of your own often have them.

- ``DictCorridor-v0``: ``Dict(cell: Discrete(8), goal: Box(0, 1, (1,)))``: the cell as an index (one-hot encoded
  by dqnlab, ``env.encode_observations=auto``) and how far the goal is. Its class renders nothing
  (``render_modes`` is empty): a video of it must be refused with one line.
- ``TextCorridor-v0``: the corridor drawn as text (``"...A...G"``), a space no encoding turns into numbers.

Importing the module registers both (``env.id=dict_corridor:DictCorridor-v0``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

LENGTH = 8


class DictCorridor(gym.Env):
    """Walk right to the last cell; reward 1 there, -0.01 per other step."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict(
            {"cell": gym.spaces.Discrete(LENGTH), "goal": gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)}
        )
        self.action_space = gym.spaces.Discrete(2)  # 0: left, 1: right
        self.position = 0

    def _obs(self) -> Any:
        distance = (LENGTH - 1 - self.position) / (LENGTH - 1)
        return {"cell": self.position, "goal": np.array([distance], dtype=np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.position = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:
        self.position = int(np.clip(self.position + (1 if action == 1 else -1), 0, LENGTH - 1))
        done = self.position == LENGTH - 1
        return self._obs(), 1.0 if done else -0.01, done, False, {}


class TextCorridor(DictCorridor):
    """The same walk, observed as a drawing: ``A`` the agent, ``G`` the goal."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Text(max_length=LENGTH, min_length=LENGTH, charset=".AG")

    def _obs(self) -> Any:
        cells = ["."] * LENGTH
        cells[-1] = "G"
        cells[self.position] = "A"
        return "".join(cells)


gym.register(id="DictCorridor-v0", entry_point=DictCorridor, max_episode_steps=50)
gym.register(id="TextCorridor-v0", entry_point=TextCorridor, max_episode_steps=50)
