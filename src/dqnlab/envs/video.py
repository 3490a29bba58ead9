"""Videos of greedy episodes: an env that renders RGB frames, one episode played, an mp4 written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dqnlab.data.action_masks import KEY as MASK_KEY
from dqnlab.data.action_masks import action_masks, random_valid_actions
from dqnlab.errors import MissingExtraError
from dqnlab.io import FILE_MODE


def _is_image(space: Any) -> bool:
    """Observations :func:`frame_of` can film when the env does not render: ``[H, W]`` or ``[stack, H, W]`` uint8."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3)


def declared_render_modes(env_id: str) -> list[str] | None:
    """The ``render_modes`` the class of a registered env declares (``None``: its entry point is a function, whose
    env is known only once built). A ``module:EnvId`` id's module must be allowed to import.
    """
    from dqnlab.envs.vector import import_env_module

    spec = gym.spec(import_env_module(env_id))
    entry = spec.entry_point
    creator = entry if callable(entry) else gym.envs.registration.load_env_creator(entry)
    if not isinstance(creator, type):
        return None
    return list((getattr(creator, "metadata", None) or {}).get("render_modes") or [])


def _cannot_render(env_id: str, modes: list[str] | None, key: str) -> str:
    declared = f"declares render_modes {modes}, without 'rgb_array'," if modes is not None else "renders no rgb_array"
    return (
        f"env.id={env_id} cannot be filmed: its env {declared} and its observations are not images to film instead: "
        f"set {key}=false, or give the env a render() that returns an RGB array for render_mode='rgb_array' (listed "
        "in its metadata['render_modes'])"
    )


def render_problem(env_cfg: DictConfig, observation_space: Any, key: str = "eval.video") -> str | None:
    """Why videos of the configured env cannot be made, or ``None`` (also when only building it would tell).

    Args:
        env_cfg: The ``env`` node; gymnasium envs by id are checked, other factories film their observations.
        observation_space: One copy's observation space (images can be filmed whatever the env renders).
        key: The setting that asked for videos, for the fix (``eval.video``, ``video``).

    """
    if "id" not in env_cfg or _is_image(observation_space):
        return None
    modes = declared_render_modes(str(env_cfg.id))
    return None if modes is None or "rgb_array" in modes else _cannot_render(str(env_cfg.id), modes, key)


def make_render_env(env_cfg: DictConfig, key: str = "eval.video") -> VectorEnv:
    """One copy of the configured env, evaluation variant, rendering ``rgb_array`` frames where it can.

    Gymnasium envs (``env.kwargs`` goes to ``gym.make``) get ``render_mode="rgb_array"`` (CartPole needs
    ``pygame``, in the ``video`` extra). Other factories (Atari) are built as they are and filmed from their
    observations (:func:`frame_of`).

    Raises:
        EnvConfigError: A gymnasium env that renders no ``rgb_array`` frames and has no image observations; the
            message says to set ``key`` to false.

    """
    from dqnlab.envs.vector import EnvConfigError

    # Headless: pygame (CartPole's renderer) must not look for a display or a sound server.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    overrides: dict[str, Any] = {"num_envs": 1, "for_eval": True}
    by_id = "kwargs" in env_cfg
    modes = declared_render_modes(str(env_cfg.id)) if by_id else None
    if by_id:
        kwargs = OmegaConf.to_container(env_cfg.kwargs, resolve=True) or {}
        if modes is None or "rgb_array" in modes:  # a constructor without render_mode must not be handed one
            kwargs = {**kwargs, "render_mode": "rgb_array"}
        overrides["kwargs"] = kwargs
        overrides["vectorization"] = "sync"  # frames come from env.render() in this process
    factory = instantiate(env_cfg, _recursive_=False)  # env.wrappers are built per copy by the factory
    env = factory(**overrides)
    if by_id and env.render_mode != "rgb_array" and not _is_image(env.single_observation_space):
        env.close()
        raise EnvConfigError(_cannot_render(str(env_cfg.id), modes, key))
    return env


def frame_of(env: VectorEnv, obs: np.ndarray) -> np.ndarray:
    """The current RGB frame ``[H, W, 3]`` uint8 of copy 0: ``env.render()``, else the newest observation frame.

    Image observations (``[stack, H, W]`` uint8, Atari) are upscaled 4x to a watchable size.
    """
    if env.render_mode == "rgb_array":
        frames = env.render()
        return np.asarray(frames[0] if isinstance(frames, (tuple, list)) else frames)
    o = np.asarray(obs[0])
    if o.dtype != np.uint8 or o.ndim not in (2, 3):
        raise ValueError(
            "this env neither renders rgb_array frames nor has image observations: no video can be made of it"
        )
    gray = o[-1] if o.ndim == 3 else o  # newest frame of a stack
    return np.repeat(np.repeat(np.stack([gray] * 3, axis=-1), 4, axis=0), 4, axis=1)


def write_mp4(frames: list[np.ndarray], path: Path, fps: int) -> Path:
    """Encode ``frames`` to ``path`` (H.264 via moviepy and imageio-ffmpeg), through a temp file and a rename."""
    try:
        from moviepy import ImageSequenceClip
    except ImportError:
        try:
            from moviepy.editor import ImageSequenceClip  # moviepy 1.x
        except ImportError as e:
            raise MissingExtraError("videos need moviepy: pip install 'dqnlab[video]'") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".mp4")  # ffmpeg reads the suffix
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        ImageSequenceClip([np.ascontiguousarray(f) for f in frames], fps=fps).write_videofile(
            tmp, codec="libx264", audio=False, logger=None
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def record_episode(
    env: VectorEnv,
    policy: Callable[[np.ndarray], np.ndarray],
    path: Path,
    epsilon: float = 0.0,
    seed: int = 0,
    fps: int = 30,
    max_frames: int = 10_000,
    action_mask: bool = True,
) -> tuple[Path, float]:
    """Play one episode on copy 0 of ``env`` and write it to ``path``; return the path and the episode's return.

    Args:
        env: A vector env from :func:`make_render_env` (NEXT_STEP autoreset).
        policy: Maps a batch of observations to greedy actions.
        path: The mp4 to write.
        epsilon: Probability of a uniformly random action.
        seed: Reset seed and exploration seed.
        fps: Frames per second of the video.
        max_frames: Stop filming after this many env steps (an agent that never ends an episode).
        action_mask: Honour ``info["action_mask"]`` as training does: ``policy(obs, masks)`` picks among the
            valid actions, and so does a random action.

    """
    rng = np.random.default_rng(seed)
    n, num_actions = env.num_envs, int(env.single_action_space.n)
    obs, info = env.reset(seed=seed)
    frames = [frame_of(env, obs)]
    ret = 0.0
    for _ in range(max_frames):
        masks = action_masks(info, n, num_actions) if action_mask and MASK_KEY in info else None
        actions = policy(obs) if masks is None else policy(obs, masks)  # type: ignore[call-arg]
        if epsilon > 0 and rng.random() < epsilon:
            actions = np.array([rng.integers(num_actions)] * n) if masks is None else random_valid_actions(rng, masks)
        obs, rewards, terminated, truncated, info = env.step(actions)
        ret += float(np.asarray(info.get("raw_reward", rewards))[0])
        frames.append(frame_of(env, obs))
        if bool(np.asarray(info.get("game_over", terminated | truncated))[0]):
            break
    return write_mp4(frames, path, fps), ret
