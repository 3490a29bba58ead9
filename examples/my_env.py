"""An env of your own: Catch (bsuite, Osband et al. 2020), registered with gymnasium as ``Catch-v0`` on import.

A ball falls from a random column of the top row of a 10x5 board, one row per step; the agent moves a paddle
along the bottom row (left, stay, right). When the ball reaches the bottom row the episode ends: +1 if the paddle
is under it, -1 if not. Every episode is 9 env steps long, so the return of an episode is +1 or -1.

Train on it with gymnasium's ``module:EnvId`` syntax, this folder on ``PYTHONPATH`` (``docs/extending.md``)::

    PYTHONPATH=examples python train.py env=gym env.id=my_env:Catch-v0
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class Catch(gym.Env):
    """Catch the falling ball with the paddle; the observation is the board, flattened.

    Args:
        rows: Height of the board (cells); the ball falls ``rows - 1`` steps.
        columns: Width of the board (cells).
        render_mode: ``rgb_array`` to film it (``video=true``), or ``None``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, rows: int = 10, columns: int = 5, render_mode: str | None = None) -> None:
        self.rows, self.columns = int(rows), int(columns)
        self.render_mode = render_mode
        # A flat vector, so network=mlp takes it as it is: 1.0 at the ball's cell and at the paddle's.
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(self.rows * self.columns,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3)  # 0: left, 1: stay, 2: right
        self.ball_row, self.ball_col, self.paddle = 0, 0, self.columns // 2

    def _board(self) -> np.ndarray:
        board = np.zeros((self.rows, self.columns), dtype=np.float32)
        board[self.ball_row, self.ball_col] = 1.0
        board[-1, self.paddle] = 1.0
        return board

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """A new ball at a random column of the top row; the paddle in the middle of the bottom row."""
        # super().reset seeds self.np_random: the run's seed makes every ball's column reproducible.
        super().reset(seed=seed)
        self.ball_row, self.ball_col = 0, int(self.np_random.integers(self.columns))
        self.paddle = self.columns // 2
        return self._board().ravel(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Move the paddle, drop the ball one row; score when it reaches the bottom row."""
        self.paddle = int(np.clip(self.paddle + int(action) - 1, 0, self.columns - 1))
        self.ball_row += 1
        caught = self.ball_col == self.paddle
        # The bottom row is a real end of the episode (terminated), not a time limit: nothing to bootstrap from.
        terminated = self.ball_row == self.rows - 1
        reward = (1.0 if caught else -1.0) if terminated else 0.0
        return self._board().ravel(), reward, terminated, False, {}

    def render(self) -> np.ndarray:
        """The board as an RGB image, 16 pixels a cell: ball and paddle white (what ``video=true`` films)."""
        cells = (self._board() * 255).astype(np.uint8)
        return np.repeat(np.repeat(cells, 16, axis=0), 16, axis=1)[..., None].repeat(3, axis=2)


# Registered when gymnasium imports this module for `env.id=my_env:Catch-v0`. The limit only guards against a bug:
# every episode ends by itself after rows - 1 = 9 steps.
gym.register(id="Catch-v0", entry_point=Catch, max_episode_steps=100)
