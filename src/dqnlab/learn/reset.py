"""Periodic resets of the network's last layers (Nikishin et al. 2022), as a Lightning callback.

A learner that updates often on little data overfits its first experiences and then stops improving ("the
primacy bias", Nikishin et al. 2022, "The Primacy Bias in Deep Reinforcement Learning"). Re-initializing its last
layers every so many gradient steps, while keeping the replay buffer, lets it relearn from all the data it has;
the earlier layers may also be moved part of the way towards a fresh initialization ("shrink and perturb",
Ash & Adams 2020), as BBF does to its encoder (Schwarzer et al. 2023: shrink 0.5, perturb 0.5). D'Oro et al.
2023 show that resets let the replay ratio (``collector.gradient_steps`` per ``collector.train_freq`` env steps)
be raised far beyond what a learner without them gains from.

What one reset does, at gradient step ``k * every``:

- the parameters under ``layers`` (name prefixes, e.g. ``head``) get a fresh initialization, the network's own
  (built again by its config, so ``network.init`` holds); every other parameter becomes
  ``shrink * p + perturb * fresh`` (``shrink=1, perturb=0``: kept);
- the optimizer's state of every changed parameter (Adam's moments and step count) is zeroed in place, as for a
  new parameter;
- the target network gets the changed parameters too, so the next TD targets do not bootstrap from the layers
  that were just forgotten (Nikishin et al. reset the target's copy with the online one's).

The fresh initialization comes from a generator seeded by the run's seed and the reset's index, inside
``torch.random.fork_rng``: the run's own random streams (exploration, replay, augmentation) are untouched, and a
resumed run resets exactly as an uninterrupted one (the schedule follows ``global_step``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn

from dqnlab.errors import ConfigError

log = logging.getLogger(__name__)


class ResetConfigError(ConfigError):
    """``reset.layers`` names no parameter of the network."""


def shrink_perturb(param: Tensor, fresh: Tensor, shrink: float, perturb: float) -> Tensor:
    """``shrink * param + perturb * fresh`` in place (Ash & Adams 2020); returns ``param``."""
    return param.mul_(shrink).add_(fresh, alpha=perturb)


def selected(name: str, layers: Sequence[str]) -> bool:
    """Whether parameter ``name`` (``head.0.weight``) lies under one of the prefixes in ``layers`` (``head``)."""
    return any(name == p or name.startswith(p + ".") for p in layers)


def reset_seed(seed: int, index: int) -> int:
    """The seed of reset ``index``'s fresh initialization: one per run and reset, apart from the run's streams."""
    return (int(seed) * 1_000_003 + 7_919 * int(index)) % (2**63)


def describe_reset(node: Any) -> str:
    """The run header's line for the ``reset`` group's config (a callback of your own: its ``_target_``)."""
    if node.get("_target_") != f"{__name__}.{PeriodicReset.__name__}":
        return f"resets: {node.get('_target_')} (reset._target_)"
    until = node.get("until")
    when = f"every {int(node.every):,} gradient steps" + (f" up to step {int(until):,}" if until is not None else "")
    rest = (
        "; the other parameters kept"
        if float(node.get("shrink", 1.0)) == 1.0 and float(node.get("perturb", 0.0)) == 0.0
        else f"; the other parameters x{node.shrink} + {node.perturb} x a fresh init (shrink and perturb)"
    )
    return f"resets: {', '.join(node.layers)} re-initialized (and its optimizer state) {when}{rest}"


class PeriodicReset(Callback):
    """Re-initialize ``layers`` every ``every`` gradient steps (and shrink and perturb the rest).

    Args:
        every: Gradient steps between resets (the first at step ``every``); with ``collector.gradient_steps``
            updates per ``collector.train_freq`` env steps, that is ``every * train_freq / gradient_steps`` env steps.
        layers: Prefixes of the parameter names to re-initialize (``head``: the fully connected layers of
            ``nature_cnn`` and ``minatar_cnn``; an MLP's layers are ``net.0``, ``net.2``, ...).
        until: The last gradient step a reset may fall on (``null``: no limit): a reset late in a run leaves it
            too few updates to relearn before it is scored.
        shrink: Factor on the other parameters at a reset (1.0 = kept).
        perturb: Weight of a fresh initialization added to the other parameters (0.0 = none).

    """

    def __init__(
        self,
        every: int,
        layers: Sequence[str] = ("head",),
        until: int | None = None,
        shrink: float = 1.0,
        perturb: float = 0.0,
    ) -> None:
        if int(every) < 1:
            raise ResetConfigError(f"reset.every={every} must be >= 1 gradient step")
        if isinstance(layers, str) or not layers:
            raise ResetConfigError(f"reset.layers={layers} must be a list of parameter-name prefixes, e.g. [head]")
        self.every = int(every)
        self.layers = tuple(str(x) for x in layers)
        self.until = None if until is None else int(until)
        self.shrink, self.perturb = float(shrink), float(perturb)
        self.fresh: Callable[[], nn.Module] | None = None
        self.seed = 0
        self.resets = 0

    def attach(self, module: pl.LightningModule, fresh: Callable[[], nn.Module], seed: int) -> None:
        """Take the factory of a freshly initialized network, and check that ``layers`` names parameters of it.

        Raises:
            ResetConfigError: A prefix matches no parameter (the message lists the network's).

        """
        names = [n for n, _ in module.q_net.named_parameters()]
        missing = [p for p in self.layers if not any(selected(n, (p,)) for n in names)]
        if missing:
            tops = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))  # layers, in the network's order
            raise ResetConfigError(
                f"reset.layers={list(self.layers)}: {', '.join(missing)} names no parameter of this network "
                f"({type(module.q_net).__name__}); its layers are {', '.join(tops)}: e.g. reset.layers=[{tops[-1]}]"
            )
        self.fresh, self.seed = fresh, int(seed)

    def due(self, step: int) -> bool:
        """Whether a reset falls after gradient step ``step``."""
        return step > 0 and step % self.every == 0 and (self.until is None or step <= self.until)

    def reset(self, module: pl.LightningModule, optimizer: torch.optim.Optimizer | None, index: int) -> int:
        """Apply reset number ``index`` (1, 2, ...) to ``module`` and ``optimizer``; returns the parameters changed."""
        if self.fresh is None:
            raise RuntimeError("PeriodicReset.attach() must run before a reset")
        with torch.random.fork_rng(devices=[]):  # the fresh init draws apart from the run's own streams
            torch.manual_seed(reset_seed(self.seed, index))
            fresh = dict(self.fresh().named_parameters())
        blend = self.shrink != 1.0 or self.perturb != 0.0
        targets = dict(module.target_net.named_parameters())
        changed: list[Tensor] = []
        with torch.no_grad():
            for name, param in module.q_net.named_parameters():
                new = fresh[name].to(device=param.device, dtype=param.dtype)
                if selected(name, self.layers):
                    param.copy_(new)  # in place: the optimizer and the target sync keep their references
                elif blend:
                    shrink_perturb(param, new, self.shrink, self.perturb)
                else:
                    continue
                targets[name].copy_(param)
                changed.append(param)
            if optimizer is not None:
                for param in changed:
                    for value in optimizer.state.get(param, {}).values():
                        if isinstance(value, Tensor):
                            value.zero_()  # in place: fused and flat optimizer steps hold views of these
        return len(changed)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count the resets a resumed run has had (the schedule is a function of ``global_step``)."""
        step = trainer.global_step
        capped = step if self.until is None else min(step, self.until)
        self.resets = capped // self.every

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        """After gradient step ``global_step``, reset when one is due."""
        step = trainer.global_step
        if not self.due(step):
            return
        self.resets += 1
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        count = self.reset(pl_module, optimizer, step // self.every)
        log.info("reset %d at gradient step %s: %d parameter tensors changed", self.resets, f"{step:,}", count)
