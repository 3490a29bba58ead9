"""Checkpoint files, read without running code from them, and the check of ``ckpt_path``.

A checkpoint is opened with ``torch.load(weights_only=True)`` and memory-mapped (:func:`load_checkpoint`): a file
that names any Python object other than tensors and plain data is refused, and a large replay buffer inside it is
not read. Only the resume itself (Lightning's ``trainer.fit(ckpt_path=...)``) unpickles the training env's state.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from dqnlab.data import COLLECTOR_STATE_KEY

# Keys Lightning writes into every checkpoint it saves for resuming (`Trainer.save_checkpoint`).
LIGHTNING_CKPT_KEYS = ("pytorch-lightning_version", "global_step", "state_dict", "optimizer_states")
# ckpt_path values Lightning resolves itself (`trainer.fit(ckpt_path="last")`): not files, not checked here.
_LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")


def _first_sentence(err: BaseException, limit: int = 120) -> str:
    text = (str(err).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _numpy_safe_globals() -> list[Any]:
    """What unpickling a numpy array needs: the array type, ``dtype`` and its classes, and numpy's rebuild function.

    Checkpoints written before dqnlab stored its RNG states and episode bookkeeping as tensors hold numpy arrays.
    These names build arrays of plain numbers and nothing else (an object array's items go through the same
    restricted unpickler), so allowing them keeps those checkpoints readable without running code from them.
    """
    import numpy as np

    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.core or numpy._core .multiarray._reconstruct
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFD"}
    return [reconstruct, np.ndarray, np.dtype, *dtypes]


def load_checkpoint(p: str | Path) -> Any:
    """``torch.load`` of a checkpoint with ``weights_only=True``: tensors and plain data, nothing from it runs.

    Memory-mapped, so a checkpoint holding a large replay buffer is cheap to open. Only the resume itself
    (Lightning's ``trainer.fit(ckpt_path=...)``) unpickles the training env's state, which is a pickle.

    Raises:
        pickle.UnpicklingError: The file names a Python object other than tensors and plain data
            (:func:`unsafe_checkpoint_reason` says which); anything else: not a readable torch file.

    """
    import pickle

    import torch

    with open(p, "rb") as f:
        head = f.read(2)
    if not head.startswith((b"PK", b"\x80")):  # neither torch.save's zip nor its older pickle format
        raise pickle.UnpicklingError(f"invalid load key, {head[:1].decode('latin-1')!r}")
    safe = _numpy_safe_globals()
    scope = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5: allowed for this load only
    if scope is None:
        torch.serialization.add_safe_globals(safe)
    with scope(safe) if scope is not None else contextlib.nullcontext():
        try:
            return torch.load(p, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # mmap needs the zip format of torch.save; older files load the plain way
            return torch.load(p, map_location="cpu", weights_only=True)


def peek_checkpoint(path: str | Path) -> dict[str, Any]:
    """The small parts of a checkpoint (counters, config) without reading its tensors (memory-mapped).

    Loaded with ``weights_only=True`` (:func:`load_checkpoint`): nothing from the file runs. This module imports
    torch only here, and never Lightning, so a resume's config is checked before either is imported.
    """
    ckpt = load_checkpoint(path)
    collector = ckpt.get("callbacks", {}).get(COLLECTOR_STATE_KEY, {})
    return {
        "env_steps": int(collector.get("env_steps", 0)),
        "global_step": int(ckpt.get("global_step", 0)),
        "config": (ckpt.get("dqnlab") or {}).get("config"),
        "provenance": list((ckpt.get("dqnlab") or {}).get("provenance") or []),
        "compute": ckpt.get("dqn_compute"),  # how a conv net's update computed: a resume computes the same way
    }


def unsafe_checkpoint_reason(err: BaseException) -> str | None:
    """For an error of :func:`load_checkpoint` that refused a named Python object: that object's name.

    ``None`` for anything else, a garbled pickle opcode included (random bytes): that is a corrupt file.
    """
    match = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(err))
    return next(g for g in match.groups() if g) if match else None


def unsafe_checkpoint_message(name: str, what: str) -> str:
    """The one-line refusal of a file that would run code when loaded."""
    return (
        f"{name} holds {what}, which only unpickling could build: loading it could run code from the file, so it "
        "was not loaded (dqnlab's checkpoints and agent files hold only tensors and plain data); use a file "
        "from a run you trust"
    )


def _loads(p: Path) -> bool:
    try:
        load_checkpoint(p)  # memory-mapped: cheap even for a checkpoint holding a large replay buffer
    except Exception:
        return False
    return True


def _unreadable_fix(p: Path, key: str | None) -> str:
    """How to go on from an unreadable checkpoint: the newest readable one beside it, or starting afresh."""
    others = sorted(
        (q for q in p.parent.glob("*.ckpt") if q.is_file() and q.name != p.name),
        key=lambda q: q.stat().st_mtime_ns,
        reverse=True,
    )
    readable = next((q for q in others[:3] if _loads(q)), None)
    afresh = f"move {p} away to start the run afresh" if key else "drop ckpt_path"
    if readable is not None:
        return f"resume from an earlier checkpoint of the run, e.g. ckpt_path={readable}, or {afresh}"
    return f"pass another .ckpt file a dqnlab run wrote, or {afresh}"


def check_checkpoint(path: str, key: str | None = None) -> list[str]:
    """Problems with ``ckpt_path``: it must be a Lightning checkpoint of a dqnlab run.

    The file is opened with ``mmap=True``, so its tensors (the replay buffer may be gigabytes) are not read.
    It is read with ``weights_only=True`` (:func:`load_checkpoint`): a file that names any other Python object
    (``os.system``) is refused without running it. The resume itself still unpickles the training env's state:
    resume only from your own runs. Nothing is ever written to the file.

    Args:
        path: The checkpoint file.
        key: How the messages name it when ``ckpt_path`` is an alias (``ckpt_path=last``); default
            ``ckpt_path=<path>``.

    """
    if path in _LIGHTNING_CKPT_ALIASES:
        return []
    name = f"{key} ({path})" if key else f"ckpt_path={path}"
    p = Path(path).expanduser()
    if not p.exists():
        return [f"{name} does not exist: pass the .ckpt file of an earlier run, or drop ckpt_path"]
    if not p.is_file():
        return [f"{name} is not a file: pass the .ckpt file itself, not its directory"]
    try:
        ckpt = load_checkpoint(p)
    except Exception as e:
        what = unsafe_checkpoint_reason(e)
        if what is not None:
            return [unsafe_checkpoint_message(name, f"a Python object ({what})")]
        # A half-written file cannot come from dqnlab (its writes are atomic), but a full disk, a copy cut
        # short or a bad transfer can make one.
        return [
            f"{name} is not a torch checkpoint, or is truncated or corrupt ({type(e).__name__}: "
            f"{_first_sentence(e)}); the file was left as it is: {_unreadable_fix(p, key)}"
        ]
    if not isinstance(ckpt, dict):
        return [
            f"{name} holds a {type(ckpt).__name__}, not a Lightning checkpoint dict: pass a .ckpt file a dqnlab "
            "run wrote"
        ]
    kept = (ckpt.get("dqnlab") or {}).get("kept") if isinstance(ckpt.get("dqnlab"), dict) else None
    if kept:
        return [
            f"{name} holds the network eval.keep_best kept (env step {kept.get('env_steps')}), for "
            f"scripts/evaluate.py and scripts/export.py, not a training state: resume from the last.ckpt beside "
            f"it (ckpt_path={p.with_name('last.ckpt')})"
        ]
    missing = [k for k in LIGHTNING_CKPT_KEYS if k not in ckpt]
    if missing:
        return [
            f"{name} is not a Lightning training checkpoint (no {', '.join(missing)}): pass a .ckpt file a "
            "dqnlab run wrote (weights-only files cannot resume training)"
        ]
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not any(str(k).startswith("q_net.") for k in state):
        return [
            f"{name} is a Lightning checkpoint but not of a dqnlab DQN (no q_net.* weights): pass a .ckpt file "
            "a dqnlab run wrote"
        ]
    return []


def which_network(path: Path) -> str:
    """Which network a checkpoint file plays, in words, for ``evaluate.py`` and ``export.py`` to say.

    ``best.ckpt`` holds the one ``eval.keep_best`` kept, ``last.ckpt`` the final one (the run's training state),
    ``env_steps_N.ckpt`` the one of env step N. An agent file or an unreadable file: ``""``.
    """
    try:
        ckpt = load_checkpoint(path)
    except Exception:
        return ""
    if not isinstance(ckpt, dict):
        return ""
    meta = ckpt.get("dqnlab") if isinstance(ckpt.get("dqnlab"), dict) else {}
    kept = meta.get("kept")
    steps = ((ckpt.get("callbacks") or {}).get("EnvStepper") or {}).get("env_steps")
    if kept:
        return (
            f"the network eval.keep_best kept: env step {kept.get('env_steps')}, eval return "
            f"{float(kept.get('return_mean', float('nan'))):.2f} (the final network is in last.ckpt)"
        )
    if steps is None:
        return ""
    best, also = path.with_name("best.ckpt"), ""
    if path.name == "last.ckpt" and best.is_file():
        with contextlib.suppress(Exception):
            kept_steps = load_checkpoint(best)["dqnlab"]["kept"]["env_steps"]
            also = (
                " (the final one, which eval.keep_best kept)"
                if kept_steps == steps
                else f" (the final one; eval.keep_best kept that of env step {kept_steps}: {best})"
            )
    return f"the network of env step {steps}{also}"
