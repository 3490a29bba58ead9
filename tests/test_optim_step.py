"""FusedAdamStep (dqnlab.optim_step) against torch's own optimizer.step(), bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dqnlab.optim_step import FusedAdamStep


def _twins(opt_cls: type[torch.optim.Optimizer], **kw: object) -> tuple[nn.Module, nn.Module, list, list]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    twin = copy.deepcopy(net)
    return net, twin, opt_cls(net.parameters(), **kw), opt_cls(twin.parameters(), **kw)


def _set_grads(net: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def _assert_same(net: nn.Module, twin: nn.Module, opt: torch.optim.Optimizer, ref: torch.optim.Optimizer) -> None:
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], ref.state[q][key]), key


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_same_parameters_moments_and_step_counts_as_torch(opt_cls, weight_decay):
    net, twin, opt, ref = _twins(opt_cls, lr=1e-2, fused=True, weight_decay=weight_decay)
    fast = FusedAdamStep(opt)
    assert fast.applies
    for step in range(12):
        _set_grads(net, step)
        _set_grads(twin, step)
        # A skipped step (the non-finite check's found_inf) changes nothing, its count included.
        found_inf = torch.tensor(1.0 if step in (4, 5) else 0.0)
        opt.found_inf, ref.found_inf = found_inf, found_inf.clone()
        fast()
        ref.step()
        if step == 7:  # a resume replaces the optimizer's state: the fast path gathers the new one
            _assert_same(net, twin, opt, ref)
            opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    _assert_same(net, twin, opt, ref)
    assert float(opt.state[next(net.parameters())]["step"]) == 10


@pytest.mark.parametrize(
    "opt_cls, kw",
    [
        (torch.optim.Adam, {"fused": False}),
        (torch.optim.Adam, {"fused": True, "amsgrad": True}),
        (torch.optim.SGD, {"lr": 0.1}),
        (torch.optim.RMSprop, {}),
    ],
)
def test_other_optimizers_and_settings_take_optimizer_step(opt_cls, kw):
    net, twin, opt, ref = _twins(opt_cls, **kw)
    fast = FusedAdamStep(opt)
    assert not fast.applies
    for step in range(3):
        _set_grads(net, step)
        _set_grads(twin, step)
        fast()
        ref.step()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_step_hook_is_honoured():
    net, _, opt, _ = _twins(torch.optim.Adam, fused=True)
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    fast = FusedAdamStep(opt)
    for step in range(3):
        _set_grads(net, step)
        fast()
    assert len(calls) == 3
