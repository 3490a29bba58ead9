"""Proportional prioritized replay (Schaul et al. 2016, "Prioritized Experience Replay", ICLR, Sec. 3.3).

Transition ``i`` is drawn with probability ``P(i) = p_i / sum_k p_k``, where ``p_i = (|delta_i| + eps) ** alpha``
is set from its latest TD error, and its loss is weighted by ``w_i = (N P(i)) ** -beta / max_j w_j``
(Algorithm 1). New transitions enter at the largest priority seen so far, so each is replayed at least once
soon. ``beta`` rises linearly from ``beta_start`` to 1 over ``beta_steps`` env steps (Schaul et al. anneal it
"over the course of training"); ``alpha = 0`` is uniform replay.

Storage, n-step returns and frame stacks are :class:`~dqnlab.data.replay.ReplayBuffer`'s; this class only chooses
*which* flat indices (``slot * num_envs + env``) to draw. Priorities live in a :class:`SumMinTree` indexed by
flat index, with 0 for everything that must never be drawn: the autoreset steps between episodes, slots not
yet written, and slots retired by the ring (and, with frame stacks, the oldest slots whose stacks reach into
overwritten frames, exactly the ones uniform sampling leaves out). Sampling, priority updates and new
transitions are a few tensor operations per tree level on the buffer's device, with no host sync.

New transitions reach the tree lazily: ``add`` only notes which flat indices it wrote (valid or not) and
retired, and the next ``sample`` writes them all in one tree update. That is exact, because priorities only
change after a sample (``update_priorities``), so the maximum priority a new transition gets is the same as
if it had been written at once; and it makes an update phase of ``train_freq`` env steps cost one tree update
instead of ``train_freq``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dqnlab.data.dataset import Batch
from dqnlab.data.replay import ReplayBuffer
from dqnlab.learn.rl_math import linear_schedule, prioritized_weights


class SumMinTree:
    """Sums and minima over a vector of non-negative priorities, kept as a ``fanout``-ary tree of tensors.

    ``levels[0]`` is the root, ``levels[-1]`` the leaves; every level is padded to a multiple of ``fanout`` so
    that ``level.view(-1, fanout)[i]`` are the children of node ``i`` of the level above. A parent is always
    recomputed from its children (never updated by a difference), so float errors do not accumulate. A wide
    fanout keeps the tree shallow: 4 levels for 1M leaves at the default 32, so an update or a descent is a
    handful of batched ops per level instead of ~20 levels of a binary tree.

    Args:
        size: Number of leaves used.
        device: Where the tree lives.
        fanout: Children per node.

    """

    def __init__(self, size: int, device: torch.device, fanout: int = 32) -> None:
        self.fanout = int(fanout)
        sizes = []
        n = max(int(size), 1)
        while True:
            padded = math.ceil(n / self.fanout) * self.fanout
            sizes.append(padded)
            n = padded // self.fanout
            if n == 1:
                break
        sizes = [1, *reversed(sizes)]
        # float64: sums over a million priorities stay exact enough to descend by (and cost 16 MB at 1M).
        self.sums = [torch.zeros(s, dtype=torch.float64, device=device) for s in sizes]
        self.mins = [torch.full((s,), math.inf, dtype=torch.float64, device=device) for s in sizes]
        self._child = torch.arange(self.fanout, device=device)

    @property
    def leaves(self) -> Tensor:
        """``[size]`` the priorities (a view: do not write it directly)."""
        return self.sums[-1]

    def total(self) -> Tensor:
        """0-d tensor: the sum of all priorities."""
        return self.sums[0][0]

    def min(self) -> Tensor:
        """0-d tensor: the smallest positive priority (``inf`` when there is none)."""
        return self.mins[0][0]

    def set(self, index: Tensor, values: Tensor) -> None:
        """``leaves[index] = values`` (0 = never drawn), then recompute every ancestor of those leaves.

        Args:
            index: ``[k]`` int64 leaf indices (duplicates allowed: one of their values is kept).
            values: ``[k]`` non-negative priorities.

        """
        values = values.to(torch.float64)
        self.sums[-1].index_put_((index,), values)
        self.mins[-1].index_put_((index,), torch.where(values > 0, values, math.inf))
        for d in range(len(self.sums) - 2, -1, -1):
            index = index // self.fanout
            self.sums[d].index_put_((index,), self.sums[d + 1].view(-1, self.fanout)[index].sum(dim=1))
            self.mins[d].index_put_((index,), self.mins[d + 1].view(-1, self.fanout)[index].amin(dim=1))

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves (after loading them)."""
        self.mins[-1].copy_(torch.where(self.sums[-1] > 0, self.sums[-1], math.inf))
        for d in range(len(self.sums) - 2, -1, -1):
            n = self.sums[d + 1].shape[0] // self.fanout  # nodes with children; the rest is padding
            self.sums[d].zero_()
            self.sums[d][:n] = self.sums[d + 1].view(-1, self.fanout).sum(dim=1)
            self.mins[d].fill_(math.inf)
            self.mins[d][:n] = self.mins[d + 1].view(-1, self.fanout).amin(dim=1)

    def find(self, mass: Tensor) -> Tensor:
        """The leaf where each cumulative ``mass`` in ``[0, total)`` falls: leaf ``i`` owns ``[c_i, c_i + p_i)``.

        The descent only ever enters a child with a positive sum, so a leaf of priority 0 is never returned,
        even when rounding puts ``mass`` at or past the end of its node.

        Args:
            mass: ``[B]`` float64 cumulative masses.

        Returns:
            ``[B]`` int64 leaf indices.

        """
        node = torch.zeros_like(mass, dtype=torch.int64)
        for level in self.sums[1:]:
            children = level.view(-1, self.fanout)[node]  # [B, fanout]
            cum = children.cumsum(dim=1)
            j = (cum <= mass[:, None]).sum(dim=1)  # first child whose cumulative sum passes the mass
            last_positive = ((children > 0) * self._child).amax(dim=1)
            j = torch.minimum(j, last_positive)
            mass = mass - (cum - children).gather(1, j[:, None]).squeeze(1)
            node = node * self.fanout + j
        return node


class PrioritizedReplayBuffer(ReplayBuffer):
    """:class:`~dqnlab.data.replay.ReplayBuffer` that samples in proportion to priority (see the module docstring).

    The learner calls :meth:`update_priorities` with the sampled ``Batch.indices`` and their new TD errors after
    each update (:class:`~dqnlab.learn.module.DQNModule` does when the buffer has the method).

    Args:
        capacity: Total transitions kept, over all env streams (env steps).
        obs_shape: Shape of one observation as the env returns it.
        obs_dtype: Torch dtype of observations.
        num_envs: Number of env streams written in lockstep.
        device: Where the storage and the priority tree live.
        frame_stack: Number of stacked frames in an observation.
        stack_padding: How the env pads a stack at an episode start.
        seed: Seed of the sampling generator.
        memory_fraction: Refuse to allocate more than this fraction of the device's free memory.
        n_step: Length of the return summed per sample (env steps).
        gamma: Discount per env step of those sums.
        alpha: Priority exponent: 0 is uniform, 1 fully proportional (Schaul et al.: 0.6; Rainbow: 0.5).
        beta_start: Importance-sampling exponent at env step 0 (Schaul et al.: 0.4; Rainbow: 0.4).
        beta_steps: Env steps over which beta rises linearly to 1 (the config sets the run's ``env_steps``).
        priority_eps: Added to ``|TD error|`` so that no stored transition gets probability 0.
        fanout: Children per node of the priority tree.
        mask_size: Actions per stored action mask (see :class:`~dqnlab.data.replay.ReplayBuffer`); 0 stores none.

    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype,
        num_envs: int = 1,
        device: str | torch.device = "cpu",
        frame_stack: int = 1,
        stack_padding: str = "reset",
        seed: int = 0,
        memory_fraction: float = 0.9,
        n_step: int = 1,
        gamma: float = 0.99,
        alpha: float = 0.6,
        beta_start: float = 0.4,
        beta_steps: int = 1_000_000,
        priority_eps: float = 1e-6,
        fanout: int = 32,
        mask_size: int = 0,
    ) -> None:
        # Spelled out rather than **kwargs, so that config validation can name a misspelled buffer key.
        super().__init__(
            capacity,
            obs_shape,
            obs_dtype,
            num_envs=num_envs,
            device=device,
            frame_stack=frame_stack,
            stack_padding=stack_padding,
            seed=seed,
            memory_fraction=memory_fraction,
            n_step=n_step,
            gamma=gamma,
            mask_size=mask_size,
        )
        if alpha < 0 or not 0 <= beta_start <= 1 or priority_eps <= 0 or beta_steps < 0:
            raise ValueError(
                f"prioritized replay needs alpha >= 0, beta_start in [0, 1], priority_eps > 0 and beta_steps >= 0; "
                f"got alpha={alpha}, beta_start={beta_start}, priority_eps={priority_eps}, beta_steps={beta_steps}"
            )
        self.alpha = float(alpha)
        self.beta_start = float(beta_start)
        self.beta_steps = int(beta_steps)
        self.priority_eps = float(priority_eps)
        self.tree = SumMinTree(self.capacity, self.device, fanout)
        self._max_priority = torch.ones((), dtype=torch.float64, device=self.device)  # Algorithm 1: p_1 = 1
        self._env_ids = np.arange(self.num_envs)
        # Written since the last flush, in order: flat indices, and whether each is a new valid transition
        # (True: enters at the maximum priority) or not (False: an autoreset step or a retired slot, priority 0).
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.env_steps = 0  # env steps added (the unit of the beta schedule)

    @property
    def beta(self) -> float:
        """The importance-sampling exponent at the current env step."""
        return linear_schedule(self.beta_start, 1.0, self.beta_steps, self.env_steps)

    # ------------------------------------------------------------------ writing
    def _retired_slots(self) -> np.ndarray:
        """Slots whose transitions stopped being sampleable when the newest observation was written."""
        if self.frame_stack > 1 and self.obs_written > self.slots:
            # The stacks of the next frame_stack - 1 slots reach into the slot just overwritten.
            return (self.pos + np.arange(self.frame_stack)) % self.slots
        return np.array([self.pos])

    def _note_retired(self) -> None:
        retired = (self._retired_slots()[:, None] * self.num_envs + self._env_ids).reshape(-1)
        self._pending.append((retired, np.zeros(retired.shape[0], dtype=bool)))

    def _flush(self) -> None:
        """Write the pending new and retired transitions into the tree (one update)."""
        if not self._pending:
            return
        idx = np.concatenate([i for i, _ in self._pending])
        new = np.concatenate([v for _, v in self._pending])
        self._pending.clear()
        # An index written twice since the last flush (a slot written, then retired by a wrap) keeps its last write.
        idx, last = np.unique(idx[::-1], return_index=True)
        new = new[::-1][last]
        values = torch.from_numpy(new).to(self.device) * self._max_priority
        self.tree.set(torch.from_numpy(idx).to(self.device), values)

    @property
    def priorities(self) -> Tensor:
        """``[capacity]`` the current priority of every flat index (0: never drawn); read-only."""
        self._flush()
        return self.tree.leaves[: self.capacity]

    def start(self, obs: np.ndarray | Tensor) -> None:
        """Write the reset observations; the slot they overwrite leaves the tree."""
        super().start(obs)
        self._note_retired()

    def add(
        self,
        actions: np.ndarray | Tensor,
        rewards: np.ndarray | Tensor,
        terminated: np.ndarray | Tensor,
        truncated: np.ndarray | Tensor,
        next_obs: np.ndarray | Tensor,
        resets: np.ndarray | Tensor | None = None,
    ) -> None:
        """Record one vector step (see :meth:`ReplayBuffer.add`): its valid transitions enter at the maximum
        priority, its autoreset ones at 0, and the slots it retires leave the tree, in one tree update.
        """
        slot = self.pos
        valid = ~self._last_done  # which streams' transitions at `slot` are valid (a new array)
        super().add(actions, rewards, terminated, truncated, next_obs, resets)
        self._pending.append((slot * self.num_envs + self._env_ids, valid))
        self._note_retired()
        self.env_steps += self.num_envs

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` transitions in proportion to their priorities, one from each of ``batch_size``
        equal slices of the total priority (stratified, as Schaul et al. Appendix B.2.1), with their
        importance-sampling weights in ``Batch.weights``.
        """
        self._sampleable()  # raises, from host counters, when nothing can be drawn yet
        self._flush()
        u = torch.rand(batch_size, dtype=torch.float64, device=self.device, generator=self.generator)
        strata = torch.arange(batch_size, dtype=torch.float64, device=self.device)
        idx = self.tree.find((strata + u) * (self.tree.total() / batch_size))
        weights = prioritized_weights(self.tree.leaves[idx], self.tree.min(), self.beta)
        return self._batch(idx, weights.to(torch.float32))

    def update_priorities(self, indices: Tensor, td_errors: Tensor) -> None:
        """Set ``p_i = (|delta_i| + eps) ** alpha`` for the transitions at flat ``indices`` (``Batch.indices``).

        Args:
            indices: ``[B]`` int64 flat indices of the sampled transitions.
            td_errors: ``[B]`` their new TD errors (or any non-negative per-sample loss, e.g. C51's KL).

        """
        self._flush()
        priorities = (td_errors.detach().abs().to(torch.float64) + self.priority_eps) ** self.alpha
        self.tree.set(indices, priorities)
        self._max_priority = torch.maximum(self._max_priority, priorities.max())

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """The uniform buffer's state plus the priorities (leaves only: the tree is rebuilt on load)."""
        return {
            **super().state_dict(),
            "priorities": self.priorities,
            "max_priority": self._max_priority,
            "per_env_steps": self.env_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self._pending.clear()
        self.tree.leaves.zero_()
        self.tree.leaves[: self.capacity] = state["priorities"]
        self.tree.rebuild()
        self._max_priority = state["max_priority"].to(self.device, torch.float64).clone()
        self.env_steps = int(state["per_env_steps"])
