"""The hand-written update (learn/fast/mlp_update.py) of MLPs and MinAtar's network against autograd (td_loss)."""

from __future__ import annotations

import copy

import pytest
import torch

from dqnlab.data.dataset import Batch
from dqnlab.learn.fast.mlp_update import ConvStem, mlp_td_grads, plain_relu_layers
from dqnlab.learn.fast.optim_step import fast_step
from dqnlab.learn.module import DQNModule
from dqnlab.learn.networks import MLP, MinAtarCNN


def _batch(b: int, obs_dim: int, num_actions: int, g: torch.Generator) -> Batch:
    return Batch(
        obs=torch.randn(b, obs_dim, generator=g),
        actions=torch.randint(num_actions, (b,), generator=g),
        rewards=torch.randn(b, generator=g),
        next_obs=torch.randn(b, obs_dim, generator=g),
        terminated=torch.rand(b, generator=g) < 0.3,
        truncated=torch.zeros(b, dtype=torch.bool),
        weights=torch.rand(b, generator=g) + 0.1,  # importance weights, as prioritized replay gives
        indices=torch.arange(b),
        discounts=0.99 ** torch.randint(1, 4, (b,), generator=g).float(),  # n-step returns of 1-3 steps
    )


@pytest.mark.parametrize("hidden", [(), (16,), (32, 8), (64, 64, 64)])
@pytest.mark.parametrize("loss", ["mse", "huber"])
@pytest.mark.parametrize("double", [False, True])
def test_loss_errors_and_gradients_equal_autograd(hidden, loss, double):
    g = torch.Generator().manual_seed(len(hidden) * 10 + double)
    torch.manual_seed(len(hidden))
    net = MLP((5,), 3, hidden_sizes=hidden)
    module = DQNModule(net, lambda p: torch.optim.SGD(p, lr=0.1), loss=loss, double=double)
    # A target network that differs from the online one, and TD errors on both sides of the Huber kink.
    with torch.no_grad():
        for p in module.target_net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    batch = _batch(64, 5, 3, g)
    batch = batch._replace(rewards=batch.rewards * 3)
    want = module.td_loss(batch)
    want.loss.backward()
    got = mlp_td_grads(
        plain_relu_layers(module.q_net),
        plain_relu_layers(module.target_net),
        batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated, batch.discounts, batch.weights,
        loss, double,
    )  # fmt: skip
    torch.testing.assert_close(got.loss, want.loss.detach())
    torch.testing.assert_close(got.q_mean, want.q_mean)
    torch.testing.assert_close(got.errors, want.errors)
    params = list(module.q_net.parameters())
    assert len(got.grads) == len(params)
    for p, grad in zip(params, got.grads, strict=True):
        torch.testing.assert_close(grad, p.grad)


def test_the_module_takes_the_hand_written_path_only_for_plain_relu_mlps():
    def module(**net_kw) -> DQNModule:
        return DQNModule(MLP((4,), 2, **net_kw), lambda p: torch.optim.SGD(p, lr=0.1), loss="huber")

    assert module()._mlp is not None
    for kw in ({"dueling": True}, {"noisy": True}, {"activation": "tanh"}, {"num_atoms": 51}):
        assert plain_relu_layers(MLP((4,), 2, **kw)) is None, kw
    assert module(dueling=True)._mlp is None and module(activation="tanh")._mlp is None


def test_a_module_update_is_the_autograd_update():
    """Through DQNModule._update: the same parameters after several Adam steps as plain autograd."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    module = DQNModule(MLP((4,), 2), lambda p: torch.optim.Adam(p, lr=1e-3), loss="huber", double=True)
    twin = copy.deepcopy(module)
    opt_a = torch.optim.Adam(module.q_net.parameters(), lr=1e-3)
    opt_b = torch.optim.Adam(twin.q_net.parameters(), lr=1e-3)
    for _ in range(20):
        batch = _batch(32, 4, 2, g)
        module._update(batch, opt_a)
        loss, _, _ = twin.td_loss(batch)
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()
    for p, q in zip(module.q_net.parameters(), twin.q_net.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_acting_takes_the_same_actions_as_the_network():
    torch.manual_seed(3)
    module = DQNModule(MLP((4,), 3, hidden_sizes=(16, 16)), lambda p: torch.optim.SGD(p, lr=0.1))
    obs = torch.randn(256, 4)
    assert module._mlp is not None
    assert torch.equal(module.greedy_actions(obs), module(obs).argmax(dim=1))


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_no_weights_is_bit_for_bit_all_ones(loss):
    """Uniform replay passes ``weights=None``: exactly the numbers of all-ones weights, so runs do not change."""
    g = torch.Generator().manual_seed(7)
    net = MLP((4,), 2)
    layers = plain_relu_layers(net)
    batch = _batch(256, 4, 2, g)
    args = (batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated, batch.discounts)
    ones = mlp_td_grads(layers, layers, *args, torch.ones(256), loss, True)
    none = mlp_td_grads(layers, layers, *args, None, loss, True)
    assert torch.equal(ones.loss, none.loss) and torch.equal(ones.errors, none.errors)
    for a, b in zip(ones.grads, none.grads, strict=True):
        assert torch.equal(a, b)


def _grid_batch(b: int, channels: int, num_actions: int, g: torch.Generator) -> Batch:
    """MinAtar-like observations: sparse 0/1 cells, uint8 as the replay stores them."""
    flat = _batch(b, 1, num_actions, g)
    cells = (torch.rand(2, b, channels, 10, 10, generator=g) < 0.2).to(torch.uint8)
    return flat._replace(obs=cells[0], next_obs=cells[1])


@pytest.mark.parametrize("channels", [4, 10])
@pytest.mark.parametrize("loss", ["mse", "huber"])
@pytest.mark.parametrize("double", [False, True])
def test_minatar_cnn_loss_errors_and_gradients_equal_autograd(channels, loss, double):
    """MinAtar's network (conv 3x3, ReLU, 128, ReLU, head): the conv layer as one product over its patches."""
    g = torch.Generator().manual_seed(channels + double)
    torch.manual_seed(channels)
    net = MinAtarCNN((channels, 10, 10), 6)
    module = DQNModule(net, lambda p: torch.optim.SGD(p, lr=0.1), loss=loss, double=double)
    assert module._mlp is not None and module._mlp[0].stem is not None
    with torch.no_grad():
        for p in module.target_net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    batch = _grid_batch(32, channels, 6, g)
    batch = batch._replace(rewards=batch.rewards * 3)
    want = module.td_loss(batch)
    want.loss.backward()
    got = mlp_td_grads(
        *module._mlp,
        batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated, batch.discounts, batch.weights,
        loss, double,
    )  # fmt: skip
    torch.testing.assert_close(got.loss, want.loss.detach())
    torch.testing.assert_close(got.errors, want.errors)
    params = list(module.q_net.parameters())
    assert len(got.grads) == len(params)
    for p, grad in zip(params, got.grads, strict=True):
        torch.testing.assert_close(grad, p.grad)
    assert torch.equal(module.greedy_actions(batch.obs), module(batch.obs).argmax(dim=1))


@pytest.mark.parametrize("kernel, stride, shape", [(3, 1, (4, 10, 10)), (3, 2, (2, 9, 7)), (2, 3, (3, 8, 11))])
def test_conv_stem_is_conv2d_relu_flatten(kernel, stride, shape):
    torch.manual_seed(kernel * stride)
    conv = torch.nn.Conv2d(shape[0], 5, kernel, stride=stride)
    x = torch.rand(7, *shape)
    flat, patches = ConvStem(conv).forward(x)
    torch.testing.assert_close(flat, torch.relu(conv(x)).flatten(1))
    assert patches.shape == (7, shape[0] * kernel * kernel, flat.shape[1] // 5)


def test_minatar_cnn_family_switches_take_autograd():
    for kw in ({"dueling": True}, {"noisy": True}, {"num_atoms": 51}):
        assert plain_relu_layers(MinAtarCNN((4, 10, 10), 6, **kw)) is None, kw
    assert not ConvStem.applies(torch.nn.Conv2d(4, 16, 3, padding=1))


def test_a_minatar_module_update_with_rmsprop_is_the_autograd_update():
    """The paper's setting through DQNModule._update (hand-written grads, flat RMSprop) vs autograd + torch."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    kw = {"lr": 2.5e-4, "alpha": 0.95, "eps": 0.01, "centered": True}
    module = DQNModule(MinAtarCNN((4, 10, 10), 6), lambda p: torch.optim.RMSprop(p, **kw), loss="huber")
    twin = copy.deepcopy(module)
    opt_a = torch.optim.RMSprop(module.q_net.parameters(), **kw)
    opt_b = torch.optim.RMSprop(twin.q_net.parameters(), **kw)
    step = fast_step(opt_a)
    for _ in range(20):
        batch = _grid_batch(32, 4, 6, g)
        module._update(batch, opt_a, step)
        loss, _, _ = twin.td_loss(batch)
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()
    for p, q in zip(module.q_net.parameters(), twin.q_net.parameters(), strict=True):
        torch.testing.assert_close(p, q)
