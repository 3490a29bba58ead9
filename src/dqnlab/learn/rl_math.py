"""The RL math of DQN as small pure functions on tensors.

Everything here is free of state and of Lightning, so it is unit-tested on hand-built tensors and can be
captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class TDLoss(NamedTuple):
    """What a TD loss returns (``DQNModule.td_loss``)."""

    loss: Tensor  # scalar, (importance-)weighted mean over the batch, with a graph
    q_mean: Tensor  # scalar, mean Q(s, a) of the batch, detached
    errors: Tensor  # [B] detached |TD error| (C51: KL to the target), the new priorities for prioritized replay


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


def masked_q(q: Tensor, mask: Tensor) -> Tensor:
    """``q`` with the invalid actions' values set to ``-inf``, so that max and argmax see only the valid ones.

    A row without any valid action keeps all its values: an env that allows nothing is at an end, where the
    value is not bootstrapped (``terminated``), and ``-inf`` there would make ``0 * -inf = nan`` of the target.

    Args:
        q: ``[B, A]`` Q-values.
        mask: ``[B, A]`` bool, true where the action is valid (an env's ``info["action_mask"]``).

    """
    valid = mask | ~mask.any(dim=1, keepdim=True)
    return q.masked_fill(~valid, float("-inf"))


def masked_argmax(q: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` int64: the valid action of highest value in each row (see :func:`masked_q`)."""
    return masked_q(q, mask).argmax(dim=1)


def masked_max(q: Tensor, mask: Tensor) -> Tensor:
    """``[B]``: the highest value of a valid action in each row (see :func:`masked_q`)."""
    return masked_q(q, mask).max(dim=1).values


def td_target(
    rewards: Tensor,
    terminated: Tensor,
    next_q_target: Tensor,
    gamma: float | Tensor,
    next_q_online: Tensor | None = None,
    next_mask: Tensor | None = None,
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
        next_mask: ``[B, A]`` bool, the actions valid in ``s'`` (an env's action mask): ``a*`` is chosen among
            them only, since the policy can take no other (:func:`masked_q`). ``None``: every action.

    Returns:
        ``[B]`` targets, detached from any graph.

    """
    if next_mask is not None:
        if next_q_online is None:
            next_v = masked_max(next_q_target, next_mask)
        else:
            next_v = next_q_target.gather(1, masked_argmax(next_q_online, next_mask).unsqueeze(1)).squeeze(1)
    elif next_q_online is None:
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


def dueling_aggregate(value: Tensor, advantages: Tensor) -> Tensor:
    """Dueling aggregation ``Q = V + A - mean_a A`` (Wang et al. 2016, eq. 9).

    Subtracting the mean advantage makes ``V`` and ``A`` identifiable (any constant could otherwise move between
    them) and is the variant the paper found more stable than subtracting the max.

    Args:
        value: ``[B, 1, ...]`` state values (``...`` = atoms for a distributional head, else nothing).
        advantages: ``[B, A, ...]`` action advantages.

    Returns:
        ``[B, A, ...]`` Q-values (or per-atom logits).

    """
    return value + advantages - advantages.mean(dim=1, keepdim=True)


class NStepReturn(NamedTuple):
    """The n-step return of each sampled transition; see :func:`n_step_returns`."""

    returns: Tensor  # [B] sum_{k<m} gamma^k r_{t+k}
    steps: Tensor  # [B] int64 m, the number of rewards summed (1..n)
    terminated: Tensor  # [B] bool, the m-th step ended the episode (no bootstrap)
    truncated: Tensor  # [B] bool, the m-th step was cut by a time limit (bootstrap from s_{t+m} anyway)


def n_step_returns(
    rewards: Tensor, terminated: Tensor, truncated: Tensor, available: Tensor, gamma: float
) -> NStepReturn:
    """Truncated n-step returns of windows of ``n`` consecutive steps of one env stream, all at once.

    Step ``k`` of a window joins the sum while no earlier step of the window ended the episode (terminated
    or truncated) and the step itself is ``available`` (stored and of the same episode). A window that stops
    at a termination does not bootstrap; one that stops anywhere else (truncation, the newest stored step,
    the window length) bootstraps from ``s_{t+m}`` with ``gamma ** m``.

    Args:
        rewards: ``[B, n]`` rewards of steps ``t .. t+n-1``.
        terminated: ``[B, n]`` bool.
        truncated: ``[B, n]`` bool.
        available: ``[B, n]`` bool; column 0 (the sampled transition itself) is taken as true.
        gamma: Discount per env step.

    Returns:
        The returns, the number of steps ``m`` summed, and how the ``m``-th step ended.

    """
    ended = terminated | truncated
    joins = available.clone()
    joins[:, 0] = True
    joins[:, 1:] &= ~ended[:, :-1]
    mask = joins.to(rewards.dtype).cumprod(dim=1)  # once a step is left out, so is every later one
    powers = gamma ** torch.arange(rewards.shape[1], device=rewards.device, dtype=rewards.dtype)
    steps = mask.sum(dim=1).long()
    last = (steps - 1).unsqueeze(1)
    return NStepReturn(
        returns=(rewards * mask * powers).sum(dim=1),
        steps=steps,
        terminated=terminated.gather(1, last).squeeze(1),
        truncated=truncated.gather(1, last).squeeze(1),
    )


def expected_q(logits: Tensor, support: Tensor) -> Tensor:
    """Q-values ``E[Z] = sum_i p_i z_i`` of a categorical return distribution.

    Args:
        logits: ``[B, A, atoms]`` unnormalised log-probabilities.
        support: ``[atoms]`` the atoms ``z_i``.

    """
    return (logits.softmax(dim=-1) * support).sum(dim=-1)


def categorical_projection(next_probs: Tensor, rewards: Tensor, discounts: Tensor, support: Tensor) -> Tensor:
    """Project the distribution of ``r + discount * Z(s')`` back onto the fixed support (Bellemare et al. 2017,
    Algorithm 1).

    Each shifted atom ``Tz_j = clip(r + discount * z_j, v_min, v_max)`` splits its probability between the two
    neighbouring atoms in proportion to its distance from them; an atom that lands exactly on ``z_i`` gives
    it all its mass (a floor/ceil version loses that mass when floor = ceil).

    Args:
        next_probs: ``[B, atoms]`` probabilities of ``Z(s', a*)``.
        rewards: ``[B]`` (n-step) rewards.
        discounts: ``[B]`` bootstrap discounts, 0 where ``s'`` is terminal.
        support: ``[atoms]`` evenly spaced atoms from ``v_min`` to ``v_max``.

    Returns:
        ``[B, atoms]`` target probabilities (each row sums to 1), detached.

    """
    atoms = support.shape[0]
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (atoms - 1)
    tz = (rewards[:, None] + discounts[:, None] * support[None, :]).clamp(v_min, v_max)
    b = ((tz - v_min) / delta).clamp(0, atoms - 1)  # fractional atom index of each shifted atom
    lower = b.floor().long().clamp(max=atoms - 1)
    upper = (lower + 1).clamp(max=atoms - 1)  # at the last atom, frac = 0: the upper share is 0 anyway
    frac = b - lower.to(b.dtype)
    offset = (torch.arange(next_probs.shape[0], device=next_probs.device) * atoms)[:, None]
    target = torch.zeros_like(next_probs).view(-1)
    target.index_add_(0, (lower + offset).view(-1), (next_probs * (1 - frac)).reshape(-1))
    target.index_add_(0, (upper + offset).view(-1), (next_probs * frac).reshape(-1))
    return target.view_as(next_probs).detach()


def categorical_td_target(
    rewards: Tensor,
    terminated: Tensor,
    next_logits_target: Tensor,
    discounts: Tensor,
    support: Tensor,
    next_q_online: Tensor | None = None,
    next_mask: Tensor | None = None,
) -> Tensor:
    """The C51 target distribution: the projected ``r + discount * Z_target(s', a*)`` (Bellemare et al. 2017).

    The distributional counterpart of :func:`td_target`: ``a*`` maximises the target network's expected Q, or
    the online network's (``next_q_online``, Double DQN) when given, over the actions of ``next_mask`` when
    given; termination stops the bootstrap.

    Args:
        rewards: ``[B]`` (n-step) rewards.
        terminated: ``[B]`` bool.
        next_logits_target: ``[B, A, atoms]`` target-network logits of ``s'``.
        discounts: ``[B]`` per-sample discount (``gamma ** m`` for an m-step return).
        support: ``[atoms]``.
        next_q_online: Optional ``[B, A]`` online-network Q-values of ``s'``.
        next_mask: Optional ``[B, A]`` bool, the actions valid in ``s'``.

    Returns:
        ``[B, atoms]`` target probabilities, detached.

    """
    next_probs = next_logits_target.softmax(dim=-1)
    q_next = (next_probs * support).sum(dim=-1) if next_q_online is None else next_q_online
    a_star = q_next.argmax(dim=1) if next_mask is None else masked_argmax(q_next, next_mask)
    p = next_probs[torch.arange(a_star.shape[0], device=a_star.device), a_star]
    not_done = (~terminated).to(p.dtype)
    return categorical_projection(p, rewards.to(p.dtype), discounts * not_done, support)


def categorical_loss(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample cross-entropy of the online distribution against the projected target, and the KL divergence.

    The cross-entropy is the loss (its gradient equals the KL's); the KL, which is 0 for a perfect fit, is the
    priority Hessel et al. (2018) give prioritized replay.

    Args:
        logits: ``[B, atoms]`` online logits of the actions taken.
        target: ``[B, atoms]`` target probabilities.

    Returns:
        ``([B] cross-entropy, [B] KL divergence detached)``.

    """
    cross_entropy = -(target * logits.log_softmax(dim=-1)).sum(dim=-1)
    kl = cross_entropy.detach() + torch.special.xlogy(target, target).sum(dim=-1)
    return cross_entropy, kl


def prioritized_weights(priorities: Tensor, min_priority: Tensor, beta: float) -> Tensor:
    """Importance-sampling weights ``w_i = (N P(i))^-beta / max_j w_j`` of prioritized replay (Schaul et al.
    2016, Algorithm 1, line 10), for ``P(i) = p_i / sum_k p_k``.

    ``N`` and the sum cancel in the ratio, leaving ``(min_j p_j / p_i) ** beta``: weights in (0, 1] that only
    ever scale an update down.

    Args:
        priorities: ``[B]`` priorities ``p_i`` (already raised to alpha) of the sampled transitions.
        min_priority: The smallest priority of any sampleable transition (0-d tensor).
        beta: Importance-sampling exponent; 1 fully corrects the non-uniform sampling.

    """
    return (min_priority / priorities) ** beta


def categorical_td_loss(
    logits: Tensor,
    next_logits_target: Tensor,
    next_q_online: Tensor | None,
    actions: Tensor,
    rewards: Tensor,
    terminated: Tensor,
    discounts: Tensor,
    weights: Tensor,
    support: Tensor,
    next_mask: Tensor | None = None,
) -> TDLoss:
    """C51's loss (Bellemare et al. 2017): cross-entropy of the taken action's logits to the projected target.

    Args:
        logits: ``[B, A, atoms]`` online logits of the observations.
        next_logits_target: ``[B, A, atoms]`` target-network logits of the next observations.
        next_q_online: ``[B, A]`` online Q-values of the next observations (Double DQN's action choice), or None.
        actions: ``[B]`` actions taken.
        rewards: ``[B]`` (n-step) rewards.
        terminated: ``[B]`` no bootstrap.
        discounts: ``[B]`` discount of the bootstrap.
        weights: ``[B]`` loss weights.
        support: ``[atoms]`` the atoms.
        next_mask: ``[B, A]`` bool, the actions valid in the next observations, or None (all).

    """
    index = actions.view(-1, 1, 1).expand(-1, 1, support.shape[0])
    logits_taken = logits.gather(1, index).squeeze(1)  # [B, atoms]
    target = categorical_td_target(
        rewards, terminated, next_logits_target, discounts, support, next_q_online, next_mask
    )
    cross_entropy, kl = categorical_loss(logits_taken, target)
    q_taken = expected_q(logits_taken.detach(), support)
    return TDLoss((cross_entropy * weights).mean(), q_taken.mean(), kl)
