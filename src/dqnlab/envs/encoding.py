"""Observations the networks can take: Discrete and MultiDiscrete one-hot encoded, Dict, Tuple and MultiBinary
flattened to float vectors, as Stable-Baselines3's preprocessing does (``env.encode_observations=auto``).

An index is not a quantity: state 7 of FrozenLake is not "more" than state 6, so feeding the integer to an MLP
makes it learn a meaning the index lacks; one float per possible value does not. The encoding is a wrapper on each
sub-env, the last one, so the vector env stays a ``SyncVectorEnv`` (an exact resume pickles its sub-envs) and the
replay stores the float vectors the network reads. What was done is put in the env's metadata
(:data:`METADATA_KEY`), which the vector env copies; the run header prints it (:func:`describe_observations`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dqnlab.envs.errors import EnvConfigError

ENCODINGS = ("auto", "none")  # env.encode_observations: encode what the networks cannot take, or nothing
METADATA_KEY = "observation_encoding"  # what the encoding did, in words (the run header's line)
# The spaces that may sit inside a Dict or a Tuple: each flattens to numbers that mean what they say.
_LEAVES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def encoding_mode(value: Any) -> str:
    """``env.encode_observations`` as one of :data:`ENCODINGS` (YAML's ``null`` counts as ``none``).

    Raises:
        EnvConfigError: Any other value.

    """
    mode = "none" if value is None else str(value).lower()
    if mode not in ENCODINGS:
        raise EnvConfigError(
            f"env.encode_observations={value!r} is not known: use auto (one-hot Discrete and MultiDiscrete "
            "observations, flatten Dict, Tuple and MultiBinary ones) or none (pass them as the env gives them)"
        )
    return mode


def unsupported_part(space: spaces.Space) -> spaces.Space | None:
    """The part of an observation space that no encoding turns into numbers (Text, Graph, Sequence), or None."""
    if isinstance(space, _LEAVES):
        return None
    if isinstance(space, spaces.Dict | spaces.Tuple):
        parts = space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces
        return next((bad for bad in map(unsupported_part, parts) if bad is not None), None)
    return space


class OneHot(gym.ObservationWrapper):
    """``Discrete(n)`` -> ``n`` floats; ``MultiDiscrete(nvec)`` -> ``sum(nvec)`` floats, one block per entry.

    Exactly one 1.0 per block: the value's index, counted from the space's ``start``.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if isinstance(space, spaces.Discrete):
            sizes, start = np.array([space.n]), np.array([space.start])
        else:
            sizes, start = np.asarray(space.nvec).reshape(-1), np.asarray(space.start).reshape(-1)
        self._start = start.astype(np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(int(sizes.sum()),), dtype=np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        """The one-hot vector of an index (or of each index of a MultiDiscrete observation)."""
        out = np.zeros(self.observation_space.shape, dtype=np.float32)
        out[self._offsets + np.asarray(observation, dtype=np.int64).reshape(-1) - self._start] = 1.0
        return out


class Flatten(gym.ObservationWrapper):
    """Dict, Tuple or MultiBinary observations -> one float32 vector (gymnasium's ``flatten``: Discrete parts
    one-hot, Box parts raveled, in the space's key order).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        flat = spaces.utils.flatten_space(env.observation_space)
        self.observation_space = spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        """The flat float32 vector of one observation."""
        flat = spaces.utils.flatten(self.env.observation_space, observation)
        return np.asarray(flat, dtype=np.float32)


def _has_discrete(space: spaces.Space) -> bool:
    if isinstance(space, spaces.Discrete | spaces.MultiDiscrete):
        return True
    if isinstance(space, spaces.Dict):
        return any(map(_has_discrete, space.spaces.values()))
    return isinstance(space, spaces.Tuple) and any(map(_has_discrete, space.spaces))


def encode_observations(env: gym.Env, mode: str = "auto") -> gym.Env:
    """``env`` with its observations encoded as ``mode`` says; Box observations and unsupported spaces untouched
    (:func:`dqnlab.envs.checks.check_spaces` names what to do about the latter).
    """
    space = env.observation_space
    if mode == "none" or isinstance(space, spaces.Box) or unsupported_part(space) is not None:
        return env
    if isinstance(space, spaces.Discrete | spaces.MultiDiscrete):
        wrapped: gym.Env = OneHot(env)
        how = "one-hot encoded"
    else:
        wrapped = Flatten(env)
        how = "flattened (Discrete parts one-hot)" if _has_discrete(space) else "flattened"
    size = int(wrapped.observation_space.shape[0])
    wrapped.metadata = {**env.metadata, METADATA_KEY: f"{space} {how} to {size} floats"}
    return wrapped


def describe_observations(env: Any) -> str | None:
    """The run header's line on the encoding, e.g. ``observations: Discrete(16) one-hot encoded to 16 floats``."""
    said = (getattr(env, "metadata", None) or {}).get(METADATA_KEY)
    return f"observations: {said}" if said else None
