"""Replay storage: a time-major ring per env stream, and the IterableDataset that samples it.

Layout. The buffer holds ``slots_per_env = capacity // num_envs`` slots for each of the ``num_envs`` streams
of a vector env that steps in lockstep, so one scalar write head serves all of them. Slot ``t`` of stream
``n`` holds the observation seen at that step and, once the action is taken, the action, reward and flags
of the transition that left it. The next observation of that transition is slot ``t + 1`` of the same
stream, so every observation is stored once (not twice, as ``obs``/``next_obs`` pairs would).

Autoreset. The vector env runs in gymnasium's ``NEXT_STEP`` autoreset mode: the step that ends an episode
returns the final observation, and the following step ignores its action and returns the reset observation
with reward 0. That following transition (final obs -> reset obs) is stored as *invalid* and never sampled;
the reset observation starts a new episode (``first``), so frame stacks and n-step sums stop there.

Frame stacks. With ``frame_stack > 1`` (Atari), an observation ``[stack, H, W]`` is stored as its newest
frame only and the stack is rebuilt at sample time from the previous slots of the same stream, padded at
episode starts the way the env pads (``stack_padding``). A 1M-transition Atari buffer is then 1M 84x84 frames
(7.1 GB) instead of 28-56 GB of stacks.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

# Candidates drawn per sampled transition; the first valid one is kept. Invalid slots are the autoreset
# transitions (one per episode), so all K fail only for absurdly short episodes, and then that sample
# gets weight 0 instead of silently training on a transition that crosses a reset.
_CANDIDATES = 4


class Batch(NamedTuple):
    """A minibatch of transitions, all tensors on the buffer's device.

    Attributes:
        obs: ``[B, *obs_shape]`` observations, in the env's dtype.
        actions: ``[B]`` int64 actions taken.
        rewards: ``[B]`` float32 rewards (the learning reward, e.g. clipped on Atari).
        next_obs: ``[B, *obs_shape]`` observations after the action.
        terminated: ``[B]`` bool, ``next_obs`` is terminal (no bootstrap).
        truncated: ``[B]`` bool, the episode was cut by a time limit after this step (bootstrap anyway).
        weights: ``[B]`` float32 loss weights: 1 normally, 0 for the rare sample with no valid candidate.
        indices: ``[B]`` int64 flat slot indices (``slot * num_envs + env``), for priority updates.

    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    terminated: Tensor
    truncated: Tensor
    weights: Tensor
    indices: Tensor


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (host RAM for CPU), or ``None`` where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class BufferTooLargeError(MemoryError):
    """The replay buffer would not fit in the memory of its device."""


class ReplayBuffer:
    """Preallocated ring of transitions for a lockstep vector env (see the module docstring).

    Args:
        capacity: Total transitions kept, over all env streams (env steps).
        obs_shape: Shape of one observation as the env returns it (``[stack, H, W]`` when frame-stacked).
        obs_dtype: Torch dtype of observations; ``uint8`` images stay ``uint8``.
        num_envs: Number of env streams written in lockstep.
        device: Where the storage lives (``cpu`` or ``cuda``); sampling happens there too.
        frame_stack: Number of stacked frames in an observation; >1 stores each frame once.
        stack_padding: How the env pads a stack at an episode start: ``"reset"`` repeats the first frame,
            ``"zero"`` pads with zeros.
        seed: Seed of the sampling generator.
        memory_fraction: Refuse to allocate more than this fraction of the device's free memory.

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
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        slots = capacity // num_envs
        if slots < max(2, frame_stack + 1):
            raise ValueError(
                f"buffer.capacity={capacity} leaves {slots} slots per env for {num_envs} envs: "
                f"raise buffer.capacity to at least {max(2, frame_stack + 1) * num_envs}"
            )
        if frame_stack > 1 and (len(obs_shape) < 2 or obs_shape[0] != frame_stack):
            raise ValueError(
                f"frame_stack={frame_stack} needs observations shaped [stack, ...], got {obs_shape}"
            )
        if stack_padding not in ("reset", "zero"):
            raise ValueError(f"stack_padding must be 'reset' or 'zero', got {stack_padding!r}")
        self.device = torch.device(device)
        self.num_envs = num_envs
        self.slots = slots
        self.capacity = slots * num_envs
        self.obs_shape = tuple(obs_shape)
        self.frame_stack = frame_stack
        self.stack_padding = stack_padding
        frame_shape = self.obs_shape[1:] if frame_stack > 1 else self.obs_shape

        need = self.nbytes_for(slots, num_envs, frame_shape, obs_dtype)
        free = available_memory_bytes(self.device)
        if free is not None and need > memory_fraction * free:
            raise BufferTooLargeError(
                f"the replay buffer needs {need / 2**30:.2f} GiB on {self.device} but only "
                f"{free / 2**30:.2f} GiB is free: lower buffer.capacity (now {capacity}) "
                f"or put it elsewhere with buffer.device"
            )

        dev = self.device
        self.obs = torch.zeros((slots, num_envs, *frame_shape), dtype=obs_dtype, device=dev)
        self.actions = torch.zeros((slots, num_envs), dtype=torch.int64, device=dev)
        self.rewards = torch.zeros((slots, num_envs), dtype=torch.float32, device=dev)
        self.terminated = torch.zeros((slots, num_envs), dtype=torch.bool, device=dev)
        self.truncated = torch.zeros((slots, num_envs), dtype=torch.bool, device=dev)
        # valid[t]: the transition leaving slot t is real and complete (its next obs is in slot t + 1).
        self.valid = torch.zeros((slots, num_envs), dtype=torch.bool, device=dev)
        # first[t]: the obs in slot t is the first of an episode (stacks and n-step sums stop here).
        self.first = torch.zeros((slots, num_envs), dtype=torch.bool, device=dev)
        self._last_done = torch.ones(num_envs, dtype=torch.bool, device=dev)
        self._env_ids = torch.arange(num_envs, device=dev)
        self.pos = 0  # slot of the newest observation
        self.obs_written = 0  # observations written per stream since creation (vector steps + 1)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)

    @staticmethod
    def nbytes_for(slots: int, num_envs: int, frame_shape: tuple[int, ...], obs_dtype: torch.dtype) -> int:
        """Bytes the storage of a buffer with these sizes allocates."""
        per_slot = int(np.prod(frame_shape)) * torch.empty((), dtype=obs_dtype).element_size()
        per_slot += 8 + 4 + 1 + 1 + 1 + 1  # action, reward, terminated, truncated, valid, first
        return slots * num_envs * per_slot

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the storage tensors."""
        tensors = (
            self.obs,
            self.actions,
            self.rewards,
            self.terminated,
            self.truncated,
            self.valid,
            self.first,
        )
        return sum(t.numel() * t.element_size() for t in tensors)

    def __len__(self) -> int:
        """Number of stored transitions that have a next observation (valid or not)."""
        return (min(self.obs_written, self.slots) - 1) * self.num_envs if self.obs_written else 0

    # ------------------------------------------------------------------ writing
    def _frame(self, obs: Tensor) -> Tensor:
        return obs[:, -1] if self.frame_stack > 1 else obs

    def _as_tensor(self, x: np.ndarray | Tensor, dtype: torch.dtype | None = None) -> Tensor:
        return torch.as_tensor(x, dtype=dtype).to(self.device, non_blocking=True)

    def start(self, obs: np.ndarray | Tensor) -> None:
        """Write the observations returned by ``env.reset()``: every stream begins an episode."""
        self._write_obs(
            self._as_tensor(obs), first=torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        )
        self._last_done.zero_()

    def _write_obs(self, obs: Tensor, first: Tensor) -> None:
        if self.obs_written:
            self.pos = (self.pos + 1) % self.slots
        p = self.pos
        self.obs[p] = self._frame(obs)
        self.first[p] = first
        self.valid[p] = False  # its transition is not taken yet; this also retires the overwritten one
        self.obs_written += 1

    def add(
        self,
        actions: np.ndarray | Tensor,
        rewards: np.ndarray | Tensor,
        terminated: np.ndarray | Tensor,
        truncated: np.ndarray | Tensor,
        next_obs: np.ndarray | Tensor,
    ) -> None:
        """Record one vector-env step for all streams at once.

        Args:
            actions: ``[N]`` actions taken from the observations in the current slot.
            rewards: ``[N]`` rewards for learning.
            terminated: ``[N]`` bool.
            truncated: ``[N]`` bool.
            next_obs: ``[N, *obs_shape]`` observations returned by the step (NEXT_STEP autoreset: after a
                done step, the following step returns a reset observation and is stored as invalid).

        """
        if not self.obs_written:
            raise RuntimeError("call ReplayBuffer.start(obs) with the reset observations before add()")
        p = self.pos
        term = self._as_tensor(terminated, torch.bool)
        trunc = self._as_tensor(truncated, torch.bool)
        self.actions[p] = self._as_tensor(actions, torch.int64)
        self.rewards[p] = self._as_tensor(rewards, torch.float32)
        self.terminated[p] = term
        self.truncated[p] = trunc
        # The step after a done one only carried the autoreset: never learn from it.
        self.valid[p] = ~self._last_done
        started = self._last_done.clone()
        self._last_done = term | trunc
        self._write_obs(self._as_tensor(next_obs), first=started)

    # ------------------------------------------------------------------ sampling
    def _gather_stacks(self, slots: Tensor, envs: Tensor) -> tuple[Tensor, Tensor]:
        """Rebuild the frame stacks of the observations at ``slots`` and ``slots + 1``, padded at episode starts."""
        k = self.frame_stack
        offsets = torch.arange(-(k - 1), 2, device=self.device)  # window of k + 1 slots ending at slot + 1
        win = (slots[:, None] + offsets[None, :]) % self.slots  # [B, k + 1]
        e = envs[:, None].expand_as(win)
        first = self.first[win, e]  # [B, k + 1]
        frames = self.obs[win, e]  # [B, k + 1, *frame]
        pos = torch.arange(k + 1, device=self.device)
        stacks = []
        for i in range(2):  # i = 0: obs at slot, i = 1: next obs at slot + 1
            f = first[:, i : i + k]  # [B, k]
            p = pos[i : i + k] - i  # 0..k-1
            # Position of the newest episode start inside this window (0 if none: nothing to pad).
            start = (f.long() * p).amax(dim=1, keepdim=True)  # [B, 1]
            src = torch.maximum(p[None, :].expand_as(f), start)  # frames before the start take its frame
            st = frames[:, i : i + k].gather(
                1, (src.view(*src.shape, *([1] * (frames.dim() - 2)))).expand(-1, -1, *frames.shape[2:])
            )
            if self.stack_padding == "zero":
                pad = (p[None, :] < start).view(*src.shape, *([1] * (frames.dim() - 2)))
                st = st.masked_fill(pad, 0)
            stacks.append(st)
        return stacks[0], stacks[1]

    def sample(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` valid transitions uniformly, with replacement, on the buffer's device."""
        filled = min(self.obs_written, self.slots)
        # Slots old enough to have been overwritten partly (their stack history) are not eligible.
        history = self.frame_stack - 1 if self.obs_written > self.slots else 0
        eligible = filled - 1 - history
        if eligible < 1:
            raise RuntimeError(
                "the replay buffer holds no complete transition yet: sample after learning_starts"
            )
        g = self.generator
        dev = self.device
        age = torch.randint(1, eligible + 1, (batch_size, _CANDIDATES), device=dev, generator=g)
        envs = torch.randint(self.num_envs, (batch_size, _CANDIDATES), device=dev, generator=g)
        slots = (self.pos - age) % self.slots
        ok = self.valid[slots, envs]
        pick = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first valid candidate (0 if none)
        slots = slots.gather(1, pick).squeeze(1)
        envs = envs.gather(1, pick).squeeze(1)
        weights = ok.gather(1, pick).squeeze(1).to(torch.float32)
        nxt = (slots + 1) % self.slots
        if self.frame_stack > 1:
            obs, next_obs = self._gather_stacks(slots, envs)
        else:
            obs, next_obs = self.obs[slots, envs], self.obs[nxt, envs]
        return Batch(
            obs=obs,
            actions=self.actions[slots, envs],
            rewards=self.rewards[slots, envs],
            next_obs=next_obs,
            terminated=self.terminated[slots, envs],
            truncated=self.truncated[slots, envs],
            weights=weights,
            indices=slots * self.num_envs + envs,
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Everything needed to continue sampling exactly where this buffer stands."""
        return {
            "obs": self.obs,
            "actions": self.actions,
            "rewards": self.rewards,
            "terminated": self.terminated,
            "truncated": self.truncated,
            "valid": self.valid,
            "first": self.first,
            "last_done": self._last_done,
            "pos": self.pos,
            "obs_written": self.obs_written,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict` of a buffer with the same shapes."""
        for name in ("obs", "actions", "rewards", "terminated", "truncated", "valid", "first"):
            src = state[name]
            dst = getattr(self, name)
            if src.shape != dst.shape:
                raise ValueError(f"replay buffer {name} shape {tuple(src.shape)} != {tuple(dst.shape)}")
            dst.copy_(src)
        self._last_done.copy_(state["last_done"])
        self.pos = int(state["pos"])
        self.obs_written = int(state["obs_written"])
        self.generator.set_state(state["generator"])


class ReplayDataset(IterableDataset):
    """Yields minibatches from a :class:`ReplayBuffer` forever.

    Wrap it in ``DataLoader(dataset, batch_size=None, num_workers=0)``: the buffer samples whole batches
    itself, on its own device, and must live in the training process. The run's length is set by
    ``Trainer(max_steps=...)``, not by an epoch.
    """

    def __init__(self, buffer: ReplayBuffer, batch_size: int) -> None:
        super().__init__()
        self.buffer = buffer
        self.batch_size = batch_size

    def __iter__(self):
        """Sample lazily: each batch is drawn when the training step asks for it, after env stepping."""
        while True:
            yield self.buffer.sample(self.batch_size)
