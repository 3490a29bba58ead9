"""A fused Adam/AdamW step without ``torch.optim``'s per-call Python around the kernel.

For the small networks of classic-control tasks, ``torch.optim.Adam(fused=True).step()`` spends most of its time
around its one fused kernel: a profiler scope, step hooks, gathering every parameter's state into lists and
grouping them by device (48 us per call for CartPole's 4-64-64-2 MLP on one CPU core, of which the kernel and
the step counting take 19 us; in the training loop, where that code is cold, the gap is wider).
:class:`FusedAdamStep` gathers the lists once and makes the calls that ``torch.optim.Adam.step`` makes, with
the same arguments, so parameters, moments and step counts are bit for bit torch's
(``tests/test_optim_step.py``). Any other optimizer or setting goes through ``optimizer.step()``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import optimizer as torch_optimizer


def _fast_path_applies(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :class:`FusedAdamStep` may step ``optimizer``: torch's fused Adam/AdamW on the CPU, plain settings."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    for group in optimizer.param_groups:
        flags = ("capturable", "differentiable", "maximize", "amsgrad")
        if not group.get("fused") or any(group.get(k) for k in flags) or not isinstance(group["lr"], float):
            return False
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in group["params"]):
            return False
    return True


class FusedAdamStep:
    """``optimizer.step()`` for a fused CPU Adam/AdamW, calling torch's fused kernel directly when it can.

    The first call, and any call after the optimizer's state was replaced (``load_state_dict``) or while a
    parameter has no gradient or the optimizer has step hooks, is a plain ``optimizer.step()``.

    Args:
        optimizer: The optimizer to step.

    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.applies = _fast_path_applies(optimizer)
        self._state: Any = None  # the optimizer.state object the lists below were gathered from
        self._groups: list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]] = []

    def _gather(self) -> bool:
        """Collect ``(group, params, exp_avgs, exp_avg_sqs, steps)`` per group; ``False`` if the state is not there."""
        opt = self.optimizer
        groups = []
        for group in opt.param_groups:
            states = [opt.state.get(p) for p in group["params"]]
            if any(not s or "exp_avg" not in s for s in states):
                return False
            groups.append(
                (
                    group,
                    list(group["params"]),
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [s["step"] for s in states],
                )
            )
        self._groups, self._state = groups, opt.state
        return True

    def _hooked(self) -> bool:
        opt = self.optimizer
        hooks = torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks
        return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks or any(hooks))

    def __call__(self) -> None:
        """One optimizer step over the gradients in ``.grad``."""
        opt = self.optimizer
        if not self.applies or self._hooked() or (opt.state is not self._state and not self._gather()):
            opt.step()  # also creates the state that the next call gathers
            return
        grads = [[p.grad for p in params] for _, params, _, _, _ in self._groups]
        if any(g is None for group_grads in grads for g in group_grads):
            opt.step()  # torch's step leaves parameters without a gradient out
            return
        found_inf = getattr(opt, "found_inf", None)
        for (group, params, exp_avgs, exp_avg_sqs, steps), group_grads in zip(self._groups, grads, strict=True):
            decoupled = group.get("decoupled_weight_decay", type(opt) is torch.optim.AdamW)
            kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            kernel(
                params,
                group_grads,
                exp_avgs,
                exp_avg_sqs,
                [],  # max_exp_avg_sqs: no amsgrad
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=float(beta1),
                beta2=float(beta2),
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
                grad_scale=getattr(opt, "grad_scale", None),
                found_inf=found_inf,
            )
            if found_inf is not None:  # a skipped step does not count (as in torch's fused step)
                torch._foreach_sub_(steps, [found_inf] * len(steps))
