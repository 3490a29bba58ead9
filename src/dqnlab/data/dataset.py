"""What the learner receives: the typed minibatch, and the IterableDataset that draws them from the replay."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

from torch import Tensor
from torch.utils.data import IterableDataset


class Batch(NamedTuple):
    """A minibatch of transitions, all tensors on the buffer's device.

    Attributes:
        obs: ``[B, *obs_shape]`` observations, in the env's dtype.
        actions: ``[B]`` int64 actions taken.
        rewards: ``[B]`` float32 rewards (the learning reward, e.g. clipped on Atari).
        next_obs: ``[B, *obs_shape]`` observations after the action.
        terminated: ``[B]`` bool, ``next_obs`` is terminal (no bootstrap).
        truncated: ``[B]`` bool, the episode was cut by a time limit after this step (bootstrap anyway).
        weights: ``[B]`` float32 loss weights (1 for uniform replay; importance weights for prioritized).
        indices: ``[B]`` int64 flat slot indices (``slot * num_envs + env``), for priority updates.
        discounts: ``[B]`` float32 discount of the bootstrap value: ``gamma ** m`` for an ``m``-step return
            (``gamma`` with ``n_step=1``); ``rewards`` are then the discounted sums of those ``m`` rewards.
        next_mask: ``[B, num_actions]`` bool, the actions valid in ``next_obs`` (the env's ``info["action_mask"]``,
            stored with each observation), which the TD target maximises over; ``None`` for envs without masks.

    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    terminated: Tensor
    truncated: Tensor
    weights: Tensor
    indices: Tensor
    discounts: Tensor
    next_mask: Tensor | None = None


class Sampleable(Protocol):
    """What the dataset draws from: :class:`~dqnlab.data.replay.ReplayBuffer` and its prioritized subclass."""

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` transitions."""
        ...


class ReplayDataset(IterableDataset):
    """Yields minibatches from a replay buffer (:class:`~dqnlab.data.replay.ReplayBuffer`) forever.

    Wrap it in ``DataLoader(dataset, batch_size=None, num_workers=0)``: the buffer samples whole batches
    itself, on its own device, and must live in the training process. The run's length is set by
    ``Trainer(max_steps=...)``, not by an epoch.

    Args:
        buffer: The replay buffer.
        batch_size: Transitions per minibatch.
        sampler: Draws one minibatch (e.g. :class:`dqnlab.learn.fast.graphs.GraphedSampler`, a CUDA-graph replay
            whose batch tensors are refilled in place); default ``buffer.sample(batch_size)``.
    """

    def __init__(self, buffer: Sampleable, batch_size: int, sampler: Callable[[], Batch] | None = None) -> None:
        super().__init__()
        self.buffer = buffer
        self.batch_size = batch_size
        self.sampler = sampler

    def __iter__(self) -> Iterator[Batch]:
        """Sample lazily: each batch is drawn when the training step asks for it, after env stepping."""
        if self.sampler is not None:
            while True:
                yield self.sampler()
        while True:
            yield self.buffer.sample(self.batch_size)
