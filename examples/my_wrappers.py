"""A gymnasium wrapper of your own: ``env.wrappers=[{_target_:my_wrappers.ObservationNoise,sigma:0.1}]``.

Robustness studies perturb what the agent sees; this adds Gaussian noise to every observation of a ``Box``
observation space, drawn from the env's own generator (``env.np_random``), so a seeded run stays reproducible.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class ObservationNoise(gym.ObservationWrapper):
    """Observations plus ``N(0, sigma^2)`` noise, in the observation space's dtype (float)."""

    def __init__(self, env: gym.Env, sigma: float = 0.1) -> None:
        super().__init__(env)
        if not isinstance(env.observation_space, gym.spaces.Box):
            raise TypeError(f"ObservationNoise needs a Box observation space, got {env.observation_space}")
        self.sigma = float(sigma)
        space = env.observation_space  # noise leaves the bounds: the space widens to the reals
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, space.shape, space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The observation with noise added."""
        noise = self.np_random.normal(0.0, self.sigma, size=observation.shape)
        return (observation + noise).astype(self.observation_space.dtype)
