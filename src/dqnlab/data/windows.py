"""What a sampled transition reads beyond its own slot: the n-step window ahead of it, the frame stack behind it.

N-step returns. With ``n_step > 1`` the return ``sum_{k<m} gamma^k r_{t+k}`` is summed at sample time from the
same stream's next slots (one gather of ``[B, n]`` windows, no loop per sample). The window stops after a
terminated or truncated step (the autoreset transition after it is never summed) and before a step whose next
observation starts an episode (``first``: an autoreset, or a restart of the envs mid-run). A window that meets
termination does not bootstrap; otherwise ``next_obs`` is the observation at slot ``t + m`` and the batch's
``discounts`` is ``gamma ** m``. Transitions among the newest ``n - 1`` slots are sampled with the shorter
window that is stored so far (an m-step return, bootstrapped from the newest observation: as valid a target as
the n-step one, and it keeps every valid transition sampleable, which prioritized replay relies on); once
their next slots arrive they get the full window. Windows only read forward in time, so the oldest slots of
the ring need nothing special.

Frame stacks. With ``frame_stack > 1`` (Atari), an observation ``[stack, H, W]`` is stored as its newest
frame only and the stack is rebuilt at sample time from the previous slots of the same stream, padded at
episode starts the way the env pads (``stack_padding``). A 1M-transition Atari buffer is then 1M 84x84 frames
(7.1 GB) instead of 28-56 GB of stacks. An episode start is where the env really resets, which ``add(resets=)``
tells: an Atari life loss is ``terminated`` for learning, but the game and its frame stack go on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dqnlab.learn.rl_math import NStepReturn, n_step_returns


class FlatViews(NamedTuple):
    """Views of a :class:`~dqnlab.data.replay.ReplayBuffer`'s storage that sampling reads (its ``_flat``)."""

    obs: Tensor  # [capacity, *frame_shape]
    actions: Tensor  # [capacity]
    rewards: Tensor  # [capacity]
    terminated: Tensor  # [capacity]
    truncated: Tensor  # [capacity]
    first: Tensor  # [capacity]
    start: Tensor  # 0-dim, bounds[0]: the first sampleable ring entry
    size: Tensor  # 0-dim, bounds[1]: sampleable entries
    masks: Tensor | None  # [capacity, mask_size] valid actions of each obs, or None (an env without masks)


class SampleWindows:
    """The windows part of :class:`dqnlab.data.replay.ReplayBuffer`, which it inherits.

    Reads the buffer's ``num_envs``, ``slots``, ``frame_stack``, ``stack_padding``, ``gamma``, ``device``,
    ``obs``, ``bounds`` (``[.., .., newest slot]``), ``_flat`` (flat views of the storage, rows
    ``slot * num_envs + env``) and ``_window`` (``arange(n_step + 1)``).
    """

    num_envs: int
    slots: int
    frame_stack: int
    stack_padding: str
    gamma: float
    device: torch.device
    obs: Tensor
    bounds: Tensor
    _flat: FlatViews
    _window: Tensor

    def _gather_stacks(self, slots: Tensor, envs: Tensor, next_slots: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rebuild the frame stacks of the observations at ``slots`` and ``next_slots`` (default ``slots + 1``;
        ``slots + m`` for n-step returns), padded at episode starts.

        Each stack is the ``k`` slots ending at its own slot. Slots before the newest episode start (``first``)
        in that window belong to the previous episode: they take the start's frame (``reset`` padding) or
        zeros (``zero``), as the env did. Only frame indices are computed per sample; the frames themselves
        are copied once, by one ``index_select`` per stack (several times faster than advanced indexing).
        """
        k, n, b = self.frame_stack, self.num_envs, slots.shape[0]
        frame_shape = self.obs.shape[2:]
        flat = self._flat  # rows slot * num_envs + env
        pos = torch.arange(k, device=self.device)  # position inside one stack, oldest first
        if next_slots is None:
            next_slots = (slots + 1) % self.slots
        stacks = []
        for end in (slots, next_slots):  # obs, then next obs
            win = (end[:, None] + pos[None, :] - (k - 1)) % self.slots  # [B, k] the stack's slots, oldest first
            first = flat.first[win * n + envs[:, None]]
            # Position of the newest episode start inside this stack (0 if none: nothing to pad).
            start = (first.long() * pos).amax(dim=1, keepdim=True)  # [B, 1]
            src = win.gather(1, torch.maximum(pos[None, :], start))  # [B, k] source slots
            st = flat.obs.index_select(0, (src * n + envs[:, None]).view(-1)).view(b, k, *frame_shape)
            if self.stack_padding == "zero":
                # A multiply by a 0/1 frame mask: no host sync, and far cheaper than a broadcast masked_fill_.
                keep = (pos[None, :] >= start).to(st.dtype).view(b, k, *([1] * len(frame_shape)))
                st.mul_(keep)
            stacks.append(st)
        return stacks[0], stacks[1]

    def _n_step_returns(self, idx: Tensor) -> NStepReturn:
        """The n-step returns of the transitions at flat indices ``idx`` (see the module docstring)."""
        n = self.num_envs
        window = self._window  # arange(n_step + 1): the summed steps and the slot after the last one
        if n == 1:  # flat index = slot: a third of the ops (this runs at every update of an n-step run)
            slots = idx
            flat = (slots[:, None] + window[None, :]) % self.slots  # [B, n_step + 1]
        else:
            slots, envs = idx // n, idx % n
            flat = ((slots[:, None] + window[None, :]) % self.slots) * n + envs[:, None]
        steps, summed = window[:-1], flat[:, :-1]
        rows = self._flat
        next_first = rows.first[flat[:, 1:]]
        # Step k's next observation is stored when slot t + k + 1 is not past the newest slot (self.pos).
        stored = steps[None, :] < ((self.bounds[2] - slots) % self.slots)[:, None]
        return n_step_returns(
            rows.rewards[summed],
            rows.terminated[summed],
            rows.truncated[summed],
            stored & ~next_first,
            self.gamma,
        )
