"""EnvStepper: the callback that steps the vector env epsilon-greedily and fills the replay buffer."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from gymnasium.vector import VectorEnv
from pytorch_lightning.callbacks import Callback

from dqnlab.data import COLLECTOR_STATE_KEY
from dqnlab.data.action_masks import action_masks, random_valid_actions
from dqnlab.data.replay import ReplayBuffer
from dqnlab.envs.pipe import EnvPipe
from dqnlab.learn.rl_math import linear_schedule


def _numpy_copy(x: Any) -> np.ndarray:
    """A numpy copy of a tensor or an array (``np.array(tensor)`` warns under numpy 2)."""
    return x.detach().cpu().numpy().copy() if isinstance(x, torch.Tensor) else np.array(x)


class EnvStepper(Callback):
    """Steps the environment between gradient steps, SB3-style: ``train_freq`` env steps, then
    ``gradient_steps`` updates, so the replay ratio is ``gradient_steps / train_freq`` updates per env step
    whatever ``num_envs`` is (a vector step's overshoot is carried into the next phase).

    Args:
        env: Training vector env (NEXT_STEP autoreset).
        buffer: Replay buffer the transitions go to.
        total_env_steps: Length of the run in env steps (sets the epsilon ramp and the number of updates).
        learning_starts: Env steps of uniformly random actions before the first update.
        train_freq: Env steps collected per update phase.
        gradient_steps: Gradient steps per update phase.
        epsilon_start: Epsilon at env step 0.
        epsilon_end: Epsilon after the ramp.
        exploration_fraction: Length of the linear ramp as a fraction of ``total_env_steps``.
        exploration_steps: Length of the ramp in env steps; set, it replaces ``exploration_fraction`` (a paper's
            ramp stays the same when the run's length changes).
        exploration_start: Env steps at ``epsilon_start`` before the ramp begins (Dopamine's warm-up: its
            ``linearly_decaying_epsilon`` starts the ramp after ``min_replay_history``).
        log_every: Env steps between logged rows of rollout/train/perf metrics.
        seed: Seed for the env reset and the exploration RNG.
        async_envs: Overlap env stepping with the updates: after storing a vector step, choose and send the
            next one at once, so the envs step while the updates of this phase run (ale-py's ``send``/``recv``,
            or a worker thread). Its actions then come from the network one update phase earlier than in the
            synchronous order; the replay ratio and every counter stay the same. ``auto``: on when the learner
            is on a GPU, where the updates run asynchronously to the host.
        action_mask: Act among the valid actions of an env that puts ``action_mask`` in its info
            (:mod:`dqnlab.data.action_masks`): the random actions are drawn among them, the greedy one is the best
            of them. ``auto`` or ``true``: when ``buffer`` stores masks (:func:`dqnlab.train.build` builds it so
            when the env's first reset gives one); ``false``: never.

    """

    @property
    def state_key(self) -> str:
        """``"EnvStepper"`` for a subclass too (an exploration of your own): its checkpoints read like any other.

        Lightning's default is the class name, under which a subclass's env-step counter was missed by
        :func:`dqnlab.run.ckpt_file.peek_checkpoint`, and a resume started its metrics at env step 0.
        """
        return COLLECTOR_STATE_KEY

    def __init__(
        self,
        env: VectorEnv,
        buffer: ReplayBuffer,
        total_env_steps: int,
        learning_starts: int = 1000,
        train_freq: int = 1,
        gradient_steps: int = 1,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        exploration_fraction: float = 0.1,
        exploration_steps: int | None = None,
        exploration_start: int = 0,
        log_every: int = 1000,
        seed: int = 0,
        async_envs: bool | str = "auto",
        action_mask: bool | str = "auto",
    ) -> None:
        if train_freq < 1 or gradient_steps < 1:
            raise ValueError(
                f"collector.train_freq ({train_freq} env steps) and collector.gradient_steps "
                f"({gradient_steps}) must both be >= 1"
            )
        self.env = env
        self.buffer = buffer
        self.num_envs = env.num_envs
        self.num_actions = int(env.single_action_space.n)
        self.total_env_steps = int(total_env_steps)
        self.learning_starts = int(learning_starts)
        self.train_freq = int(train_freq)
        self.gradient_steps = int(gradient_steps)
        self.epsilon_start = float(epsilon_start)
        self.epsilon_end = float(epsilon_end)
        self.epsilon_decay_env_steps = (
            int(exploration_steps) if exploration_steps is not None else int(exploration_fraction * total_env_steps)
        )
        self.exploration_start = int(exploration_start)
        self.log_every = int(log_every)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        if async_envs not in (True, False, "auto"):
            raise ValueError(f"collector.async_envs={async_envs!r}: use auto, true or false")
        self.async_envs = async_envs
        self._async = False  # resolved in on_fit_start
        self._pipe = EnvPipe(env)
        self._in_flight: np.ndarray | None = None  # actions of a vector step sent and not yet received
        self.masked = action_mask is not False and getattr(buffer, "masks", None) is not None
        self._mask: np.ndarray | None = None  # [N, A] bool, the valid actions of self._obs (masked runs only)

        self.env_steps = 0  # env steps taken (a vector step of N envs counts N)
        self.refill_env_steps = 0  # a resume without its replay: env steps that refilled it (not in env_steps)
        self.episodes = 0
        self._obs: np.ndarray | None = None
        self._ep_return = np.zeros(self.num_envs)
        self._ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self._last_done = np.ones(self.num_envs, dtype=bool)  # the next step is an autoreset step
        self.recent_returns: deque[float] = deque(maxlen=100)
        self.recent_lengths: deque[int] = deque(maxlen=100)
        self._new_returns: list[float] = []
        self._new_lengths: list[int] = []
        self._next_log = self.log_every
        self._restored = False
        # Called after every vector step of the random prefill (the progress bar, the signal check).
        self.prefill_watchers: list[Callable[[], None]] = []
        self._last_log_time = 0.0
        self._fit_start_time = time.perf_counter()
        self.fit_start_env_steps = 0
        self._last_log_env_steps = 0
        self._last_log_gradient_steps = 0

    # ------------------------------------------------------------------ schedule
    @property
    def total_gradient_steps(self) -> int:
        """Gradient steps the whole run takes (``Trainer.max_steps``)."""
        phases = max(self.total_env_steps - self.learning_starts, 0) // self.train_freq
        return phases * self.gradient_steps

    @property
    def epsilon(self) -> float:
        """Exploration rate at the current env step."""
        t = self.env_steps - self.exploration_start
        return linear_schedule(self.epsilon_start, self.epsilon_end, self.epsilon_decay_env_steps, t)

    def env_steps_due(self, gradient_step: int) -> int:
        """Env steps that must have been taken before gradient step ``gradient_step`` (0-based) runs."""
        phase = gradient_step // self.gradient_steps
        return self.learning_starts + (phase + 1) * self.train_freq

    def updates_caught_up(self, next_gradient_step: int) -> bool:
        """Whether every update that the env steps taken so far allow has run: the next gradient step needs more.

        With several envs one vector step feeds several updates; rows and evaluations wait for the last of them,
        so an env step never gets two rows.
        """
        return self.env_steps_due(next_gradient_step) > self.env_steps

    @property
    def last_env_steps_due(self) -> int:
        """Env steps the whole run needs: no vector step is sent beyond them, even ahead of time."""
        total = self.total_gradient_steps
        return max(self.learning_starts, self.env_steps_due(total - 1) if total else 0)

    # ------------------------------------------------------------------ stepping
    def _reset(self) -> None:
        self.finish_pending_step()
        obs, info = self.env.reset(seed=self.seed)
        self.env.action_space.seed(self.seed)
        self._obs = obs
        self.buffer.start(obs)
        self._store_masks(info)
        self._last_done[:] = False

    def restart_episodes(self, seed: int) -> None:
        """Reset every env and begin new episodes mid-run (a resume whose env state or buffer was not saved).

        The unfinished episodes are dropped from the statistics; the buffer keeps what it holds and starts a
        new episode in every stream.
        """
        self.finish_pending_step()
        obs, info = self.env.reset(seed=seed)
        self._obs = obs
        self.buffer.start(obs)
        self._store_masks(info)
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._last_done[:] = False

    def _store_masks(self, info: dict[str, Any]) -> None:
        """Keep the action masks of the newest observations for acting, and store them with them (masked runs)."""
        if self.masked:
            self._mask = action_masks(info, self.num_envs, self.num_actions)
            self.buffer.write_masks(self._mask)

    @property
    def observations(self) -> np.ndarray | None:
        """The current observations of the training envs, ``[num_envs, *obs_shape]``: what :meth:`act` acts on."""
        return self._obs

    @property
    def valid_actions(self) -> np.ndarray | None:
        """``[num_envs, num_actions]`` bool, the valid actions of :attr:`observations` (envs with action masks),
        else ``None``.
        """
        return self._mask

    def act(self, pl_module: pl.LightningModule, epsilon: float) -> np.ndarray:
        """The exploration policy: one action per env for :attr:`observations`. Epsilon-greedy here.

        An extension point: a subclass given as ``collector._target_`` may redefine it (Boltzmann exploration, say),
        and every way of collecting calls it: the random prefill, the synchronous order and the overlapped one
        (``async_envs``). ``epsilon`` is the schedule's value now (1.0 during the prefill). Draw randomness from
        ``self.rng`` (checkpoints save it, so a resume stays exact), act greedily with
        ``pl_module.greedy_actions`` (a learner's own ``forward``/``q_values`` are honoured there), and keep to
        :attr:`valid_actions` when it is not ``None``.
        """
        n = self.num_envs
        mask = self._mask
        explore = self.rng.random(n) < epsilon
        if mask is None:
            random_actions = self.rng.integers(self.num_actions, size=n)
        else:
            random_actions = random_valid_actions(self.rng, mask)
        if explore.all():  # no forward pass needed (all of the prefill, most of early training)
            return random_actions
        obs = torch.as_tensor(self._obs, device=pl_module.device)
        if mask is None:
            greedy = pl_module.greedy_actions(obs).cpu().numpy()  # one device-to-host copy per vector step
        else:
            greedy = pl_module.greedy_actions(obs, torch.as_tensor(mask, device=pl_module.device)).cpu().numpy()
        return np.where(explore, random_actions, greedy)

    def step(self, pl_module: pl.LightningModule, random: bool = False) -> None:
        """One vector step of all envs: act, store the transitions, track episodes.

        With ``async_envs`` the step may already be in flight (sent at the end of the previous call); the next
        one is then chosen and sent before this returns, unless the run needs no more env steps.
        """
        if self._in_flight is None:
            self._send(self.act(pl_module, 1.0 if random else self.epsilon))
        self._receive()
        if self._async and self.env_steps < self.last_env_steps_due:
            # Prefill takes random actions while env_steps < learning_starts, as the synchronous order does.
            self._send(self.act(pl_module, 1.0 if self.env_steps < self.learning_starts else self.epsilon))

    def finish_pending_step(self) -> None:
        """Receive and store a vector step still in flight (before a checkpoint, a reset or the end)."""
        if self._in_flight is not None:
            self._receive()

    def _send(self, actions: np.ndarray) -> None:
        self._pipe.send(actions)
        self._in_flight = actions

    def _receive(self) -> None:
        actions, self._in_flight = self._in_flight, None
        assert actions is not None
        next_obs, rewards, terminated, truncated, info = self._pipe.recv()
        # Reporting uses the raw game score and full games where the env learns from clipped rewards and
        # life losses (Atari); plain envs report what they learn from.
        raw = info.get("raw_reward", rewards)
        game_over = info.get("game_over", terminated | truncated)
        # Only a game over resets the env (a lost life is terminated for learning, the game goes on).
        self.buffer.add(actions, rewards, terminated, truncated, next_obs, resets=game_over)
        if self.masked:  # after an autoreset: the reset's mask, of the new episode's first observation
            self._store_masks(info)
        live = ~self._last_done  # an autoreset step belongs to no episode
        self._ep_return += np.where(live, raw, 0.0)
        self._ep_length += live
        for i in np.flatnonzero(game_over & live):
            self._new_returns.append(float(self._ep_return[i]))
            self._new_lengths.append(int(self._ep_length[i]))
            self._ep_return[i] = 0.0
            self._ep_length[i] = 0
            self.episodes += 1
        self._last_done = game_over  # the env autoresets at the next step only after a game over
        self._obs = next_obs
        self.env_steps += self.num_envs

    def step_until(self, pl_module: pl.LightningModule, env_steps: int, random: bool = False) -> None:
        """Step until ``env_steps`` env steps have been taken in total."""
        while self.env_steps < env_steps:
            self.step(pl_module, random=random)

    def prefill(self, pl_module: pl.LightningModule, env_steps: int, random: bool = True) -> None:
        """:meth:`step_until` before training starts, calling :attr:`prefill_watchers` after each vector step.

        A watcher may raise to stop (a signal during the prefill ends the run there).
        """
        while self.env_steps < env_steps:
            self.step(pl_module, random=random)
            for watch in self.prefill_watchers:
                watch()

    @property
    def restored(self) -> bool:
        """Whether this run continues from a checkpoint (no random prefill then, unless its buffer was left out)."""
        return self._restored

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reset the env and prefill ``learning_starts`` random env steps (skipped when resuming)."""
        self._fit_start_time = time.perf_counter()
        self.fit_start_env_steps = self.env_steps  # restored already on a resume: this process's steps follow
        self._async = self.async_envs is True or (self.async_envs == "auto" and pl_module.device.type == "cuda")
        self._pipe.background = self._async
        if not self._restored:
            self._reset()
            self.prefill(pl_module, self.learning_starts)
        self._last_log_time = time.perf_counter()
        self._last_log_env_steps = self.env_steps
        self._last_log_gradient_steps = trainer.global_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Collect this update phase's env steps before its first gradient step."""
        due = self.env_steps_due(trainer.global_step)
        if self.env_steps < due:
            self.step_until(pl_module, due)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Log a row of metrics every ``log_every`` env steps, after the last update of the env steps taken."""
        if self.env_steps >= self._next_log and self.updates_caught_up(trainer.global_step):
            self.log_row(trainer, pl_module)
            self._next_log = (self.env_steps // self.log_every + 1) * self.log_every

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the last partial row, if anything happened since the last row (no empty row at a logged step)."""
        self.finish_pending_step()
        if self.env_steps > self._last_log_env_steps or trainer.global_step > self._last_log_gradient_steps:
            self.log_row(trainer, pl_module)

    # ------------------------------------------------------------------ logging
    def log_row(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Write rollout, train and perf metrics for the span since the last row, at x = env steps."""
        now = time.perf_counter()
        dt = max(now - self._last_log_time, 1e-9)
        metrics: dict[str, float] = {
            "env_steps": float(self.env_steps),
            "gradient_steps": float(trainer.global_step),
            "rollout/epsilon": self.epsilon,
            "rollout/episodes": float(self.episodes),
            "perf/env_steps_per_s": (self.env_steps - self._last_log_env_steps) / dt,
            "perf/updates_per_s": (trainer.global_step - self._last_log_gradient_steps) / dt,
            "perf/wall_s": now - self._fit_start_time,  # since this process started fitting (prefill included)
        }
        if self._new_returns:
            metrics["rollout/episode_return"] = float(np.mean(self._new_returns))
            metrics["rollout/episode_length"] = float(np.mean(self._new_lengths))
            self.recent_returns.extend(self._new_returns)
            self.recent_lengths.extend(self._new_lengths)
            self._new_returns.clear()
            self._new_lengths.clear()
        if self.recent_returns:
            # The MinAtar paper's (and most papers') training curve: the mean of the last 100 episodes.
            metrics["rollout/return_ma100"] = float(np.mean(self.recent_returns))
        metrics.update(pl_module.pop_metrics())
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self.env_steps)
            # Lightning flushes by its own step count, which here is env steps: flush per row so metrics.csv
            # and TensorBoard files follow the run live (a row every log_every env steps is cheap to write).
            logger.save()
        self._last_log_time = now
        self._last_log_env_steps = self.env_steps
        self._last_log_gradient_steps = trainer.global_step
        return metrics

    def close(self) -> None:
        """Stop the stepping thread, if any (the env itself is closed by its owner)."""
        self._pipe.close()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Counters, exploration RNG, episode bookkeeping and the replay buffer, for an exact resume.

        A vector step in flight is received and stored first: a checkpoint never holds half a step. Arrays are
        stored as tensors and the RNG state as plain ints, so the checkpoint loads with ``weights_only=True``.
        """
        self.finish_pending_step()
        return {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "rng": self.rng.bit_generator.state,  # PCG64: a dict of str and int
            "obs": torch.from_numpy(np.array(self._obs)),
            "ep_return": torch.from_numpy(np.array(self._ep_return)),
            "ep_length": torch.from_numpy(np.array(self._ep_length)),
            "last_done": torch.from_numpy(np.array(self._last_done)),
            "recent_returns": list(self.recent_returns),
            "recent_lengths": list(self.recent_lengths),
            "next_log": self._next_log,
            "new_returns": list(self._new_returns),  # finished since the last logged row
            "new_lengths": list(self._new_lengths),
            "buffer": self.buffer.state_dict(),  # left out of the file with checkpoint.save_buffer=false
            **({"action_mask": torch.from_numpy(self._mask.copy())} if self._mask is not None else {}),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the env itself is restored by the caller (see ``dqnlab.train``)."""
        self.env_steps = int(state_dict["env_steps"])
        self.episodes = int(state_dict["episodes"])
        self.rng.bit_generator.state = state_dict["rng"]
        # Tensors (newer checkpoints) and numpy arrays (older ones) alike, as numpy copies.
        self._obs, self._ep_return, self._ep_length, self._last_done = (
            _numpy_copy(state_dict[k]) for k in ("obs", "ep_return", "ep_length", "last_done")
        )
        self.recent_returns = deque(state_dict["recent_returns"], maxlen=100)
        self.recent_lengths = deque(state_dict["recent_lengths"], maxlen=100)
        self._next_log = int(state_dict["next_log"])
        self._new_returns = list(state_dict.get("new_returns", []))
        self._new_lengths = list(state_dict.get("new_lengths", []))
        if "buffer" in state_dict:  # absent: the checkpoint was saved without it (see dqnlab.run.checkpoint)
            self.buffer.load_state_dict(state_dict["buffer"])
        if self.masked:  # a checkpoint of a run without masks: every action valid until the next step's info
            saved = state_dict.get("action_mask")
            full = np.ones((self.num_envs, self.num_actions), dtype=bool)
            self._mask = _numpy_copy(saved).astype(bool) if saved is not None else full
        self._restored = True
