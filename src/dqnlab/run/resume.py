"""What a checkpoint needs beyond Lightning's own state for an exact resume: every RNG and the training env's state.

:class:`ResumeState` saves them with each checkpoint and puts them back before training goes on; the env-step
counter, the observations and the replay buffer travel with :class:`~dqnlab.data.collect.EnvStepper`'s state.
"""

from __future__ import annotations

import logging
import pickle
import random
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from gymnasium.utils import EzPickle
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv, VectorEnv
from pytorch_lightning.callbacks import Callback

from dqnlab.data.collect import EnvStepper
from dqnlab.run.provenance import segment_end

log = logging.getLogger(__name__)


def collect_rng_states() -> dict[str, Any]:
    """The global RNG states of Python, NumPy and torch (CPU, and CUDA when it is in use).

    Tensors and plain types only (NumPy's key array as a tensor), so a checkpoint loads with ``weights_only=True``.
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, None)
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos)},
        "torch": torch.get_rng_state(),
    }
    states["numpy"].update(has_gauss=int(has_gauss), gauss=float(gauss))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned."""
    random.setstate(states["python"])
    state = states["numpy"]
    if isinstance(state, Mapping):
        key = np.asarray(state["key"]).astype(np.uint32)
        state = (state["kind"], key, state["pos"], state["has_gauss"], state["gauss"])
    np.random.set_state(state)  # older checkpoints hold np.random.get_state()'s tuple as it is
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# SyncVectorEnv's own per-step state besides its sub-envs (gymnasium 1.x attribute names).
_SYNC_VECTOR_FIELDS = ("_env_obs", "_observations", "_rewards", "_terminations", "_truncations", "_autoreset_envs")


def save_env_state(env: VectorEnv) -> tuple[bytes | None, str]:
    """The exact state of a vector env as bytes, or ``(None, why not)``.

    A gymnasium ``SyncVectorEnv`` of pure-Python envs (CartPole, Acrobot, ...) is pickled whole: each sub-env
    with its wrappers, physics state, step counters and ``np_random`` generator. Envs in other processes
    (``vectorization=async``) and native emulators (ale-py's vector env) cannot be captured; a resume from such
    a checkpoint starts new episodes.
    """
    if not isinstance(env, SyncVectorEnv):
        inner = getattr(env, "unwrapped", env)
        if "ale_py" in type(inner).__module__ or "Atari" in type(env).__name__:
            return None, "the Atari emulators cannot be saved"
        if isinstance(inner, AsyncVectorEnv):
            return None, "the envs run in other processes (env.vectorization=async)"
        return None, f"{type(env).__name__} is not a gymnasium SyncVectorEnv, whose state alone can be saved"
    # gymnasium's EzPickle envs (LunarLander, the Box2D and MuJoCo envs) pickle their constructor's arguments, not
    # their state: unpickled, they are new envs that were never reset (LunarLander's step then fails).
    if any(isinstance(getattr(sub, "unwrapped", sub), EzPickle) for sub in env.envs):
        return None, "its envs pickle their constructor's arguments, not their state (gymnasium's EzPickle)"
    try:
        fields = {name: getattr(env, name) for name in _SYNC_VECTOR_FIELDS if hasattr(env, name)}
        return pickle.dumps({"envs": env.envs, "fields": fields}), ""
    except Exception as e:  # an env holding a native handle or a window: any pickling error means "cannot"
        return None, f"its sub-envs cannot be pickled ({type(e).__name__}: {e})"


def load_env_state(env: VectorEnv, blob: bytes) -> bool:
    """Put the state from :func:`save_env_state` into ``env``; ``False`` if it does not fit this env."""
    state = pickle.loads(blob)
    if not isinstance(env, SyncVectorEnv) or len(state["envs"]) != env.num_envs:
        return False
    for old in env.envs:
        old.close()
    env.envs = list(state["envs"])
    for name, value in state["fields"].items():
        setattr(env, name, value)
    return True


class ResumeState(Callback):
    """Checkpoints what no other part owns: global RNG states, the training env's state and the config.

    Put it first in the callback list: it restores the global RNG states at the first training batch after a
    resume, before anything else draws from them, which is the point where they were saved (the end of the
    previous gradient step).

    Args:
        collector: The env stepper (its env is the one saved; its buffer and episodes are restarted when the
            env or the buffer could not be restored).
        config: The resolved run config, stored as ``checkpoint["dqnlab"]["config"]``.

    """

    def __init__(self, collector: EnvStepper, config: dict[str, Any] | None = None) -> None:
        self.collector = collector
        self.config = config
        self._pending_rng: dict[str, Any] | None = None
        self._restored = False
        self._env_restored = False
        self._has_buffer = True
        self._warned_env = False
        # The run's wall time across segments: earlier segments' time up to the checkpoint resumed from, plus this
        # process's since it started building the run (the segments before a resume count only up to their save).
        self.started = time.perf_counter()
        self.earlier_wall_s = 0.0
        self.earlier_segments = 0
        # Where and with what code each segment ran (run/provenance.py): the earlier ones from the checkpoint, and
        # this process's (set by train.run once the device is known).
        self.earlier_provenance: list[dict[str, Any]] = []
        self.segment: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """RNG states and the env state (``None`` when the env cannot be saved)."""
        self.collector.finish_pending_step()  # no env step in flight while the env's state is read
        blob, why = save_env_state(self.collector.env)
        if blob is None and not self._warned_env:
            self._warned_env = True
            # Said once, when the first checkpoint is written; a resume from it says so again (ResumeState).
            log.info("checkpoints hold the training but not the envs' state (%s): a resume starts new episodes", why)
        return {"rng": collect_rng_states(), "env": blob}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the env now; keep the RNG states for the first training batch."""
        self._pending_rng = state_dict.get("rng")
        blob = state_dict.get("env")
        self._env_restored = blob is not None and load_env_state(self.collector.env, blob)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Store the resolved config where ``scripts/evaluate.py`` finds it."""
        checkpoint["dqnlab"] = {"config": self.config, "format": 1, **self.totals(), "provenance": self.provenance()}

    def totals(self) -> dict[str, float | int]:
        """The run's wall time until now across its segments (this process is one), and how many there are."""
        return {
            "wall_time_s": self.earlier_wall_s + time.perf_counter() - self.started,
            "segments": self.earlier_segments + 1,
        }

    def provenance(self) -> list[dict[str, Any]]:
        """``summary.json``'s ``provenance``: the earlier segments' entries, then this one's, ended now."""
        return self.earlier_provenance + ([segment_end(self.segment)] if self.segment is not None else [])

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Note the resume and whether the checkpoint holds the replay buffer (``checkpoint.save_buffer``).

        Called for every resume, before :meth:`load_state_dict` (which a checkpoint without this callback's
        state never calls: its env then counts as not restored and starts new episodes).
        """
        self._restored = True
        self._has_buffer = "buffer" in checkpoint.get("callbacks", {}).get(self.collector.state_key, {})
        meta = checkpoint.get("dqnlab") or {}
        # Checkpoints older than this count: their segments' time is unknown (0 s, one segment).
        self.earlier_wall_s = float(meta.get("wall_time_s", 0.0))
        self.earlier_segments = int(meta.get("segments", 1))
        # Checkpoints older than provenance: their segments are not listed (``segments`` still counts them).
        self.earlier_provenance = list(meta.get("provenance", []))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After a resume whose env or buffer was not saved, start new episodes (and refill the buffer)."""
        if not self._restored:
            return
        c = self.collector
        if not self._has_buffer:
            log.warning(
                "resuming from a checkpoint without the replay buffer (checkpoint.save_buffer=false): the envs "
                "restart and %d env steps of the current policy refill the buffer before training goes on (extra "
                "env steps, not counted in env_steps); the resumed run is not identical to an uninterrupted one",
                c.learning_starts,
            )
        elif not self._env_restored:
            log.warning(
                "resuming without the training env's state (not saved for this env): the envs restart and the "
                "run continues from new episodes; the unfinished episodes are dropped"
            )
        if not (self._env_restored and self._has_buffer):
            c.restart_episodes(seed=c.seed + c.env_steps)  # a new seed: the first episodes are not replayed
        if not self._has_buffer:
            # Extra env steps, not counted: the budget, the update schedule and the exploration schedule go on
            # from the checkpoint's env step (summary.json's refill_env_steps says how many there were).
            start = c.env_steps
            c.prefill(pl_module, start + c.learning_starts, random=False)
            c.refill_env_steps, c.env_steps = c.env_steps - start, start

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """At the first step after a resume, restore the global RNG states (after the dataloader drew a seed)."""
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None


# ---------------------------------------------------------------------------------------------- the checkpoint callback
