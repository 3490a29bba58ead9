"""The env part's checks: its knobs before anything is built, its spaces once the env exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from dqnlab.checks import ABSENT, PROB, Knob, select

if TYPE_CHECKING:
    from gymnasium.vector import VectorEnv

KNOBS: tuple[Knob, ...] = (
    Knob("env.num_envs", int, "parallel env copies", "1", low=1),
    Knob("env.max_episode_steps", int, "the episode time limit in env steps", "500", low=1, nullable=True),
    Knob("env.frame_skip", int, "emulator frames per agent step", "4", low=1),
    Knob("env.frame_stack", int, "frames per observation", "4", low=1),
    Knob("env.repeat_action_probability", float, "the sticky-action probability", "0.25", **PROB),
)

# Values to suggest for keys a config group leaves as ??? (`env=gym` needs `env.id`).
MISSING_EXAMPLES = {"env.id": "Acrobot-v1"}


def config_problems(cfg: DictConfig) -> list[str]:
    """What can be told about the env config without building the env: an unknown MinAtar game, an
    ``env.wrappers`` entry that is not a wrapper, an unknown ``env.encode_observations``.
    """
    from dqnlab.envs.minatar import config_problems as minatar_problems  # imports torch: after the cheap checks

    problems = minatar_problems(cfg)
    wrappers = select(cfg, "env.wrappers")
    if wrappers is not ABSENT:
        from dqnlab.envs.wrappers import wrapper_problems

        problems += wrapper_problems(wrappers)
    encode = select(cfg, "env.encode_observations")
    if encode is not ABSENT:
        from dqnlab.envs.encoding import encoding_mode
        from dqnlab.envs.errors import EnvConfigError

        try:
            encoding_mode(encode)
        except EnvConfigError as e:
            problems.append(str(e))
    return problems


def env_name(cfg: DictConfig) -> str:
    """How messages name the env: ``env.id=<id>`` when the config has one."""
    env_id = select(cfg, "env.id")
    return f"env.id={env_id}" if isinstance(env_id, str) else "the env"


def check_spaces(cfg: DictConfig, env: VectorEnv) -> None:
    """A discrete action space and ``Box`` observations (after ``env.encode_observations``), or an
    :class:`EnvConfigError` saying what to do.
    """
    import gymnasium as gym

    from dqnlab.envs.encoding import unsupported_part
    from dqnlab.envs.vector import EnvConfigError, check_discrete

    name = env_name(cfg)
    check_discrete(env, name)
    obs_space = env.single_observation_space
    if isinstance(obs_space, gym.spaces.Box):
        return
    bad = unsupported_part(obs_space)
    if bad is None:  # one the encoding takes: it was turned off
        raise EnvConfigError(
            f"{name} has observations of type {obs_space} and env.encode_observations="
            f"{select(cfg, 'env.encode_observations')}: dqnlab's networks take Box observations; drop the override "
            "(auto one-hot encodes Discrete and MultiDiscrete, flattens Dict and Tuple), or map them to a Box with "
            "a wrapper in env.wrappers"
        )
    part = "" if bad is obs_space else f", holding {type(bad).__name__} observations,"
    raise EnvConfigError(
        f"{name} has observations of type {obs_space}{part} which dqnlab cannot encode for its networks (it "
        f"encodes Box, Discrete, MultiDiscrete, MultiBinary, and Dict and Tuple of those): map them to a Box "
        "with an ObservationWrapper of yours in env.wrappers, e.g. env.wrappers=[{_target_:mymodule.MyEncoding}]"
    )


def check_render(cfg: DictConfig, env: VectorEnv) -> None:
    """With ``eval.video=true``: an env that can be filmed, or an :class:`EnvConfigError` before training starts."""
    if select(cfg, "eval.video") is not True:
        return
    from dqnlab.envs.vector import EnvConfigError
    from dqnlab.envs.video import render_problem

    problem = render_problem(cfg.env, env.single_observation_space, "eval.video")
    if problem:
        raise EnvConfigError(problem)
