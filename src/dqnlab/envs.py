"""Vector environments for DQN: gymnasium envs by id, and Atari through ale-py.

Every factory returns a gymnasium ``VectorEnv`` in ``NEXT_STEP`` autoreset mode with a discrete action space;
the replay buffer relies on that mode (see :mod:`dqnlab.replay`).
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv


class EnvConfigError(ValueError):
    """The env configuration cannot work; the message names the fix."""


def _check_id(env_id: str) -> None:
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise EnvConfigError(f"gymnasium does not know env.id={env_id!r}.{hint}")


def make_vector_env(
    id: str,
    num_envs: int = 1,
    vectorization: str = "sync",
    max_episode_steps: int | None = None,
    kwargs: dict[str, Any] | None = None,
    for_eval: bool = False,
) -> VectorEnv:
    """A gymnasium vector env of ``num_envs`` copies of ``id`` in NEXT_STEP autoreset mode.

    Args:
        id: Gymnasium env id, e.g. ``CartPole-v1``.
        num_envs: Number of parallel copies (one vector step = ``num_envs`` env steps).
        vectorization: ``"sync"`` (one process; best for cheap envs) or ``"async"`` (one process per copy).
        max_episode_steps: Override of the registered time limit, in env steps (``None`` keeps it).
        kwargs: Extra keyword arguments for ``gym.make``.
        for_eval: Build the evaluation variant (identical for plain gymnasium envs).

    """
    _check_id(id)
    make_kwargs = dict(kwargs or {})
    if max_episode_steps is not None:
        make_kwargs["max_episode_steps"] = max_episode_steps
    env = gym.make_vec(
        id,
        num_envs=num_envs,
        vectorization_mode=vectorization,
        vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP},
        **make_kwargs,
    )
    check_discrete(env, id)
    return env


def check_discrete(env: VectorEnv, name: str) -> None:
    """Raise a clear error unless the env has a single discrete action space, as DQN needs."""
    space = env.single_action_space
    if not isinstance(space, gym.spaces.Discrete):
        env.close()
        raise EnvConfigError(
            f"{name} has action space {space}: DQN needs a Discrete action space (one Q-value per action). "
            "Pick an env with discrete actions, or discretize this one with a gymnasium ActionWrapper."
        )


def obs_dtype_of(env: VectorEnv) -> np.dtype:
    """Numpy dtype of a single observation."""
    return np.dtype(env.single_observation_space.dtype)
