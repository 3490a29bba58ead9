"""One copy of an env checked against the gymnasium API before a run starts (``env.check_api``).

An env that returns ``(obs, reward, done, info)`` (the old gym API), a reset without its info dict, an observation
outside its space or a non-bool ``terminated`` breaks a run deep inside the collector, with a traceback that names
numpy or the vector env, not the env. Here one copy, built straight from its registered entry point (without
gymnasium's ``TimeLimit`` and checker wrappers, which would trip over the broken return first) and wrapped in the
run's ``env.wrappers``, is reset and stepped a few times, and the first broken rule is reported in one line that
names it.

gymnasium's own checkers do not serve as they are: its ``PassiveEnvChecker`` only warns about most of these, and
``check_env`` also demands seeded determinism and render modes, which many working envs lack. A copy costs one
construction and a few steps; dqnlab's presets check only an env of yours (``check_api: auto``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dqnlab.envs.errors import EnvConfigError

CHECK_STEPS = 8  # env steps the copy takes: enough to see every return value, a few ms for a Python env
_FIX = (
    "fix the env (https://gymnasium.farama.org/introduction/create_custom_env/), or skip this check: "
    "env.check_api=false"
)


class EnvAPIError(EnvConfigError):
    """An env breaks the gymnasium API; the message names the rule and the env."""


def _fail(name: str, rule: str, detail: str) -> None:
    raise EnvAPIError(f"{name} breaks the gymnasium API, check '{rule}': {detail}; {_FIX}")


def _what(value: Any) -> str:
    """``int 0``, ``array [2.]``: a value's type and a short look at it."""
    if isinstance(value, np.ndarray):
        return f"array {np.array2string(value, threshold=8, edgeitems=3)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def observation_problem(obs: Any, space: spaces.Space) -> str | None:
    """How ``obs`` is not an observation of ``space`` (type, dtype, shape, bounds), or ``None``."""
    if isinstance(space, spaces.Box):
        if not isinstance(obs, np.ndarray):
            return f"is {_what(obs)}, not a numpy array"
        if not np.can_cast(obs.dtype, space.dtype):
            return f"has dtype {obs.dtype}, but observation_space says {space.dtype}"
        if obs.shape != space.shape:
            return f"has shape {obs.shape}, but observation_space says {space.shape}"
        if not (np.all(obs >= space.low) and np.all(obs <= space.high)):
            return f"{_what(obs)} lies outside the bounds of observation_space {space}"
        return None
    try:
        inside = space.contains(obs)
    except Exception:  # a value of a type the space cannot even compare
        inside = False
    return None if inside else f"{_what(obs)} is not in observation_space {space}"


def _check_reset(env: gym.Env, name: str, seed: int | None) -> None:
    try:
        result = env.reset(seed=seed)
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        _fail(name, "reset(seed=..., options=...)", f"reset() does not take seed ({e})")
    if not isinstance(result, tuple) or len(result) != 2:
        _fail(name, "reset returns (obs, info)", f"reset() returned {_what(result)}, not a pair (obs, info)")
    obs, info = result
    if not isinstance(info, dict):
        _fail(name, "reset returns (obs, info)", f"the info reset() returned is {_what(info)}, not a dict")
    if (problem := observation_problem(obs, env.observation_space)) is not None:
        _fail(name, "observation in observation_space", f"the observation of reset() {problem}")


def _check_step(env: gym.Env, name: str) -> bool:
    """One step; whether the episode ended."""
    result = env.step(env.action_space.sample())
    if not isinstance(result, tuple) or len(result) != 5:
        old = " (obs, reward, done, info: the old gym API)" if isinstance(result, tuple) and len(result) == 4 else ""
        count = f"{len(result)} values{old}" if isinstance(result, tuple) else f"a {type(result).__name__}"
        _fail(name, "step returns (obs, reward, terminated, truncated, info)", f"step() returned {count}")
    obs, reward, terminated, truncated, info = result
    for key, flag in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(flag, bool | np.bool_):
            _fail(name, f"{key} is a bool", f"step() returned {key} as {_what(flag)}, not a bool")
    if np.ndim(reward) != 0 or np.asarray(reward).dtype.kind not in "biuf":
        _fail(name, "reward is a number", f"step() returned reward as {_what(reward)}, not a number")
    if not isinstance(info, dict):
        _fail(name, "step returns (obs, reward, terminated, truncated, info)", f"info is {_what(info)}, not a dict")
    if (problem := observation_problem(obs, env.observation_space)) is not None:
        _fail(name, "observation in observation_space", f"the observation of step() {problem}")
    return bool(terminated or truncated)


def check_env_api(
    env_id: str,
    kwargs: dict[str, Any],
    name: str,
    steps: int = CHECK_STEPS,
    seed: int = 0,
    wrap: Callable[[gym.Env], gym.Env] | None = None,
) -> None:
    """Build one copy of ``env_id`` and check its spaces, reset and ``steps`` steps against the gymnasium API.

    With ``wrap`` (``env.wrappers``), the copy is checked as the run sees it, wrapped: a wrapper of yours may be
    what makes an env keep the API (an old-gym step, an observation cast). Should the wrapped copy fail, the
    env alone is checked too, and a rule it breaks is the one named (a wrapper often trips over a broken return).

    Args:
        env_id: A registered id (the module of a ``module:EnvId`` already imported).
        kwargs: The env constructor's keyword arguments (``env.kwargs`` less ``gym.make``'s own).
        name: How the message names the env (``env.id=...``).
        steps: Env steps to take, resetting when an episode ends.
        seed: Seed of the reset and of the sampled actions.
        wrap: What the run applies to each copy (``dqnlab.envs.wrappers.wrap`` with the run's wrappers).

    Raises:
        EnvAPIError: The first rule the env breaks, named.

    """
    spec = gym.spec(env_id)
    if spec.entry_point is None:  # an env with only a vector entry point: nothing single to check
        return
    entry = spec.entry_point
    creator = entry if callable(entry) else gym.envs.registration.load_env_creator(entry)

    def make() -> Any:
        return creator(**{**spec.kwargs, **kwargs})

    if wrap is None:
        _check_copy(make, name, steps, seed)
        return
    try:
        _check_copy(lambda: wrap(make()), f"{name} with its env.wrappers", steps, seed)
    except Exception:
        _check_copy(make, name, steps, seed)  # the env's own rule, if any, is the one to name
        raise


def _check_copy(make: Callable[[], Any], name: str, steps: int, seed: int) -> None:
    env = make()
    try:
        if not isinstance(env, gym.Env):
            _fail(name, "the env is a gymnasium.Env", f"its entry point returned a {type(env).__name__}")
        for key in ("observation_space", "action_space"):
            if not isinstance(getattr(env, key, None), spaces.Space):
                _fail(name, f"{key} is a gymnasium space", f"{key} is {_what(getattr(env, key, None))}")
        env.action_space.seed(seed)
        _check_reset(env, name, seed)
        for _ in range(steps):
            if _check_step(env, name):
                _check_reset(env, name, None)
    finally:
        env.close()
