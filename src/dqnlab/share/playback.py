"""Play a saved agent: rebuild env and network from a checkpoint or an agent file, score greedy episodes, film them.

``scripts/evaluate.py`` is the command line of this module.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dqnlab.data import COLLECTOR_STATE_KEY
from dqnlab.envs.vector import env_module
from dqnlab.envs.wrappers import file_wrapper_problem
from dqnlab.learn.networks import build_network
from dqnlab.learn.rl_math import expected_q, masked_argmax
from dqnlab.legacy import upgrade_targets
from dqnlab.run.ckpt_file import load_checkpoint, unsafe_checkpoint_message, unsafe_checkpoint_reason
from dqnlab.run.evaluation import play_episodes
from dqnlab.share.agent_file import AgentFileError, check_targets, looks_like_agent_file, read_agent_file

log = logging.getLogger(__name__)


@dataclass
class Agent:
    """A trained Q-network with the config of the run that trained it.

    Attributes:
        cfg: The run's resolved config (from an agent file: its env, network, algo, eval and seed parts).
        network: The online Q-network, in eval mode, on ``device``.
        device: Where the network runs.
        env_steps: Env steps the agent was trained for when the checkpoint was written.
        support: The atoms of a distributional (C51) network's output, ``None`` for plain Q-values.

    """

    cfg: DictConfig
    network: nn.Module
    device: torch.device
    env_steps: int
    support: torch.Tensor | None = None

    def policy(self, obs: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Greedy actions for a batch of observations, among the valid actions of ``masks`` (``[B, A]`` bool, the
        env's action masks) when given.
        """
        with torch.no_grad():
            out = self.network(torch.as_tensor(obs, device=self.device))
            q = out if self.support is None else expected_q(out, self.support)
            best = q.argmax(dim=1) if masks is None else masked_argmax(q, torch.as_tensor(masks, device=self.device))
            return best.cpu().numpy()

    @property
    def action_mask(self) -> bool:
        """Whether the agent honours an env's action masks: unless its run set ``collector.action_mask=false``."""
        collector = self.cfg.get("collector") or {}
        return collector.get("action_mask", "auto") is not False


def checkpoint_config(ckpt: dict[str, Any], path: Path) -> DictConfig:
    """The run config stored in the checkpoint, else the run dir's ``.hydra/config.yaml``."""
    stored = (ckpt.get("dqnlab") or {}).get("config")
    if stored:
        return OmegaConf.create(upgrade_targets(stored))
    for run_dir in (path.parent.parent, path.parent):  # <run dir>/checkpoints/x.ckpt, or a file in the run dir
        hydra_cfg = run_dir / ".hydra" / "config.yaml"
        if hydra_cfg.is_file():
            # Interpolations into Hydra's runtime (${hydra:...}) cannot resolve outside a Hydra job; none are
            # needed to rebuild the env and network.
            return OmegaConf.create(upgrade_targets(OmegaConf.to_container(OmegaConf.load(hydra_cfg))))
    raise AgentFileError(
        f"{path} holds no dqnlab config and no .hydra/config.yaml is next to it: pass a checkpoint written by "
        "a dqnlab run (checkpoints/*.ckpt in its run dir)"
    )


def read_checkpoint(path: Path) -> tuple[DictConfig, dict[str, torch.Tensor], int]:
    """``(config, online network weights, env steps)`` of a dqnlab checkpoint, read with ``weights_only=True``.

    Raises:
        AgentFileError: The file names objects other than tensors and plain data (nothing of it ran), or is not
            a readable dqnlab checkpoint.

    """
    try:
        ckpt = load_checkpoint(path)  # memory-mapped: the replay buffer in the file is never read
    except Exception as e:
        what = unsafe_checkpoint_reason(e)
        if what is not None:
            raise AgentFileError(unsafe_checkpoint_message(str(path), f"a Python object ({what})")) from None
        raise AgentFileError(
            f"{path} is not a torch checkpoint or agent file, or is truncated or corrupt ({type(e).__name__}): "
            "pass a .ckpt from <run dir>/checkpoints or a file from scripts/export.py"
        ) from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith("q_net.") for k in state):
        raise AgentFileError(f"{path} is not a checkpoint of a dqnlab DQN (no q_net.* weights)")
    weights = {k.removeprefix("q_net."): v for k, v in state.items() if k.startswith("q_net.")}
    collector_state = (ckpt.get("callbacks") or {}).get(COLLECTOR_STATE_KEY, {})
    return checkpoint_config(ckpt, path), weights, int(collector_state.get("env_steps", 0))


def _allow_env_module(cfg: DictConfig, path: Path, env_id: str | None) -> None:
    """A file whose env is ``module:EnvId`` (your own env) plays only when the command line names that id:
    dqnlab never imports a module because a file says so.

    Raises:
        AgentFileError: The file names a module and the command line did not allow it.

    """
    file_id = str(cfg.env.get("id", "")) if "env" in cfg else ""
    module = env_module(file_id)
    if module is None and env_id is None:
        return
    if env_id != file_id:
        given = f"env.id={env_id} is not the file's env.id={file_id}" if env_id else f"its env.id={file_id}"
        raise AgentFileError(
            f"{path}: {given} names module {module!r}, which dqnlab imports only when you ask: add "
            f"env.id={file_id} (with {module!r} importable, e.g. on PYTHONPATH) to play it"
            if module
            else f"{path}: env.id={env_id} is not the file's env ({file_id}): drop env.id"
        )


def _allow_wrappers(cfg: DictConfig, path: Path, allow_modules: tuple[str, ...]) -> None:
    """The file's ``env.wrappers`` are built only when they are gymnasium's or dqnlab's wrapper classes, or their
    module is allowed (``allow_module=`` or the module of the ``env.id=`` the command line named).

    Raises:
        AgentFileError: Naming the entry, its module and how to allow it; nothing of it was imported.

    """
    wrappers = cfg.env.get("wrappers") if "env" in cfg else None
    if not wrappers:
        return
    own = env_module(str(cfg.env.get("id", "")))  # _allow_env_module let it through only when the command named it
    problem = file_wrapper_problem(wrappers, {*allow_modules, *([own] if own else [])}, str(path))
    if problem:
        raise AgentFileError(problem)


def env_factory(cfg: DictConfig) -> Any:
    """The file's env factory; ``env.wrappers`` are left to it (built on each copy), whatever the file says."""
    return instantiate(cfg.env, _recursive_=False)


def load_agent(
    path: str | Path, device: str = "cpu", env_id: str | None = None, allow_modules: tuple[str, ...] = ()
) -> Agent:
    """Rebuild the online Q-network of a checkpoint or an agent file, with the env config it was trained on.

    Nothing from the file runs: checkpoints load with ``weights_only=True``, agent files are safetensors, and
    only dqnlab's own env and network factories are instantiated (:func:`dqnlab.share.agent_file.check_targets`).

    Args:
        path: A ``.ckpt`` written by a dqnlab run, or an agent file from ``scripts/export.py``.
        device: Where the network runs (``cpu``, ``cuda``).
        env_id: The command line's ``env.id``: needed, and equal to the file's, for an env of your own
            (``module:EnvId``), whose module is imported only then.
        allow_modules: Modules whose wrappers the file's ``env.wrappers`` or whose network ``network._target_``
            may name (``allow_module=``); the module of an allowed ``env.id`` counts too for wrappers.
            gymnasium's and dqnlab's wrapper classes and networks need none.

    Raises:
        AgentFileError: The file cannot be played safely; the message says why.

    """
    path = Path(path)
    if looks_like_agent_file(path):
        config, weights, env_steps = read_agent_file(path, allow_modules)
        cfg = OmegaConf.create(config)
    else:
        cfg, weights, env_steps = read_checkpoint(path)
        check_targets(OmegaConf.to_container(cfg, resolve=False), str(path), allow_modules)
    _allow_env_module(cfg, path, env_id)
    _allow_wrappers(cfg, path, tuple(allow_modules))
    probe = env_factory(cfg)(num_envs=1, for_eval=True)
    try:
        obs_shape = probe.single_observation_space.shape
        num_actions = int(probe.single_action_space.n)
    finally:
        probe.close()
    algo = cfg.get("algo") or {}
    num_atoms = int(algo.get("num_atoms", 1))
    network = build_network(instantiate(cfg.network), obs_shape, num_actions, num_atoms)
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise AgentFileError(f"{path}: its weights do not fit the network its config describes ({first})") from None
    dev = torch.device(device)
    support = None
    if num_atoms > 1:
        support = torch.linspace(float(algo.get("v_min")), float(algo.get("v_max")), num_atoms, device=dev)
    return Agent(cfg, network.to(dev).eval(), dev, env_steps, support)


def evaluate_agent(
    agent: Agent,
    episodes: int = 10,
    epsilon: float | None = None,
    seed: int | None = None,
    num_envs: int | None = None,
    video: bool = False,
    video_dir: str | Path | None = None,
    video_episodes: int = 1,
    video_fps: int = 30,
) -> dict[str, Any]:
    """Score ``episodes`` greedy episodes on a fresh evaluation env; optionally film a few more.

    Args:
        agent: From :func:`load_agent`.
        episodes: Episodes to score.
        epsilon: Random-action probability (``None``: the run's ``eval.epsilon``).
        seed: Seed of the env resets and exploration (``None``: the run's ``seed`` + 2,000,000, apart from the
            seeds the run's own evaluations used).
        num_envs: Parallel env copies (``None``: one per episode, at most 32).
        video: Write ``video_episodes`` mp4 files of further episodes.
        video_dir: Where the videos go (``None``: ``./videos``).
        video_episodes: How many episodes to film.
        video_fps: Frames per second of the videos.

    Returns:
        ``episodes``, ``return_mean``, ``return_std``, ``length_mean``, ``returns``, ``env_steps`` (of the
        checkpoint), ``epsilon``, ``seed`` and ``videos`` (paths).

    """
    cfg = agent.cfg
    eps = float(cfg.eval.get("epsilon", 0.0) if epsilon is None else epsilon)
    seed = int(cfg.get("seed", 0)) + 2_000_000 if seed is None else int(seed)
    n = int(num_envs or min(episodes, 32))
    videos: list[str] = []
    with contextlib.ExitStack() as closing:  # the video env too, whatever stops the episodes (Ctrl-C, an env error)
        render_env = None
        if video:  # first: an env that cannot be filmed is refused before any episode is played
            from dqnlab.envs.video import make_render_env

            render_env = make_render_env(cfg.env, key="video")
            closing.callback(render_env.close)
        env = env_factory(cfg)(num_envs=n, for_eval=True)
        try:
            returns, lengths = play_episodes(env, agent.policy, episodes, eps, np.random.default_rng(seed), seed=seed)
        finally:
            env.close()
        if render_env is not None:
            from dqnlab.envs.video import record_episode

            out = Path(video_dir or "videos")
            for i in range(video_episodes):
                path = out / f"env_steps_{agent.env_steps}_episode_{i}.mp4"
                written, _ = record_episode(
                    render_env, agent.policy, path, epsilon=eps, seed=seed + 1000 + i, fps=video_fps
                )
                videos.append(str(written))
    return {
        "episodes": len(returns),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "length_mean": float(lengths.mean()),
        "returns": [float(r) for r in returns],
        "env_steps": agent.env_steps,
        "epsilon": eps,
        "seed": seed,
        "videos": videos,
    }
