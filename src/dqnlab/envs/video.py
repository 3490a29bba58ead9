"""Videos of greedy episodes: an env that renders RGB frames, one episode played, an mp4 written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dqnlab.errors import MissingExtraError
from dqnlab.io import FILE_MODE


def make_render_env(env_cfg: DictConfig) -> VectorEnv:
    """One copy of the configured env, evaluation variant, rendering ``rgb_array`` frames where it can.

    Gymnasium envs (``env.kwargs`` goes to ``gym.make``) get ``render_mode="rgb_array"`` (CartPole needs
    ``pygame``, in the ``video`` extra). Other factories (Atari) are built as they are and filmed from their
    observations (:func:`frame_of`).
    """
    # Headless: pygame (CartPole's renderer) must not look for a display or a sound server.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    overrides: dict[str, Any] = {"num_envs": 1, "for_eval": True}
    if "kwargs" in env_cfg:
        kwargs = OmegaConf.to_container(env_cfg.kwargs, resolve=True) or {}
        overrides["kwargs"] = {**kwargs, "render_mode": "rgb_array"}
        overrides["vectorization"] = "sync"  # frames come from env.render() in this process
    factory = instantiate(env_cfg)
    return factory(**overrides)


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

    """
    rng = np.random.default_rng(seed)
    num_actions = int(env.single_action_space.n)
    obs, _ = env.reset(seed=seed)
    frames = [frame_of(env, obs)]
    ret = 0.0
    for _ in range(max_frames):
        actions = policy(obs)
        if epsilon > 0 and rng.random() < epsilon:
            actions = np.array([rng.integers(num_actions)] * env.num_envs)
        obs, rewards, terminated, truncated, info = env.step(actions)
        ret += float(np.asarray(info.get("raw_reward", rewards))[0])
        frames.append(frame_of(env, obs))
        if bool(np.asarray(info.get("game_over", terminated | truncated))[0]):
            break
    return write_mp4(frames, path, fps), ret
