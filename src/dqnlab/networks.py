"""Q-networks. Each maps a batch of observations to one Q-value per action.

Networks are built from the env's spaces: configs are ``_partial_: true`` and :func:`build_network` passes in
``obs_shape`` and ``num_actions``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dqnlab.errors import ConfigError

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


class NetworkConfigError(ConfigError):
    """The network cannot take the env's observations; the message names the fix."""


def _activation(name: str) -> type[nn.Module]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise NetworkConfigError(f"unknown activation {name!r}: use one of {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    """A fully connected Q-network for vector observations.

    Args:
        obs_shape: Shape of one observation; must be 1-D (flat vectors).
        num_actions: Number of discrete actions.
        hidden_sizes: Width of each hidden layer.
        activation: ``relu``, ``tanh``, ``elu`` or ``gelu``.

    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        num_actions: int,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(obs_shape) != 1:
            raise NetworkConfigError(
                f"network=mlp takes flat vector observations, but this env's are shaped {tuple(obs_shape)}: "
                "use network=nature_cnn for images"
            )
        act = _activation(activation)
        layers: list[nn.Module] = []
        width = int(obs_shape[0])
        for h in hidden_sizes:
            layers += [nn.Linear(width, int(h)), act()]
            width = int(h)
        layers.append(nn.Linear(width, num_actions))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor) -> Tensor:
        """``[B, obs_dim]`` -> ``[B, num_actions]``."""
        return self.net(obs.float())


class NatureCNN(nn.Module):
    """The convolutional Q-network of Mnih et al. (2015): three conv layers and a 512-unit layer.

    ``uint8`` frames are scaled to [0, 1] inside ``forward`` so the replay buffer stays ``uint8``.

    Args:
        obs_shape: ``[C, H, W]`` (C = stacked frames).
        num_actions: Number of discrete actions.
        hidden_size: Width of the fully connected layer.
        scale: Divide inputs by this (255 for raw pixels).

    """

    def __init__(
        self, obs_shape: Sequence[int], num_actions: int, hidden_size: int = 512, scale: float = 255.0
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
        self.head = nn.Sequential(
            nn.Linear(flat, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_actions)
        )

    def forward(self, obs: Tensor) -> Tensor:
        """``[B, C, H, W]`` (any dtype) -> ``[B, num_actions]``."""
        return self.head(self.features(obs.float() / self.scale))


def build_network(factory: Callable[..., nn.Module], obs_shape: Sequence[int], num_actions: int) -> nn.Module:
    """Complete a partially configured network with what only the env knows."""
    return factory(obs_shape=tuple(obs_shape), num_actions=int(num_actions))
