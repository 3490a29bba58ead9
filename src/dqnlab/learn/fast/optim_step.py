"""Optimizer steps without ``torch.optim``'s per-call Python: fused Adam/AdamW, and RMSprop on flat buffers.

For the small networks of classic-control tasks, ``torch.optim.Adam(fused=True).step()`` spends most of its time
around its one fused kernel: a profiler scope, step hooks, gathering every parameter's state into lists and
grouping them by device (48 us per call for CartPole's 4-64-64-2 MLP on one CPU core, of which the kernel and
the step counting take 19 us; in the training loop, where that code is cold, the gap is wider).
:class:`FusedAdamStep` gathers the lists once and makes the calls that ``torch.optim.Adam.step`` makes, with
the same arguments, so parameters, moments and step counts are bit for bit torch's
(``tests/test_optim_step.py``).

torch's RMSprop has no fused CPU kernel: it loops over the parameters in Python, four to six ops each.
:class:`FlatRMSpropStep` keeps its moments in one flat buffer per kind, so each op runs once over all parameters
(MinAtar's network, 132k parameters: 329 us per step with ``torch.optim.RMSprop``, 188 us flat, measured side by
side on one core), with the same ops in the same order, so the numbers are bit for bit torch's. Any other
optimizer or setting goes through ``optimizer.step()``; :func:`fast_step` picks the step for an optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def _hooked(opt: torch.optim.Optimizer) -> bool:
    """Whether step hooks are registered on ``opt`` or on every optimizer (then only ``opt.step()`` runs them)."""
    hooks = torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks
    return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks or any(hooks))


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
        return _hooked(self.optimizer)

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


_FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)  # the smallest normal float32, 1.18e-38
# The eps above which sqrt(_FLOAT32_TINY) + eps == eps in float32: sqrt(tiny) is below half a unit of eps's last
# place (eps * 2**-24) from here up. Tested in tests/test_optim_step.py.
_EXACT_FLOOR_EPS = math.sqrt(_FLOAT32_TINY) * 2.0**25


def _flat_rmsprop_applies(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :class:`FlatRMSpropStep` may step ``optimizer``: a CPU RMSprop, one group, no momentum or decay."""
    if type(optimizer) is not torch.optim.RMSprop or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    flags = ("momentum", "weight_decay", "maximize", "differentiable", "capturable")
    if any(group.get(k) for k in flags) or not isinstance(group["lr"], float):
        return False
    return all(p.device.type == "cpu" and p.dtype == torch.float32 for p in group["params"])


def _flat(tensors: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """One buffer holding copies of ``tensors`` end to end, and a view of it shaped as each of them."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    views, offset = [], 0
    for t in tensors:
        views.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return flat, views


class FlatRMSpropStep:
    """``optimizer.step()`` for a CPU ``torch.optim.RMSprop`` (centered or not), each op once over all parameters.

    The first call creates torch's state with a plain ``optimizer.step()``; then the state's ``square_avg`` and
    ``grad_avg`` become views of one flat buffer each (``optimizer.state_dict()`` still holds one tensor per
    parameter), and every call does torch's ``_single_tensor_rmsprop`` ops on the flat buffers. A call after the
    state was replaced (``load_state_dict``), with a parameter lacking a gradient or with step hooks, is a plain
    ``optimizer.step()``.

    Args:
        optimizer: The optimizer to step.

    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.applies = _flat_rmsprop_applies(optimizer)
        self._state: Any = None  # the optimizer.state object the buffers below were built from
        # Set by the learner's non-finite check: a 0-dim bool, true to zero this step's gradients (what it does
        # for every non-fused optimizer), which here is one op on the flat gradient instead of one per tensor.
        self.skip: Tensor | None = None

    def _gather(self) -> bool:
        """Move the state into flat buffers; ``False`` if torch has not created it yet."""
        opt = self.optimizer
        group = opt.param_groups[0]
        self._params = list(group["params"])
        states = [opt.state.get(p) for p in self._params]
        if any(not s or "square_avg" not in s for s in states):
            return False
        self._square_avg, views = _flat([s["square_avg"] for s in states])
        for s, v in zip(states, views, strict=True):
            s["square_avg"] = v
        if group["centered"]:
            self._grad_avg, views = _flat([s["grad_avg"] for s in states])
            for s, v in zip(states, views, strict=True):
                s["grad_avg"] = v
        self._grad, self._grad_views = _flat([p.detach() for p in self._params])
        self._avg, self._avg_views = _flat([p.detach() for p in self._params])
        self._steps = [s["step"] for s in states]
        self._state = opt.state
        return True

    def _plain_step(self) -> None:
        if self.skip is not None:
            for p in self.optimizer.param_groups[0]["params"]:
                if p.grad is not None:
                    p.grad.masked_fill_(self.skip, 0.0)
        self.optimizer.step()

    @torch.no_grad()
    def __call__(self) -> None:
        """One optimizer step over the gradients in ``.grad`` (zeroed first if :attr:`skip` is true)."""
        opt = self.optimizer
        if not self.applies or _hooked(opt) or (opt.state is not self._state and not self._gather()):
            self._plain_step()  # also creates the state that the next call gathers
            return
        grads = [p.grad for p in self._params]
        if any(g is None for g in grads):
            self._plain_step()  # torch's step leaves parameters without a gradient out
            return
        group = opt.param_groups[0]
        alpha, eps, lr = group["alpha"], group["eps"], group["lr"]
        grad, avg = self._grad, self._avg
        torch.cat([g.reshape(-1) for g in grads], out=grad)  # type: ignore[union-attr]
        if self.skip is not None:
            grad.masked_fill_(self.skip, 0.0)  # masked, not multiplied: NaN * 0 is NaN
            grads = self._grad_views
        torch._foreach_add_(self._steps, 1)
        self._square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if group["centered"]:
            self._grad_avg.lerp_(grad, 1 - alpha)
            torch.addcmul(self._square_avg, self._grad_avg, self._grad_avg, value=-1, out=avg)
        else:
            avg.copy_(self._square_avg)
        if eps >= _EXACT_FLOOR_EPS:
            # sqrt of 0 (or of a subnormal) is 10-30x slower than of a normal float on the CPU, and sparse inputs
            # (MinAtar's cells) leave many moments at 0. Raising them to the smallest normal float first changes no
            # result: its square root, 1.1e-19, vanishes when eps is added (below half of eps's last bit).
            avg.clamp_min_(_FLOAT32_TINY)
        avg.sqrt_().add_(eps)
        torch._foreach_addcdiv_(self._params, grads, self._avg_views, value=-lr)


def clip_grad_norm_(params: list[Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_(params, max_norm)``, bit for bit, without its per-call Python.

    torch's function groups the gradients by device and dtype and checks foreach support at every call (about
    30 us of its 85 us for a 6-256-256-3 MLP on one CPU core). When every parameter has a gradient and they all
    share one CPU or CUDA device and one floating dtype, this makes torch's four calls directly; anything else
    goes through torch's function.
    """
    grads = [p.grad for p in params]
    first = grads[0] if grads else None
    if (
        first is None
        or first.device.type not in ("cpu", "cuda")
        or not first.is_floating_point()
        or any(type(g) is not Tensor or g.device != first.device or g.dtype != first.dtype for g in grads)
    ):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    # torch's _clip_grads_with_norm_ expressions, so the same ops: a non-finite norm makes every gradient NaN.
    clip_coef = float(max_norm) / (total_norm + 1e-6)
    torch._foreach_mul_(grads, torch.clamp(clip_coef, max=1.0))


def fast_step(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """The fastest exact step for ``optimizer``: :class:`FusedAdamStep`, :class:`FlatRMSpropStep` or ``step``."""
    for cls in (FusedAdamStep, FlatRMSpropStep):
        stepper = cls(optimizer)
        if stepper.applies:
            return stepper
    return optimizer.step


def clip_and_guard(
    params: list[Tensor],
    loss: Tensor,
    q_mean: Tensor,
    optimizer: torch.optim.Optimizer,
    step: Callable[[], None] | None,
    max_grad_norm: float,
    one: Tensor,
) -> tuple[Tensor, Tensor]:
    """Clip the gradient norm (``max_grad_norm``) and turn this step's update into a no-op if it is not finite.

    Everything stays on the device: the check is a 0-dim tensor that is never read here, so the hot loop
    has no host sync. torch's fused optimizers (Adam/AdamW/SGD with ``fused=true``) skip the whole update,
    moments and step count included, through their ``found_inf`` input (what AMP's GradScaler uses); other
    optimizers get zero gradients, so the parameters stay finite, though a momentum optimizer still moves
    them by its momentum.

    Args:
        params: The parameters that have gradients.
        loss: The scalar loss of the step.
        q_mean: The step's detached mean Q-value.
        optimizer: The torch optimizer.
        step: The step that will update ``params`` (:func:`fast_step`), or ``None`` for ``optimizer.step``.
        max_grad_norm: The norm to clip to (0: no clipping).
        one: A 0-dim float tensor holding 1 on the parameters' device (AMP's check unscales by it).

    Returns:
        A 0-dim bool tensor, whether the step is skipped, and the ``[loss, mean Q]`` pair that was checked.

    """
    grads = [p.grad for p in params]
    if max_grad_norm > 0:
        clip_grad_norm_(params, max_grad_norm)  # torch's, exactly; a non-finite norm makes every grad NaN
    # One fused kernel checks the gradients, the loss and Q together: AMP's GradScaler check (CPU and CUDA,
    # torch >= 2.3) with a scale of 1, which sets found_inf to 1 if any value is inf or NaN. It runs every
    # step, so it must be cheap: a norm-based check costs ten times more on the CPU.
    loss_and_q = torch.stack([loss.detach(), q_mean])
    found_inf = torch.zeros((), device=loss.device)
    torch._amp_foreach_non_finite_check_and_unscale_([*grads, loss_and_q], found_inf, one)
    skip = found_inf.bool()
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = found_inf  # read by torch's fused step (non-fused ones reject it)
    elif isinstance(step, FlatRMSpropStep):
        step.skip = skip  # it zeroes its flat gradient: one op
    else:
        for g in grads:
            g.masked_fill_(skip, 0.0)  # masked, not multiplied: NaN * 0 is NaN
    return skip, loss_and_q
