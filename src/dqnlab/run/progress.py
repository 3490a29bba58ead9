"""Progress in env steps (Lightning's own bar counts gradient steps, which is not what a user waits for).

In a terminal a rich bar redraws in place, and ``train.log`` gets a plain progress line at a low rate; without
a terminal (a pipe, ``nohup``, a cluster job's log) only the plain lines are written, to the console and the
log alike. The random prefill (``collector.learning_starts``) has its own bar: on Atari it is a minute long.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from dqnlab.data.collect import EnvStepper

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03``: hours only when there are any; ``-:--`` when unknown."""
    if not seconds >= 0 or seconds == float("inf"):
        return "-:--"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(
    phase: str, done: int, total: int, elapsed_s: float, rate: float, ret: str, eps: float, width: int = 200
) -> str:
    """One progress line, its least important parts dropped first to fit ``width`` columns.

    Args:
        phase: ``"train"`` or ``"prefill"`` (random actions before the first update).
        done: Env steps taken so far (the prefill's own, for the prefill).
        total: Env steps of this phase in all.
        elapsed_s: Seconds since this phase started.
        rate: Env steps per second in this phase.
        ret: The return of the last finished training episode, formatted (``"-"`` before the first).
        eps: Epsilon now.
        width: Columns available.
    """
    eta = (total - done) / rate if rate > 0 else float("inf")
    what = "env steps" if phase == "train" else "random env steps (prefill)"
    parts = [
        f"{done:,}/{total:,} {what}",
        f"{format_duration(elapsed_s)} eta {format_duration(eta)}",
        f"train return {ret}" if phase == "train" else "",
        f"eps {eps:.3f}" if phase == "train" else "",
        f"{rate:,.0f} steps/s",
    ]
    parts = [p for p in parts if p]
    line = "  ".join(parts)
    while len(line) > width and len(parts) > 2:  # keep the count, elapsed time and ETA; drop speed, eps, return
        parts.pop()
        line = "  ".join(parts)
    return line


def file_only_logger() -> logging.Logger:
    """A logger that writes to the run's log files (Hydra's ``train.log``) and not to the console."""
    logger = logging.getLogger("dqnlab.run.progress.file")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return logger


class EnvStepProgressBar(Callback):
    """Env steps done / total, elapsed time and ETA, the last training episode's return, epsilon, env steps/s.

    Put it before the :class:`EnvStepper` in the callback list, so that its bar is open during the prefill.

    Args:
        collector: The env stepper whose counters are shown.
        refresh_s: Seconds between redraws of the bar (it never costs a host sync).
        line_every_s: Seconds between plain progress lines (``train.log``; the console without a terminal).
        console: The console to draw on (default: the terminal's).
    """

    def __init__(
        self,
        collector: EnvStepper,
        refresh_s: float = 0.25,
        line_every_s: float = 30.0,
        console: Console | None = None,
    ) -> None:
        self.collector = collector
        self.refresh_s = refresh_s
        self.line_every_s = line_every_s
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task: Any = None
        self._lines: logging.Logger = log
        self._phase = "train"
        self._last_draw = 0.0
        self._last_line = 0.0
        self._t0 = 0.0
        self._steps0 = 0
        self._total = 0

    # ------------------------------------------------------------------ drawing
    def _start_phase(self, phase: str) -> None:
        c = self.collector
        self._phase = phase
        self._t0 = self._last_line = time.perf_counter()
        self._steps0 = c.env_steps if phase == "train" else 0
        self._total = c.total_env_steps if phase == "train" else c.learning_starts
        if not self.console.is_terminal:
            return
        if self._progress is None:
            self._progress = Progress(
                BarColumn(bar_width=20),  # resized to what the numbers leave, at each redraw
                TextColumn("{task.fields[line]}"),
                console=self.console,
                transient=False,
                # rich redraws from its own thread, by default 10 times a second: ~0.35 s of a 15 s CartPole run.
                refresh_per_second=2,
                expand=False,
            )
            self._progress.start()
        else:
            self._progress.stop_task(self._task)
            self._progress.update(self._task, visible=False)
            self._progress.refresh()
        self._task = self._progress.add_task(phase, total=max(self._total, 1), completed=0, line="")
        self._draw()

    def _line(self, width: int) -> str:
        c = self.collector
        elapsed = time.perf_counter() - self._t0
        done, total = c.env_steps, self._total
        rate = (done - self._steps0) / max(elapsed, 1e-9)
        rets = c._new_returns or list(c.recent_returns)[-1:]
        ret = f"{rets[-1]:.1f}" if rets else "-"
        return progress_line(self._phase, done, total, elapsed, rate, ret, c.epsilon, width)

    def _draw(self) -> None:
        if self._progress is not None:
            width = self.console.width
            # The numbers first: the bar takes what is left, at most 20 columns, none below 8.
            line = self._line(width - 9)
            bar = min(20, width - len(line) - 2)
            self._progress.columns[0].bar_width = bar if bar >= 8 else 0
            self._progress.update(self._task, completed=self.collector.env_steps, line=line)

    def _maybe_line(self, now: float) -> None:
        if now - self._last_line >= self.line_every_s:
            self._last_line = now
            self._lines.info("%s", self._line(200))

    def _tick(self) -> None:
        now = time.perf_counter()
        if now - self._last_draw >= self.refresh_s:
            self._last_draw = now
            self._draw()
            self._maybe_line(now)

    def _close(self) -> None:
        if not self._t0:  # no phase began (a resume that failed while loading): no time to report
            return
        if self._progress is not None:
            self._draw()
            self._progress.stop()
            self._progress = None
        self._lines.info("%s", self._line(200))

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open the prefill's bar; the collector calls back during the prefill."""
        # In a terminal the bar is the console's progress, the plain lines go to train.log only.
        self._lines = file_only_logger() if self.console.is_terminal else log
        c = self.collector
        if not c.restored and c.learning_starts > 0:
            self._start_phase("prefill")
            c.prefill_watchers.append(self._tick)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open the training bar."""
        if self._tick in self.collector.prefill_watchers:
            self.collector.prefill_watchers.remove(self._tick)
            self._lines.info("%s", self._line(200))
        self._start_phase("train")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Redraw at most every ``refresh_s`` seconds."""
        self._tick()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Close the bar."""
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Close the bar where training stopped (a signal, a non-finite loss, an error)."""
        if self._tick in self.collector.prefill_watchers:
            self.collector.prefill_watchers.remove(self._tick)
        self._close()
