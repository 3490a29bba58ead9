"""MinAtar (Young & Tian 2019): five Atari-like games on a 10x10 grid, small enough to learn on a CPU.

``pip install 'dqnlab[minatar]'`` installs PyPI's ``minatar`` 1.0.15 (GPL-3.0; dqnlab itself is MIT and only
imports it when an env of it is built). ``make_minatar_env`` returns a NEXT_STEP-autoreset vector env of its
gymnasium envs, ``MinAtar/<Game>-v0`` by default: the paper's setting, all 6 actions, sticky actions with
probability 0.1 and difficulty ramping on; ``-v1`` (``minimal_action_set=True``) has each game's own set.

What the package does that dqnlab undoes, in :class:`ChannelsFirst`:

* Observations are ``(10, 10, C)`` channel-last, one channel per object kind (``C`` is 4 to 10 by game). They
  become ``(C, 10, 10)``, the layout torch's convolutions take, so the network needs no permute per update.
* They come back as ``bool`` arrays whatever the space says (1.0.15 declares ``bool``, later sources
  ``uint8``). They become ``uint8`` 0/1 with a matching space, so the replay stores one byte per cell and
  ``network=minatar_cnn`` turns them into float in its forward pass.

With gymnasium >= 1.0 the ids exist only once ``minatar.gym.register_envs()`` has run (gymnasium dropped the
plugin loader that registered them at import); :func:`import_minatar` does it once. Episodes have no time
limit unless ``max_episode_steps`` sets one (Freeway ends itself after 2,500 steps; the others end on a loss).
"""

from __future__ import annotations

import difflib
import re
import warnings
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

from dqnlab.envs.vector import EnvConfigError, check_discrete
from dqnlab.errors import MissingExtraError

# The games of minatar 1.0.15 (minatar/environments/), as the package spells them; the ids title-case them.
GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
INSTALL_HINT = "pip install 'dqnlab[minatar]'"


def import_minatar() -> ModuleType:
    """``minatar.gym`` with the ``MinAtar/*`` ids registered, or a clear error naming the extra to install."""
    try:
        import minatar.gym as minatar_gym
    except ImportError as err:
        raise MissingExtraError(f"MinAtar envs need the minatar package (GPL-3.0): {INSTALL_HINT}") from err
    if env_id(GAMES[0]) not in gym.registry:  # registering twice makes gymnasium warn about overriding ids
        minatar_gym.register_envs()
    return minatar_gym


def resolve_game(game: str) -> str:
    """The package's name of ``game`` (``space_invaders``); ``SpaceInvaders``, ``space-invaders`` and
    ``MinAtar/SpaceInvaders-v0`` also work.

    Raises:
        EnvConfigError: No game matches; the message names the closest and lists all five.

    """
    name = re.sub(r"^MinAtar/|-v\d+$", "", str(game).strip())
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_")
    by_compact = {g.replace("_", ""): g for g in GAMES}
    compact = snake.replace("_", "")
    if compact in by_compact:
        return by_compact[compact]
    close = difflib.get_close_matches(compact, list(by_compact), n=1, cutoff=0.5)
    hint = f"did you mean env.game={by_compact[close[0]]}? " if close else ""
    raise EnvConfigError(f"MinAtar has no game env.game={game!r}: {hint}The games are {', '.join(GAMES)}.")


def env_id(game: str, minimal_action_set: bool = False) -> str:
    """The gymnasium id of a MinAtar game: ``MinAtar/SpaceInvaders-v0`` (all 6 actions) or ``-v1`` (minimal)."""
    return f"MinAtar/{game.title().replace('_', '')}-v{int(bool(minimal_action_set))}"


class ChannelsFirst(gym.ObservationWrapper):
    """``(H, W, C)`` bool observations -> ``(C, H, W)`` uint8 0/1, with a space that says so."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 1, shape=(c, h, w), dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """One observation, channels first, one byte per cell."""
        return np.ascontiguousarray(np.asarray(observation).transpose(2, 0, 1), dtype=np.uint8)


def make_minatar_env(
    game: str = "breakout",
    num_envs: int = 1,
    minimal_action_set: bool = False,
    sticky_action_prob: float = 0.1,
    difficulty_ramping: bool = True,
    max_episode_steps: int | None = None,
    eval_max_episode_steps: int | None = None,
    for_eval: bool = False,
) -> VectorEnv:
    """A MinAtar vector env of ``(C, 10, 10)`` uint8 observations, in NEXT_STEP autoreset mode.

    Args:
        game: ``asterix``, ``breakout``, ``freeway``, ``seaquest`` or ``space_invaders`` (see :func:`resolve_game`).
        num_envs: Parallel games, stepped in this process; one vector step = ``num_envs`` env steps.
        minimal_action_set: The game's own actions (``-v1``) instead of all 6 (``-v0``, the paper's).
        sticky_action_prob: Chance per env step that the previous action is repeated instead (the paper's 0.1).
        difficulty_ramping: Games speed up as they go on (the paper's setting).
        max_episode_steps: Episode cap in env steps, counted as truncation (``None``: none, as the paper).
        eval_max_episode_steps: Episode cap of the evaluation env (``None``: as ``max_episode_steps``).
        for_eval: Build the evaluation env (the same env; only its episode cap may differ).

    Raises:
        MissingExtraError: The ``minatar`` package is not installed.
        EnvConfigError: Unknown game, or a knob out of range.

    """
    rom = resolve_game(game)
    if num_envs < 1:
        raise EnvConfigError(f"env.num_envs={num_envs} must be >= 1")
    if not 0.0 <= float(sticky_action_prob) <= 1.0:
        raise EnvConfigError(f"env.sticky_action_prob={sticky_action_prob} must be in [0, 1] (the paper's: 0.1)")
    import_minatar()
    cap = eval_max_episode_steps if for_eval and eval_max_episode_steps is not None else max_episode_steps
    make_kwargs: dict[str, Any] = {
        "sticky_action_prob": float(sticky_action_prob),
        "difficulty_ramping": bool(difficulty_ramping),
        # The passive checker compares observations with the package's space, which later sources declare as
        # uint8 while the game returns bool; ChannelsFirst makes the two agree.
        "disable_env_checker": True,
    }
    if cap is not None:
        make_kwargs["max_episode_steps"] = int(cap)
    name = env_id(rom, minimal_action_set)

    def make_one() -> gym.Env:
        with warnings.catch_warnings():
            # gymnasium says "-v0 is out of date" because a -v1 exists; v0 is the paper's setting, chosen here.
            warnings.filterwarnings("ignore", message=".*is out of date.*")
            return ChannelsFirst(gym.make(name, **make_kwargs))

    env = SyncVectorEnv([make_one] * int(num_envs), autoreset_mode=AutoresetMode.NEXT_STEP)
    check_discrete(env, f"MinAtar game {rom}")
    return env


def config_problems(cfg: Any) -> list[str]:
    """What the config checks (``envs/checks.py``) report about a MinAtar env config (empty for other envs).

    Only the game is checked (importing nothing), so a typo fails before the run dir exists; a missing package
    is reported when the env is built, as for Atari.
    """
    from omegaconf import OmegaConf

    if OmegaConf.select(cfg, "env._target_", default=None) != f"{__name__}.make_minatar_env":
        return []
    game = OmegaConf.select(cfg, "env.game", default=None)  # None: ??? (reported by the required-value check)
    try:
        if game is not None:
            resolve_game(game)
    except EnvConfigError as err:
        return [str(err)]
    return []
