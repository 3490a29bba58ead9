"""A loss of your own: Munchausen-DQN (Vieillard, Pietquin & Geist 2020, "Munchausen Reinforcement Learning",
NeurIPS) as a subclass of DQNModule that redefines ``td_loss``; chosen with ``algo=munchausen``.

M-DQN regresses Q(s, a) onto a soft target with a bonus for the action taken (the paper's eq. 2)::

    y = r + alpha * clip(tau * log pi(a|s), l0, 0) + gamma * sum_a' pi(a'|s') * (q(s', a') - tau * log pi(a'|s'))

where q is the target network and pi = softmax(q / tau) its softmax policy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dqnlab.data.dataset import Batch
from dqnlab.learn.module import DQNModule
from dqnlab.learn.rl_math import TDLoss, dqn_loss


def munchausen_target(
    rewards: Tensor,
    terminated: Tensor,
    discounts: Tensor,
    actions: Tensor,
    q_target: Tensor,
    next_q_target: Tensor,
    tau: float,
    alpha: float,
    l0: float,
    next_mask: Tensor | None = None,
) -> Tensor:
    """The M-DQN target of each transition, ``[B]``, from the target network's ``[B, A]`` Q-values of s and s'
    (and the ``[B, A]`` valid actions of s', for an env with action masks).
    """
    # log_softmax subtracts the max first: q / tau is large for the paper's tau = 0.03, and exp() would overflow.
    tau_log_pi = tau * torch.log_softmax(q_target / tau, dim=1)
    bonus = alpha * tau_log_pi.gather(1, actions.unsqueeze(1)).squeeze(1).clamp(l0, 0.0)
    if next_mask is not None:  # invalid actions get probability 0 and leave the soft value
        next_q_target = next_q_target.masked_fill(~next_mask, float("-inf"))
    next_log_pi = torch.log_softmax(next_q_target / tau, dim=1)
    terms = next_log_pi.exp() * (next_q_target - tau * next_log_pi)  # an invalid action's: 0 * (-inf + inf) = nan
    soft_value = (terms if next_mask is None else terms.where(next_mask, 0.0)).sum(dim=1)
    # Only termination stops the bootstrap (a time limit does not); discounts is gamma ** m for m-step returns.
    return rewards + bonus + discounts * (~terminated).to(rewards.dtype) * soft_value


class MunchausenDQN(DQNModule):
    """DQN with the Munchausen target; every other knob of ``algo`` (``DQNModule``'s) works as for DQN.

    With ``algo.n_step`` > 1 only the first action's bonus is added (the later actions are not in the batch).
    ``algo.double`` has no effect: the softmax policy replaces the max. With action masks, the soft value of s'
    ranges over its valid actions (``batch.next_mask``); the bonus's policy of s over all (the batch holds no mask
    of s).

    Args:
        tau: Entropy temperature (the paper's 0.03).
        alpha: Weight of the log-policy bonus (the paper's 0.9).
        l0: Lower clip of ``tau * log pi`` (the paper's -1), so that the bonus stays bounded.
        **kwargs: ``DQNModule``'s arguments.
    """

    def __init__(
        self, *args: object, tau: float = 0.03, alpha: float = 0.9, l0: float = -1.0, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.num_atoms > 1:
            raise ValueError("MunchausenDQN learns expected Q-values: use it with algo.num_atoms=1")
        self.tau, self.alpha, self.l0 = float(tau), float(alpha), float(l0)

    def td_loss(self, batch: Batch) -> TDLoss:
        """The stock loss (``algo.loss``, weighted by ``batch.weights``) against the Munchausen target."""
        q_taken = self.q_values(self.q_net(batch.obs)).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
        with torch.no_grad():  # the target network rates s (for the bonus) and s' in one pass
            q_target, next_q_target = self.q_values(self.target_net(torch.cat([batch.obs, batch.next_obs]))).chunk(2)
            args = (batch.rewards, batch.terminated, batch.discounts, batch.actions, q_target, next_q_target)
            target = munchausen_target(*args, tau=self.tau, alpha=self.alpha, l0=self.l0, next_mask=batch.next_mask)
        loss = dqn_loss(q_taken, target, self.loss_kind, batch.weights)
        q_taken = q_taken.detach()
        return TDLoss(loss, q_taken.mean(), (q_taken - target).abs())  # the errors are prioritized replay's priorities
