"""FusedAdamStep and FlatRMSpropStep (learn/fast/optim_step.py) against torch's own optimizer.step(), bit for bit."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dqnlab.learn.fast.optim_step import FlatRMSpropStep, FusedAdamStep, clip_grad_norm_, fast_step


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


def _assert_same_rmsprop(net, twin, opt, ref, centered: bool) -> None:
    keys = ("square_avg", "step", *(("grad_avg",) if centered else ()))
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
        for key in keys:
            assert torch.equal(opt.state[p][key], ref.state[q][key]), key


def _set_sparse_grads(net: nn.Module, step: int) -> None:
    """Gradients with exact zeros, as MinAtar's sparse cells give: zero moments, then subnormal ones."""
    _set_grads(net, step)
    first = next(net.parameters()).grad
    first[:, :2] = 0.0  # never a gradient: the moments stay exactly 0
    if step > 2:
        first[:, 2] = 0.0  # a gradient at first only: the moments decay by alpha per step
        first[:, 3] *= 1e-22  # squares below float32's smallest normal


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("eps", [0.01, 1e-13])  # the second is below the floor that skips sqrt(0) exactly
def test_flat_rmsprop_is_torch_rmsprop_bit_for_bit(centered, eps):
    """The MinAtar paper's RMSprop (and the plain one): parameters, both moments and the step count."""
    kw = {"lr": 2.5e-3, "alpha": 0.95, "eps": eps, "centered": centered}
    net, twin, opt, ref = _twins(torch.optim.RMSprop, **kw)
    fast = fast_step(opt)
    assert isinstance(fast, FlatRMSpropStep)
    for step in range(12):
        _set_sparse_grads(net, step)
        _set_sparse_grads(twin, step)
        fast()
        ref.step()
        if step == 6:  # a resume replaces the optimizer's state: the flat buffers are rebuilt from the new one
            _assert_same_rmsprop(net, twin, opt, ref, centered)
            opt.load_state_dict(copy.deepcopy(ref.state_dict()))
        if step == 8:  # the learning-rate schedule writes the group's lr: the next step reads it
            opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 1e-3
    _assert_same_rmsprop(net, twin, opt, ref, centered)
    assert float(opt.state[next(net.parameters())]["step"]) == 12
    # The state the checkpoint saves is torch's: one tensor per parameter, loadable into a plain RMSprop.
    fresh = torch.optim.RMSprop(copy.deepcopy(twin).parameters(), **kw)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert torch.equal(fresh.state_dict()["state"][2]["square_avg"], ref.state_dict()["state"][2]["square_avg"])


@pytest.mark.parametrize("kw", [{"momentum": 0.9}, {"weight_decay": 0.01}, {"maximize": True}])
def test_other_rmsprop_settings_take_optimizer_step(kw):
    _, _, opt, _ = _twins(torch.optim.RMSprop, lr=1e-2, **kw)
    assert fast_step(opt) == opt.step
    assert not FlatRMSpropStep(opt).applies


@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0, float("nan"), float("inf")])
def test_clip_grad_norm_is_torch_bit_for_bit(scale):
    """Below, at and above the limit, and with a non-finite gradient: the same norm arithmetic as torch's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 3))
    grads = [torch.randn_like(p) * (scale if math.isfinite(scale) else 1.0) for p in net.parameters()]
    if not math.isfinite(scale):
        grads[2][3, 4] = scale
    ours, theirs = net, copy.deepcopy(net)
    for a, b, g in zip(ours.parameters(), theirs.parameters(), grads, strict=True):
        a.grad, b.grad = g.clone(), g.clone()
    clip_grad_norm_(list(ours.parameters()), 10.0)
    nn.utils.clip_grad_norm_(list(theirs.parameters()), 10.0)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, equal_nan=True)  # bit for bit
    if math.isfinite(scale):
        norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours.parameters()]))
        assert norm <= 10.0 + 1e-3  # and clipping happened where it should (the test can fail)
        assert (norm > 9.99) == (scale >= 1.0)


def test_clip_grad_norm_with_mixed_dtypes_takes_torchs_function():
    """Gradients of two dtypes are torch's to group: the result is still torch's."""
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3, dtype=torch.float64))
    a.grad, b.grad = torch.full((3,), 20.0), torch.full((3,), 20.0, dtype=torch.float64)
    clip_grad_norm_([a, b], 1.0)
    assert abs(float(torch.cat([a.grad.double(), b.grad]).norm()) - 1.0) < 1e-5
