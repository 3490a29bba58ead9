"""Agent files: a trained Q-network to share, in a format whose loading runs no code from the file.

A checkpoint is for resuming a run: it holds the replay buffer, the optimizer and the training env's state, and
that state is a pickle of gymnasium env objects, which only unpickling can rebuild (and unpickling runs whatever
the file names). An agent file holds only what playing needs:

- the online network's weights, as safetensors (a header of JSON, then raw tensor bytes: nothing is unpickled);
- in the safetensors metadata, plain JSON strings: ``format`` (``dqnlab-agent/1``), ``dqnlab_version``,
  ``env_steps`` (env steps trained) and ``config``: the run's ``env`` and ``network`` nodes, the three ``algo``
  values that turn a C51 output into Q-values, ``eval.epsilon`` and ``seed``.

One file rather than a directory: it is what people upload, mail and download, and one file cannot lose a part on
the way; safetensors keeps its metadata in the same length-prefixed, size-checked header as the tensor index, so a
truncated or foreign file fails to parse instead of half-loading. A Nature-CNN agent is 6.8 MB.

Loading never instantiates a ``_target_`` other than dqnlab's own env and network factories
(:data:`ENV_TARGETS`, :data:`NETWORK_TARGETS`): :func:`check_targets` refuses any other, at any depth, before
anything is built. ``scripts/export.py`` writes agent files; ``scripts/evaluate.py`` plays them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from dqnlab import __version__
from dqnlab.errors import ConfigError
from dqnlab.io import atomic_write_bytes
from dqnlab.legacy import upgrade_targets

FORMAT = "dqnlab-agent/1"
SUFFIX = ".safetensors"
# The only callables a config read from a file may name (conf/env/*.yaml, conf/network/*.yaml): nothing else is
# instantiated, so a file cannot make us call os.system or any other importable function.
ENV_TARGETS = frozenset(
    {"dqnlab.envs.vector.make_vector_env", "dqnlab.envs.atari.make_atari_env", "dqnlab.envs.minatar.make_minatar_env"}
)
NETWORK_TARGETS = frozenset(
    {"dqnlab.learn.networks.MLP", "dqnlab.learn.networks.NatureCNN", "dqnlab.learn.networks.MinAtarCNN"}
)
_DOTTED = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+")  # module.Class: nothing else names a network of yours
_WRAPPER_ENTRY = re.compile(r"env\.wrappers\[\d+\]")  # one entry of env.wrappers (dqnlab.envs.wrappers)
_ALGO_KEYS = ("num_atoms", "v_min", "v_max")  # what the policy needs to read a distributional output
_MAX_HEADER = 100 * 2**20  # bytes; safetensors' own limit too


class AgentFileError(ConfigError):
    """An agent file (or the config of a checkpoint to play) cannot be loaded safely; the message says why."""


def _targets(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every ``(dotted path, _target_ value)`` in a plain container, depth first."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield path, node["_target_"]
        for k, v in node.items():
            yield from _targets(v, f"{path}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def network_module(cfg: Mapping[str, Any]) -> str | None:
    """The module of a network of your own (``network._target_=my_networks.MyNet``: ``my_networks``); None for
    dqnlab's networks.
    """
    node = cfg.get("network")
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if not isinstance(target, str) or target in NETWORK_TARGETS or not _DOTTED.fullmatch(target):
        return None
    return target.rpartition(".")[0]


def check_targets(cfg: Mapping[str, Any], source: str, allow_modules: Collection[str] = ()) -> None:
    """Refuse a config whose ``env`` or ``network`` node would instantiate anything but dqnlab's own factories
    (or a network of your own whose module the command line allows: ``allow_module=``).

    Args:
        cfg: The config as plain containers (interpolations unresolved: an interpolated ``_target_`` is refused).
        source: How the message names the file.
        allow_modules: Modules the command line allows to be imported.

    Raises:
        AgentFileError: Naming the offending key and target.

    """
    own = network_module(cfg)
    for group, allowed in (("env", ENV_TARGETS), ("network", NETWORK_TARGETS)):
        node = cfg.get(group)
        target = node.get("_target_") if isinstance(node, Mapping) else None
        if group == "network" and own is not None and own in allow_modules:
            allowed = allowed | {target}  # a network of your own, which the command line allowed
        if not isinstance(node, Mapping) or target not in allowed:
            how = (
                f"; a network of your own plays when you allow its module: add allow_module={own} (with {own!r} "
                "importable, e.g. on PYTHONPATH)"
                if group == "network" and own is not None
                else ": only files from dqnlab runs play"
            )
            raise AgentFileError(
                f"{source}: {group}._target_={target!r} is not one of dqnlab's {group} factories "
                f"({', '.join(sorted(allowed))}); refused without running anything{how}"
            )
        for path, target in _targets(node, group):
            # instantiate() would build nested nodes too. env.wrappers' entries are the env factory's to build, and
            # playback lets only gymnasium's and dqnlab's wrappers through unless the command line allows the module.
            if path != group and not _WRAPPER_ENTRY.fullmatch(path):
                raise AgentFileError(
                    f"{source}: {path}._target_={target!r} is not allowed (only {group}._target_ itself, one of "
                    f"dqnlab's factories, is); refused without running anything"
                )


def agent_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run's resolved config that playing needs (see the module docstring)."""
    algo = cfg.get("algo") or {}
    return {
        "env": cfg["env"],
        "network": cfg["network"],
        "algo": {k: algo[k] for k in _ALGO_KEYS if k in algo},
        "eval": {"epsilon": (cfg.get("eval") or {}).get("epsilon", 0.0)},
        "seed": cfg.get("seed", 0),
    }


def write_agent_file(
    path: str | Path, weights: Mapping[str, torch.Tensor], cfg: Mapping[str, Any], env_steps: int
) -> Path:
    """Write an agent file atomically.

    Args:
        path: Where it goes (``.safetensors`` is conventional).
        weights: The online network's ``state_dict``.
        cfg: The run's resolved config as plain containers (only :func:`agent_config`'s part is kept).
        env_steps: Env steps the network was trained for.

    """
    from safetensors.torch import save

    config = agent_config(cfg)
    own = network_module(config)  # writing imports nothing: a network of your own is checked when played
    check_targets(config, str(path), (own,) if own else ())
    metadata = {
        "format": FORMAT,
        "dqnlab_version": __version__,
        "env_steps": str(int(env_steps)),
        "config": json.dumps(config, sort_keys=True),
    }
    # Own, contiguous copies: safetensors refuses tensors that share storage (a view of a larger parameter).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def looks_like_agent_file(path: str | Path) -> bool:
    """Whether ``path`` starts like a safetensors file (an 8-byte header length, then ``{``)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= _MAX_HEADER


def read_agent_file(
    path: str | Path, allow_modules: Collection[str] = ()
) -> tuple[dict[str, Any], dict[str, torch.Tensor], int]:
    """Read an agent file without running anything from it: ``(config, weights, env_steps)``.

    Raises:
        AgentFileError: Not an agent file, truncated or corrupt, of an unknown format, or naming a ``_target_``
            outside dqnlab's factories (see :func:`check_targets`).

    """
    from safetensors import safe_open

    name = str(path)
    try:
        with safe_open(name, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    except Exception as e:  # safetensors' SafetensorError, an OSError, or a header that is not JSON
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise AgentFileError(
            f"{name} is not a dqnlab agent file, or is truncated or corrupt ({type(e).__name__}: {first}): "
            "export one with `python scripts/export.py <run dir>`"
        ) from None
    if metadata.get("format") != FORMAT:
        raise AgentFileError(
            f"{name} is a safetensors file but not a dqnlab agent file (format={metadata.get('format')!r}, "
            f"expected {FORMAT!r}): export one with `python scripts/export.py <run dir>`"
        )
    try:
        config = json.loads(metadata["config"])
        env_steps = int(metadata.get("env_steps", 0))
    except (KeyError, ValueError) as e:
        raise AgentFileError(f"{name}: its config or env_steps is not valid ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise AgentFileError(f"{name}: its config is a {type(config).__name__}, not a mapping")
    config = upgrade_targets(config)  # files written before the package had folders name the old paths
    check_targets(config, name, allow_modules)
    return config, weights, env_steps
