"""Action masks: which actions an env allows now, read from its info, and how exploration draws among them.

An env that puts ``action_mask`` in its info (gymnasium's Taxi, PettingZoo's envs: ``[num_actions]``, 1/True =
valid) is masked end to end: exploration draws among the valid actions (:func:`random_valid_actions`), the greedy
action is the best valid one and the TD target maximises over the valid actions of the next state
(:func:`dqnlab.learn.rl_math.masked_argmax`, :func:`~dqnlab.learn.rl_math.masked_max`; the replay stores each
observation's mask, :meth:`dqnlab.data.replay.ReplayBuffer.write_masks`). ``collector.action_mask=false`` ignores
the masks; an env without them runs as if this module did not exist.

A gymnasium 1.x vector env gives its copies' infos as one dict of arrays: ``info["action_mask"]`` is
``[num_envs, num_actions]`` and ``info["_action_mask"]`` says which copies gave one (the row of a copy that gave
none is zeros, not "all valid"). In NEXT_STEP autoreset mode the step that resets a copy returns the reset's info,
so that row is the mask of the new episode's first observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv

from dqnlab.errors import ConfigError

KEY = "action_mask"


def action_masks(info: Mapping[str, Any], num_envs: int, num_actions: int) -> np.ndarray:
    """``[num_envs, num_actions]`` bool, the valid actions of each copy (all of them where a copy gave no mask).

    Args:
        info: A vector env's info of a step or a reset.
        num_envs: Copies in the vector env.
        num_actions: Actions of the discrete action space.

    Raises:
        ConfigError: The mask is not ``[num_actions]`` per copy.

    """
    mask = info.get(KEY)
    if mask is None:
        return np.ones((num_envs, num_actions), dtype=bool)
    masks = np.asarray(mask)
    if masks.dtype == object:  # a list per copy, which gymnasium batches as objects (None where a copy gave none)
        masks = np.stack([np.ones(num_actions) if m is None else np.asarray(m) for m in masks])
    masks = masks.astype(bool)  # a copy: the env may reuse its arrays
    if masks.shape != (num_envs, num_actions):
        raise ConfigError(
            f"the env's info['{KEY}'] is shaped {list(masks.shape[1:])} per env, but its action space has "
            f"{num_actions} actions: give one entry per action (1 = valid), or collector.action_mask=false"
        )
    given = info.get(f"_{KEY}")
    if given is not None:
        masks[~np.asarray(given, dtype=bool)] = True
    return masks


def random_valid_actions(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """One action per row of ``masks`` (``[N, A]`` bool), uniformly among its valid ones (among all if none is).

    One uniform draw per row: the ``floor(u * k)``-th of the row's ``k`` valid actions.
    """
    valid = masks | ~masks.any(axis=1, keepdims=True)
    pick = (rng.random(valid.shape[0]) * valid.sum(axis=1)).astype(np.int64)
    return (valid.cumsum(axis=1) <= pick[:, None]).sum(axis=1)


def detect_action_masks(env: VectorEnv, setting: bool | str, seed: int) -> bool:
    """Whether a run masks actions: ``collector.action_mask``, and for ``auto`` whether the env's first reset
    gives ``info["action_mask"]``.

    ``auto`` and ``true`` reset the env once, seeded (the collector resets it again with the same seed, so the
    run's episodes are the same as without this look); ``false`` touches nothing.

    Raises:
        ConfigError: ``true`` and the env gives no mask, or a setting other than ``auto``, ``true``, ``false``.

    """
    if not (setting == "auto" or isinstance(setting, bool)):
        raise ConfigError(f"collector.action_mask={setting!r} is not known: use auto, true or false")
    if setting is False:
        return False
    _, info = env.reset(seed=seed)
    if setting is True and KEY not in info:
        raise ConfigError(
            f"collector.action_mask=true but the env's reset info has no '{KEY}' (its keys: "
            f"{', '.join(sorted(k for k in info if not k.startswith('_'))) or 'none'}): use collector.action_mask=auto"
        )
    return KEY in info
