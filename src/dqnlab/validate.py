"""Reject a bad run before anything heavy starts, with one message that names the key and the fix.

Three moments, each as early as what it checks allows:

1. :class:`ValidateOnStart`, a Hydra callback (``conf/hydra/default.yaml``), runs :func:`validate_config` and
   checks that the output directory is writable before Hydra creates the run directory, so a bad command line
   leaves no empty ``outputs/<date>/<time>`` behind. Hydra itself already rejects misspelled override keys
   (``Key 'x' is not in struct``) and unknown group options (``Could not find 'network/x'``).
2. :func:`validate_config`, called again at the top of :func:`dqnlab.train.run` (so the compose API and every
   multirun job get it too): required values, types and ranges of the knobs, their relations (batch size vs
   capacity vs ``learning_starts`` vs ``env_steps``), config keys that the ``_target_`` does not accept (a
   typo in an experiment file or a ``+key=`` override), a GPU that is not there, a checkpoint that is not one,
   and a replay buffer too large for memory whatever the observations.
3. :func:`validate_env`, once the env exists and before the network and buffer are built: a discrete action
   space, ``Box`` observations, and the exact replay buffer size. The networks check their own input shape
   (:class:`~dqnlab.networks.NetworkConfigError`) right after.

Problems found together are reported together, in one :class:`~dqnlab.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dqnlab.conf_keys import unknown_group_key
from dqnlab.errors import EXIT_CONFIG_ERROR, ConfigError, full_error_requested, print_error
from dqnlab.slurm import check_slurm_launcher

if TYPE_CHECKING:
    import torch
    from gymnasium.vector import VectorEnv

_ABSENT = object()

# Keys Lightning writes into every checkpoint it saves for resuming (`Trainer.save_checkpoint`).
LIGHTNING_CKPT_KEYS = ("pytorch-lightning_version", "global_step", "state_dict", "optimizer_states")
# ckpt_path values Lightning resolves itself (`trainer.fit(ckpt_path="last")`): not files, not checked here.
_LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")


@dataclass(frozen=True)
class Knob:
    """A numeric config key and the range it must lie in; a key that is absent from the config is skipped.

    Attributes:
        key: Dotted config key.
        kind: ``int`` or ``float`` (ints are accepted where floats are).
        what: What the knob is, with its unit, for the message.
        example: A valid value to suggest.
        low: Lower bound, or ``None``.
        high: Upper bound, or ``None``.
        low_open: The lower bound itself is excluded.
        nullable: ``null`` is allowed (it means "off" or "default").

    """

    key: str
    kind: type
    what: str
    example: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nullable: bool = False

    def range_text(self) -> str:
        """The allowed range in words, e.g. ``in [0, 1]`` or ``> 0``."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"<= {self.high:g}"

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the allowed range."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and value > self.high)


_PROB = {"low": 0.0, "high": 1.0}
KNOBS: tuple[Knob, ...] = (
    Knob("seed", int, "the run's seed", "0", low=0),
    Knob("env_steps", int, "the run's length in env steps", "50_000", low=1),
    Knob("torch_threads", int, "intra-op CPU threads", "1", low=1, nullable=True),
    Knob("env.num_envs", int, "parallel env copies", "1", low=1),
    Knob("env.max_episode_steps", int, "the episode time limit in env steps", "500", low=1, nullable=True),
    Knob("env.frame_skip", int, "emulator frames per agent step", "4", low=1),
    Knob("env.frame_stack", int, "frames per observation", "4", low=1),
    Knob("env.repeat_action_probability", float, "the sticky-action probability", "0.25", **_PROB),
    Knob("optimizer.lr", float, "the learning rate", "1e-3", low=0.0, low_open=True),
    Knob("optimizer.eps", float, "the optimizer's denominator epsilon", "1e-8", low=0.0),
    Knob("optimizer.weight_decay", float, "the weight decay", "0", low=0.0),
    Knob("algo.batch_size", int, "transitions per gradient step", "64", low=1),
    Knob("algo.gamma", float, "the discount per env step", "0.99", **_PROB),
    Knob("algo.n_step", int, "the n-step return length in env steps", "1", low=1),
    Knob("algo.max_grad_norm", float, "the gradient-norm clip (0 or null = off)", "10.0", low=0.0, nullable=True),
    Knob("algo.num_atoms", int, "the atoms of the return distribution (C51)", "51", low=1),
    Knob("algo.v_min", float, "the smallest atom in return units", "-10.0"),
    Knob("algo.v_max", float, "the largest atom in return units", "10.0"),
    Knob("network.sigma0", float, "the initial noise scale of noisy layers", "0.5", low=0.0, low_open=True),
    Knob("buffer.alpha", float, "the priority exponent of prioritized replay", "0.6", low=0.0),
    Knob("buffer.beta_start", float, "the initial importance-sampling exponent", "0.4", **_PROB),
    Knob("buffer.beta_steps", int, "the env steps over which beta reaches 1", "1_000_000", low=0),
    Knob("buffer.priority_eps", float, "the priority added to |TD error|", "1e-6", low=0.0, low_open=True),
    Knob("buffer.fanout", int, "the children per node of the priority tree", "32", low=2),
    Knob("buffer.capacity", int, "the replay capacity in transitions", "100_000", low=1),
    Knob("buffer.frame_stack", int, "frames per stored observation", "1", low=1),
    Knob(
        "buffer.memory_fraction",
        float,
        "the share of free memory the buffer may take",
        "0.9",
        low=0.0,
        high=1.0,
        low_open=True,
    ),
    Knob("collector.learning_starts", int, "env steps of random prefill", "1_000", low=0),
    Knob("collector.train_freq", int, "env steps per update phase", "1", low=1),
    Knob("collector.gradient_steps", int, "gradient steps per update phase", "1", low=1),
    Knob("collector.epsilon_start", float, "the exploration rate at env step 0", "1.0", **_PROB),
    Knob("collector.epsilon_end", float, "the exploration rate after the ramp", "0.05", **_PROB),
    Knob("collector.exploration_fraction", float, "the ramp length as a fraction of env_steps", "0.1", **_PROB),
    Knob("collector.exploration_steps", int, "the ramp length in env steps", "100_000", low=0, nullable=True),
    Knob("collector.log_every", int, "env steps between logged rows", "1_000", low=1),
    Knob("target.interval", int, "gradient steps between target syncs", "1_000", low=1),
    Knob("target.tau", float, "the target blend weight (1 = copy)", "1.0", low=0.0, high=1.0, low_open=True),
    Knob("eval.episodes", int, "episodes per evaluation", "10", low=1),
    Knob("eval.every", int, "env steps between evaluations (0 = only at the end)", "10_000", low=0),
    Knob("eval.epsilon", float, "the exploration rate during evaluation", "0.0", **_PROB),
    Knob("eval.num_envs", int, "parallel evaluation envs", "8", low=1, nullable=True),
)

CHOICES: dict[str, tuple[str, ...]] = {
    "algo.loss": ("mse", "huber", "cross_entropy"),
    "buffer.stack_padding": ("reset", "zero"),
    "nonfinite": ("error", "warn"),
}

# Values to suggest for keys a config group leaves as ??? (`env=gym` needs `env.id`).
_MISSING_EXAMPLES = {"env.id": "Acrobot-v1"}


# ---------------------------------------------------------------------------------------------- helpers
def _select(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key``, or ``_ABSENT`` when the key does not exist or is ``???``."""
    return OmegaConf.select(cfg, key, default=_ABSENT)


def _raw(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, interpolations and ``???`` left as written, without ``hydra``.

    Unresolved, because the Hydra callback sees the config before ``${hydra:runtime.output_dir}`` exists.
    """
    raw = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    return raw


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(dotted key, value)`` of a plain container, depth first (list items as ``key[i]``)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{prefix}[{k}]" if isinstance(k, int) else f"{prefix}.{k}" if prefix else str(k)
        yield key, v
        yield from _walk(v, key)


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# Every top-level key a composed config may hold: conf/train.yaml's run-level knobs and the config groups
# (tests/test_validation.py checks this against conf/, so it cannot drift). Anything else was added by a
# `+key=` override or a YAML file, and nothing reads it: a typo that would train the wrong experiment.
RUN_KNOBS = (
    "seed",
    "env_steps",
    "torch_threads",
    "flush_denormal",
    "progress_bar",
    "optimized_metric",
    "ckpt_path",
    "nonfinite",
)
BOOL_KNOBS = ("progress_bar", "flush_denormal")  # run knobs that are switches
GROUPS = (
    "algo",
    "buffer",
    "checkpoint",
    "collector",
    "debug",
    "env",
    "eval",
    "experiment",
    "hparams",
    "hparams_search",
    "logger",
    "network",
    "optimizer",
    "paths",
    "target",
    "trainer",
)
TOP_LEVEL_KEYS = (*RUN_KNOBS, *GROUPS, "hydra")


def unknown_top_level_key(key: str) -> str | None:
    """For a dotted key (``optimzer.lr``) whose first part is not a dqnlab config key: the problem and a fix."""
    head, _, rest = key.partition(".")
    if head in TOP_LEVEL_KEYS:
        return None
    close = difflib.get_close_matches(head, TOP_LEVEL_KEYS, n=1, cutoff=0.6)
    if close:
        fix = f"did you mean {close[0]}{'.' + rest if rest else ''}?"
    else:
        fix = f"the top-level keys are {', '.join(RUN_KNOBS)} and the groups {', '.join(GROUPS)}"
    return f"{key} is not a dqnlab setting ({head!r} is neither a run knob nor a config group): {fix}"


# Hydra's flags that take a value (`--cfg job`, `-cn NAME`, ...): the value is not an override.
_FLAGS_WITH_VALUE = frozenset(
    [
        "--cfg",
        "-c",
        "--package",
        "-p",
        "--config-path",
        "-cp",
        "--config-name",
        "-cn",
        "--config-dir",
        "-cd",
        "--experimental-rerun",
    ]
)
# Flags that give Hydra other config files, whose groups may hold keys dqnlab's conf/ does not.
_CONFIG_SOURCE_FLAGS = frozenset(["--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"])


def refuse_unknown_override_keys(argv: list[str], conf_dir: Path | None = None) -> None:
    """``optimzer.lr=1e-3``: Hydra's own message suggests ``+optimzer.lr=1e-3``, which would add a key nothing
    reads; name the key dqnlab has instead (exit status 2), keeping Hydra's words in the message.

    With ``conf_dir`` (dqnlab's ``conf/``), ``optimizer.lrr=1`` too: a second-level key that no file there gives
    its group (:mod:`dqnlab.conf_keys`); skipped when the command line points Hydra at other config files.
    """
    if conf_dir is not None and any(arg.split("=")[0] in _CONFIG_SOURCE_FLAGS for arg in argv):
        conf_dir = None  # the user's own config files may give a group any key
    skip = False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg in _FLAGS_WITH_VALUE
            continue
        match = re.match(r"([A-Za-z_][\w./@-]*)=", arg)  # plain `key=value`; `+key=`/`~key` are checked in run()
        if not match:
            continue
        key = match.group(1)
        problem = unknown_top_level_key(key.replace("/", ".").split("@")[0])
        if not problem and conf_dir is not None and "/" not in key and "@" not in key:
            problem = unknown_group_key(key, str(conf_dir), GROUPS)
        if problem:
            print(f"error: {arg}: {problem} (Hydra: Could not override {key!r})", file=sys.stderr)
            sys.exit(EXIT_CONFIG_ERROR)


# ---------------------------------------------------------------------------------------------- checks
def _check_top_level(raw: dict[str, Any]) -> list[str]:
    """Top-level keys nothing reads (``+optimzer.lr=1e-3``, ``+sed=3``, ``+envs=pong``), with a close match."""
    problems = []
    for head, node in raw.items():
        if head in TOP_LEVEL_KEYS:
            continue
        # Name the key as the user wrote it: `+optimzer.lr=...` composes to {optimzer: {lr: ...}}.
        leaves = [k for k, v in _walk(node, head) if not isinstance(v, dict | list)] if isinstance(node, dict) else []
        problem = unknown_top_level_key(leaves[0] if len(leaves) == 1 else head)
        if problem:
            problems.append(problem)
    return problems


def _check_missing(raw: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in _walk(raw):
        if value == "???":
            example = _MISSING_EXAMPLES.get(key, "<value>")
            problems.append(f"{key} is required but has no value (??? in the config): add {key}={example}")
    return problems


def _check_knob(cfg: DictConfig, knob: Knob) -> tuple[list[str], float | None]:
    """Problems with one knob, and its value when it is valid and set (for the relational checks)."""
    try:
        value = _select(cfg, knob.key)
    except OmegaConfBaseException as e:
        return [f"{knob.key} cannot be resolved ({e}): fix the interpolation or set {knob.key}={knob.example}"], None
    if value is _ABSENT or (value is None and knob.nullable):
        return [], None
    whole = knob.kind is int
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or (whole and not float(value).is_integer()):
        kind = "a whole number" if whole else "a number"
        return [f"{knob.key}={_fmt(value)} must be {kind} ({knob.what}): e.g. {knob.key}={knob.example}"], None
    if whole and isinstance(value, float):
        # 1e6 parses as a float and would break shapes and ranges downstream.
        return [
            f"{knob.key}={value!r} must be a whole number ({knob.what}), but 1e6-style values are floats: "
            f"write {knob.key}={int(value):_}"
        ], None
    if not math.isfinite(value) or not knob.contains(value):
        return [
            f"{knob.key}={_fmt(value)} is out of range: {knob.what} must be {knob.range_text()}; "
            f"e.g. {knob.key}={knob.example}"
        ], None
    return [], value


def _check_relations(v: dict[str, float]) -> list[str]:
    """Checks between knobs; each runs only when its knobs are set and valid on their own."""
    problems = []
    bs, cap, ls = v.get("algo.batch_size"), v.get("buffer.capacity"), v.get("collector.learning_starts")
    if bs is not None and cap is not None and bs > cap:
        problems.append(
            f"algo.batch_size={bs} is larger than buffer.capacity={cap} transitions: lower algo.batch_size "
            f"or raise buffer.capacity to at least {bs}"
        )
    if bs is not None and ls is not None and ls < bs:
        problems.append(
            f"collector.learning_starts={ls} env steps is smaller than algo.batch_size={bs}: the first "
            f"updates would draw the same few transitions again and again; raise collector.learning_starts to "
            f"at least {bs}"
        )
    steps, freq = v.get("env_steps"), v.get("collector.train_freq", 1)
    if steps is not None and ls is not None and steps < ls + freq:
        problems.append(
            f"env_steps={steps} leaves no update after the random prefill of collector.learning_starts={ls} "
            f"env steps (an update phase takes collector.train_freq={freq}): raise env_steps to at least "
            f"{ls + freq} or lower collector.learning_starts"
        )
    v_min, v_max = v.get("algo.v_min"), v.get("algo.v_max")
    if v.get("algo.num_atoms", 1) > 1 and v_min is not None and v_max is not None and v_min >= v_max:
        problems.append(f"algo.v_min={v_min} must be below algo.v_max={v_max}: the atoms span [v_min, v_max]")
    num_envs, stack = v.get("env.num_envs", 1), v.get("buffer.frame_stack", 1)
    need_slots = max(2, stack + 1)
    if cap is not None and cap // num_envs < need_slots:
        problems.append(
            f"buffer.capacity={cap} leaves {cap // num_envs} slot(s) per env for env.num_envs={num_envs}: "
            f"raise buffer.capacity to at least {need_slots * num_envs}"
        )
    return problems


def _check_choices(cfg: DictConfig) -> list[str]:
    problems = []
    for key, options in CHOICES.items():
        value = _select(cfg, key)
        if value is not _ABSENT and value not in options:
            problems.append(f"{key}={_fmt(value)} is not known: use one of {', '.join(options)}")
    for key in BOOL_KNOBS:
        value = _select(cfg, key)
        if value is not _ABSENT and not isinstance(value, bool):
            problems.append(f"{key}={_fmt(value)} is not true or false: use {key}=true or {key}=false")
    loss, atoms = _select(cfg, "algo.loss"), _select(cfg, "algo.num_atoms")
    distributional = isinstance(atoms, int) and not isinstance(atoms, bool) and atoms > 1
    if loss in CHOICES["algo.loss"] and distributional != (loss == "cross_entropy"):
        problems.append(
            f"algo.loss={loss} with algo.num_atoms={1 if atoms is _ABSENT else atoms}: loss=cross_entropy is the "
            "loss of a distributional learner (num_atoms > 1) and only of it; use algo=c51 for C51, algo=dqn "
            "(mse or huber) otherwise"
        )
    return problems


def _target_params(target: Any) -> list[str] | None:
    """Parameter names a ``_target_`` accepts as keywords, or ``None`` when it takes ``**kwargs``."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check against
        return None
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_targets(raw: dict[str, Any]) -> list[str]:
    """Config keys the ``_target_`` does not take: Hydra only catches typos in overrides, not in yaml files."""
    from hydra.utils import get_object

    problems = []
    for path, node in _walk(raw):
        if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
            continue
        try:
            target = get_object(node["_target_"])
        except Exception as e:
            problems.append(
                f"{path}._target_={node['_target_']!r} cannot be imported ({e}): check the name, or "
                "install the package that provides it"
            )
            continue
        params = _target_params(target)
        if params is None:
            continue
        for key in node:
            if not isinstance(key, str) or (key.startswith("_") and key.endswith("_")) or key in params:
                continue
            close = difflib.get_close_matches(key, params, n=1, cutoff=0.6)
            hint = f"did you mean {path}.{close[0]}?" if close else f"remove it (it takes: {', '.join(params)})"
            problems.append(f"{path}.{key} is not a setting of {node['_target_']}: {hint}")
    return problems


def _buffer_device(cfg: DictConfig) -> torch.device:
    """The replay buffer's device as ``dqnlab.train.run`` picks it, without building anything."""
    import torch

    requested = _select(cfg, "buffer.device")
    if requested not in (_ABSENT, None, "auto"):
        return torch.device(requested)
    accelerator = _select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda") or (accelerator in (_ABSENT, "auto") and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _check_devices(cfg: DictConfig) -> list[str]:
    import torch

    if torch.cuda.is_available():
        return []
    problems = []
    accelerator = _select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda"):
        problems.append(
            f"trainer.accelerator={accelerator} but torch sees no CUDA device: use trainer=cpu (or "
            "trainer.accelerator=auto), or install a CUDA build of torch"
        )
    device = _select(cfg, "buffer.device")
    if isinstance(device, str) and device.startswith("cuda"):
        problems.append(f"buffer.device={device} but torch sees no CUDA device: use buffer.device=auto or cpu")
    return problems


def buffer_too_large(
    need: int,
    free: int,
    fraction: float,
    device: torch.device,
    capacity: int,
    at_least: bool = False,
    jobs: int = 0,
    held: int = 0,
) -> str:
    """The message for a replay buffer that does not fit: how much it needs, how much there is, what to do.

    ``jobs`` other processes on this machine hold ``held`` bytes of the device for their buffers
    (:func:`dqnlab.replay.memory_for_a_new_buffer`); ``free`` is what they leave.
    """
    import os

    from dqnlab.replay import MEMORY_LIMIT_ENV

    fits = int(capacity * fraction * free / max(need, 1))
    others = f" besides the {_gib(held)} that {jobs} other dqnlab job(s) on this machine hold" if jobs else ""
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    within = f" within {MEMORY_LIMIT_ENV}={limit}" if limit else ""
    fewer = "run fewer jobs at once (hydra.launcher.n_jobs), " if jobs else ""
    return (
        f"buffer.capacity={capacity:_} transitions needs {'at least ' if at_least else ''}{_gib(need)} on "
        f"{device} but only {_gib(free)} is free{others}{within} (buffer.memory_fraction={fraction:g} of it may "
        f"be used): lower buffer.capacity to at most about {fits:_}, {fewer}or put the buffer elsewhere with "
        "buffer.device"
    )


def _check_buffer_lower_bound(cfg: DictConfig, capacity: float | None, num_envs: float | None) -> list[str]:
    """A buffer too large even with 1-byte observations fails here, before the env is built."""
    import torch

    from dqnlab.replay import ReplayBuffer, memory_for_a_new_buffer

    if capacity is None:
        return []
    device = _buffer_device(cfg)
    try:  # less what other jobs' buffers on this machine reserved (a CUDA device without CUDA was rejected)
        free, jobs, held = memory_for_a_new_buffer(device)
    except ConfigError as e:  # a bad DQNLAB_MEMORY_LIMIT
        return [str(e)]
    fraction = _select(cfg, "buffer.memory_fraction")
    fraction = 0.9 if fraction in (_ABSENT, None) else float(fraction)
    n = int(num_envs or 1)
    need = ReplayBuffer.nbytes_for(int(capacity) // n, n, (), torch.uint8)  # () of uint8: a 1-byte observation
    if free is not None and need > fraction * free:
        return [buffer_too_large(need, free, fraction, device, int(capacity), True, jobs, held)]
    return []


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


def check_writable_dir(path: str | Path, key: str) -> None:
    """Create ``path`` if needed and prove a file can be written there, or raise a :class:`ConfigError`.

    Hydra creates the run directory itself and fails with a bare ``FileNotFoundError`` traceback; this says
    which key to change. Creating the directory early is harmless: Hydra is about to create it anyway.
    """
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"cannot write the run's outputs to {key}={path} ({reason}): set {key} to a directory you can write"
        ) from e


# ---------------------------------------------------------------------------------------------- entry points
def _raise_all(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("\n".join([f"{len(problems)} problems with the config:", *(f"- {p}" for p in problems)]))


def validate_config(cfg: DictConfig) -> None:
    """Check the composed config before anything is built; raise one :class:`ConfigError` listing the problems.

    The import-free checks (required values, ranges, relations, choices) run first and report together; the
    checks that import torch and the ``_target_``s (unknown keys, devices, memory, checkpoint) run once they pass.

    Args:
        cfg: The composed config of ``conf/train.yaml`` (with or without its ``hydra`` node).

    Raises:
        ConfigError: Naming each offending key and its fix.

    """
    raw = _raw(cfg)
    problems = _check_top_level(raw) + _check_missing(raw)
    valid: dict[str, float] = {}
    for knob in KNOBS:
        knob_problems, value = _check_knob(cfg, knob)
        problems += knob_problems
        if value is not None:
            valid[knob.key] = value
    problems += _check_relations(valid)
    problems += _check_choices(cfg)
    # The checks above import nothing, so a mistyped number fails in under a second; the ones below import
    # torch and every _target_ (Lightning alone takes seconds), so they run once those pass.
    _raise_all(problems)
    problems += _check_targets(raw)
    from dqnlab.minatar import config_problems as minatar_problems  # imported like the _target_s: torch is in

    problems += minatar_problems(cfg)  # env=minatar: an unknown env.game, before the run dir exists
    problems += _check_devices(cfg)
    if not problems:  # the memory estimate needs a sane device and capacity
        problems += _check_buffer_lower_bound(cfg, valid.get("buffer.capacity"), valid.get("env.num_envs"))
    ckpt_path = _select(cfg, "ckpt_path")
    if isinstance(ckpt_path, str):
        problems += check_checkpoint(ckpt_path)
    _raise_all(problems)


def _env_name(cfg: DictConfig) -> str:
    env_id = _select(cfg, "env.id")
    return f"env.id={env_id}" if isinstance(env_id, str) else "the env"


def validate_env(cfg: DictConfig, env: VectorEnv) -> None:
    """Check what only the built env tells: its spaces, and the exact replay buffer size for its observations.

    Call it right after the env is built, before the network and the buffer are.

    Args:
        cfg: The composed config.
        env: The training vector env.

    Raises:
        EnvConfigError: The env's spaces do not suit DQN.
        BufferTooLargeError: The replay buffer would not fit in its device's memory.

    """
    import gymnasium as gym
    import numpy as np
    import torch

    from dqnlab.envs import EnvConfigError, check_discrete
    from dqnlab.replay import BufferTooLargeError, ReplayBuffer, memory_for_a_new_buffer

    name = _env_name(cfg)
    check_discrete(env, name)
    obs_space = env.single_observation_space
    if not isinstance(obs_space, gym.spaces.Box):
        raise EnvConfigError(
            f"{name} has observations of type {obs_space}: dqnlab's networks take Box observations (vectors or "
            "images); pick an env with Box observations or flatten/one-hot them with a gymnasium "
            "ObservationWrapper"
        )
    capacity = int(_select(cfg, "buffer.capacity"))
    stack = int(cfg.buffer.get("frame_stack", 1))
    frame_shape = tuple(obs_space.shape[1:] if stack > 1 else obs_space.shape)
    slots = capacity // env.num_envs
    obs_dtype = torch.from_numpy(np.zeros(0, dtype=obs_space.dtype)).dtype
    need = ReplayBuffer.nbytes_for(slots, env.num_envs, frame_shape, obs_dtype)
    device = _buffer_device(cfg)
    free, jobs, held = memory_for_a_new_buffer(device)  # what other jobs' buffers leave of the free memory
    fraction = float(cfg.buffer.get("memory_fraction", 0.9))
    if free is not None and need > fraction * free:
        raise BufferTooLargeError(buffer_too_large(need, free, fraction, device, capacity, jobs=jobs, held=held))


class ValidateOnStart(Callback):
    """Hydra callback: validate before Hydra creates the run directory (see the module docstring).

    A config error ends the process here with ``error: <message>`` and exit status 2, like errors raised
    inside the run (see :mod:`dqnlab.errors`).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check the whole config, then that ``hydra.run.dir`` is writable."""
        try:
            validate_config(config)
            check_writable_dir(config.hydra.run.dir, "hydra.run.dir")
        except ConfigError as err:
            self._exit(err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check that ``hydra.sweep.dir`` is writable; each job validates its own config in ``run()``.

        The config seen here lacks the sweep's overrides (``env.id=A,B`` leaves ``env.id`` at ``???``), so
        validating it would reject good sweeps.
        """
        try:
            check_writable_dir(config.hydra.sweep.dir, "hydra.sweep.dir")
            check_slurm_launcher(config)  # a SLURM launcher where there is no sbatch
        except ConfigError as err:
            self._exit(err)

    @staticmethod
    def _exit(err: ConfigError) -> None:
        # Hydra's run_and_report would print a traceback for an exception from a callback; SystemExit it lets by.
        if full_error_requested():
            raise err
        print_error(err)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
