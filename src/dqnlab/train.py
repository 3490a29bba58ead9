"""``run(cfg)``: build env, network, module, replay, callbacks, loggers and trainer from the config; fit."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from gymnasium.vector import VectorEnv
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dqnlab.collect import EnvStepper
from dqnlab.envs import match_frame_stacking, torch_dtype
from dqnlab.evaluation import Evaluator
from dqnlab.io import atomic_write_json
from dqnlab.module import DQNModule
from dqnlab.networks import build_network
from dqnlab.progress import EnvStepProgressBar
from dqnlab.replay import ReplayBuffer
from dqnlab.validate import check_writable_dir, validate_config, validate_env

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def resolve_device(accelerator: str) -> torch.device:
    """The device Lightning will put the module on, known before the Trainer exists (for the buffer)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _quiet_lightning() -> None:
    # Lightning's banners ("GPU available...", "TPU available...") drown the progress bar on every run.
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    # dqnlab takes one batch per step from `dataloader_iter` on purpose (sampling after env stepping).
    warnings.filterwarnings("ignore", message=".*dataloader_iter.*")
    # Hydra's train.log shares the run dir with metrics.csv.
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Every logger selected in the ``logger`` group (several may be combined: ``logger=[csv,wandb]``)."""
    if not cfg.get("logger"):
        return []
    return [instantiate(node) for node in cfg.logger.values() if node is not None and "_target_" in node]


@dataclass
class Components:
    """Everything a run is made of, built from the config but not yet fitted."""

    env: VectorEnv
    module: DQNModule
    buffer: ReplayBuffer
    collector: EnvStepper
    evaluator: Evaluator
    trainer: pl.Trainer

    def close(self) -> None:
        """Close the training env (the evaluator closes its own on teardown)."""
        self.env.close()


def build(cfg: DictConfig) -> Components:
    """Instantiate env, network, module, replay, callbacks, loggers and trainer from a composed config.

    The network and buffer are completed with what only the env knows (observation shape and dtype,
    action count, number of env streams); the trainer with ``max_steps`` derived from ``env_steps``.
    """
    env_factory = instantiate(cfg.env)
    env = env_factory()
    try:
        match_frame_stacking(cfg.buffer, env)  # an env that stacks frames (Atari) sets buffer.frame_stack
        validate_env(cfg, env)  # action/observation spaces and the replay size, before anything is allocated
        obs_space, num_actions = env.single_observation_space, int(env.single_action_space.n)
        device = resolve_device(cfg.trainer.get("accelerator", "auto"))

        network = build_network(instantiate(cfg.network), obs_space.shape, num_actions)
        module: DQNModule = instantiate(cfg.algo, network=network, optimizer=instantiate(cfg.optimizer))

        buffer_device = device if cfg.buffer.get("device", "auto") == "auto" else cfg.buffer.device
        buffer: ReplayBuffer = instantiate(
            cfg.buffer,
            obs_shape=obs_space.shape,
            obs_dtype=torch_dtype(obs_space.dtype),
            num_envs=env.num_envs,
            device=buffer_device,
            seed=cfg.seed,
        )
        module.attach_buffer(buffer)

        collector: EnvStepper = instantiate(
            cfg.collector, env=env, buffer=buffer, total_env_steps=cfg.env_steps, seed=cfg.seed
        )
        evaluator: Evaluator = instantiate(
            cfg.eval, env_factory=env_factory, collector=collector, seed=cfg.seed + 1_000_000
        )
        callbacks: list[pl.Callback] = [collector, instantiate(cfg.target), evaluator]
        if cfg.get("progress_bar", True):
            callbacks.append(EnvStepProgressBar(collector))

        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            max_steps=max(collector.total_gradient_steps, 1),
            callbacks=callbacks,
            logger=build_loggers(cfg) or False,
        )
    except BaseException:
        env.close()
        raise
    return Components(env, module, buffer, collector, evaluator, trainer)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train one DQN agent as configured and return the run summary (also written to ``summary.json``).

    Args:
        cfg: The composed Hydra config (``conf/train.yaml``).

    Returns:
        Final metrics, the same dict as ``summary.json``: ``eval/return_mean`` and friends, counters and
        throughput. Hydra sweepers optimise a key of it.
    """
    t_start = time.perf_counter()
    validate_config(cfg)  # fail in a second with the key and the fix, not minutes later in a traceback
    _quiet_lightning()
    out_dir = Path(cfg.paths.output_dir)
    check_writable_dir(out_dir, "paths.output_dir")
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    pl.seed_everything(cfg.seed, verbose=False)

    parts = build(cfg)
    try:
        for logger in parts.trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        t_fit = time.perf_counter()
        parts.trainer.fit(parts.module, ckpt_path=cfg.get("ckpt_path"))
        fit_s = time.perf_counter() - t_fit
    finally:
        parts.close()

    collector = parts.collector
    summary: dict[str, float] = {
        **parts.evaluator.final,
        "env_steps": float(collector.env_steps),
        "gradient_steps": float(parts.trainer.global_step),
        "episodes": float(collector.episodes),
        "wall_time_s": time.perf_counter() - t_start,
        "env_steps_per_s": collector.env_steps / max(fit_s, 1e-9),
        "seed": float(cfg.seed),
    }
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    log.info("summary: %s", summary)
    return summary
