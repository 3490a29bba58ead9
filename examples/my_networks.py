"""A Q-network of your own: an MLP with LayerNorm, chosen with ``network=layernorm_mlp`` (``docs/extending.md``).

dqnlab builds the network from a partial config (``_partial_: true``) and completes it with what only the env
and the learner know: ``obs_shape`` (a tuple), ``num_actions`` (an int) and, for a distributional learner
(``algo=c51``) only, ``num_atoms``. Every other constructor argument is a knob of its yaml file.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class LayerNormMLP(nn.Module):
    """Linear, LayerNorm, ReLU per hidden layer, then a linear output of one value per action (and atom).

    LayerNorm after each hidden layer keeps the features' scale fixed while the TD targets move, which Gallici et
    al. (2024, "Simplifying Deep Temporal Difference Learning") found stabilises Q-learning.

    Args:
        obs_shape: Shape of one observation (given by dqnlab); flat vectors only.
        num_actions: Number of discrete actions (given by dqnlab).
        hidden_size: Units per hidden layer.
        num_layers: Hidden layers.
        num_atoms: Atoms per action of a distributional output (given by dqnlab only with ``algo=c51``).
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        num_actions: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_atoms: int = 1,
    ) -> None:
        super().__init__()
        if len(obs_shape) != 1:
            raise ValueError(f"LayerNormMLP takes flat vector observations, not shape {tuple(obs_shape)}")
        layers: list[nn.Module] = []
        width = int(obs_shape[0])
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.LayerNorm(hidden_size), nn.ReLU()]
            width = hidden_size
        layers.append(nn.Linear(width, num_actions * num_atoms))
        self.net = nn.Sequential(*layers)
        self.num_actions, self.num_atoms = int(num_actions), int(num_atoms)

    def forward(self, obs: Tensor) -> Tensor:
        """``[B, obs_dim]`` -> Q-values ``[B, num_actions]``, or C51 logits ``[B, num_actions, num_atoms]``."""
        out = self.net(obs.float())  # replay stores the env's dtype; Linear wants float
        return out if self.num_atoms == 1 else out.view(-1, self.num_actions, self.num_atoms)
