"""Greedy evaluation on a separate vector env, periodically during training and once at the end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from gymnasium.vector import VectorEnv
from pytorch_lightning.callbacks import Callback

from dqnlab.data.action_masks import KEY as MASK_KEY
from dqnlab.data.action_masks import action_masks, random_valid_actions
from dqnlab.data.collect import EnvStepper


def play_episodes(
    env: VectorEnv,
    policy: Callable[[np.ndarray], np.ndarray],
    episodes: int,
    epsilon: float,
    rng: np.random.Generator,
    seed: int | None = None,
    action_mask: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Play ``episodes`` whole episodes with an epsilon-greedy policy on a NEXT_STEP-autoreset vector env.

    Episodes are spread over the env's copies; each copy plays ``ceil(episodes / num_envs)`` in sequence
    and only the first ``episodes`` finished are counted, in copy order, so the result does not depend on
    which copy happens to finish first.

    Args:
        env: Vector env; ``info["raw_reward"]``/``info["game_over"]`` are honoured when present (Atari).
        policy: Maps a batch of observations to greedy actions; for an env with action masks it is called as
            ``policy(obs, masks)`` with the ``[N, A]`` bool valid actions, and must pick among them.
        episodes: Number of episodes to score.
        epsilon: Probability of a uniformly random action (among the valid ones, with action masks).
        rng: Exploration RNG.
        seed: Reset seed (copy ``i`` gets ``seed + i``).
        action_mask: Honour ``info["action_mask"]`` when the env's reset gives one (``collector.action_mask``
            other than ``false``; :mod:`dqnlab.data.action_masks`).

    Returns:
        ``(returns, lengths)`` arrays of length ``episodes``.

    """
    n = env.num_envs
    per_env = -(-episodes // n)
    num_actions = int(env.single_action_space.n)
    obs, info = env.reset(seed=seed)
    masks = action_masks(info, n, num_actions) if action_mask and MASK_KEY in info else None
    ret = np.zeros(n)
    length = np.zeros(n, dtype=np.int64)
    results: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    last_done = np.zeros(n, dtype=bool)
    while min(len(r) for r in results) < per_env:
        actions = policy(obs) if masks is None else policy(obs, masks)
        if epsilon > 0:
            explore = rng.random(n) < epsilon
            randoms = rng.integers(num_actions, size=n) if masks is None else random_valid_actions(rng, masks)
            actions = np.where(explore, randoms, actions)
        obs, rewards, terminated, truncated, info = env.step(actions)
        if masks is not None:  # after an autoreset: the mask of the new episode's first observation
            masks = action_masks(info, n, num_actions)
        raw = info.get("raw_reward", rewards)
        game_over = info.get("game_over", terminated | truncated)
        live = ~last_done
        ret += np.where(live, raw, 0.0)
        length += live
        for i in np.flatnonzero(game_over & live):
            results[i].append((float(ret[i]), int(length[i])))
            ret[i] = 0.0
            length[i] = 0
        last_done = game_over  # only a game over autoresets (a life-loss terminal does not)
    # Take episodes round-robin over copies so a short run of episodes is not all from copy 0.
    ordered = [results[i][j] for j in range(per_env) for i in range(n)][:episodes]
    returns = np.array([r for r, _ in ordered], dtype=np.float64)
    lengths = np.array([le for _, le in ordered], dtype=np.int64)
    return returns, lengths


class Evaluator(Callback):
    """Greedy evaluation every ``every`` env steps and at the end of training.

    Args:
        env_factory: Builds the evaluation vector env (same factory as training, another seed).
        collector: The training env stepper (its env-step counter paces evaluation).
        episodes: Episodes per evaluation.
        every: Env steps between evaluations during training (0 = only at the end).
        epsilon: Exploration during evaluation (0.05 on Atari as in Nature/CleanRL; 0 = fully greedy).
        num_envs: Parallel env copies for evaluation (default: one per episode, capped at 32).
        seed: Seed of the evaluation env and its exploration RNG.
        video: After each evaluation, film one more greedy episode to ``video_dir`` (mp4; W&B logs it as media).
        video_fps: Frames per second of the videos.
        video_dir: Where videos go (set by ``dqnlab.train.build``: ``<run dir>/videos``).
        render_env_factory: Builds the single env that renders the video (set by ``dqnlab.train.build``).
        periodic_episodes: Episodes per periodic evaluation (``None``: ``episodes``); the final one plays
            ``episodes``.
        keep_best: Early stopping by evaluation: remember the online network at its best periodic evaluation and,
            if that scored higher than the final network does, keep it (``checkpoints/best.ckpt``; else the final
            network is the kept one). The final evaluation then plays new episodes with the kept network
            (``eval/return_mean``); ``eval/last_return_mean`` is the final network's score and
            ``eval/best_return_mean``/``eval/best_env_steps`` the evaluation it was kept at (RL Zoo keeps such a
            best model through SB3's ``EvalCallback``). Training state (``last.ckpt``) stays the final one.

    """

    def __init__(
        self,
        env_factory: Callable[..., VectorEnv],
        collector: EnvStepper,
        episodes: int = 20,
        every: int = 10_000,
        epsilon: float = 0.0,
        num_envs: int | None = None,
        seed: int = 10_000,
        video: bool = False,
        video_fps: int = 30,
        video_dir: str | None = None,
        render_env_factory: Callable[[], VectorEnv] | None = None,
        periodic_episodes: int | None = None,
        keep_best: bool = False,
    ) -> None:
        if episodes < 1:
            raise ValueError(f"eval.episodes must be >= 1, got {episodes}")
        self.env_factory = env_factory
        self.collector = collector
        self.episodes = int(episodes)
        self.every = int(every)
        self.epsilon = float(epsilon)
        self.num_envs = int(num_envs or min(self.episodes, 32))
        self.seed = int(seed)
        self._env: VectorEnv | None = None
        self._next_eval = self.every if self.every > 0 else None
        self.evaluations = 0
        self.final: dict[str, float] = {}
        self.video = bool(video)
        self.video_fps = int(video_fps)
        self.video_dir = Path(video_dir) if video_dir else None
        self.render_env_factory = render_env_factory
        self._render_env: VectorEnv | None = None
        self.videos: list[Path] = []
        self.keep_best = bool(keep_best)
        self.periodic_episodes = int(periodic_episodes or episodes)
        if self.periodic_episodes < 1:
            raise ValueError(f"eval.periodic_episodes must be >= 1, got {periodic_episodes}")
        self.best: dict[str, Any] | None = None  # return_mean, env_steps and the online network's state_dict
        self.kept: dict[str, Any] | None = None  # with keep_best, at the end: the network best.ckpt holds

    @property
    def env(self) -> VectorEnv:
        """The evaluation env, built on first use."""
        if self._env is None:
            self._env = self.env_factory(num_envs=self.num_envs, for_eval=True)
        return self._env

    def evaluate(self, pl_module: pl.LightningModule, episodes: int | None = None) -> dict[str, float]:
        """Play ``episodes`` (default: the final evaluation's number) episodes with the online network."""
        device = pl_module.device

        def policy(obs: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
            x = torch.as_tensor(obs, device=device)
            if masks is None:
                return pl_module.greedy_actions(x).cpu().numpy()
            return pl_module.greedy_actions(x, torch.as_tensor(masks, device=device)).cpu().numpy()

        # Each evaluation is seeded by its index, so it does not depend on how many ran before a resume.
        seed = self.seed + 1000 * self.evaluations
        rng = np.random.default_rng(seed)
        # Eval mode for the episodes: noisy layers act with their mean weights (dqnlab.learn.networks.NoisyLinear).
        was_training = pl_module.training
        pl_module.eval()
        try:
            returns, lengths = play_episodes(
                self.env, policy, episodes or self.episodes, self.epsilon, rng, seed, self.collector.masked
            )
        finally:
            pl_module.train(was_training)
        self.evaluations += 1
        return {
            "eval/return_mean": float(returns.mean()),
            "eval/return_std": float(returns.std()),
            "eval/length_mean": float(lengths.mean()),
            "eval/episodes": float(len(returns)),
        }

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float]) -> None:
        row = {"env_steps": float(self.collector.env_steps), **metrics}
        for logger in trainer.loggers:
            logger.log_metrics(row, step=self.collector.env_steps)
        if self.video:
            self._film(trainer)

    def _film(self, trainer: pl.Trainer) -> None:
        """One more greedy episode on the render env, to ``<video_dir>/eval_env_steps_N.mp4`` and the loggers."""
        from dqnlab.envs.video import record_episode
        from dqnlab.run.tracking import log_video

        if self.render_env_factory is None or self.video_dir is None:
            raise RuntimeError("eval.video=true needs render_env_factory and video_dir (set by dqnlab.train.build)")
        if self._render_env is None:
            self._render_env = self.render_env_factory()
        module = trainer.lightning_module
        device = module.device

        def policy(obs: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
            mask = None if masks is None else torch.as_tensor(masks, device=device)
            return module.greedy_actions(torch.as_tensor(obs, device=device), mask).cpu().numpy()

        steps = self.collector.env_steps
        path, _ = record_episode(
            self._render_env,
            policy,
            self.video_dir / f"eval_env_steps_{steps}.mp4",
            epsilon=self.epsilon,
            seed=self.seed + 1000 * (self.evaluations - 1),  # the seed of the evaluation just logged
            fps=self.video_fps,
            action_mask=self.collector.masked,
        )
        self.videos.append(path)
        log_video(trainer.loggers, "eval/video", path, steps, self.video_fps)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Evaluate when the env-step counter passes the next multiple of ``every``."""
        if trainer.global_step >= trainer.max_steps:
            return  # the final evaluation in on_train_end covers this env step
        due = self._next_eval is not None and self.collector.env_steps >= self._next_eval
        if due and self.collector.updates_caught_up(trainer.global_step):  # after this env step's last update
            metrics = self.evaluate(pl_module, self.periodic_episodes)
            self._log(trainer, metrics)
            self._next_eval = (self.collector.env_steps // self.every + 1) * self.every
            if self.keep_best and (self.best is None or metrics["eval/return_mean"] >= self.best["return_mean"]):
                # The latest of equally good networks: it has trained the longest.
                self.best = {
                    "return_mean": metrics["eval/return_mean"],
                    "env_steps": self.collector.env_steps,
                    "state": {k: v.detach().clone() for k, v in pl_module.q_net.state_dict().items()},
                }

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final evaluation: what ``summary.json`` reports (of the kept network, with ``keep_best``)."""
        final = self.evaluate(pl_module)
        if self.keep_best:
            last = final["eval/return_mean"]
            # The kept network: the final one unless a periodic evaluation beat it (so "best" is never below
            # "last": the final evaluation is a candidate too). It goes to best.ckpt (DQNCheckpoint); the online
            # network stays the final one, so last.ckpt is the exact final training state.
            self.kept = {"env_steps": self.collector.env_steps, "return_mean": float(last), "last_return_mean": last}
            self.kept["state"] = {k: v.detach().clone() for k, v in pl_module.q_net.state_dict().items()}
            if self.best is not None and self.best["return_mean"] > last:
                final_state = self.kept["state"]
                pl_module.q_net.load_state_dict(self.best["state"])
                try:
                    final = self.evaluate(pl_module)  # new episodes: the next evaluation's seed
                finally:
                    pl_module.q_net.load_state_dict(final_state)
                self.kept.update(env_steps=self.best["env_steps"], return_mean=float(self.best["return_mean"]))
                self.kept["state"] = self.best["state"]
            final["eval/last_return_mean"] = last
            final["eval/best_return_mean"] = self.kept["return_mean"]
            final["eval/best_env_steps"] = float(self.kept["env_steps"])
        self.final = final
        self._log(trainer, self.final)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Close the evaluation env."""
        if self._env is not None:
            self._env.close()
            self._env = None
        if self._render_env is not None:
            self._render_env.close()
            self._render_env = None

    def state_dict(self) -> dict[str, Any]:
        """Evaluation schedule position, and the final evaluation once it ran (the final ``last.ckpt`` holds it)."""
        # With `final`, resuming a finished run (killed before summary.json, or a requeued `ckpt_path=last`)
        # writes the same summary.json instead of one without its eval/* metrics.
        return {
            "next_eval": self._next_eval,
            "evaluations": self.evaluations,
            "final": dict(self.final),
            "best": self.best,  # the network kept by keep_best (None without it)
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the evaluation schedule position."""
        self._next_eval = state_dict["next_eval"]
        self.evaluations = int(state_dict["evaluations"])
        self.final = dict(state_dict.get("final", {}))
        self.best = state_dict.get("best")
