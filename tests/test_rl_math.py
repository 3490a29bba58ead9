from __future__ import annotations

import pytest
import torch

from dqnlab.learn.rl_math import (
    dqn_loss,
    elementwise_td_loss,
    hard_update,
    linear_schedule,
    polyak_update,
    td_target,
)


def test_td_target_no_bootstrap_on_termination_bootstrap_on_truncation():
    rewards = torch.tensor([1.0, 1.0, 0.5])
    terminated = torch.tensor([False, True, False])  # sample 2 was truncated, not terminated: it bootstraps
    next_q = torch.tensor([[1.0, 3.0], [10.0, 20.0], [-2.0, -1.0]])
    target = td_target(rewards, terminated, next_q, gamma=0.9)
    assert torch.allclose(target, torch.tensor([1.0 + 0.9 * 3.0, 1.0, 0.5 + 0.9 * -1.0]))
    assert not target.requires_grad


def test_td_target_per_sample_discount():
    target = td_target(torch.zeros(2), torch.zeros(2, dtype=torch.bool), torch.ones(2, 1), torch.tensor([0.5, 0.25]))
    assert torch.allclose(target, torch.tensor([0.5, 0.25]))


def test_double_target_uses_online_argmax_and_target_value():
    next_q_target = torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    next_q_online = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 4.0]])  # online picks action 0, then action 2
    target = td_target(torch.zeros(2), torch.zeros(2, dtype=torch.bool), next_q_target, 1.0, next_q_online)
    assert torch.allclose(target, torch.tensor([1.0, 3.0]))  # not the target max (5, 7)


def test_losses_on_hand_values():
    q = torch.tensor([0.0, 0.0, 0.0])
    t = torch.tensor([0.5, 2.0, -3.0])
    assert torch.allclose(elementwise_td_loss(q, t, "mse"), torch.tensor([0.25, 4.0, 9.0]))
    # Huber: quadratic inside |e| <= 1, linear outside (Nature's clipped TD error)
    assert torch.allclose(elementwise_td_loss(q, t, "huber"), torch.tensor([0.125, 1.5, 2.5]))
    w = torch.tensor([1.0, 0.0, 2.0])
    assert torch.isclose(dqn_loss(q, t, "mse", w), torch.tensor((0.25 + 0.0 + 18.0) / 3))
    with pytest.raises(ValueError, match="unknown loss"):
        elementwise_td_loss(q, t, "l1")


def test_dqn_loss_gradient_flows_only_into_q():
    q = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = dqn_loss(q, torch.tensor([0.0, 0.0]), "mse")
    loss.backward()
    assert torch.allclose(q.grad, torch.tensor([1.0, 2.0]))  # d/dq mean((q - t)^2) = (q - t)


@pytest.mark.parametrize(("t", "expected"), [(0, 1.0), (50, 0.525), (100, 0.05), (1_000, 0.05), (-5, 1.0)])
def test_linear_schedule(t, expected):
    assert linear_schedule(1.0, 0.05, 100, t) == pytest.approx(expected)


def test_linear_schedule_zero_duration_is_end_value():
    assert linear_schedule(1.0, 0.1, 0, 0) == 0.1


def test_hard_and_polyak_update():
    target = [torch.zeros(3), torch.ones(2)]
    online = [torch.full((3,), 2.0), torch.full((2,), 3.0)]
    polyak_update(target, online, 0.25)
    assert torch.allclose(target[0], torch.full((3,), 0.5))
    assert torch.allclose(target[1], torch.full((2,), 1.5))
    hard_update(target, online)
    assert all(torch.equal(a, b) for a, b in zip(target, online))
