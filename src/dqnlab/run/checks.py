"""The run's checks: its own knobs, the config's top-level keys, required values, the ``_target_``s' keys,
the device, and the output directory.
"""

from __future__ import annotations

import difflib
import inspect
import re
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dqnlab.checks import ABSENT, PROB, Knob, check_choices, fmt, select, walk
from dqnlab.envs.checks import MISSING_EXAMPLES
from dqnlab.errors import ConfigError

KNOBS: tuple[Knob, ...] = (
    Knob("seed", int, "the run's seed", "0", low=0),
    Knob("env_steps", int, "the run's length in env steps", "50_000", low=1),
    Knob("torch_threads", int, "intra-op CPU threads", "1", low=1, nullable=True),
    Knob("eval.episodes", int, "episodes per evaluation", "10", low=1),
    Knob("eval.every", int, "env steps between evaluations (0 = only at the end)", "10_000", low=0),
    Knob("eval.epsilon", float, "the exploration rate during evaluation", "0.0", **PROB),
    Knob("eval.num_envs", int, "parallel evaluation envs", "8", low=1, nullable=True),
)

CHOICES: dict[str, tuple[str, ...]] = {"nonfinite": ("error", "warn")}

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
    "protocol",
)
BOOL_KNOBS = ("progress_bar", "flush_denormal")  # run knobs that are switches
GROUPS = (
    "algo",
    "augment",
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
    "reset",
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


def top_level_problems(raw: dict[str, Any]) -> list[str]:
    """Top-level keys nothing reads (``+optimzer.lr=1e-3``, ``+sed=3``, ``+envs=pong``), with a close match."""
    problems = []
    for head, node in raw.items():
        if head in TOP_LEVEL_KEYS:
            continue
        # Name the key as the user wrote it: `+optimzer.lr=...` composes to {optimzer: {lr: ...}}.
        leaves = [k for k, v in walk(node, head) if not isinstance(v, dict | list)] if isinstance(node, dict) else []
        problem = unknown_top_level_key(leaves[0] if len(leaves) == 1 else head)
        if problem:
            problems.append(problem)
    return problems


def missing_problems(raw: dict[str, Any]) -> list[str]:
    """Keys a config group leaves as ``???`` (``env=gym`` needs ``env.id``)."""
    problems = []
    for key, value in walk(raw):
        if value == "???":
            example = MISSING_EXAMPLES.get(key, "<value>")
            problems.append(f"{key} is required but has no value (??? in the config): add {key}={example}")
    return problems


def choice_problems(cfg: DictConfig) -> list[str]:
    """The run's string knobs and its switches."""
    problems = check_choices(cfg, CHOICES)
    for key in BOOL_KNOBS:
        value = select(cfg, key)
        if value is not ABSENT and not isinstance(value, bool):
            problems.append(f"{key}={fmt(value)} is not true or false: use {key}=true or {key}=false")
    return problems


# `super().__init__(*args, **kwargs)`: a subclass that hands its other keywords on to its base class.
_FORWARDS_KWARGS = re.compile(r"super\(\)\.__init__\([^)]*\*\*\w+")


def _params(fn: Any) -> tuple[list[str], bool] | None:
    """Keyword parameter names of ``fn`` and whether it takes ``**kwargs``; ``None`` without a signature."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: nothing to check against
        return None
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _forwards_kwargs(init: Any) -> bool:
    """Whether an ``__init__``'s source hands its ``**kwargs`` to ``super().__init__`` (unreadable: no)."""
    try:
        return bool(_FORWARDS_KWARGS.search(inspect.getsource(init)))
    except (OSError, TypeError):
        return False


def _target_params(target: Any) -> list[str] | None:
    """Parameter names a ``_target_`` accepts as keywords, or ``None`` when it takes any (``**kwargs``).

    A class whose ``__init__`` takes ``**kwargs`` only to hand them to ``super().__init__`` (a ``DQNModule`` of
    yours, as ``examples/my_algos.py`` writes it) accepts its own names and its base's: the base is read too, so
    a typo in a key of your subclass is still named. Any other ``**kwargs`` may take anything: not checked.
    """
    if not inspect.isclass(target):
        found = _params(target)
        return None if found is None or found[1] else found[0]
    names: list[str] = []
    for klass in target.__mro__:
        if "__init__" not in vars(klass):
            continue
        init = vars(klass)["__init__"]
        found = _params(init) if klass is not object else None
        if found is None:
            return None
        names += [n for n in found[0] if n != "self" and n not in names]
        if not found[1]:
            return names
        if not _forwards_kwargs(init):
            return None
    return None


def target_problems(raw: dict[str, Any]) -> list[str]:
    """Config keys the ``_target_`` does not take: Hydra only catches typos in overrides, not in yaml files."""
    from hydra.utils import get_object

    problems = []
    for path, node in walk(raw):
        if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
            continue
        try:
            target = get_object(node["_target_"])
        except Exception as e:
            if path.startswith("env.wrappers["):
                continue  # dqnlab.envs.checks names it, with the close match
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


def device_problems(cfg: DictConfig) -> list[str]:
    """A GPU trainer where torch sees no GPU."""
    import torch

    accelerator = select(cfg, "trainer.accelerator")
    if not torch.cuda.is_available() and accelerator in ("gpu", "cuda"):
        return [
            f"trainer.accelerator={accelerator} but torch sees no CUDA device: use trainer=cpu (or "
            "trainer.accelerator=auto), or install a CUDA build of torch"
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
