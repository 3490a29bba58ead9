"""Replay storage: a time-major ring per env stream, sampled uniformly (the minibatch type: ``data/dataset.py``).

Layout. The buffer holds ``slots_per_env = capacity // num_envs`` slots for each of the ``num_envs`` streams
of a vector env that steps in lockstep, so one scalar write head serves all of them. Slot ``t`` of stream
``n`` holds the observation seen at that step and, once the action is taken, the action, reward and flags
of the transition that left it. The next observation of that transition is slot ``t + 1`` of the same
stream, so every observation is stored once (not twice, as ``obs``/``next_obs`` pairs would).

Autoreset. The vector env runs in gymnasium's ``NEXT_STEP`` autoreset mode: the step that ends an episode
returns the final observation, and the following step ignores its action and returns the reset observation
with reward 0. That following transition (final obs -> reset obs) is *invalid* and never sampled; the reset
observation starts a new episode (``first``), so frame stacks and n-step sums stop there.

Sampling. The flat indices (``slot * num_envs + env``) of valid transitions go into a FIFO ring in the order
they are written; slots are overwritten in the same order, so retiring the oldest slot pops the oldest
entries. Uniform sampling over valid transitions is then one ``randint`` and one lookup: no rejection loop,
no host sync. The host keeps the counters; after every write it pushes ``[first sampleable ring entry,
number of sampleable entries, newest slot]`` into a 3-element tensor on the buffer's device (``bounds``), and
sampling reads only that tensor. So a draw has no Python number in it and can be captured in a CUDA graph
(:class:`dqnlab.learn.fast.graphs.GraphedSampler`); on a GPU the push is one pinned, non-blocking copy that queues
behind the updates already launched instead of waiting for them. A draw is ``randint(2**62) % size``: uniform up to
a bias below ``size / 2**62`` (1e-13 for a 1M buffer).

N-step returns and frame stacks are read from the slots around a sampled one (``data/windows.py``).

Action masks. An env whose info carries ``action_mask`` (valid actions, gymnasium's and PettingZoo's convention)
has its mask stored with each observation (``mask_size`` actions, :meth:`write_masks`), so a batch carries the
next observation's (``Batch.next_mask``) for a TD target over the valid actions only.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor

from dqnlab.data.dataset import Batch
from dqnlab.data.memory import (
    BufferTooLargeError,
    Reservation,
    buffer_too_large,
    memory_for_a_new_buffer,
    reservations_locked,
)
from dqnlab.data.windows import FlatViews, SampleWindows


class ReplayBuffer(SampleWindows):
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
        n_step: Length of the return summed per sample (env steps); 1 is one-step Q-learning.
        gamma: Discount per env step used for those sums (the learner's ``algo.gamma``, set by
            :func:`dqnlab.train.build`).
        mask_size: Actions per stored action mask (the env's action count when it gives masks, set by
            :func:`dqnlab.train.build`); 0 stores none.

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
        mask_size: int = 0,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if n_step < 1:
            raise ValueError(f"algo.n_step must be >= 1 env step, got {n_step}")
        slots = capacity // num_envs
        if slots < max(2, frame_stack + 1):
            raise ValueError(
                f"buffer.capacity={capacity} leaves {slots} slots per env for {num_envs} envs: "
                f"raise buffer.capacity to at least {max(2, frame_stack + 1) * num_envs}"
            )
        if frame_stack > 1 and (len(obs_shape) < 2 or obs_shape[0] != frame_stack):
            raise ValueError(f"frame_stack={frame_stack} needs observations shaped [stack, ...], got {obs_shape}")
        if stack_padding not in ("reset", "zero"):
            raise ValueError(f"stack_padding must be 'reset' or 'zero', got {stack_padding!r}")
        self.device = torch.device(device)
        self.num_envs = num_envs
        self.slots = slots
        self.capacity = slots * num_envs
        self.obs_shape = tuple(obs_shape)
        self.frame_stack = frame_stack
        self.stack_padding = stack_padding
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        frame_shape = self.obs_shape[1:] if frame_stack > 1 else self.obs_shape

        need = self.nbytes_for(slots, num_envs, frame_shape, obs_dtype, mask_size)
        # Checked and reserved under the machine-wide lock: a job starting next sees this buffer's bytes.
        with reservations_locked() as directory:
            free, jobs, held = memory_for_a_new_buffer(self.device)
            if free is not None and need > memory_fraction * free:
                raise BufferTooLargeError(
                    buffer_too_large(need, free, memory_fraction, self.device, capacity, jobs=jobs, held=held)
                )
            reservation = Reservation(directory, self.device, need) if directory is not None else None
        if reservation is not None:
            # Released when the buffer is freed, at exit, or if the allocation below fails (self is dropped then).
            weakref.finalize(self, reservation.release)

        dev = self.device
        self.obs = torch.zeros((slots, num_envs, *frame_shape), dtype=obs_dtype, device=dev)
        self.actions = torch.zeros((slots, num_envs), dtype=torch.int64, device=dev)
        self.rewards = torch.zeros((slots, num_envs), dtype=torch.float32, device=dev)
        self.terminated = torch.zeros((slots, num_envs), dtype=torch.bool, device=dev)
        self.truncated = torch.zeros((slots, num_envs), dtype=torch.bool, device=dev)
        # first[t]: the obs in slot t is the first of an episode (stacks and n-step sums stop here).
        self.first = torch.zeros((slots, num_envs), dtype=torch.bool, device=dev)
        # masks[t]: the actions valid in the obs of slot t (all, until written); None for envs without masks.
        self.masks = torch.ones((slots, num_envs, mask_size), dtype=torch.bool, device=dev) if mask_size else None
        # FIFO of the flat indices of valid transitions (see the module docstring); counters never wrap.
        self._valid_ring = torch.zeros(self.capacity, dtype=torch.int64, device=dev)
        if reservation is not None:
            reservation.allocated()  # zero-filled, every page touched: the device's free memory shows it now
        self._ring_head = 0  # valid transitions ever appended
        self._ring_tail = 0  # valid transitions ever retired
        self._valid_per_slot = np.zeros(slots, dtype=np.int64)  # host copy: how many ring entries each slot owns
        self._last_done = np.ones(num_envs, dtype=bool)  # host: the next step of this stream is an autoreset
        # host: the env resets this stream at its next step, so the next obs starts a new stack (see add()).
        self._last_reset = np.ones(num_envs, dtype=bool)
        # [first sampleable ring entry, sampleable entries, newest slot] on the device (see the module docstring)
        self.bounds = torch.zeros(3, dtype=torch.int64, device=dev)
        self._ones = torch.ones(0, device=dev)
        self._gammas = torch.ones(0, device=dev)  # one-step discounts of a batch, cached like _ones
        self._window = torch.arange(n_step + 1, device=dev)  # offsets of an n-step window's slots
        # Numpy views of host storage: writes of one vector step go through them (see _put).
        names = ("obs", "actions", "rewards", "terminated", "truncated", "first", "_valid_ring", "bounds", "masks")
        stored = [n for n in names if getattr(self, n) is not None]
        self._host_views = {n: getattr(self, n).numpy() for n in stored} if dev.type == "cpu" else {}
        # Views that every draw indexes, made once (a view costs a dispatch per use): the storage above is never
        # reallocated (load_state_dict copies into it). Flat rows are slot * num_envs + env.
        self._flat = FlatViews(
            obs=self.obs.view(self.capacity, *frame_shape),
            actions=self.actions.view(-1),
            rewards=self.rewards.view(-1),
            terminated=self.terminated.view(-1),
            truncated=self.truncated.view(-1),
            first=self.first.view(-1),
            start=self.bounds[0],
            size=self.bounds[1],
            masks=self.masks.view(self.capacity, mask_size) if self.masks is not None else None,
        )
        self.pos = 0  # slot of the newest observation
        self.obs_written = 0  # observations written per stream since creation (vector steps + 1)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)

    @staticmethod
    def nbytes_for(
        slots: int, num_envs: int, frame_shape: tuple[int, ...], obs_dtype: torch.dtype, mask_size: int = 0
    ) -> int:
        """Bytes the storage of a buffer with these sizes allocates (``mask_size``: actions per action mask)."""
        per_slot = int(np.prod(frame_shape)) * torch.empty((), dtype=obs_dtype).element_size()
        per_slot += 8 + 4 + 1 + 1 + 1 + 8 + mask_size  # action, reward, 3 flags, valid-index ring, mask (bool)
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
            self.first,
            self._valid_ring,
            *([self.masks] if self.masks is not None else []),
        )
        return sum(t.numel() * t.element_size() for t in tensors)

    def __len__(self) -> int:
        """Number of valid stored transitions (the autoreset steps between episodes are not counted)."""
        return self._ring_head - self._ring_tail

    # ------------------------------------------------------------------ writing
    def _frame(self, obs: Tensor) -> Tensor:
        return obs[:, -1] if self.frame_stack > 1 else obs

    def _as_tensor(self, x: np.ndarray | Tensor, dtype: torch.dtype | None = None) -> Tensor:
        t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x, dtype=dtype)
        if self.device.type == "cuda" and t.device.type == "cpu":
            # From pinned memory the copy is queued on the stream and the host goes on at once; from pageable
            # memory it could wait for the updates already launched. The caching host allocator keeps the
            # pinned block alive until the copy has run.
            t = t.contiguous().pin_memory()
        return t.to(self.device, non_blocking=True)

    def start(self, obs: np.ndarray | Tensor) -> None:
        """Write the observations returned by ``env.reset()``: every stream begins an episode."""
        self._write_obs(obs, first=np.ones(self.num_envs, dtype=bool))
        self._last_done[:] = False
        self._last_reset[:] = False
        self._push_bounds()

    def _put(self, name: str, index: int | slice | np.ndarray, value: np.ndarray | Tensor) -> None:
        """``storage[name][index] = value``; on the CPU through a numpy view (several times cheaper per call)."""
        view = self._host_views.get(name)
        if view is not None and not isinstance(value, Tensor):
            view[index] = value
        else:
            dst = getattr(self, name)
            dst[self._as_tensor(index) if isinstance(index, np.ndarray) else index] = self._as_tensor(value, dst.dtype)

    def write_masks(self, masks: np.ndarray | Tensor) -> None:
        """Store ``[N, mask_size]`` bool action masks of the newest observations (written by ``start``/``add``)."""
        if self.masks is None:
            raise RuntimeError("this replay buffer stores no action masks: build it with mask_size=<action count>")
        self._put("masks", self.pos, masks)

    def _write_obs(self, obs: np.ndarray | Tensor, first: np.ndarray) -> None:
        if self.obs_written:
            self.pos = (self.pos + 1) % self.slots
        p = self.pos
        # Overwriting the oldest slot retires its transitions, which are the oldest entries of the ring.
        self._ring_tail += int(self._valid_per_slot[p])
        self._valid_per_slot[p] = 0
        self._put("obs", p, self._frame(obs))
        self._put("first", p, first)
        self.obs_written += 1

    def add(
        self,
        actions: np.ndarray | Tensor,
        rewards: np.ndarray | Tensor,
        terminated: np.ndarray | Tensor,
        truncated: np.ndarray | Tensor,
        next_obs: np.ndarray | Tensor,
        resets: np.ndarray | Tensor | None = None,
    ) -> None:
        """Record one vector-env step for all streams at once.

        Args:
            actions: ``[N]`` actions taken from the observations in the current slot.
            rewards: ``[N]`` rewards for learning.
            terminated: ``[N]`` bool.
            truncated: ``[N]`` bool.
            next_obs: ``[N, *obs_shape]`` observations returned by the step (NEXT_STEP autoreset: after a
                done step, the following step returns a reset observation and is stored as invalid).
            resets: ``[N]`` bool, which of the done streams the env really resets at its next step, so that
                their next observation starts a new episode and frame stack (``first``); ``None`` means all
                of them. Atari passes ``info["game_over"]``: a lost life is ``terminated`` for learning and
                its next step is stored as invalid, but the game and its frame stack go on.

        """
        if not self.obs_written:
            raise RuntimeError("call ReplayBuffer.start(obs) with the reset observations before add()")
        p = self.pos
        term = np.asarray(terminated, dtype=bool)
        trunc = np.asarray(truncated, dtype=bool)
        self._put("actions", p, actions)
        self._put("rewards", p, rewards)
        self._put("terminated", p, term)
        self._put("truncated", p, trunc)
        # The step after a done one only carried the autoreset: never learn from it.
        valid_envs = np.flatnonzero(~self._last_done)
        k = len(valid_envs)
        if k:
            at = (self._ring_head + np.arange(k)) % self.capacity
            self._put("_valid_ring", at, p * self.num_envs + valid_envs)
            self._ring_head += k
        self._valid_per_slot[p] = k
        started = self._last_reset
        self._last_done = term | trunc
        self._last_reset = self._last_done if resets is None else self._last_done & np.asarray(resets, dtype=bool)
        self._write_obs(next_obs, first=started)
        self._push_bounds()

    # ------------------------------------------------------------------ sampling
    def _sampleable_counts(self) -> tuple[int, int]:
        """``(start, size)``: the ring entries of the transitions that may be sampled (host counters only)."""
        start = self._ring_tail
        if self.frame_stack > 1 and self.obs_written > self.slots:
            # The oldest slots' stacks reach into overwritten frames: leave their transitions out.
            oldest = (self.pos + 1 + np.arange(self.frame_stack - 1)) % self.slots
            start += int(self._valid_per_slot[oldest].sum())
        return start, self._ring_head - start

    def _sampleable(self) -> tuple[int, int]:
        """:meth:`_sampleable_counts`, raising when nothing can be sampled yet."""
        start, size = self._sampleable_counts()
        if size < 1:
            raise RuntimeError("the replay buffer holds no complete transition yet: sample after learning_starts")
        return start, size

    def _push_bounds(self) -> None:
        """Copy the host counters that sampling needs into :attr:`bounds` (no wait on the device)."""
        start, size = self._sampleable_counts()
        self._put("bounds", slice(None), np.array((start % self.capacity, size, self.pos), dtype=np.int64))

    def sample(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` valid transitions uniformly, with replacement, on the buffer's device."""
        self._sampleable()  # raises, from host counters, when nothing can be drawn yet
        return self.draw(batch_size, self.generator)

    def draw(self, batch_size: int, generator: torch.Generator | None) -> Batch:
        """:meth:`sample` without the host-side check: device ops only, reading the counters in :attr:`bounds`.

        Args:
            batch_size: Transitions in the batch.
            generator: The buffer's own seeded generator, or ``None`` for torch's default generator of the
                device (what a CUDA graph replay can advance).

        """
        r = torch.randint(2**62, (batch_size,), device=self.device, generator=generator)
        flat = self._flat
        idx = self._valid_ring.index_select(0, (r % flat.size + flat.start) % self.capacity)
        if self._ones.shape[0] != batch_size:
            self._ones = torch.ones(batch_size, device=self.device)
        return self._batch(idx, self._ones)

    def _batch(self, idx: Tensor, weights: Tensor) -> Batch:
        """The batch of the transitions at flat indices ``idx``, with loss weights ``weights``."""
        n = self.num_envs
        b = idx.shape[0]
        flat = self._flat
        if self.n_step == 1:
            nxt = (idx + n) % self.capacity  # same env, next slot
            rewards = flat.rewards.index_select(0, idx)
            terminated = flat.terminated.index_select(0, idx)
            truncated = flat.truncated.index_select(0, idx)
            if self._gammas.shape[0] != b:
                self._gammas = torch.full((b,), self.gamma, device=self.device)
            discounts = self._gammas
        else:
            ret = self._n_step_returns(idx)
            nxt = (idx + ret.steps * n) % self.capacity  # same env, m slots later
            rewards, terminated, truncated = ret.returns, ret.terminated, ret.truncated
            discounts = self.gamma ** ret.steps.to(torch.float32)
        if self.frame_stack > 1:
            obs, next_obs = self._gather_stacks(idx // n, idx % n, nxt // n)
        else:
            obs, next_obs = flat.obs.index_select(0, idx), flat.obs.index_select(0, nxt)
        return Batch(
            obs=obs,
            actions=flat.actions.index_select(0, idx),
            rewards=rewards,
            next_obs=next_obs,
            terminated=terminated,
            truncated=truncated,
            weights=weights,
            indices=idx,
            discounts=discounts,
            next_mask=None if flat.masks is None else flat.masks.index_select(0, nxt),
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Everything needed to continue sampling exactly where this buffer stands.

        Only the filled slots are in it (a 1M-transition Atari buffer 9% full writes 9% of its 7 GB), as views
        of the storage, never copies: a checkpoint needs no second buffer's worth of memory.
        """
        filled = min(self.obs_written, self.slots)
        return {
            "obs": _leading_rows(self.obs, filled),
            "actions": _leading_rows(self.actions, filled),
            "rewards": _leading_rows(self.rewards, filled),
            "terminated": _leading_rows(self.terminated, filled),
            "truncated": _leading_rows(self.truncated, filled),
            "first": _leading_rows(self.first, filled),
            "valid_ring": _leading_rows(self._valid_ring, min(self._ring_head, self.capacity)),
            "ring_head": self._ring_head,
            "ring_tail": self._ring_tail,
            # Tensors, not numpy arrays: the checkpoint then loads with weights_only=True.
            "valid_per_slot": torch.from_numpy(self._valid_per_slot.copy()),
            "last_done": torch.from_numpy(self._last_done.copy()),
            "last_reset": torch.from_numpy(self._last_reset.copy()),
            "pos": self.pos,
            "obs_written": self.obs_written,
            "generator": self.generator.get_state(),
            **({"masks": _leading_rows(self.masks, filled)} if self.masks is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict` of a buffer with the same shapes."""
        names = ["obs", "actions", "rewards", "terminated", "truncated", "first", "_valid_ring"]
        if self.masks is not None:  # a buffer saved without masks (older, or masking off): every action stays valid
            self.masks.fill_(True)
            names += ["masks"] if "masks" in state else []
        for name in names:
            src = state[name.lstrip("_")]
            dst = getattr(self, name)
            # The filled rows only (older checkpoints hold them all); the rest stays as allocated (zeros).
            if src.shape[1:] != dst.shape[1:] or src.shape[0] > dst.shape[0]:
                raise ValueError(f"replay buffer {name} shape {tuple(src.shape)} does not fit {tuple(dst.shape)}")
            dst[: src.shape[0]].copy_(src)
        self._ring_head = int(state["ring_head"])
        self._ring_tail = int(state["ring_tail"])
        self._valid_per_slot[:] = np.asarray(state["valid_per_slot"])  # a tensor, or an older file's array
        self._last_done[:] = np.asarray(state["last_done"])
        self._last_reset[:] = np.asarray(state.get("last_reset", state["last_done"]))
        self.pos = int(state["pos"])
        self.obs_written = int(state["obs_written"])
        self.generator.set_state(state["generator"])
        self._push_bounds()


def _leading_rows(t: Tensor, rows: int) -> Tensor:
    """The first ``rows`` rows of a contiguous ``t`` as a tensor on a storage of just those bytes (no copy).

    ``torch.save`` writes a view's whole storage, so ``t[:rows]`` would still write all of ``t``.
    """
    if rows >= t.shape[0]:
        return t
    row_bytes = t[0].numel() * t.element_size()
    storage = t.untyped_storage()[: rows * row_bytes]
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(storage, 0, (rows, *t.shape[1:]))
