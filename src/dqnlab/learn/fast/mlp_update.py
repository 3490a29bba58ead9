"""The TD loss and its gradients for a plain ReLU network, written out by hand.

For the small networks of classic-control and MinAtar tasks an update is bound by per-op overhead, not
arithmetic: autograd records every forward op and its engine replays them backwards, which costs more than the
matrix products themselves at these sizes (a 4-64-64-2 MLP at batch 256 on one CPU core: 1,121 us per update
with autograd, 690 us with this function, measured side by side under load). The backward pass of
``Linear -> ReLU -> ... -> Linear`` is a handful of matrix products, so :class:`~dqnlab.learn.module.DQNModule` uses
this instead of autograd whenever the Q-network is such an MLP, or MinAtar's network (one unpadded conv layer,
ReLU, then such an MLP; :func:`plain_relu_layers`). The conv layer is one batched matrix product over the
input's patches, gathered by one ``index_select`` (``torch.nn.functional.unfold`` loops over the batch and costs
several times more at MinAtar's 10x10 grids). Every other network goes through autograd.
``tests/test_mlp_update.py`` checks the loss, TD errors and every gradient against autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dqnlab.learn.networks import MLP, MinAtarCNN
from dqnlab.learn.rl_math import td_target


class MLPTDGrads(NamedTuple):
    """What :func:`mlp_td_grads` returns."""

    loss: Tensor  # scalar, the (weighted) mean TD loss
    q_mean: Tensor  # scalar, mean Q(s, a) of the batch
    errors: Tensor  # [B] |Q(s, a) - target|
    grads: list[Tensor]  # d loss / d parameter, in nn.Module.parameters() order (weight, bias per layer)


class ConvStem:
    """An unpadded, stride-``s`` ``nn.Conv2d`` then ReLU and flatten, as one matrix product over input patches.

    Args:
        conv: The conv layer (its parameters are read at every call, so updates show).

    """

    def __init__(self, conv: nn.Conv2d) -> None:
        self.conv = conv
        self._patches: dict[tuple[int, ...], Tensor] = {}  # flat input index of every (position, patch cell)

    @staticmethod
    def applies(conv: nn.Module) -> bool:
        """Whether :class:`ConvStem` computes ``conv`` exactly: a plain 2-D conv without padding or dilation."""
        return (
            type(conv) is nn.Conv2d
            and conv.bias is not None
            and conv.padding == (0, 0)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
        )

    def patch_index(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """``[K * P]`` indices into a flattened ``[C, H, W]`` input: ``[K, P]`` row-major.

        K = C * kh * kw cells in ``conv.weight[o].flatten()`` order, P output positions (row-major).
        """
        key = (*shape, *((device.index or 0,) if device.type != "cpu" else ()))
        idx = self._patches.get(key)
        if idx is None:
            c, h, w = shape
            (kh, kw), (sh, sw) = self.conv.kernel_size, self.conv.stride
            oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
            cell = (
                (torch.arange(c) * h * w).view(c, 1, 1)
                + (torch.arange(kh) * w).view(1, kh, 1)
                + torch.arange(kw).view(1, 1, kw)
            )
            top = (torch.arange(oh) * sh * w).view(oh, 1) + (torch.arange(ow) * sw).view(1, ow)
            idx = self._patches[key] = (cell.view(-1, 1) + top.view(1, -1)).reshape(-1).to(device)
        return idx

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, C, H, W]`` float -> the flattened ReLU output and the patches.

        The output is ``[B, O * P]``, channel-major as ``nn.Flatten`` leaves it (so the next layer's weight is
        used as it is); the patches are ``[B, K, P]``, the weight gradient's input.
        """
        b, o = x.shape[0], self.conv.out_channels
        idx = self.patch_index(tuple(x.shape[1:]), x.device)
        patches = x.reshape(b, -1).index_select(1, idx).view(b, self.conv.weight[0].numel(), -1)
        weight = self.conv.weight.view(1, o, -1).expand(b, -1, -1)
        return torch.baddbmm(self.conv.bias.view(1, o, 1), weight, patches).relu_().view(b, -1), patches

    def grads(self, grad_flat: Tensor, patches: Tensor) -> tuple[Tensor, Tensor]:
        """Weight and bias gradients from the gradient of the flattened output (already through the ReLU)."""
        grad_h = grad_flat.view(grad_flat.shape[0], self.conv.out_channels, -1)  # [B, O, P]
        return torch.bmm(grad_h, patches.transpose(1, 2)).sum(0).view_as(self.conv.weight), grad_h.sum((0, 2))


class PlainNet(NamedTuple):
    """A network :func:`mlp_td_grads` differentiates by hand: an optional conv stem, then ReLU linear layers."""

    stem: ConvStem | None
    linears: list[nn.Linear]


def _relu_linears(modules: list[nn.Module]) -> list[nn.Linear] | None:
    """The linear layers of ``Linear, ReLU, Linear, ..., Linear``, else ``None``."""
    linears, activations = modules[0::2], modules[1::2]
    if len(activations) != len(linears) - 1:
        return None
    if any(type(m) is not nn.Linear for m in linears) or any(type(m) is not nn.ReLU for m in activations):
        return None
    return linears  # type: ignore[return-value]


def plain_relu_layers(network: nn.Module) -> PlainNet | None:
    """The layers of ``network`` if :func:`mlp_td_grads` handles it, else ``None``: an
    :class:`~dqnlab.learn.networks.MLP` of ReLU between plain ``nn.Linear`` layers, or a
    :class:`~dqnlab.learn.networks.MinAtarCNN`; either without a dueling head or noise, with expected Q-values.
    """
    if type(network) is MLP and network.dueling is None and network.num_atoms == 1:
        linears = _relu_linears(list(network.net))
        return PlainNet(None, linears) if linears else None
    if type(network) is MinAtarCNN and network.num_atoms == 1 and type(network.head) is nn.Sequential:
        conv, relu, flatten = (list(network.features) + [None] * 3)[:3]
        if len(network.features) != 3 or type(relu) is not nn.ReLU or type(flatten) is not nn.Flatten:
            return None
        linears = _relu_linears(list(network.head))
        return PlainNet(ConvStem(conv), linears) if linears and ConvStem.applies(conv) else None
    return None


def _forward(net: PlainNet, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor | None]:
    """Q-values, the inputs of every linear layer and the conv stem's patches (``None`` without a stem).

    The linear layers' inputs are post-ReLU activations; the first is the flat input.
    """
    patches = None
    if net.stem is not None:
        x, patches = net.stem.forward(x)
    inputs = [x]
    for layer in net.linears[:-1]:
        x = F.linear(x, layer.weight, layer.bias).relu_()  # one dispatch: linear is addmm(bias, x, weight.t())
        inputs.append(x)
    last = net.linears[-1]
    return F.linear(x, last.weight, last.bias), inputs, patches


@torch.no_grad()
def mlp_q_values(net: PlainNet, obs: Tensor) -> Tensor:
    """``[B, A]`` Q-values of a plain ReLU network (:func:`plain_relu_layers`), without nn.Module dispatch."""
    return _forward(net, obs.float())[0]


@torch.no_grad()
def mlp_td_grads(
    online: PlainNet,
    target: PlainNet,
    obs: Tensor,
    actions: Tensor,
    rewards: Tensor,
    next_obs: Tensor,
    terminated: Tensor,
    discounts: Tensor,
    weights: Tensor | None,
    loss: str,
    double: bool,
    next_mask: Tensor | None = None,
) -> MLPTDGrads:
    """The loss of :meth:`~dqnlab.learn.module.DQNModule.td_loss` and its parameter gradients, without autograd.

    Args:
        online: Layers of the online network (:func:`plain_relu_layers`).
        target: Layers of the target network.
        obs: ``[B, obs_dim]`` (or ``[B, C, H, W]`` with a conv stem) observations, any dtype.
        actions: ``[B]`` int64 actions taken.
        rewards: ``[B]`` (n-step) rewards.
        next_obs: Observations to bootstrap from, shaped as ``obs``.
        terminated: ``[B]`` bool, no bootstrap.
        discounts: ``[B]`` discount of the bootstrap value.
        weights: ``[B]`` loss weights (importance weights of prioritized replay), or ``None`` for all ones
            (uniform replay; the same numbers with three fewer ops).
        loss: ``mse`` or ``huber`` (smooth L1 with delta 1).
        double: Double DQN target (the online network picks the next action).
        next_mask: ``[B, A]`` bool, the actions valid in ``next_obs`` (an env's action masks), or ``None`` (all):
            the target's max (or Double DQN's argmax) runs over them, as ``td_target`` does. The gradient needs
            nothing more: it flows only through ``Q(s, a)`` of the actions taken.

    """
    b = obs.shape[0]
    x = torch.cat([obs, next_obs]) if double else obs
    q_all, inputs, patches = _forward(online, x.float())
    q = q_all[:b] if double else q_all
    taken = actions.unsqueeze(1)
    q_taken = q.gather(1, taken).squeeze(1)
    next_target = _forward(target, next_obs.float())[0]
    # The one definition of the target, action masks included.
    y = td_target(rewards, terminated, next_target, discounts, q_all[b:] if double else None, next_mask)
    td = q_taken - y
    scale = 1.0 / b if weights is None else weights / b  # d mean(w * l) / d l
    if loss == "mse":
        loss_fn, d_q = F.mse_loss, td * (2.0 * scale)
    elif loss == "huber":
        loss_fn, d_q = F.smooth_l1_loss, td.clamp(-1.0, 1.0) * scale
    else:
        raise ValueError(f"loss={loss!r}: the hand-written update knows mse and huber")
    # With all-ones weights the mean loss is one op.
    loss_value = loss_fn(q_taken, y) if weights is None else (loss_fn(q_taken, y, reduction="none") * weights).mean()
    # Backward through the layers; only the first b rows (the observations) carry a gradient.
    grad_out = torch.zeros_like(q).scatter_(1, taken, d_q.unsqueeze(1))
    linears, stem = online.linears, online.stem
    grads: list[Tensor] = [x] * (2 * len(linears))  # placeholders: d weight, d bias per layer
    for i in range(len(linears) - 1, -1, -1):
        layer_in = inputs[i][:b] if double else inputs[i]
        grads[2 * i], grads[2 * i + 1] = grad_out.t().mm(layer_in), grad_out.sum(0)  # [out, in], [out]
        if i or stem is not None:
            # Through the ReLU before this layer: its input was positive where its output is. One op where
            # a multiply by the mask (layer_in > 0) takes three; autograd's ReLU uses the same kernel.
            grad_out = torch.ops.aten.threshold_backward(grad_out.mm(linears[i].weight), layer_in, 0.0)
    if stem is not None:  # the conv layer's parameters come first in parameters() order
        assert patches is not None
        grads = [*stem.grads(grad_out, patches[:b]), *grads]  # the observations' patches, not next_obs's
    return MLPTDGrads(loss_value, q_taken.mean(), td.abs(), grads)
