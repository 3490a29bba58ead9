"""The env part's checks: its knobs before anything is built, its spaces once the env exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from dqnlab.checks import PROB, Knob, select

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
    """What can be told about the env config without building the env (an unknown MinAtar game)."""
    from dqnlab.envs.minatar import config_problems as minatar_problems  # imports torch: after the cheap checks

    return minatar_problems(cfg)


def env_name(cfg: DictConfig) -> str:
    """How messages name the env: ``env.id=<id>`` when the config has one."""
    env_id = select(cfg, "env.id")
    return f"env.id={env_id}" if isinstance(env_id, str) else "the env"


def check_spaces(cfg: DictConfig, env: VectorEnv) -> None:
    """A discrete action space and ``Box`` observations, or an :class:`EnvConfigError` saying what to do."""
    import gymnasium as gym

    from dqnlab.envs.vector import EnvConfigError, check_discrete

    name = env_name(cfg)
    check_discrete(env, name)
    obs_space = env.single_observation_space
    if not isinstance(obs_space, gym.spaces.Box):
        raise EnvConfigError(
            f"{name} has observations of type {obs_space}: dqnlab's networks take Box observations (vectors or "
            "images); pick an env with Box observations or flatten/one-hot them with a gymnasium "
            "ObservationWrapper"
        )
