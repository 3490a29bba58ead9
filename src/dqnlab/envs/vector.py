"""Vector environments for DQN: gymnasium envs by id, and Atari through ale-py.

Every factory returns a gymnasium ``VectorEnv`` in ``NEXT_STEP`` autoreset mode with a discrete action space;
the replay buffer relies on that mode (see :mod:`dqnlab.data.replay`).
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from omegaconf import DictConfig, open_dict

from dqnlab.envs.api_check import check_env_api
from dqnlab.envs.encoding import encoding_mode
from dqnlab.envs.errors import EnvConfigError  # defined beside the env modules; importers find it here too
from dqnlab.envs.wrappers import foreign_modules, wrap, wrapper_nodes
from dqnlab.errors import MissingExtraError

# Gymnasium envs whose dependencies come with a dqnlab extra: entry-point module prefix -> extra.
_EXTRAS = {"gymnasium.envs.box2d": ("Box2D", "box2d")}
# What a user can type instead of an unknown id: the env presets (conf/env/ of a source checkout).
_CONF_ENV = Path(__file__).resolve().parents[3] / "conf" / "env"


def env_module(env_id: str) -> str | None:
    """The module of gymnasium's ``module:EnvId`` syntax (``corridor`` for ``corridor:Corridor-v0``), else None."""
    return env_id.split(":", 1)[0] if ":" in env_id else None


def import_env_module(env_id: str) -> str:
    """Import the module of a ``module:EnvId`` id (it registers its envs) and return the registered ``EnvId``.

    Raises:
        EnvConfigError: The module cannot be imported; the message says where Python looked for it.

    """
    module = env_module(env_id)
    if module is None:
        return env_id
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise EnvConfigError(
            f"env.id={env_id}: cannot import module {module!r} ({e}): put the folder that holds it on PYTHONPATH, "
            f"e.g. PYTHONPATH=<that folder> python train.py env=gym env.id={env_id}"
        ) from None
    return env_id.split(":", 1)[1]


def _check_id(env_id: str) -> None:
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
    if close:
        hint = f" Did you mean {', '.join(close)}?"
    else:
        presets = sorted(p.stem for p in _CONF_ENV.glob("*.yaml")) if _CONF_ENV.is_dir() else []
        hint = " List the registered ids with `python -c 'import gymnasium; gymnasium.pprint_registry()'`" + (
            f", or use a dqnlab env preset, env=<name> with <name> in: {', '.join(presets)}." if presets else "."
        )
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id:  # ALE ids exist only once ale_py registers them
        hint = " Atari games run through env=atari with the DQN preprocessing: env=atari env.game=<game>."
    raise EnvConfigError(f"gymnasium does not know env.id={env_id!r}.{hint}")


def _check_extra(env_id: str) -> None:
    """Raise :class:`MissingExtraError` naming the dqnlab extra if ``env_id`` needs a package that is missing.

    Checked before ``gym.make``: gymnasium's own message asks for ``gymnasium[box2d]`` (and swig), while
    dqnlab pins the dependency in its extra.
    """
    entry = gym.registry[env_id].entry_point
    module = entry.split(":", 1)[0] if isinstance(entry, str) else getattr(entry, "__module__", "")
    for prefix, (package, extra) in _EXTRAS.items():
        if module.startswith(prefix) and not _importable(package):
            raise MissingExtraError(f"env.id={env_id} needs {package}: pip install 'dqnlab[{extra}]'")


# Keyword arguments that gym.make (and make_vec) take itself, whatever the env's constructor takes.
_MAKE_KWARGS = {"max_episode_steps", "autoreset", "apply_api_compatibility", "disable_env_checker", "render_mode"}


def _check_kwargs(env_id: str, kwargs: dict[str, Any]) -> None:
    """Raise :class:`EnvConfigError` for an ``env.kwargs`` key that ``env_id``'s constructor does not take.

    Checked before ``gym.make``, whose TypeError comes out of the env's constructor as a traceback. A constructor
    that takes ``**kwargs`` accepts anything, so nothing is checked then.
    """
    unknown = set(kwargs) - _MAKE_KWARGS
    if not unknown:
        return
    try:
        creator = gym.envs.registration.load_env_creator(gym.registry[env_id].entry_point)
        params = inspect.signature(creator).parameters
    except (TypeError, ValueError, ImportError, AttributeError):  # a builtin or an entry point not loadable here
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    takes = sorted(name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
    unknown -= set(takes)
    if unknown:
        key = sorted(unknown)[0]
        name = getattr(creator, "__name__", str(creator))
        raise EnvConfigError(
            f"env.kwargs.{key}: {env_id} ({name}) takes no argument {key!r}; it takes "
            f"{', '.join(takes) or 'none'}. Drop +env.kwargs.{key} or use one of those"
        )


def _importable(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken parent package
        return False


def make_vector_env(
    id: str,
    num_envs: int = 1,
    vectorization: str = "sync",
    max_episode_steps: int | None = None,
    kwargs: dict[str, Any] | None = None,
    wrappers: list[dict[str, Any]] | None = None,
    encode_observations: str | None = "auto",
    check_api: bool | str = "auto",
    for_eval: bool = False,
) -> VectorEnv:
    """A gymnasium vector env of ``num_envs`` copies of ``id`` in NEXT_STEP autoreset mode.

    Args:
        id: Gymnasium env id, e.g. ``CartPole-v1``, or ``module:EnvId`` for an env a module of yours registers
            when imported (gymnasium's syntax; the module must be importable, e.g. on ``PYTHONPATH``).
        num_envs: Number of parallel copies (one vector step = ``num_envs`` env steps).
        vectorization: ``"sync"`` (one process; best for cheap envs) or ``"async"`` (one process per copy).
        max_episode_steps: Override of the registered time limit, in env steps (``None`` keeps it).
        kwargs: Extra keyword arguments for ``gym.make``.
        wrappers: Wrappers for each copy, in order: ``[{"_target_": <class>, <its arguments>}, ...]``
            (:mod:`dqnlab.envs.wrappers`).
        encode_observations: ``auto``: one-hot Discrete and MultiDiscrete observations, flatten Dict, Tuple and
            MultiBinary ones (:mod:`dqnlab.envs.encoding`); ``none``: leave them as the env gives them.
        check_api: Check one copy against the gymnasium API first (:mod:`dqnlab.envs.api_check`); ``auto``: only an
            env of your own (``module:EnvId``). Training env only: evaluation and playback envs are the same env.
        for_eval: Build the evaluation variant (identical for plain gymnasium envs).

    Raises:
        EnvConfigError: Unknown id, a wrapper that cannot be built, an env that breaks the gymnasium API, or an
            action space DQN cannot use.
        MissingExtraError: The env needs an optional dependency (Box2D: ``pip install 'dqnlab[box2d]'``).

    """
    name = id
    id = import_env_module(id)  # gymnasium's module:EnvId: the module registers the env (your own env)
    _check_id(id)
    _check_extra(id)
    make_kwargs = dict(kwargs or {})
    _check_kwargs(id, make_kwargs)
    nodes = wrapper_nodes(wrappers)
    encode = encoding_mode(encode_observations)
    # Before gym.make_vec: its wrappers would trip over a broken return first. The presets say auto: an env of your
    # own (module:EnvId) is checked under them, gymnasium's own env is not.
    if check_api not in (True, False, "auto"):
        raise EnvConfigError(f"env.check_api={check_api!r} is not known: use true, false or auto")
    if (check_api is True or (check_api == "auto" and env_module(name))) and not for_eval:
        check_env_api(
            id,
            {k: v for k, v in make_kwargs.items() if k not in _MAKE_KWARGS - {"render_mode"}},
            f"env.id={name}",
            wrap=partial(wrap, nodes=tuple(nodes), encode=encode) if nodes else None,  # as the run sees each copy
        )
    if max_episode_steps is not None:
        make_kwargs["max_episode_steps"] = max_episode_steps
    env = gym.make_vec(
        id,
        num_envs=num_envs,
        vectorization_mode=vectorization,
        vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP},
        wrappers=[partial(wrap, nodes=tuple(nodes), encode=encode)],  # every copy, before vectorization
        **make_kwargs,
    )
    check_discrete(env, f"env.id={name}")
    return env


def check_discrete(env: VectorEnv, name: str) -> None:
    """Raise a clear error unless the env has a single discrete action space, as DQN needs."""
    space = env.single_action_space
    if not isinstance(space, gym.spaces.Discrete):
        env.close()
        raise EnvConfigError(
            f"{name} has action space {space}: DQN needs a Discrete action space (one Q-value per action). "
            "Pick an env with discrete actions, or discretize this one (env=gym): "
            "env.wrappers=[{_target_:gymnasium.wrappers.DiscretizeAction,bins:5}]"
        )


def obs_dtype_of(env: VectorEnv) -> np.dtype:
    """Numpy dtype of a single observation."""
    return np.dtype(env.single_observation_space.dtype)


def torch_dtype(np_dtype: np.dtype | type) -> torch.dtype:
    """The torch dtype matching a numpy dtype (``uint8`` frames stay ``uint8`` in the buffer)."""
    return torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype


def match_frame_stacking(buffer_cfg: DictConfig, env: VectorEnv) -> None:
    """Set ``buffer.frame_stack`` and ``buffer.stack_padding`` to how ``env`` stacks frames, in place.

    An env that stacks frames (Atari) declares ``metadata["frame_stack"]`` and ``metadata["stack_padding"]``;
    the buffer then stores each frame once and rebuilds the stacks exactly as the env built them. Envs that
    declare nothing leave the config as it is.

    Raises:
        EnvConfigError: ``buffer.frame_stack`` was set to a value other than 1 (the default) or the env's stack.

    """
    stack = int(env.metadata.get("frame_stack") or 1)
    if stack == 1:
        return
    configured = int(buffer_cfg.get("frame_stack") or 1)
    if configured not in (1, stack):
        raise EnvConfigError(
            f"buffer.frame_stack={configured} but the env stacks {stack} frames per observation: "
            f"drop the override (it is set from the env) or use buffer.frame_stack={stack}"
        )
    with open_dict(buffer_cfg):
        buffer_cfg.frame_stack = stack
        buffer_cfg.stack_padding = str(env.metadata.get("stack_padding", "reset"))


def play_arguments(env_cfg: DictConfig, other_modules: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What ``scripts/evaluate.py`` needs on its command line to play this env: the modules of your own that the
    run imported (``allow_module=`` for wrappers and ``other_modules``, such as your network's; ``env.id=`` for a
    ``module:EnvId``), which a file never names for itself.
    """
    env_id = str(env_cfg.get("id", ""))
    own = env_module(env_id)
    allow = [m for m in foreign_modules(env_cfg.get("wrappers")) if m != own]  # env.id= allows the env's module
    allow += [m for m in other_modules if m not in allow]
    return (*([f"allow_module={','.join(allow)}"] if allow else []), *([f"env.id={env_id}"] if own else []))
