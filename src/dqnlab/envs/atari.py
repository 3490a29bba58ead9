"""Atari 2600 games through ale-py, preprocessed as in the DQN papers (Mnih et al. 2015; Machado et al. 2018).

``make_atari_env`` returns a NEXT_STEP-autoreset vector env of ``[frame_stack, 84, 84]`` uint8 observations
with two interchangeable backends:

* ``ale_vector`` (default): ale-py's C++ ``AtariVectorEnv``. It does frame skip with a max over the last two
  frames, grayscale, the 84x84 resize, the frame stack, random no-op starts and FIRE at reset itself.
* ``gymnasium``: ``AtariPreprocessing`` + ``FrameStackObservation`` over ``frameskip=1`` ``AtariEnv``s in a
  ``SyncVectorEnv``, with :class:`NoopFireReset` reproducing the vector env's reset. Slower; it is the
  reference implementation and the one to extend in Python.

What ale-py 0.12's vector env does *not* do the way DQN needs is done by :class:`AtariSignals` on top of
either backend (checked against its behaviour in ``tests/test_atari.py``):

* Its ``reward_clipping`` clips in C++ and drops the raw score, so it is turned off and the wrapper clips,
  keeping the raw reward in ``info["raw_reward"]``.
* Its ``episodic_life`` ends the episode on a life loss and the autoreset then restarts the *whole game*, so
  an agent would only ever see its first life. The wrapper instead reports ``terminated=True`` on a life loss
  while the game (and the frame stack) goes on; ``info["game_over"]`` is true only when the env really ends
  the game (game over or the time limit), which is when it autoresets and zero-pads the stack. The replay
  buffer is told the same (``ReplayBuffer.add(..., resets=info["game_over"])``), so the stacks it rebuilds
  are the ones the agent saw.
"""

from __future__ import annotations

import difflib
import re
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from dqnlab.envs.vector import EnvConfigError, check_discrete
from dqnlab.errors import MissingExtraError

BACKENDS = ("ale_vector", "gymnasium")
# How both backends pad the frame stack of a reset observation: ale-py 0.12's vector env fills the older
# frames with zeros (measured, see the tests), and the gymnasium backend is built to match.
STACK_PADDING = "zero"


def import_ale() -> ModuleType:
    """``ale_py`` with its environments registered, or a clear error naming the extra to install."""
    try:
        import ale_py
    except ImportError as err:
        raise MissingExtraError("Atari envs need ale-py (it ships the game ROMs): pip install 'dqnlab[atari]'") from err
    gym.register_envs(ale_py)
    return ale_py


def _compact(name: str) -> str:
    return name.replace("_", "").lower()


def resolve_game(game: str) -> str:
    """The ale-py ROM id (``space_invaders``) of ``game``, which may also be ``SpaceInvaders``, ``spaceinvaders``
    or a gymnasium id such as ``ALE/SpaceInvaders-v5``.

    Raises:
        EnvConfigError: No ROM matches; the message lists the closest ones.

    """
    from ale_py import roms

    ids = roms.get_all_rom_ids()
    name = re.sub(r"^ALE/|(NoFrameskip)?-v\d+$", "", str(game).strip())
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_")
    by_compact = {_compact(i): i for i in ids}
    if snake in ids:
        return snake
    if _compact(snake) in by_compact:
        return by_compact[_compact(snake)]
    close = difflib.get_close_matches(_compact(snake), list(by_compact), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(by_compact[c] for c in close)}." if close else ""
    raise EnvConfigError(
        f"ale-py has no Atari game env.game={game!r}.{hint} All {len(ids)} ROM ids: ale_py.roms.get_all_rom_ids()."
    )


class NoopFireReset(gym.Wrapper):
    """At reset, random no-op frames and then one FIRE frame, as ale-py's vector env does (for ``frameskip=1``).

    The vector env draws ``n`` uniformly from ``1..noop_max`` and, in games whose action set has FIRE, spends
    the last of those frames on FIRE instead; a game that ends during the no-ops is reset again.

    Args:
        env: A single ``AtariEnv`` with ``frameskip=1``.
        noop_max: Largest number of reset frames (emulator frames); 0 = none.
        fire: Press FIRE at reset in games whose action set has it (Breakout waits for it to serve).

    """

    def __init__(self, env: gym.Env, noop_max: int, fire: bool) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        self.noop_max = int(noop_max)
        self.fire_action = meanings.index("FIRE") if fire and "FIRE" in meanings else None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Reset, then the no-op and FIRE frames."""
        obs, info = self.env.reset(seed=seed, options=options)
        fire = self.fire_action is not None
        noops = int(self.env.unwrapped.np_random.integers(1, self.noop_max + 1)) - fire if self.noop_max else 0
        for _ in range(noops):
            obs, _, terminated, truncated, info = self.env.step(0)  # action 0 is NOOP in every minimal set
            if terminated or truncated:
                obs, info = self.env.reset()
        if fire:
            obs, _, _, _, info = self.env.step(self.fire_action)
        return obs, info


class AtariSignals(VectorWrapper):
    """Learning signals of the DQN protocol on top of an Atari vector env (see the module docstring).

    Adds ``info["raw_reward"]`` (the game score of the step), ``info["game_over"]`` (the env ends the game
    here and autoresets at the next step) and ``info["life_loss"]`` (a life was lost, the game goes on), and
    declares the frame stacking in ``metadata`` so the replay buffer can match it.

    Args:
        env: Atari vector env in NEXT_STEP autoreset mode whose ``info["lives"]`` counts lives.
        clip_rewards: Learn from ``clip(reward, -1, 1)`` (Mnih et al. 2015).
        terminal_on_life_loss: Report ``terminated=True`` when a life is lost.
        frame_stack: Frames stacked in each observation by ``env``.

    """

    def __init__(self, env: VectorEnv, clip_rewards: bool, terminal_on_life_loss: bool, frame_stack: int) -> None:
        super().__init__(env)
        self.clip_rewards = bool(clip_rewards)
        self.terminal_on_life_loss = bool(terminal_on_life_loss)
        self.metadata = {**env.metadata, "frame_stack": int(frame_stack), "stack_padding": STACK_PADDING}
        self._lives = np.zeros(env.num_envs, dtype=np.int64)

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset and remember each game's lives."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._lives = np.asarray(info["lives"], dtype=np.int64).copy()
        return obs, info

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step, then derive the learning reward and terminals from the raw ones."""
        return self._signals(*self.env.step(actions))

    def send(self, actions: np.ndarray) -> None:
        """Start a step without waiting for it (ale-py's vector env, whose C++ threads step the games)."""
        self.env.send(actions)  # type: ignore[attr-defined]

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The results of the step started by :meth:`send`, with the learning signals (as :meth:`step`)."""
        return self._signals(*self.env.recv())  # type: ignore[attr-defined]

    def _signals(
        self, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, info: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        raw = np.asarray(reward, dtype=np.float64)
        lives = np.asarray(info["lives"], dtype=np.int64)
        game_over = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        # An autoreset step raises lives back to the start value, so a drop is always a loss within one game.
        life_loss = (lives < self._lives) & ~game_over
        self._lives = lives.copy()
        info = {**info, "raw_reward": raw, "game_over": game_over, "life_loss": life_loss}
        learn = np.clip(raw, -1.0, 1.0) if self.clip_rewards else raw
        if self.terminal_on_life_loss:
            terminated = terminated | life_loss
        return obs, learn.astype(np.float32), terminated, truncated, info


def _episode_cap_steps(frames: int, steps: int | None, frame_skip: int) -> int:
    if steps is not None:
        return int(steps)
    return max(int(frames) // frame_skip, 1)


def _make_ale_vector(
    game: str,
    num_envs: int,
    num_threads: int,
    cap_steps: int,
    *,
    frame_skip: int,
    frame_stack: int,
    screen_size: int,
    noop_max: int,
    fire_reset: bool,
    repeat_action_probability: float,
    full_action_space: bool,
) -> VectorEnv:
    from ale_py.vector_env import AtariVectorEnv

    if noop_max < 1:
        # The vector env draws its no-ops from [0, noop_max - 1]: an empty range in C++ for noop_max = 0.
        raise EnvConfigError(
            f"env.noop_max={noop_max}: the ale_vector backend needs noop_max >= 1 "
            "(use env.backend=gymnasium for starts without no-ops)"
        )
    return AtariVectorEnv(
        game,
        num_envs,
        num_threads=num_threads,
        # Counted in agent steps by the vector env after the reset no-ops: cap_steps * frame_skip frames.
        max_num_frames_per_episode=cap_steps * frame_skip,
        repeat_action_probability=repeat_action_probability,
        full_action_space=full_action_space,
        autoreset_mode=AutoresetMode.NEXT_STEP,
        img_height=screen_size,
        img_width=screen_size,
        grayscale=True,
        stack_num=frame_stack,
        frameskip=frame_skip,
        maxpool=True,
        noop_max=noop_max,
        use_fire_reset=fire_reset,
        # Both done by AtariSignals instead: see the module docstring for why.
        episodic_life=False,
        life_loss_info=False,
        reward_clipping=False,
    )


def _make_gymnasium(
    game: str,
    num_envs: int,
    cap_steps: int,
    *,
    frame_skip: int,
    frame_stack: int,
    screen_size: int,
    noop_max: int,
    fire_reset: bool,
    repeat_action_probability: float,
    full_action_space: bool,
) -> VectorEnv:
    from ale_py.env import AtariEnv
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TimeLimit

    try:
        import cv2  # noqa: F401  (AtariPreprocessing resizes with it)
    except ImportError as err:
        raise MissingExtraError(
            "env.backend=gymnasium resizes frames with OpenCV: pip install 'dqnlab[atari]'"
        ) from err

    def make_one() -> gym.Env:
        env: gym.Env = AtariEnv(
            game=game,
            obs_type="grayscale",  # cheapest screen copy; AtariPreprocessing reads the screen itself anyway
            frameskip=1,
            repeat_action_probability=repeat_action_probability,
            full_action_space=full_action_space,
            max_num_frames_per_episode=None,  # the TimeLimit below counts agent steps, as the vector env does
        )
        env = NoopFireReset(env, noop_max=noop_max, fire=fire_reset)
        env = AtariPreprocessing(
            env,
            noop_max=0,  # done by NoopFireReset, in the vector env's order (no-ops, then FIRE)
            frame_skip=frame_skip,
            screen_size=screen_size,
            terminal_on_life_loss=False,  # it would make the autoreset restart the whole game
            grayscale_obs=True,
        )
        env = TimeLimit(env, max_episode_steps=cap_steps)
        return FrameStackObservation(env, frame_stack, padding_type=STACK_PADDING)

    return gym.vector.SyncVectorEnv([make_one] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)


def make_atari_env(
    game: str,
    num_envs: int = 1,
    backend: str = "ale_vector",
    num_threads: int = 1,
    frame_skip: int = 4,
    frame_stack: int = 4,
    screen_size: int = 84,
    noop_max: int = 30,
    fire_reset: bool = True,
    clip_rewards: bool = True,
    terminal_on_life_loss: bool = True,
    max_episode_frames: int = 108_000,
    max_episode_steps: int | None = None,
    eval_max_episode_frames: int | None = None,
    repeat_action_probability: float = 0.0,
    full_action_space: bool = False,
    for_eval: bool = False,
) -> VectorEnv:
    """An Atari vector env with the DQN preprocessing, in NEXT_STEP autoreset mode.

    Observations are ``[frame_stack, screen_size, screen_size]`` uint8 grayscale frames, each the max of the
    last two emulator frames of its frame skip. ``info["raw_reward"]`` and ``info["game_over"]`` carry the game
    score and the real game end (see :class:`AtariSignals`).

    Args:
        game: ROM id (``breakout``, ``space_invaders``); ``SpaceInvaders`` and ``ALE/...-v5`` ids also work.
        num_envs: Parallel games; one vector step = ``num_envs`` env (agent) steps.
        backend: ``ale_vector`` (ale-py's C++ vector env) or ``gymnasium`` (Python wrappers, SyncVectorEnv).
        num_threads: C++ worker threads of the ``ale_vector`` backend (at most ``num_envs``; 0 = one per core).
        frame_skip: Emulator frames per agent step, the action repeated on each.
        frame_stack: Agent steps' frames stacked in one observation.
        screen_size: Side of the square resized frame, in pixels.
        noop_max: Largest number of no-op emulator frames at reset (random starts).
        fire_reset: Press FIRE once at reset in games whose action set has FIRE.
        clip_rewards: Learn from rewards clipped to [-1, 1] (training env only).
        terminal_on_life_loss: A lost life is ``terminated`` for learning (training env only).
        max_episode_frames: Episode cap in emulator frames (``frame_skip`` per agent step).
        max_episode_steps: Episode cap in agent steps; overrides both frame caps when set.
        eval_max_episode_frames: Episode cap of the evaluation env in emulator frames (``None``: as training).
        repeat_action_probability: Sticky actions: chance the emulator repeats the previous action per frame.
        full_action_space: All 18 joystick actions instead of the game's minimal set.
        for_eval: Build the evaluation env: full games (no life-loss terminals), raw rewards.

    Raises:
        MissingExtraError: ale-py (or OpenCV for the gymnasium backend) is not installed.
        EnvConfigError: Unknown game or backend, or a knob the backend cannot honour.

    """
    if backend not in BACKENDS:
        raise EnvConfigError(f"env.backend={backend!r} is not known: use one of {', '.join(BACKENDS)}")
    if num_envs < 1 or frame_skip < 1 or frame_stack < 1:
        raise EnvConfigError(
            f"env.num_envs ({num_envs}), env.frame_skip ({frame_skip}) and env.frame_stack ({frame_stack}) "
            "must all be >= 1"
        )
    import_ale()
    rom = resolve_game(game)
    frames = eval_max_episode_frames if for_eval and eval_max_episode_frames is not None else max_episode_frames
    cap_steps = _episode_cap_steps(frames, max_episode_steps, frame_skip)
    shared = {
        "frame_skip": int(frame_skip),
        "frame_stack": int(frame_stack),
        "screen_size": int(screen_size),
        "noop_max": int(noop_max),
        "fire_reset": bool(fire_reset),
        "repeat_action_probability": float(repeat_action_probability),
        "full_action_space": bool(full_action_space),
    }
    if backend == "ale_vector":
        threads = min(int(num_threads), num_envs) if num_threads > 0 else 0  # 0: ale-py's one per core
        env = _make_ale_vector(rom, num_envs, threads, cap_steps, **shared)
    else:
        env = _make_gymnasium(rom, num_envs, cap_steps, **shared)
    check_discrete(env, f"Atari game {rom}")
    return AtariSignals(
        env,
        clip_rewards=clip_rewards and not for_eval,
        terminal_on_life_loss=terminal_on_life_loss and not for_eval,
        frame_stack=frame_stack,
    )
