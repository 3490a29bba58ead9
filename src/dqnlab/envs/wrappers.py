"""Gymnasium wrappers of your choosing on each sub-env: ``env.wrappers: [{_target_: <class>, <its arguments>}]``.

Each entry is built with the sub-env as its first argument (``instantiate(entry, _partial_=True)(env)``), in list
order, on every copy the run makes (training, evaluation, videos, playback), before the copies are vectorized and
before :mod:`dqnlab.envs.encoding` encodes what the networks cannot take. A library wrapper
(``gymnasium.wrappers.TimeLimit``, ``gymnasium.wrappers.FlattenObservation``) or one of yours
(``mywrappers.ClipObs``, the module importable) works alike; so does a function that takes the env and returns
one.

A checkpoint or agent file never makes dqnlab import a module by itself: the wrappers a file names are built
only when they are gymnasium's or dqnlab's own wrapper classes, or when the command line allows their module
(:func:`file_wrapper_problem`, used by :mod:`dqnlab.share.playback`).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
from collections.abc import Collection, Sequence
from typing import Any

import gymnasium as gym
from omegaconf import OmegaConf

from dqnlab.envs.encoding import encode_observations
from dqnlab.envs.errors import EnvConfigError

LIBRARY_PACKAGES = ("gymnasium", "dqnlab")  # wrappers from these a file may name without the command line's leave
# Library wrappers a file may not name all the same: they write files or open windows where the file says.
_NOT_FROM_FILES = frozenset({"RecordVideo", "HumanRendering"})
_EXAMPLE = "env.wrappers=[{_target_:gymnasium.wrappers.TimeLimit,max_episode_steps:100}]"


def wrapper_nodes(wrappers: Any) -> list[dict[str, Any]]:
    """``env.wrappers`` as plain dicts, each with a string ``_target_``.

    Raises:
        EnvConfigError: Not a list of such entries; the message names the entry.

    """
    if wrappers is None:
        return []
    plain = OmegaConf.to_container(wrappers, resolve=True) if OmegaConf.is_config(wrappers) else wrappers
    if not isinstance(plain, list | tuple):
        raise EnvConfigError(
            f"env.wrappers={plain!r} must be a list of {{_target_: <wrapper class>, <its arguments>}} entries, "
            f"e.g. {_EXAMPLE}"
        )
    for i, node in enumerate(plain):
        if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
            raise EnvConfigError(
                f"env.wrappers[{i}]={node!r} has no _target_: each entry names its wrapper class in _target_ and "
                f"its arguments beside it, e.g. {_EXAMPLE}"
            )
    return [dict(node) for node in plain]


def _close_target(target: str) -> str | None:
    """The importable name closest to a mistyped ``target`` (``gymnasium.wrappers.TimeLimt`` -> ``...TimeLimit``)."""
    parts = target.split(".")
    for k in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:k]))
        except Exception:  # any error a module raises on import: try its parent
            continue
        names = set(dir(module))
        if hasattr(module, "__path__"):  # a package: its submodules too
            names |= {m.name for m in pkgutil.iter_modules(module.__path__)}
        close = difflib.get_close_matches(parts[k], sorted(names), n=1, cutoff=0.6)
        return ".".join([*parts[:k], close[0], *parts[k + 1 :]]) if close else None
    return None


def locate(target: str, where: str) -> Any:
    """The object ``target`` names, imported.

    Raises:
        EnvConfigError: It cannot be imported; with the close match when there is one.

    """
    from hydra.utils import get_object

    hydra_log = logging.getLogger("hydra.utils")  # it logs each failed lookup in three lines: ours says it in one
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)
    try:
        return get_object(target)
    except Exception as e:  # hydra wraps the ImportError/AttributeError in its own
        close = _close_target(target)
        hint = f"did you mean {close}?" if close else "check the name, and that its module is importable"
        reason = " ".join(str(e.__cause__ or e).split())
        raise EnvConfigError(f"{where}._target_={target!r} cannot be imported ({reason}): {hint}") from None
    finally:
        hydra_log.setLevel(level)


def not_a_wrapper(obj: Any) -> bool:
    """Whether ``obj`` cannot wrap an env: neither a gymnasium Env class nor a function (a class of anything else)."""
    return not callable(obj) or (isinstance(obj, type) and not issubclass(obj, gym.Env))


def _not_a_wrapper_message(where: str, target: str) -> str:
    return (
        f"{where}._target_={target!r} is not a gymnasium wrapper: name a class that takes the env as its first "
        f"argument (a gymnasium.Wrapper), e.g. {_EXAMPLE}"
    )


def wrapper_problems(wrappers: Any) -> list[str]:
    """What is wrong with ``env.wrappers`` before anything is built (``validate_config``): entries without a
    ``_target_``, targets that cannot be imported (with the close match) or are not wrappers.
    """
    try:
        nodes = wrapper_nodes(wrappers)
    except EnvConfigError as e:
        return [str(e)]
    problems = []
    for i, node in enumerate(nodes):
        try:
            obj = locate(node["_target_"], f"env.wrappers[{i}]")
        except EnvConfigError as e:
            problems.append(str(e))
            continue
        if not_a_wrapper(obj):
            problems.append(_not_a_wrapper_message(f"env.wrappers[{i}]", node["_target_"]))
    return problems


def apply_wrapper(env: gym.Env, node: dict[str, Any], index: int) -> gym.Env:
    """``env`` wrapped by one ``env.wrappers`` entry.

    Raises:
        EnvConfigError: The entry cannot be imported, is not a wrapper, or fails on these arguments.

    """
    from hydra.utils import instantiate

    where, target = f"env.wrappers[{index}]", node["_target_"]
    if not_a_wrapper(locate(target, where)):
        raise EnvConfigError(_not_a_wrapper_message(where, target))
    args = ", ".join(f"{k}={v!r}" for k, v in node.items() if not (k.startswith("_") and k.endswith("_")))
    try:
        wrapped = instantiate({**node, "_partial_": True})(env)
    except EnvConfigError:
        raise
    except Exception as e:  # a wrong or missing argument (TypeError), a value it refuses (AssertionError, ...)
        reason = " ".join(str(e.__cause__ or e).split())[:300] or type(e).__name__
        raise EnvConfigError(
            f"{where}: {target}(env{', ' if args else ''}{args}) failed ({type(e).__name__}: {reason}): fix the "
            "entry's arguments, or remove it"
        ) from e
    if not isinstance(wrapped, gym.Env):
        raise EnvConfigError(
            f"{where}: {target}(env) returned a {type(wrapped).__name__}, not a gymnasium env: name a wrapper class, "
            "or a function that returns the wrapped env"
        )
    return wrapped


def wrap(env: gym.Env, nodes: Sequence[dict[str, Any]] = (), encode: str = "auto") -> gym.Env:
    """One sub-env as the run uses it: ``env.wrappers`` in order, then the observation encoding.

    A module-level function of plain data, so ``vectorization=async`` can pickle it to its worker processes.
    """
    for i, node in enumerate(nodes):
        env = apply_wrapper(env, node, i)
    return encode_observations(env, encode)


def file_wrapper_problem(wrappers: Any, allowed_modules: Collection[str], source: str) -> str | None:
    """Why the ``env.wrappers`` of a checkpoint or agent file may not be built, or ``None``; nothing is imported
    from a module the file names unless that module is gymnasium's, dqnlab's or in ``allowed_modules``.

    Args:
        wrappers: The file's ``env.wrappers``.
        allowed_modules: Modules the command line allows (``allow_module=``, the module of ``env.id=``); a
            module inside one of them counts too.
        source: How the message names the file.

    """
    try:
        nodes = wrapper_nodes(wrappers)
    except EnvConfigError as e:
        return f"{source}: {e}"
    for i, node in enumerate(nodes):
        where, target = f"env.wrappers[{i}]", node["_target_"]
        module, _, name = target.rpartition(".")
        if target.split(".")[0] not in LIBRARY_PACKAGES:
            if any(module == m or module.startswith(f"{m}.") for m in allowed_modules):
                continue
            root = module.split(".")[0] or target
            return (
                f"{source}: {where}._target_={target!r} names module {module or target!r}, which dqnlab imports "
                f"only when you ask: add allow_module={root} (with {root!r} importable, e.g. on PYTHONPATH) to play it"
            )
        try:
            obj = locate(target, where)
        except EnvConfigError as e:
            return f"{source}: {e}"
        if not (isinstance(obj, type) and issubclass(obj, gym.Wrapper)) or name in _NOT_FROM_FILES:
            return (
                f"{source}: {where}._target_={target!r} is not a wrapper a file may name (a gymnasium.Wrapper class "
                "that writes no files); refused without running anything"
            )
    return None


def foreign_modules(wrappers: Any) -> list[str]:
    """The top-level modules of the ``env.wrappers`` targets outside gymnasium and dqnlab (for ``allow_module=``)."""
    try:
        nodes = wrapper_nodes(wrappers)
    except EnvConfigError:
        return []
    roots = (node["_target_"].split(".")[0] for node in nodes)
    return sorted({root for root in roots if root not in LIBRARY_PACKAGES})
