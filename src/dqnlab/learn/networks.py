"""Q-networks. Each maps a batch of observations to one Q-value per action.

Networks are built from the env's spaces: configs are ``_partial_: true`` and :func:`build_network` passes in
``obs_shape`` and ``num_actions`` (and ``num_atoms`` for a distributional learner, ``algo=c51``).

The DQN family's network switches compose with each other and with every network here:

- ``dueling``: separate value and advantage streams, ``Q = V + A - mean(A)`` (Wang et al. 2016).
- ``noisy``: factorised Gaussian :class:`NoisyLinear` layers (Fortunato et al. 2018); the learner resamples
  their noise (:func:`reset_noise`) before every update and every acting step.
- ``num_atoms > 1``: the output is ``[B, num_actions, num_atoms]`` logits of a categorical return
  distribution (Bellemare et al. 2017) instead of ``[B, num_actions]`` Q-values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dqnlab.errors import ConfigError
from dqnlab.learn.rl_math import dueling_aggregate

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


class NetworkConfigError(ConfigError):
    """The network cannot take the env's observations; the message names the fix."""


def _activation(name: str) -> type[nn.Module]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise NetworkConfigError(f"unknown activation {name!r}: use one of {sorted(_ACTIVATIONS)}") from None


class NoisyLinear(nn.Module):
    """A linear layer with factorised Gaussian noise on its weights and biases (Fortunato et al. 2018, Sec. 3).

    ``w = mu_w + sigma_w * f(eps_out) f(eps_in)^T`` and ``b = mu_b + sigma_b * f(eps_out)`` with
    ``f(x) = sign(x) sqrt(|x|)`` and ``eps ~ N(0, 1)``: ``p + q`` noise samples per layer instead of ``p q``.
    The noise stays fixed until :meth:`reset_noise`; the network learns how much of it to keep (``sigma``).

    Args:
        in_features: Inputs ``p``.
        out_features: Outputs ``q``.
        sigma0: Initial noise scale; ``sigma`` starts at ``sigma0 / sqrt(p)`` (the paper's 0.5).

    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        # Not persistent: the noise is resampled before every use, so checkpoints need not carry it.
        self.register_buffer("eps_in", torch.zeros(in_features), persistent=False)
        self.register_buffer("eps_out", torch.zeros(out_features), persistent=False)
        bound = 1.0 / math.sqrt(in_features)  # Sec. 3.2: mu ~ U[-1/sqrt(p), 1/sqrt(p)], sigma = sigma0/sqrt(p)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, sigma0 * bound)
        nn.init.constant_(self.bias_sigma, sigma0 * bound)
        self.reset_noise()

    @staticmethod
    def _scaled(noise: Tensor) -> Tensor:
        return noise.sign() * noise.abs().sqrt()

    @torch.no_grad()
    def reset_noise(self) -> None:
        """Draw new ``eps_in`` and ``eps_out`` (from torch's global RNG, on the layer's device)."""
        self.eps_in.copy_(self._scaled(torch.randn_like(self.eps_in)))
        self.eps_out.copy_(self._scaled(torch.randn_like(self.eps_out)))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, p]`` -> ``[B, q]`` through the noisy weights in training mode, the mean weights in eval mode.

        Evaluation (``module.eval()``, as :class:`dqnlab.run.evaluation.Evaluator` and ``scripts/evaluate.py`` do)
        acts with ``mu`` alone: the noise is exploration, and a greedy evaluation measures the learned policy
        rather than one random perturbation of it (Kaixhin/Rainbow's ``NoisyLinear`` and Tianshou's do the
        same). Training, acting and the TD targets use the noise.
        """
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        bias = self.bias_mu + self.bias_sigma * self.eps_out
        if not torch.is_grad_enabled():
            # Acting and the TD target's passes: the rank-one noise applied to x, x (sigma * e_out e_in^T)^T =
            # e_out * ((x * e_in) sigma^T), costs a second product of x's few rows instead of building the
            # [q, p] noisy weight (3136 x 512 in the Nature CNN: 4.8 ms -> 0.9 ms per act on one thread).
            return F.linear(x, self.weight_mu, bias) + self.eps_out * F.linear(x * self.eps_in, self.weight_sigma)
        # With gradients (the update's online pass), the built weight costs as much and backpropagates simply.
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        """Sizes, as ``nn.Linear`` prints them."""
        return f"in_features={self.in_features}, out_features={self.out_features}"


def noisy_layers(network: nn.Module) -> list[NoisyLinear]:
    """The :class:`NoisyLinear` layers of ``network`` (empty: the network has no noise)."""
    return [m for m in network.modules() if isinstance(m, NoisyLinear)]


@torch.no_grad()
def resample_noise(layers: Sequence[NoisyLinear]) -> None:
    """Draw new noise for all ``layers`` at once: one ``randn`` and one copy for the whole network.

    The learner does this before every update and every acting step, so it is kept to a handful of ops
    rather than a dozen per layer (:meth:`NoisyLinear.reset_noise`); the distribution is the same.
    """
    if not layers:
        return
    buffers = [b for m in layers for b in (m.eps_in, m.eps_out)]
    noise = torch.randn(sum(b.numel() for b in buffers), device=buffers[0].device)
    noise = noise.sign() * noise.abs().sqrt()  # f(x) = sign(x) sqrt(|x|)
    torch._foreach_copy_(buffers, noise.split([b.numel() for b in buffers]))


def reset_noise(network: nn.Module) -> None:
    """Resample the noise of every :class:`NoisyLinear` in ``network`` (nothing happens without one)."""
    resample_noise(noisy_layers(network))


LinearFactory = Callable[[int, int], nn.Module]


def _linear_factory(noisy: bool, sigma0: float) -> LinearFactory:
    return partial(NoisyLinear, sigma0=sigma0) if noisy else nn.Linear


def _as_output(out: Tensor, num_actions: int, num_atoms: int) -> Tensor:
    """``[B, A * atoms]`` -> ``[B, A]`` Q-values, or ``[B, A, atoms]`` logits when distributional."""
    return out if num_atoms == 1 else out.view(out.shape[0], num_actions, num_atoms)


class DuelingHead(nn.Module):
    """Value and advantage streams over shared features, combined as ``V + A - mean(A)`` (Wang et al. 2016).

    Args:
        in_features: Width of the shared features.
        num_actions: Number of discrete actions.
        num_atoms: Atoms per action (1: Q-values; >1: per-atom logits, aggregated atom by atom as in Rainbow).
        hidden_size: Width of each stream's hidden layer (the paper's 512 for the Nature CNN); 0 = no hidden
            layer, each stream is one linear layer on the features.
        linear: Builds each linear layer (``nn.Linear`` or :class:`NoisyLinear`).

    """

    def __init__(
        self, in_features: int, num_actions: int, num_atoms: int, hidden_size: int, linear: LinearFactory
    ) -> None:
        super().__init__()
        self.num_actions = int(num_actions)
        self.num_atoms = int(num_atoms)

        def stream(out: int) -> nn.Sequential:
            if hidden_size:
                return nn.Sequential(linear(in_features, hidden_size), nn.ReLU(), linear(hidden_size, out))
            return nn.Sequential(linear(in_features, out))

        self.value = stream(self.num_atoms)
        self.advantage = stream(self.num_actions * self.num_atoms)

    def forward(self, features: Tensor) -> Tensor:
        """``[B, in_features]`` -> ``[B, A]`` (or ``[B, A, atoms]``)."""
        b = features.shape[0]
        q = dueling_aggregate(
            self.value(features).view(b, 1, self.num_atoms),
            self.advantage(features).view(b, self.num_actions, self.num_atoms),
        )
        return q.squeeze(-1) if self.num_atoms == 1 else q


class MLP(nn.Module):
    """A fully connected Q-network for vector observations.

    Args:
        obs_shape: Shape of one observation; must be 1-D (flat vectors).
        num_actions: Number of discrete actions.
        hidden_sizes: Width of each hidden layer.
        activation: ``relu``, ``tanh``, ``elu`` or ``gelu``.
        dueling: Split the last layer into value and advantage layers on the last hidden layer.
        noisy: Make every linear layer a :class:`NoisyLinear`.
        sigma0: Initial noise scale of the noisy layers.
        num_atoms: Atoms of a distributional output (set by the learner, ``algo.num_atoms``).
        noisy_input_layer: With ``noisy``, also the first layer (on the raw observations). False keeps it a
            plain ``nn.Linear`` feature layer and makes only the layers after it noisy, as Fortunato et al.
            (2018) do on Atari, where the conv features stay deterministic and only the fully connected layers
            are noisy (:class:`NatureCNN` likewise).

    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        num_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "relu",
        dueling: bool = False,
        noisy: bool = False,
        sigma0: float = 0.5,
        num_atoms: int = 1,
        noisy_input_layer: bool = True,
    ) -> None:
        super().__init__()
        if len(obs_shape) != 1:
            raise NetworkConfigError(
                f"network=mlp takes flat vector observations, but this env's are shaped {tuple(obs_shape)}: "
                "use network=nature_cnn for images"
            )
        act = _activation(activation)
        linear = _linear_factory(noisy, sigma0)
        self.num_actions, self.num_atoms = int(num_actions), int(num_atoms)
        layers: list[nn.Module] = []
        width = int(obs_shape[0])
        for i, h in enumerate(hidden_sizes):
            first_plain = i == 0 and not noisy_input_layer
            layers += [(nn.Linear if first_plain else linear)(width, int(h)), act()]
            width = int(h)
        if not dueling:
            layers.append(linear(width, num_actions * num_atoms))
        self.net = nn.Sequential(*layers)
        self.dueling = DuelingHead(width, num_actions, num_atoms, 0, linear) if dueling else None

    def forward(self, obs: Tensor) -> Tensor:
        """``[B, obs_dim]`` -> ``[B, num_actions]`` (``[B, num_actions, num_atoms]`` logits if distributional)."""
        out = self.net(obs.float())
        if self.dueling is not None:
            return self.dueling(out)
        return _as_output(out, self.num_actions, self.num_atoms)


class NatureCNN(nn.Module):
    """The convolutional Q-network of Mnih et al. (2015): three conv layers and a 512-unit layer.

    ``uint8`` frames are scaled to [0, 1] inside ``forward`` so the replay buffer stays ``uint8``. The family
    switches change only the fully connected part: dueling gives each stream its own ``hidden_size`` layer
    (Wang et al. 2016, Sec. 4.2), noisy makes those layers noisy (Fortunato et al. 2018).

    Args:
        obs_shape: ``[C, H, W]`` (C = stacked frames).
        num_actions: Number of discrete actions.
        hidden_size: Width of the fully connected layer.
        scale: Divide inputs by this (255 for raw pixels).
        dueling: Value and advantage streams after the conv layers.
        noisy: Noisy fully connected layers.
        sigma0: Initial noise scale of the noisy layers.
        num_atoms: Atoms of a distributional output (set by the learner, ``algo.num_atoms``).
        dueling_shared: The two streams share one hidden layer and each is one linear layer on it (Dopamine's
            Rainbow and DrQ network), instead of one hidden layer each (Wang et al. 2016).
        init: ``torch`` (torch's default layer init) or ``xavier_uniform`` (Glorot weights, zero biases: Dopamine's
            JAX networks); noisy layers keep their own init.

    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        num_actions: int,
        hidden_size: int = 512,
        scale: float = 255.0,
        dueling: bool = False,
        noisy: bool = False,
        sigma0: float = 0.5,
        num_atoms: int = 1,
        dueling_shared: bool = False,
        init: str = "torch",
    ) -> None:
        super().__init__()
        if len(obs_shape) != 3:
            raise NetworkConfigError(
                f"network=nature_cnn takes image observations [C, H, W], but this env's are shaped "
                f"{tuple(obs_shape)}: use network=mlp for vector observations"
            )
        c, h, w = (int(x) for x in obs_shape)
        if h < 36 or w < 36:
            raise NetworkConfigError(
                f"network=nature_cnn needs images of at least 36x36 pixels, got {h}x{w}: "
                "resize the frames (env.screen_size=84) or use a smaller network"
            )
        self.scale = scale
        self.num_actions, self.num_atoms = int(num_actions), int(num_atoms)
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():  # flatten size from a dry pass, not a hard-coded 3136
            flat = self.features(torch.zeros(1, c, h, w)).shape[1]
        linear = _linear_factory(noisy, sigma0)
        self.head = _conv_head(flat, hidden_size, num_actions, num_atoms, dueling, linear, dueling_shared)
        if init not in ("torch", "xavier_uniform"):
            raise NetworkConfigError(f"network.init={init!r} is not known: use torch or xavier_uniform")
        if init == "xavier_uniform":
            for layer in self.modules():
                if type(layer) in (nn.Conv2d, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
        self.bf16 = False  # compute under bf16 autocast (set_compute); weights and outputs stay float32
        self.channels_last = False

    def set_compute(self, bf16: bool, channels_last: bool) -> None:
        """How the forward pass runs on a CPU (chosen by :mod:`dqnlab.learn.fast.cpu_compute`).

        Args:
            bf16: Run the layers under ``torch.autocast(dtype=bfloat16)``: bf16 products with float32
                accumulation, on float32 weights; the output is cast back to float32, so the TD target and the
                loss are computed in float32.
            channels_last: Keep the conv weights and inputs in the NHWC memory layout.

        """
        self.bf16, self.channels_last = bool(bf16), bool(channels_last)
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def forward(self, obs: Tensor) -> Tensor:
        """``[B, C, H, W]`` (any dtype) -> ``[B, num_actions]`` (``[B, num_actions, num_atoms]`` logits)."""
        x = scaled_input(obs, self.scale, self.channels_last)
        if self.bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                out = self.head(self.features(x))
            out = out.float()
        else:
            out = self.head(self.features(x))
        return out if out.dim() == 3 else _as_output(out, self.num_actions, self.num_atoms)


def scaled_input(obs: Tensor, scale: float, channels_last: bool) -> Tensor:
    """``obs.float() / scale`` in the layout the convolutions take, written once (not a copy per step)."""
    # An input gradient (a saliency map), which ``out=`` does not record, or a dtype torch.div would compute in
    # (float64, float16) rather than float32: step by step.
    if obs.requires_grad or obs.dtype not in (torch.uint8, torch.float32):
        x = obs.float() / scale
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(obs.shape, dtype=torch.float32, device=obs.device, memory_format=layout)
    return torch.div(obs, scale, out=out)


def _conv_head(
    flat: int,
    hidden_size: int,
    num_actions: int,
    num_atoms: int,
    dueling: bool,
    linear: LinearFactory,
    shared: bool = False,
) -> nn.Module:
    """The fully connected part after conv features: one hidden layer and the output (one each per stream, or
    one shared by both streams).
    """
    if dueling and shared:
        head = DuelingHead(hidden_size, num_actions, num_atoms, 0, linear)
        return nn.Sequential(linear(flat, hidden_size), nn.ReLU(), head)
    if dueling:
        return DuelingHead(flat, num_actions, num_atoms, hidden_size, linear)
    return nn.Sequential(linear(flat, hidden_size), nn.ReLU(), linear(hidden_size, num_actions * num_atoms))


class MinAtarCNN(nn.Module):
    """The MinAtar network of Young & Tian (2019): one conv layer and a 128-unit layer.

    ``Conv(C -> 16, 3x3, stride 1)``, ReLU, ``Linear(16 * 8 * 8 -> 128)``, ReLU, a linear output per action
    (``examples/dqn.py`` of kenjyoung/MinAtar). The input channels come from the observations (4 to 10 by game);
    ``uint8`` 0/1 cells become float here, so the replay keeps one byte per cell. The family switches change
    the fully connected part, as on :class:`NatureCNN`: dueling gives each stream its own ``hidden_size``
    layer, noisy makes those layers noisy; the conv layer stays plain.

    Args:
        obs_shape: ``[C, H, W]`` channels first (``dqnlab.envs.minatar`` transposes MinAtar's ``[H, W, C]``).
        num_actions: Number of discrete actions.
        channels: Filters of the conv layer (the paper's 16).
        hidden_size: Width of the fully connected layer (the paper's 128).
        dueling: Value and advantage streams after the conv layer.
        noisy: Noisy fully connected layers.
        sigma0: Initial noise scale of the noisy layers.
        num_atoms: Atoms of a distributional output (set by the learner, ``algo.num_atoms``).

    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        num_actions: int,
        channels: int = 16,
        hidden_size: int = 128,
        dueling: bool = False,
        noisy: bool = False,
        sigma0: float = 0.5,
        num_atoms: int = 1,
    ) -> None:
        super().__init__()
        if len(obs_shape) != 3 or min(obs_shape[1:]) < 3:
            raise NetworkConfigError(
                f"network=minatar_cnn takes grid observations [C, H, W] of at least 3x3 cells, but this env's are "
                f"shaped {tuple(obs_shape)}: use it with env=minatar, network=mlp for vector observations"
            )
        c, h, w = (int(x) for x in obs_shape)
        self.num_actions, self.num_atoms = int(num_actions), int(num_atoms)
        self.features = nn.Sequential(nn.Conv2d(c, channels, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        with torch.no_grad():  # flatten size from a dry pass (16 * 8 * 8 on the 10x10 grid)
            flat = self.features(torch.zeros(1, c, h, w)).shape[1]
        self.head = _conv_head(flat, hidden_size, num_actions, num_atoms, dueling, _linear_factory(noisy, sigma0))

    def forward(self, obs: Tensor) -> Tensor:
        """``[B, C, H, W]`` (any dtype) -> ``[B, num_actions]`` (``[B, num_actions, num_atoms]`` logits)."""
        out = self.head(self.features(obs.float()))
        return out if out.dim() == 3 else _as_output(out, self.num_actions, self.num_atoms)


def build_network(
    factory: Callable[..., nn.Module], obs_shape: Sequence[int], num_actions: int, num_atoms: int = 1
) -> nn.Module:
    """Complete a partially configured network with what only the env (and a distributional learner) knows.

    ``num_atoms`` is passed only when above 1, so networks without a distributional output still build for
    every other algorithm.
    """
    extra = {"num_atoms": int(num_atoms)} if num_atoms > 1 else {}
    return factory(obs_shape=tuple(obs_shape), num_actions=int(num_actions), **extra)
