"""The RL math of DQN as small pure functions on tensors.

Everything here is free of state and of Lightning, so it is unit-tested on hand-built tensors and can be
captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """Linearly interpolate from ``start`` to ``end`` over ``duration`` units of ``t``, then hold ``end``.

    Args:
        start: Value at ``t = 0``.
        end: Value at ``t >= duration``.
        duration: Length of the ramp, in the same unit as ``t`` (env steps for epsilon).
        t: Current position.

    """
    if duration <= 0:
        return end
    frac = min(max(t, 0) / duration, 1.0)
    return start + frac * (end - start)


def td_target(
    rewards: Tensor,
    terminated: Tensor,
    next_q_target: Tensor,
    gamma: float | Tensor,
    next_q_online: Tensor | None = None,
) -> Tensor:
    """One-step TD target ``r + gamma * (1 - terminated) * Q_target(s', a*)``.

    Truncation (a time limit) is not termination: the state after a truncated step still has a value, so the
    target bootstraps through it. Only ``terminated`` stops the bootstrap.

    Args:
        rewards: ``[B]`` rewards.
        terminated: ``[B]`` bool, true where ``s'`` is terminal.
        next_q_target: ``[B, A]`` target-network Q-values of ``s'``.
        gamma: Discount per step. For n-step returns pass ``gamma ** n`` (per sample, ``[B]``).
        next_q_online: ``[B, A]`` online-network Q-values of ``s'``. When given, the action is chosen by the
            online network and evaluated by the target network (Double DQN, van Hasselt et al. 2016).

    Returns:
        ``[B]`` targets, detached from any graph.

    """
    if next_q_online is None:
        next_v = next_q_target.max(dim=1).values
    else:
        a_star = next_q_online.argmax(dim=1, keepdim=True)
        next_v = next_q_target.gather(1, a_star).squeeze(1)
    not_done = (~terminated).to(next_v.dtype)
    return (rewards.to(next_v.dtype) + gamma * not_done * next_v).detach()


def elementwise_td_loss(q_taken: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Per-sample TD loss between ``Q(s, a)`` and its target.

    Args:
        q_taken: ``[B]`` online Q-values of the actions taken.
        target: ``[B]`` TD targets.
        kind: ``"mse"`` (the seed's squared error) or ``"huber"`` (smooth L1 with delta 1, which is Nature DQN's
            "clip the TD error to [-1, 1]").

    """
    if kind == "mse":
        return F.mse_loss(q_taken, target, reduction="none")
    if kind == "huber":
        return F.smooth_l1_loss(q_taken, target, reduction="none", beta=1.0)
    raise ValueError(f"unknown loss {kind!r}: use 'mse' or 'huber'")


def dqn_loss(q_taken: Tensor, target: Tensor, kind: str = "mse", weights: Tensor | None = None) -> Tensor:
    """Mean TD loss, optionally importance-weighted (prioritized replay) or masked (weight 0).

    Args:
        q_taken: ``[B]`` online Q-values of the actions taken.
        target: ``[B]`` TD targets.
        kind: ``"mse"`` or ``"huber"``.
        weights: Optional ``[B]`` per-sample weights.

    """
    per_sample = elementwise_td_loss(q_taken, target, kind)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


@torch.no_grad()
def hard_update(target: Iterable[Tensor], online: Iterable[Tensor]) -> None:
    """Copy the online parameters into the target network in place."""
    torch._foreach_copy_(list(target), list(online))


@torch.no_grad()
def polyak_update(target: Iterable[Tensor], online: Iterable[Tensor], tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online`` in place, for all tensors at once."""
    torch._foreach_lerp_(list(target), list(online), tau)


def epsilon_greedy(q_values: Tensor, epsilon: float, generator: torch.Generator | None = None) -> Tensor:
    """Batched epsilon-greedy: the greedy action, replaced by a uniform one with probability ``epsilon``.

    Args:
        q_values: ``[N, A]`` Q-values for N environments.
        epsilon: Exploration probability in [0, 1].
        generator: RNG on the same device as ``q_values``.

    Returns:
        ``[N]`` int64 actions on the device of ``q_values``.

    """
    n, num_actions = q_values.shape
    greedy = q_values.argmax(dim=1)
    if epsilon <= 0.0:
        return greedy
    dev = q_values.device
    explore = torch.rand(n, device=dev, generator=generator) < epsilon
    random_actions = torch.randint(num_actions, (n,), device=dev, generator=generator)
    return torch.where(explore, random_actions, greedy)
