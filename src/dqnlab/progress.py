"""A progress bar in env steps (Lightning's own counts gradient steps, which is not what a user waits for)."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dqnlab.collect import EnvStepper


def _console() -> Console:
    """The terminal's console; in a log file (no terminal) a wide one, as rich would cut the line at 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


class EnvStepProgressBar(Callback):
    """Rich progress bar: env steps / total, last episode return, epsilon, env steps/s and ETA.

    Args:
        collector: The env stepper whose counters are shown.
        refresh_s: Seconds between redraws (the bar never costs a host sync).

    """

    def __init__(self, collector: EnvStepper, refresh_s: float = 0.25) -> None:
        self.collector = collector
        self.refresh_s = refresh_s
        self._progress: Progress | None = None
        self._task: Any = None
        self._last = 0.0
        self._t0 = 0.0
        self._steps0 = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open the bar."""
        self._progress = Progress(
            TextColumn("[bold]env steps"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("return {task.fields[ret]}  eps {task.fields[eps]:.3f}  {task.fields[sps]:,.0f} steps/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            transient=False,
            console=_console(),
            # rich redraws from its own thread, by default 10 times a second: ~0.35 s of a 15 s CartPole run.
            refresh_per_second=2,
        )
        self._progress.start()
        c = self.collector
        self._task = self._progress.add_task(
            "train", total=c.total_env_steps, completed=c.env_steps, ret="-", eps=c.epsilon, sps=0.0
        )
        self._t0 = time.perf_counter()
        self._steps0 = c.env_steps

    def _update(self) -> None:
        c = self.collector
        rets = c._new_returns or list(c.recent_returns)[-1:]
        ret = f"{rets[-1]:.1f}" if rets else "-"
        sps = (c.env_steps - self._steps0) / max(time.perf_counter() - self._t0, 1e-9)
        self._progress.update(self._task, completed=c.env_steps, ret=ret, eps=c.epsilon, sps=sps)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Redraw at most every ``refresh_s`` seconds."""
        now = time.perf_counter()
        if self._progress is not None and now - self._last >= self.refresh_s:
            self._last = now
            self._update()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Close the bar."""
        if self._progress is not None:
            self._update()
            self._progress.stop()
            self._progress = None

    on_exception = on_train_end  # type: ignore[assignment]
