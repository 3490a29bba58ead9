"""Ctrl-C and SIGTERM during a run: stop at a safe point, save what can be saved, say so, exit like a shell.

One :class:`SignalStop` is installed for the whole of ``trainer.fit`` (the random prefill, training and the
final evaluation):

- during the prefill a signal ends the run after the current vector step (no update has run: nothing to save);
- during training the checkpoint callback finishes the gradient step, writes ``last.ckpt`` and stops
  (:class:`Interrupted`, exit status ``128 + signal``: 130 for SIGINT, 143 for SIGTERM);
- a second signal stops at once (:class:`HardStop`), also in the middle of a checkpoint write, whose temp file
  is then removed (the atomic write): the message says which checkpoint is on disk and which one is not.

In a SLURM job launched by submitit, ``SIGUSR2`` (the time limit is near, or a preemption) is taken over from
submitit's handler: during training ``last.ckpt`` is written first and submitit's handler runs after it (it
requeues the job and exits); elsewhere (set-up, prefill, final evaluation) it runs at once. ``SIGTERM`` together
with it (SLURM's preemption sends both) is not a second signal. See :mod:`dqnlab.cluster.slurm`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# submitit's signal for "checkpoint and requeue" (SLURM sends it before the time limit: hydra.launcher.signal_delay_s).
REQUEUE_SIGNAL = signal.SIGUSR2


class Interrupted(SystemExit):
    """Training stopped on a signal at a safe point; exits with ``128 + signal``, like a shell.

    A ``SystemExit``: Hydra and Lightning let it through, ``finally`` blocks run (envs close, W&B finishes),
    and the process ends with status 130 (SIGINT) or 143 (SIGTERM) without a traceback.
    """

    def __init__(self, signum: int, checkpoint: str | None, env_steps: int, during: str = "training") -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint
        self.env_steps = env_steps
        self.during = during

    def __str__(self) -> str:
        """The message: what happened, what was saved and how to go on."""
        name = signal.Signals(self.signum).name
        if self.during == "prefill":
            return (
                f"stopped by {name} during the random prefill, at env step {self.env_steps} (before the first "
                "update): nothing was saved; run the same command again to start over"
            )
        if self.checkpoint is None:
            return (
                f"stopped by {name} at env step {self.env_steps}: no checkpoint saved "
                "(checkpoints or checkpoint.handle_signals are off)"
            )
        return (
            f"stopped by {name} at env step {self.env_steps}: saved {self.checkpoint}; "
            f"resume with `python train.py ckpt_path={self.checkpoint}` (the run's own config comes back)"
        )


class HardStop(SystemExit):
    """A second signal: stop at once, without saving; the message says what is on disk."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        """The message."""
        return self.message


def exit_at_once_on_more_signals(stop: HardStop | Interrupted) -> None:
    """The run has stopped and the process is ending: one more Ctrl-C/SIGTERM ends it at once, quietly.

    The run's files are complete by now (atomic writes); what is left is closing envs and loggers, which a
    user who presses Ctrl-C again does not want to wait for, nor see a traceback from.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    saved = getattr(stop, "checkpoint", None)
    what = f"{saved} is saved" if saved else "see above for what is saved"

    def exit_now(signum: int, frame: FrameType | None) -> None:
        print(f"\n{signal.Signals(signum).name} again while exiting: stopped at once ({what})", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(stop.code if isinstance(stop.code, int) else 128 + signum)

    for signum in SIGNALS:
        signal.signal(signum, exit_now)


def find_stop(exc: BaseException) -> HardStop | Interrupted | None:
    """The :class:`HardStop` or :class:`Interrupted` behind ``exc`` (an interrupted ``torch.save`` wraps it)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, HardStop | Interrupted):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class SignalStop:
    """The SIGINT/SIGTERM handlers of a run and what they have seen.

    Attributes:
        signum: The first signal received and not yet acted on (``None``: none).
        writing: The checkpoint file being written now, if any (set by the checkpoint callback).
        saved: The newest checkpoint written by this run, with its env step.
        phase: ``setup`` (building the run), ``prefill``, ``training`` or ``final`` (the final evaluation,
            where a signal stops at once).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.writing: str | None = None
        self.saved: tuple[str, int] | None = None
        self.phase = "setup"
        self.requeue = False  # SIGUSR2 seen: after saving, submitit's handler requeues the job
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle SIGINT and SIGTERM from now on (main thread only; elsewhere this does nothing)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            if signum not in self._previous:
                self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        # SIGUSR2 only where someone handles it already (submitit in a SLURM job); elsewhere it keeps its default.
        if REQUEUE_SIGNAL not in self._previous and callable(signal.getsignal(REQUEUE_SIGNAL)):
            self._previous[REQUEUE_SIGNAL] = signal.getsignal(REQUEUE_SIGNAL)
        if REQUEUE_SIGNAL in self._previous:
            signal.signal(REQUEUE_SIGNAL, self._on_requeue_signal)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_disk(self) -> str:
        """What a hard stop leaves: the checkpoint being written is not there, the newest one written is."""
        parts = []
        if self.writing is not None:
            parts.append(f"{Path(self.writing).name} was being written and was not saved (no partial file is left)")
        if self.saved is not None:
            path, env_steps = self.saved
            parts.append(f"the newest checkpoint on disk is {path} (env step {env_steps})")
        else:
            parts.append("this run saved no checkpoint")
        return "; ".join(parts)

    def hand_over(self, saved: str | None = None) -> None:
        """Run submitit's ``SIGUSR2`` handler now (it requeues the job and exits, or raises when out of requeues)."""
        handler = self._previous.get(REQUEUE_SIGNAL)
        what = f"saved {saved}" if saved else "nothing to save yet"
        log.warning(
            "SIGUSR2 (SLURM: time limit near, or preempted): %s; submitit requeues the job unless it has timed out "
            "max_num_timeout times already",
            what,
        )
        self.requeue = False
        self.signum = None
        if callable(handler):
            handler(REQUEUE_SIGNAL, None)

    def _on_requeue_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.phase != "training":  # set-up, prefill, final evaluation: nothing newer to save than what is on disk
            self.hand_over()
            return
        self.requeue = True
        if self.signum is None:
            self.signum = signum
            log.warning("SIGUSR2 received: saving a checkpoint after this gradient step, then requeueing (SLURM)")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        final = self.phase == "final"
        if self.signum is not None and (self.requeue or self.signum == REQUEUE_SIGNAL):
            return  # SLURM's preemption sends SIGTERM next to SIGUSR2: one stop, already under way
        if self.signum is not None or final:
            self.restore()  # a third Ctrl-C gets Python's default behaviour
            when = "during the final evaluation" if final and self.signum is None else f"by a second {name}"
            raise HardStop(signum, f"stopped at once {when}: {self.on_disk()}")
        self.signum = signum
        if self.phase == "training":
            then = "saving a checkpoint after this gradient step, then stopping"
        else:  # no update has run: there is nothing worth saving yet
            then = "stopping at the next env step, before training starts (nothing to save yet)"
        log.warning("%s received: %s (send it again to stop at once without saving)", name, then)


class StopOnSignal(Callback):
    """Acts on :class:`SignalStop` where no checkpoint callback does: the prefill, and runs without checkpoints.

    Args:
        stop: The run's signal handlers.
        collector: The env stepper (its prefill is watched; its counter names the env step).
        checkpointing: Whether a checkpoint callback saves and stops after a signal during training.
    """

    def __init__(self, stop: SignalStop, collector: Any, checkpointing: bool) -> None:
        self.stop = stop
        self.collector = collector
        self.checkpointing = checkpointing

    def _check_prefill(self) -> None:
        if self.stop.signum is not None:
            signum, self.stop.signum = self.stop.signum, None
            stop = Interrupted(signum, None, self.collector.env_steps, during="prefill")
            log.warning("%s", stop)
            raise stop

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Watch the prefill (it runs in ``on_fit_start``, before Lightning's training loop)."""
        self.stop.phase = "prefill"
        self.collector.prefill_watchers.append(self._check_prefill)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Training begins: re-install the handlers over Lightning's SIGTERM handler (it would raise at once)."""
        if self._check_prefill in self.collector.prefill_watchers:
            self.collector.prefill_watchers.remove(self._check_prefill)
        self._check_prefill()  # a signal during the last prefill step or Lightning's set-up
        self.stop.phase = "training"
        self.stop.install()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Without checkpoints, stop after this gradient step."""
        if self.stop.signum is not None and not self.checkpointing:
            if self.stop.requeue:  # SLURM's SIGUSR2 without checkpoints: requeued, the job starts over
                self.stop.hand_over()
            signum, self.stop.signum = self.stop.signum, None
            stop = Interrupted(signum, None, self.collector.env_steps)
            log.warning("%s", stop)
            raise stop

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Training is over: a signal during the final evaluation stops at once."""
        self.stop.phase = "final"
