"""Checkpoints that resume a run exactly, written atomically; SIGINT/SIGTERM save one and stop cleanly.

What a checkpoint holds (Lightning's keys plus ours), and who puts it there:

- ``state_dict``: online and target networks (:class:`~dqnlab.learn.module.DQNModule`); ``optimizer_states`` and
  ``loops`` (``global_step`` = gradient steps): Lightning.
- ``callbacks["EnvStepper"]``: env-step counter (the epsilon schedule follows it), exploration RNG, episode
  bookkeeping, the current observations and the replay buffer with its sampling generator
  (:class:`~dqnlab.data.collect.EnvStepper`); the buffer is left out with ``checkpoint.save_buffer=false``.
- ``callbacks["TargetNetworkSync"]``, ``callbacks["Evaluator"]``: their schedules.
- ``callbacks["ResumeState"]``: Python, NumPy and torch RNG states and the training env's own state
  (:class:`~dqnlab.run.resume.ResumeState`); ``dqnlab["config"]``: the resolved config, so
  ``scripts/evaluate.py`` rebuilds the env and network from the checkpoint alone.

Lightning restores callback states by ``state_key``, the class name for these callbacks, so the keys stay
stable across runs whatever their settings.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from fsspec.utils import get_protocol
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from dqnlab.data import COLLECTOR_STATE_KEY
from dqnlab.data.collect import EnvStepper
from dqnlab.errors import ConfigError, WriteFailed
from dqnlab.io import atomic_open
from dqnlab.run.ckpt_file import check_checkpoint
from dqnlab.run.stopping import Interrupted, SignalStop, find_stop

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
BEST = "best.ckpt"  # the network eval.keep_best kept (DQNCheckpoint.write_kept)


# ---------------------------------------------------------------------------------------------- writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, streaming to a temp file beside the target and renaming it into place.

    Lightning's own ``_atomic_save`` serializes the whole checkpoint into memory first (twice the replay
    buffer's size) and, on local disks, its fsspec transaction stages the file in the system temp dir and
    *moves* it, which is a copy, not an atomic rename, when that dir is on another file system. Here a
    reader, a crash or a kill sees the old file or the complete new one, never a half-written one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (remote paths go through Lightning's writer)."""
        if storage_options is not None or get_protocol(str(path)) not in ("file", "local"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        try:
            with atomic_open(path) as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as exc:
            # torch's zip writer turns a short write into "unexpected pos"; any other RuntimeError is not the disk's
            short = isinstance(exc, RuntimeError) and "unexpected pos" in str(exc)
            if find_stop(exc) is not None or not (isinstance(exc, OSError) or short):
                raise  # a second Ctrl-C inside torch.save reports itself; a bug is a bug
            raise write_failed(Path(path), checkpoint, exc) from exc

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Read a local checkpoint memory-mapped: a resume copies the replay from the file straight into the
        buffer already allocated, instead of holding a second buffer's worth of memory first (remote: Lightning).
        """
        if get_protocol(str(path)) not in ("file", "local"):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        where = map_location if map_location is not None else (lambda storage, loc: storage)  # Lightning's default
        try:
            return torch.load(path, map_location=where, mmap=True, weights_only=bool(weights_only))
        except RuntimeError:  # mmap needs torch.save's zip format; older files load the plain way
            return torch.load(path, map_location=where, weights_only=bool(weights_only))


def write_failed(path: Path, checkpoint: dict[str, Any], exc: BaseException) -> WriteFailed:
    """The one-line error of a checkpoint that could not be written: the file, the cause, the space left, what
    to change (the replay buffer's share of each file) and how to go on.
    """
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:,.1f} MiB free there"
    except OSError:
        free = ""
    buffer = (checkpoint.get("callbacks") or {}).get(COLLECTOR_STATE_KEY, {}).get("buffer")
    nbytes = sum(t.nbytes for t in _tensors(buffer))
    less = f"checkpoint.save_buffer=false (the replay is {nbytes / 2**20:,.1f} MiB of each file), " if nbytes else ""
    if isinstance(exc, OSError):
        cause = f"{exc.strerror or exc}, errno {exc.errno}"
    else:  # torch's zip writer reports a short write as "unexpected pos": the OS refused the rest
        cause = "the file system took only part of it: a full disk, a quota or a file size limit"
    return WriteFailed(
        f"could not write the checkpoint {path} ({cause}{free}); the file it was to replace is intact, and "
        f"checkpoints already written are untouched. Free space, or write less: {less}checkpoint.keep=1 or 0, or "
        f"a larger checkpoint.every; then resume: python train.py hydra.run.dir={path.parent.parent} ckpt_path=last"
    )


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


# ---------------------------------------------------------------------------------------------- RNG and env state
class DQNCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` paced in env steps, plus ``last.ckpt``, signal handling and buffer control.

    - At every multiple of ``every`` env steps (after the last update those env steps allow) it writes
      ``env_steps_N.ckpt`` (``keep`` of them are kept) and refreshes ``last.ckpt``; at the end of training it
      writes ``last.ckpt`` once more. Files are written atomically by :class:`AtomicCheckpointIO`.
    - On SIGINT or SIGTERM during training (seen by the run's :class:`~dqnlab.run.stopping.SignalStop`) it finishes
      the current gradient step, writes ``last.ckpt`` and raises :class:`~dqnlab.run.stopping.Interrupted` (exit
      status 130 or 143, no final evaluation, no ``summary.json``). A second signal stops at once without saving.

    Args:
        collector: The env stepper (env-step counter and replay ratio).
        dirpath: Directory of the checkpoint files.
        every: Env steps between checkpoints (0: only ``last.ckpt`` at the end and on a signal).
        keep: Periodic ``env_steps_N.ckpt`` files kept: -1 all, 1 the newest, 0 none (``last.ckpt`` only).
        save_buffer: Include the replay buffer (the only way to an exact resume; it may be gigabytes).
        handle_signals: Save and stop on SIGINT/SIGTERM (main thread only).
        stop: The run's signal handlers (``None``: a private set, installed when training starts).

    """

    def __init__(
        self,
        collector: EnvStepper,
        dirpath: str,
        every: int = 10_000,
        keep: int = -1,
        save_buffer: bool = True,
        handle_signals: bool = True,
        stop: SignalStop | None = None,
    ) -> None:
        if every < 0:
            raise ConfigError(f"checkpoint.every={every} must be >= 0 env steps (0 = only last.ckpt)")
        if keep not in (-1, 0, 1):
            # Lightning keeps "the k best" only by a monitored metric; by time it knows all, none or the newest.
            raise ConfigError(f"checkpoint.keep={keep} is not supported: use -1 (all), 0 (none) or 1 (the newest)")
        super().__init__(
            dirpath=dirpath,
            # env_steps_20000.ckpt: no "=" in the name, which Hydra overrides would need quoted (ckpt_path=...)
            filename="env_steps_{env_steps}",
            auto_insert_metric_name=False,
            save_last=True,
            save_top_k=keep if every else 0,
            every_n_train_steps=0,  # paced in env steps by on_train_batch_end, not in gradient steps
            every_n_epochs=0,
            enable_version_counter=False,  # a resume in the same dir overwrites last.ckpt, never last-v1.ckpt
        )
        self.collector = collector
        self.every_env_steps = int(every)
        self.save_buffer = bool(save_buffer)
        self.handle_signals = bool(handle_signals)
        self.stop = stop if stop is not None else SignalStop()
        self._own_stop = stop is None
        self._warned_buffer = False
        self._next_save = 0  # env step of the next periodic checkpoint (set when training starts)

    @property
    def last_path(self) -> Path:
        """Where ``last.ckpt`` goes."""
        return Path(str(self.dirpath)) / LAST

    # ------------------------------------------------------------------ what goes in
    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        # File names in env steps (env_steps_20000.ckpt): gradient steps are not what a user counts.
        candidates = super()._monitor_candidates(trainer)
        candidates["env_steps"] = torch.tensor(self.collector.env_steps)
        return candidates

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Drop the replay buffer from the checkpoint when ``save_buffer`` is off (warned once)."""
        if self.save_buffer:
            return
        collector_state = checkpoint.get("callbacks", {}).get(self.collector.state_key, {})
        collector_state.pop("buffer", None)
        if not self._warned_buffer:
            self._warned_buffer = True
            log.warning(
                "checkpoints leave out the replay buffer (checkpoint.save_buffer=false): a resume refills %d env "
                "steps and does not reproduce the uninterrupted run",
                self.collector.learning_starts,
            )

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # Loggers first (metrics.csv is only written on save): a resume after a kill keeps the metrics rows up to
        # its checkpoint from the file, so they must be on disk before the checkpoint is. (Nothing new: a no-op.)
        for logger in trainer.loggers:
            logger.save()
        self.stop.writing = filepath  # a second Ctrl-C now says which file is not written
        super()._save_checkpoint(trainer, filepath)
        self.stop.writing = None
        self.stop.saved = (filepath, self.collector.env_steps)

    def write_last(self, trainer: pl.Trainer, force: bool = False) -> str:
        """Write ``last.ckpt`` now (unless it already holds this gradient step and not ``force``); return its path."""
        if force or self._last_global_step_saved != trainer.global_step or not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return self.last_model_path

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the SIGINT/SIGTERM handlers for the training loop (after Lightning registered its own)."""
        super().on_train_start(trainer, pl_module)
        # At every multiple of `every` env steps (env_steps_10000.ckpt, ...), counted from env step 0, after the
        # last update those env steps allow; a resume goes on from the checkpoint's own env step.
        every = self.every_env_steps
        self._next_save = (self.collector.env_steps // every + 1) * every if every else 0
        if self.handle_signals and self._own_stop:
            self.stop.install()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Periodic checkpoint; after a signal, ``last.ckpt`` and :class:`Interrupted`.

        Lightning runs checkpoint callbacks after all others, so what is saved is the state at the end of
        this gradient step, every other callback's hooks included.
        """
        super().on_train_batch_end(trainer, pl_module, *args)  # Lightning's periodic saving is off (env steps here)
        c = self.collector
        # Not at the last gradient step: on_train_end writes last.ckpt then, after the final evaluation (one
        # write of a buffer that may be gigabytes, not two).
        due = self.every_env_steps and c.env_steps >= self._next_save and trainer.global_step < trainer.max_steps
        if due and c.updates_caught_up(trainer.global_step) and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
            self._next_save = (c.env_steps // self.every_env_steps + 1) * self.every_env_steps
        if self.stop.signum is None or not self.handle_signals:
            return
        signum = self.stop.signum
        path = self.write_last(trainer)
        if self.stop.requeue:  # SLURM's SIGUSR2: submitit requeues the job, which resumes from last.ckpt
            self.stop.hand_over(path)
        self.stop.signum = None
        stop = Interrupted(signum, path, self.collector.env_steps)
        log.warning("%s", stop)
        raise stop

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the final ``last.ckpt`` (after the final evaluation, which it then includes)."""
        # Also when a periodic checkpoint was taken at this very step: the final evaluation and the last metrics
        # rows came after it, and a resume of the finished run (a requeued job, or one killed before summary.json
        # was written) needs them to write the same summary.json.
        self.write_last(trainer, force=True)
        self.write_kept(trainer, pl_module)

    @property
    def best_path(self) -> Path:
        """Where the network ``eval.keep_best`` kept goes."""
        return Path(str(self.dirpath)) / BEST

    def write_kept(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``best.ckpt``: the network ``eval.keep_best`` kept, for playing and exporting, not resuming.

        It has the online (and target) weights of the kept network, the run's config and the kept network's
        env step and score (``dqnlab["kept"]``); no optimizer, replay or RNG state, so ``ckpt_path=`` refuses it.
        """
        kept = next((cb.kept for cb in trainer.callbacks if getattr(cb, "kept", None)), None)  # type: ignore[attr-defined]
        if kept is None:
            return
        state = pl_module.state_dict()
        for name, value in kept["state"].items():
            state[f"q_net.{name}"] = state[f"target_net.{name}"] = value
        ckpt: dict[str, Any] = {"pytorch-lightning_version": pl.__version__, "global_step": trainer.global_step}
        ckpt |= {"state_dict": state, "callbacks": {COLLECTOR_STATE_KEY: {"env_steps": int(kept["env_steps"])}}}
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if type(callback).__name__ == "ResumeState":  # the run's config, where evaluate.py looks for it
                callback.on_save_checkpoint(trainer, pl_module, ckpt)
        pl_module.on_save_checkpoint(ckpt)  # how the network computes (dqn_compute)
        ckpt.setdefault("dqnlab", {})["kept"] = {k: kept[k] for k in ("env_steps", "return_mean", "last_return_mean")}
        trainer.strategy.checkpoint_io.save_checkpoint(ckpt, self.best_path)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Put the previous signal handlers back (when this callback installed them)."""
        if self._own_stop:
            self.stop.restore()
        super().teardown(trainer, pl_module, stage)


# ---------------------------------------------------------------------------------------------- resuming
def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """The file to resume from: ``ckpt_path`` itself, or for ``last`` the run dir's ``checkpoints/last.ckpt``.

    ``last`` without a ``last.ckpt`` starts fresh (logged): a requeued or repeated job command then resumes
    when there is something to resume and starts otherwise. A ``last.ckpt`` that cannot be resumed (truncated,
    corrupt) is an error, never a reason to start afresh over it.

    Raises:
        ConfigError: ``last.ckpt`` exists but is not a checkpoint of a dqnlab run; it is left untouched.

    """
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        return str(Path(ckpt_path).expanduser())
    last = checkpoint_dir / LAST
    if last.is_file():
        problems = check_checkpoint(str(last), key="ckpt_path=last")
        if problems:
            raise ConfigError(problems[0])
        return str(last)
    log.info("ckpt_path=last: no %s yet, starting fresh", last)
    return None
