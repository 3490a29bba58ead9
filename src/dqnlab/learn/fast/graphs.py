"""CUDA-graph capture of the replay draw and of the whole TD update.

On a GPU the eager update of a small Q-network is bound by the host: each of its ~150 kernels costs a
Python dispatch and a launch (about 4 ms for a Nature-CNN update on a host with slow cores, for well under a
millisecond of GPU work). A CUDA graph records those kernels once and replays them with one launch.

Two graphs are captured, each after a few eager warm-up calls (lazy initialisation such as the optimizer's
state and cuBLAS workspaces must not happen inside a capture):

* :class:`GraphedSampler` records :meth:`dqnlab.data.replay.ReplayBuffer.draw`. Every replay refills the same
  output tensors, which the :class:`~dqnlab.data.dataset.ReplayDataset` yields as the minibatch. The draw reads the
  buffer's counters from its device-side ``bounds`` tensor, so a recorded draw stays right as the buffer fills.
* :class:`GraphedUpdate` records a function that reads a static batch and does the update: forward, loss,
  backward, gradient clipping, the non-finite check, the optimizer step (``capturable=True``) and the device-
  side metric sums. Lightning steps it through :class:`ClosureOnlyOptimizer`, whose ``step`` runs the closure
  (the replay) and nothing else, so Lightning's step counting, hooks and checkpointing of the optimizer state
  are unchanged.

Random numbers inside graphs come from torch's default CUDA generator, which graph replays advance (a buffer's
own generator cannot be recorded). Anything that needs the host (a Python number that changes, ``.item()``,
a host-side branch) cannot be recorded; the caller keeps those outside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from dqnlab.data.dataset import Batch
from dqnlab.data.replay import ReplayBuffer

log = logging.getLogger(__name__)

WARMUP_CALLS = 3  # eager calls before a capture (PyTorch's CUDA-graph notes warm up for a few iterations)
# The recorded update against the eager one on the same batch and parameters: the same kernels, so only
# float reassociation differs (cuBLAS may pick other algorithms inside a capture).
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5


def mismatch(
    recorded: Sequence[Tensor], eager: Sequence[Tensor], rtol: float = CHECK_RTOL, atol: float = CHECK_ATOL
) -> str | None:
    """``None`` when every recorded tensor equals its eager counterpart within tolerance, else what differs."""
    if len(recorded) != len(eager):
        return f"{len(recorded)} recorded tensors against {len(eager)} eager ones"
    for i, (a, b) in enumerate(zip(recorded, eager, strict=True)):
        if a.shape != b.shape:
            return f"tensor {i}: shape {tuple(a.shape)} recorded, {tuple(b.shape)} eager"
        if not torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol, equal_nan=True):
            diff = (a.float() - b.float()).abs().nan_to_num(float("inf")).max().item()
            return f"tensor {i} of shape {tuple(a.shape)} differs by up to {diff:.3g}"
    return None


def warn_eager_fallback(what: str, reason: str) -> None:
    """One warning: the recorded path is off for this run, why, and the switch that skips the attempt."""
    log.warning(
        "the %s runs eagerly: its CUDA graph %s. Training goes on, slower; algo.cuda_graph=false skips the attempt",
        what,
        reason,
    )


def graphs_available(device: torch.device) -> bool:
    """Whether CUDA graphs can be captured for work on ``device``."""
    return device.type == "cuda" and torch.cuda.is_available()


def _tensors(batch: Batch) -> list[Tensor]:
    """The tensors of a batch (``next_mask`` is ``None`` for an env without action masks)."""
    return [t for t in batch if t is not None]


class GraphedSampler:
    """Uniform minibatches from a replay buffer, drawn by a replayed CUDA graph after ``warmup`` eager draws.

    Every call after the capture returns the same :class:`~dqnlab.data.dataset.Batch` object, refilled: its tensors
    hold the newest draw until the next call. With ``capture=False`` (CPU, tests) every call is an eager
    :meth:`~dqnlab.data.replay.ReplayBuffer.draw` from the same generator.

    Args:
        buffer: A uniform :class:`~dqnlab.data.replay.ReplayBuffer` (prioritized replay samples on the host side).
        batch_size: Transitions per minibatch.
        capture: Record a CUDA graph after the warm-up.
        warmup: Eager draws before the capture.

    """

    def __init__(self, buffer: ReplayBuffer, batch_size: int, capture: bool, warmup: int = WARMUP_CALLS) -> None:
        self.buffer = buffer
        self.batch_size = int(batch_size)
        self.capture = bool(capture)
        self.warmup = int(warmup)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: Batch | None = None

    def __call__(self) -> Batch:
        """The next minibatch."""
        self.buffer._sampleable()  # raises, from host counters, while nothing can be drawn (no device sync)
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return self.static  # type: ignore[return-value]
        if self.capture and self.calls > self.warmup:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static = self.buffer.draw(self.batch_size, None)
                graph.replay()
            except Exception as e:  # a capture error: draw eagerly from now on
                self.capture = False
                warn_eager_fallback("replay draw", f"could not be recorded ({type(e).__name__}: {e})")
                return self.buffer.draw(self.batch_size, None)
            self.graph, self.static = graph, static
            return self.static
        return self.buffer.draw(self.batch_size, None)


class GraphedUpdate:
    """Runs ``body(batch)`` eagerly ``warmup`` times, then records it as a CUDA graph and replays it.

    ``body`` must read its input only from ``batch``'s tensors and keep no Python state that changes between
    calls. When a call's batch is not the recorded one (prioritized replay samples a fresh batch), it is first
    copied into the recorded batch's tensors with one fused copy.

    The first recorded update is checked: its replay against ``body`` run eagerly on the same batch from the
    same state (``state``: every tensor ``body`` changes). On a mismatch, or on any error while warming up or
    recording, the run logs one warning naming ``algo.cuda_graph=false`` and goes on eagerly from the state
    before that update, so no update is lost or applied twice; :attr:`path` says which one ran.

    Args:
        body: The update; returns a tuple of tensors (e.g. per-sample TD errors), refilled by each replay.
        capture: Record a CUDA graph after the warm-up; ``False`` runs ``body`` eagerly every time (CPU).
        warmup: Eager calls before the capture. They run on a side stream, as CUDA-graph capture requires of
            warm-up work, and are real updates.
        state: The tensors ``body`` changes (parameters, optimizer state, counters), for the check; ``None``
            records without checking.

    """

    def __init__(
        self,
        body: Callable[[Batch], tuple[Tensor, ...]],
        capture: bool,
        warmup: int = WARMUP_CALLS,
        state: Callable[[], list[Tensor]] | None = None,
    ) -> None:
        self.body = body
        self.capture = bool(capture)
        self.warmup = int(warmup)
        self.state = state
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: Batch | None = None
        self.static_out: tuple[Tensor, ...] = ()
        self.fallback_reason: str | None = None  # why the recorded update was given up, if it was

    @property
    def path(self) -> str:
        """``cuda_graph`` once the update is a checked recorded graph, else ``eager``."""
        return "cuda_graph" if self.graph is not None else "eager"

    @property
    def captured(self) -> bool:
        """Whether the update is now a recorded graph."""
        return self.graph is not None

    def __call__(self, batch: Batch) -> tuple[Tensor, ...]:
        """One update on ``batch``; returns ``body``'s outputs."""
        self.calls += 1
        if self.graph is not None:
            static = self.static_batch
            # The DataLoader hands the graphed sampler's tensors over in a new tuple: compare the tensors.
            if any(a is not b for a, b in zip(static, batch, strict=True)):  # type: ignore[arg-type]
                torch._foreach_copy_(_tensors(static), _tensors(batch))  # type: ignore[arg-type]
            self.graph.replay()
            return self.static_out
        if not self.capture:
            return self.body(batch)
        if self.calls <= self.warmup:
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
            except Exception as e:  # no usable CUDA stream: nothing ran yet, this update runs eagerly
                return self._fall_back(batch, None, f"could not be recorded ({type(e).__name__}: {e})")
            with torch.cuda.stream(side):
                out = self.body(batch)
            torch.cuda.current_stream().wait_stream(side)
            return out
        return self._record(batch)

    def _record(self, batch: Batch) -> tuple[Tensor, ...]:
        """Record the update, replay it once, and check it against the eager update from the same state."""
        before = [t.clone() for t in self.state()] if self.state is not None else None
        try:
            # The recorded batch: the graphed sampler's static tensors (no copy per step), or the first batch of
            # a sampler that makes new tensors each step, which later batches are copied into.
            if not all(t.device.type == "cuda" for t in _tensors(batch)):
                raise RuntimeError("a CUDA-graph update needs its batch on the GPU: set buffer.device=auto or cuda")
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.body(batch)
            graph.replay()
        except Exception as e:
            return self._fall_back(batch, before, f"could not be recorded ({type(e).__name__}: {e})")
        if before is None or self.state is None:
            self.graph, self.static_batch, self.static_out = graph, batch, static_out
            return static_out
        recorded = [t.clone() for t in (*static_out, *self.state())]
        torch._foreach_copy_(self.state(), before)  # the same update again, eagerly, from the same state
        eager_out = self.body(batch)
        problem = mismatch(recorded, [*eager_out, *self.state()])
        if problem is not None:
            self.capture = False
            self.fallback_reason = f"did not match the eager update ({problem})"
            warn_eager_fallback("update", self.fallback_reason)
            return eager_out  # the eager update stands: it is what the rest of the run does
        self.graph, self.static_batch, self.static_out = graph, batch, static_out
        torch._foreach_copy_(list(static_out), list(eager_out))
        return static_out

    def _fall_back(self, batch: Batch, before: list[Tensor] | None, reason: str) -> tuple[Tensor, ...]:
        """Give up recording: undo what a failed attempt changed, warn once, run this update eagerly."""
        self.capture, self.graph, self.fallback_reason = False, None, reason
        if before is not None and self.state is not None:
            torch._foreach_copy_(self.state(), before)
        warn_eager_fallback("update", reason)
        return self.body(batch)


class ClosureOnlyOptimizer(torch.optim.Optimizer):
    """The optimizer Lightning steps when the whole update, optimizer step included, is one closure.

    ``step(closure)`` runs the closure and nothing else; the closure steps :attr:`optimizer` itself (inside a
    recorded CUDA graph). Parameter groups, state, ``state_dict`` and ``load_state_dict`` are the wrapped
    optimizer's own objects, so checkpoints, learning-rate schedulers and monitors see the real optimizer.

    Args:
        optimizer: The optimizer that does the update (built with ``capturable=True`` for CUDA graphs).

    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        # Not Optimizer.__init__: it would build new parameter groups instead of sharing the wrapped ones.
        self.optimizer = optimizer
        self._optimizer_step_pre_hooks: dict[int, Any] = {}
        self._optimizer_step_post_hooks: dict[int, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The wrapped optimizer's parameter groups."""
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        """The wrapped optimizer's state."""
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        """The wrapped optimizer's defaults."""
        return self.optimizer.defaults

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run ``closure`` (the update, optimizer step included) and return its result."""
        if closure is None:
            raise RuntimeError("ClosureOnlyOptimizer.step needs the update as its closure")
        return closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the wrapped optimizer's gradients (the recorded update does this itself)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's ``state_dict``."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the wrapped optimizer (before any capture: a recorded graph keeps the old state tensors)."""
        self.optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"ClosureOnlyOptimizer({self.optimizer!r})"
