"""The data part's checks: the replay's and the collector's knobs, their relations, and the replay's memory.

:func:`config_problems` runs before anything is built; :func:`memory_problems` estimates the buffer with 1-byte
observations (a buffer too large even then fails before the env is built); :func:`check_buffer_fits` sizes it
exactly once the env tells the observation shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from dqnlab.checks import ABSENT, PROB, Knob, check_choices, select
from dqnlab.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from gymnasium.vector import VectorEnv

KNOBS: tuple[Knob, ...] = (
    Knob("buffer.alpha", float, "the priority exponent of prioritized replay", "0.6", low=0.0),
    Knob("buffer.beta_start", float, "the initial importance-sampling exponent", "0.4", **PROB),
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
    Knob("collector.epsilon_start", float, "the exploration rate at env step 0", "1.0", **PROB),
    Knob("collector.epsilon_end", float, "the exploration rate after the ramp", "0.05", **PROB),
    Knob("collector.exploration_fraction", float, "the ramp length as a fraction of env_steps", "0.1", **PROB),
    Knob("collector.exploration_steps", int, "the ramp length in env steps", "100_000", low=0, nullable=True),
    Knob("collector.exploration_start", int, "env steps before the epsilon ramp begins", "0", low=0),
    Knob("collector.log_every", int, "env steps between logged rows", "1_000", low=1),
)

CHOICES: dict[str, tuple[str, ...]] = {"buffer.stack_padding": ("reset", "zero")}


def relation_problems(v: dict[str, float]) -> list[str]:
    """Checks between knobs (``v``: every part's valid knob values); each runs only when its knobs are set."""
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
    num_envs, stack = v.get("env.num_envs", 1), v.get("buffer.frame_stack", 1)
    need_slots = max(2, stack + 1)
    if cap is not None and cap // num_envs < need_slots:
        problems.append(
            f"buffer.capacity={cap} leaves {cap // num_envs} slot(s) per env for env.num_envs={num_envs}: "
            f"raise buffer.capacity to at least {need_slots * num_envs}"
        )
    return problems


def choice_problems(cfg: DictConfig) -> list[str]:
    """The replay's string knobs, and ``collector.action_mask`` (auto, true or false)."""
    mask = select(cfg, "collector.action_mask")
    wrong = mask is not ABSENT and not (mask == "auto" or isinstance(mask, bool))
    bad_mask = [f"collector.action_mask={mask} is not known: use auto, true or false"] if wrong else []
    return check_choices(cfg, CHOICES) + bad_mask


def buffer_device(cfg: DictConfig) -> torch.device:
    """The replay buffer's device as ``dqnlab.train.run`` picks it, without building anything."""
    import torch

    requested = select(cfg, "buffer.device")
    if requested not in (ABSENT, None, "auto"):
        return torch.device(requested)
    accelerator = select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda") or (accelerator in (ABSENT, "auto") and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def device_problems(cfg: DictConfig) -> list[str]:
    """A buffer asked to live on a GPU that torch does not see."""
    import torch

    device = select(cfg, "buffer.device")
    if not torch.cuda.is_available() and isinstance(device, str) and device.startswith("cuda"):
        return [f"buffer.device={device} but torch sees no CUDA device: use buffer.device=auto or cpu"]
    return []


def memory_problems(cfg: DictConfig, v: dict[str, float]) -> list[str]:
    """A buffer too large even with 1-byte observations fails here, before the env is built."""
    import torch

    from dqnlab.data.memory import buffer_too_large, memory_for_a_new_buffer
    from dqnlab.data.replay import ReplayBuffer

    capacity = v.get("buffer.capacity")
    if capacity is None:
        return []
    device = buffer_device(cfg)
    try:  # less what other jobs' buffers on this machine reserved (a CUDA device without CUDA was rejected)
        free, jobs, held = memory_for_a_new_buffer(device)
    except ConfigError as e:  # a bad DQNLAB_MEMORY_LIMIT
        return [str(e)]
    fraction = select(cfg, "buffer.memory_fraction")
    fraction = 0.9 if fraction in (ABSENT, None) else float(fraction)
    n = int(v.get("env.num_envs") or 1)
    need = ReplayBuffer.nbytes_for(int(capacity) // n, n, (), torch.uint8)  # () of uint8: a 1-byte observation
    if free is not None and need > fraction * free:
        return [buffer_too_large(need, free, fraction, device, int(capacity), True, jobs, held)]
    return []


def check_buffer_fits(cfg: DictConfig, env: VectorEnv, masked: bool = False) -> None:
    """The exact replay size for the env's observations (and action masks) against its device's free memory.

    Raises:
        BufferTooLargeError: The replay buffer would not fit; the message says what to lower.

    """
    import numpy as np
    import torch

    from dqnlab.data.memory import BufferTooLargeError, buffer_too_large, memory_for_a_new_buffer
    from dqnlab.data.replay import ReplayBuffer

    obs_space = env.single_observation_space
    capacity = int(select(cfg, "buffer.capacity"))
    stack = int(cfg.buffer.get("frame_stack", 1))
    frame_shape = tuple(obs_space.shape[1:] if stack > 1 else obs_space.shape)
    slots = capacity // env.num_envs
    obs_dtype = torch.from_numpy(np.zeros(0, dtype=obs_space.dtype)).dtype
    mask_size = int(env.single_action_space.n) if masked else 0  # a bool per action (the spaces are checked)
    need = ReplayBuffer.nbytes_for(slots, env.num_envs, frame_shape, obs_dtype, mask_size)
    device = buffer_device(cfg)
    free, jobs, held = memory_for_a_new_buffer(device)  # what other jobs' buffers leave of the free memory
    fraction = float(cfg.buffer.get("memory_fraction", 0.9))
    if free is not None and need > fraction * free:
        raise BufferTooLargeError(buffer_too_large(need, free, fraction, device, capacity, jobs=jobs, held=held))
