"""The one helper module the suites share: config composition, tables, the machine line, the timing of a
loop against a bare one, and RL Zoo's DQN hyperparameters with the SB3 model built from them.

It imports no suite module (they import it), so nothing under ``scripts/bench`` imports in a circle.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from dqnlab.run.provenance import cpu_model
from dqnlab.share.tables import markdown_table

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # for `tests.conftest`-free config composition below, not for the package
# The entry point, for suites that start one of its suites in a process of its own (``zoo-worker``).
BENCHMARK = ROOT / "scripts" / "benchmark.py"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(ROOT / "outputs" / "benchmark")
    return cfg


def machine() -> str:
    cpu = cpu_model()  # the shared machines change between sessions
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


format_table = markdown_table  # the benchmarks' tables, as the results' (dqnlab.share.tables)


# ---------------------------------------------------------------------------------------------- loops
# cartpole-cpu and minatar-cpu: dqnlab's loop against a bare PyTorch loop of the same updates.
def ramp_env_steps(cfg) -> float:
    """The epsilon ramp's length in env steps, as the collector reads it (``exploration_steps`` wins)."""
    col = cfg.collector
    steps = col.get("exploration_steps")
    return float(steps) if steps is not None else col.exploration_fraction * cfg.env_steps


def dqnlab_loop(cfg) -> dict[str, float]:
    """Dqnlab's real loop (Trainer.fit with the stepping, target and eval callbacks), timed around fit."""
    from dqnlab.train import _quiet_lightning, build

    _quiet_lightning()
    torch.manual_seed(cfg.seed)
    parts = build(cfg)
    t_fit = time.perf_counter()
    parts.trainer.fit(parts.module)
    fit_s = time.perf_counter() - t_fit
    parts.close()
    return {"fit_s": fit_s, "env_steps": parts.collector.env_steps, "updates": parts.trainer.global_step}


def time_loops(cfg, loops, unit: str) -> tuple[dict[str, dict[str, float]], float]:
    """Run ``(name, loop)`` pairs one after another on ``cfg`` (torch threads as configured), each result with its
    time per update (``us_per_update`` or ``ms_per_update``, by ``unit``) and env steps per second; and dqnlab's
    time per update over the faster of the two bare runs (``bare``, ``bare_again``: the box's load drifts).
    """
    torch.set_num_threads(int(cfg.torch_threads or torch.get_num_threads()))
    key, scale = f"{unit}_per_update", {"us": 1e6, "ms": 1e3}[unit]
    results = {}
    for name, fn in loops:
        # The bare loops run on torch's defaults, subnormal floats included; dqnlab's build() sets its own
        # flush_denormal (on by default), which would otherwise leak into the bare loop run after it.
        torch.set_flush_denormal(False)
        r = fn(cfg)
        results[name] = {
            **r,
            key: scale * r["fit_s"] / max(r["updates"], 1),
            "env_steps_per_s": r["env_steps"] / r["fit_s"],
        }
    torch.set_flush_denormal(False)
    ratio = results["dqnlab"][key] / min(results["bare"][key], results["bare_again"][key])
    return results, ratio


# ---------------------------------------------------------------------------------------------- RL Zoo, SB3
# zoo, zoo-worker and zoo-split: SB3's DQN built the same way for all three.
# RL Zoo's tuned DQN hyperparameters, DLR-RM/rl-baselines3-zoo hyperparams/dqn.yml at commit
# ce95481b041fe5314c1b2f1a53940d169b9253fc (LunarLander: its LunarLander-v2 entry, run on v3). SB3 units:
# train_freq and target_update_interval in env steps; gradient_steps -1 = as many as env steps per rollout.
ZOO_DQN: dict[str, tuple[str, dict]] = {
    "cartpole": (
        "CartPole-v1",
        dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
             target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
             exploration_final_eps=0.04, net_arch=[256, 256]),
    ),
    "acrobot": (
        "Acrobot-v1",
        dict(learning_rate=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=0, gamma=0.99,
             target_update_interval=250, train_freq=4, gradient_steps=-1, exploration_fraction=0.12,
             exploration_final_eps=0.1, net_arch=[256, 256]),
    ),
    "mountaincar": (
        "MountainCar-v0",
        dict(learning_rate=4e-3, batch_size=128, buffer_size=10_000, learning_starts=1000, gamma=0.98,
             target_update_interval=600, train_freq=16, gradient_steps=8, exploration_fraction=0.2,
             exploration_final_eps=0.07, net_arch=[256, 256]),
    ),
    "lunarlander": (
        "LunarLander-v3",
        dict(learning_rate=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=0, gamma=0.99,
             target_update_interval=250, train_freq=4, gradient_steps=-1, exploration_fraction=0.12,
             exploration_final_eps=0.1, net_arch=[256, 256]),
    ),
}  # fmt: skip


def sb3_dqn():
    """Stable-Baselines3's DQN class, or exit with the extra to install."""
    try:
        from stable_baselines3 import DQN
    except ImportError as err:
        raise SystemExit(f"zoo needs Stable-Baselines3: pip install 'dqnlab[bench]' ({err})") from err
    return DQN


def sb3_zoo_model(name: str, seed: int, quick: bool):
    """SB3's DQN with RL Zoo's hyperparameters for ``name`` on a new env (one torch thread), and its episode cap."""
    import gymnasium as gym

    DQN = sb3_dqn()
    torch.set_num_threads(1)  # dqnlab's torch_threads default: both frameworks alike
    env_id, hp = ZOO_DQN[name]
    hp = dict(hp)
    net_arch = hp.pop("net_arch")
    limit = 100 if quick else None
    if quick:
        hp.update(learning_starts=200, buffer_size=2_000)
    env = gym.make(env_id, **({"max_episode_steps": limit} if limit else {}))
    model = DQN("MlpPolicy", env, policy_kwargs={"net_arch": net_arch}, seed=seed, device="cpu", verbose=0, **hp)
    return model, env, limit
