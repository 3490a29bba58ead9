"""The network passes of one TD update: which nets see s and s', joined or apart, with or without gradients.

The math is the same whichever way runs (``tests/test_atari100k.py`` checks the three against each other); what
changes is the work:

- the target net is the online net copied after every update (``target.interval=1``, a hard copy, no noisy
  layers): one pass over s' without gradients gives the double-DQN choice and its value (DrQ(eps): a quarter
  less per update on a CPU);
- Double DQN otherwise passes the online net over s and s' joined (one dispatch of each layer: small nets, GPUs)
  or apart (a conv net on a CPU: the joined backward would be spent on the s' half's zero gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn


class Passes(NamedTuple):
    """The outputs the TD loss needs.

    Attributes:
        out: ``[B, ...]`` the online net's raw output on s, with gradients.
        next_target: ``[B, ...]`` the target net's raw output on s' (no gradients).
        next_q_online: ``[B, A]`` the online net's Q-values on s' for Double DQN's choice (no gradients), else None.
    """

    out: Tensor
    next_target: Tensor
    next_q_online: Tensor | None


def next_passes(*, double: bool, target_is_online: bool) -> int:
    """How many passes over s' :func:`network_passes` makes when it runs them apart (a conv net on a CPU): one
    when the target is the online net or there is no double choice (the target alone), else two.
    """
    return 1 if target_is_online or not double else 2


def network_passes(
    q_net: nn.Module,
    target_net: nn.Module,
    q_values: Callable[[Tensor], Tensor],
    obs: Tensor,
    next_obs: Tensor,
    *,
    double: bool,
    target_is_online: bool = False,
    joined: bool = True,
) -> Passes:
    """Run the passes of one update.

    Args:
        q_net: The online network.
        target_net: The target network.
        q_values: Raw output -> ``[B, A]`` Q-values (the module's :meth:`q_values`, an extension point).
        obs: ``[B, *obs_shape]`` states.
        next_obs: ``[B, *obs_shape]`` next states.
        double: Double DQN: the online net picks the next action.
        target_is_online: The target net equals the online net now (see the module docstring).
        joined: Double DQN's online passes over s and s' as one batch.

    Returns:
        The outputs, as :class:`Passes`.
    """
    if target_is_online:
        out = q_net(obs)
        with torch.no_grad():
            next_target = q_net(next_obs)
        return Passes(out, next_target, q_values(next_target) if double else None)
    if double and joined:
        n = obs.shape[0]
        out_all = q_net(torch.cat([obs, next_obs]))
        out, next_q_online = out_all[:n], q_values(out_all[n:].detach())
    elif double:
        out = q_net(obs)
        with torch.no_grad():
            next_q_online = q_values(q_net(next_obs))
    else:
        out, next_q_online = q_net(obs), None
    with torch.no_grad():
        next_target = target_net(next_obs)
    return Passes(out, next_target, next_q_online)
