"""Envs that break the gymnasium API, one rule each, registered on import (``env.id=broken_envs:<Id>``).

Each is the corridor of ``corridor.py`` (walk right to the last of 8 cells) with one mistake researchers make when
they write an env by hand or port one from the old gym API. dqnlab must refuse each at start with one line that
names the rule, not fail deep in the collector (tests/test_own_env.py).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class _Corridor(gym.Env):
    """The well-behaved base: observation ``[position / 7]`` as float32 in ``Box(0, 1, (1,))``."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.position = 0

    def _obs(self) -> Any:
        return np.array([self.position / 7], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.position = 0
        return self._obs(), {}

    def step(self, action: int) -> Any:
        self.position = int(np.clip(self.position + (1 if action == 1 else -1), 0, 7))
        done = self.position == 7
        return self._obs(), float(done), done, False, {}


class OutsideSpace(_Corridor):
    """Observes the position in cells (0..7) while its space says [0, 1]."""

    def _obs(self) -> Any:
        return np.array([float(self.position) + 2.0], dtype=np.float32)


class WrongDtype(_Corridor):
    """Observes float64 while its space says float32 (numpy's default dtype slipping through)."""

    def _obs(self) -> Any:
        return np.array([self.position / 7])


class WrongShape(_Corridor):
    """Observes two numbers while its space says one."""

    def _obs(self) -> Any:
        return np.array([self.position / 7, 0.0], dtype=np.float32)


class FourTuple(_Corridor):
    """Steps with the old gym API: ``(obs, reward, done, info)``."""

    def step(self, action: int) -> Any:
        obs, reward, terminated, _, info = super().step(action)
        return obs, reward, terminated, info


class NoInfoReset(_Corridor):
    """Resets with the old gym API: the observation alone, without its info dict."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return super().reset(seed=seed, options=options)[0]


class IntTerminated(_Corridor):
    """Says ``terminated`` as an int (0 or 1), not a bool."""

    def step(self, action: int) -> Any:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, int(terminated), truncated, info


BROKEN = {
    "OutsideSpace-v0": OutsideSpace,
    "WrongDtype-v0": WrongDtype,
    "WrongShape-v0": WrongShape,
    "FourTuple-v0": FourTuple,
    "NoInfoReset-v0": NoInfoReset,
    "IntTerminated-v0": IntTerminated,
}
for _id, _cls in BROKEN.items():
    gym.register(id=_id, entry_point=_cls, max_episode_steps=50)
