"""dqnlab benchmarks: speed and memory targets live here, never in timed unit tests.

    python scripts/benchmark.py cartpole-cpu              # dqnlab loop vs a bare PyTorch loop
    python scripts/benchmark.py cartpole-solve            # `python train.py` on seeds 0-4: return, wall clock
    python scripts/benchmark.py replay-memory             # bytes of a 1M-transition Atari buffer
    python scripts/benchmark.py atari-gpu                 # Breakout on a GPU: eager vs CUDA graphs, num_envs
    python scripts/benchmark.py peers                     # Stable-Baselines3 DQN vs dqnlab, same settings
    python scripts/benchmark.py zoo                       # dqnlab presets vs SB3 with RL Zoo's hyperparameters
    python scripts/benchmark.py update-floor              # one MLP update's cost and its matrix products alone
    python scripts/benchmark.py zoo-split --envs acrobot  # where a zoo run's time goes, dqnlab and SB3
    python scripts/benchmark.py cartpole-cpu --append     # also append the table to docs/benchmarks.md

Each suite prints a table and one JSON line (``{"suite": ..., ...}``); ``--quick`` runs tiny sizes (tests).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from bench_floor import suite_update_floor  # scripts/bench_floor.py (scripts/ is on sys.path when run)
from bench_minatar import suite_minatar_cpu  # scripts/bench_minatar.py
from bench_split import suite_zoo_split  # scripts/bench_split.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for `tests.conftest`-free config composition below, not for the package


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
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


# ---------------------------------------------------------------------------------------------- cartpole-cpu
def bare_loop(cfg) -> dict[str, float]:
    """The same DQN updates written as one plain PyTorch loop: no Lightning, no callbacks, no Hydra objects.

    Same env, network class, optimizer, batch, replay ratio, loss (MSE/Huber, Double or not), gradient clipping
    and target sync (hard or Polyak) as the dqnlab run it is compared with; no evaluation, logging or checkpoints.
    """
    from hydra.utils import instantiate

    from dqnlab.envs import make_vector_env
    from dqnlab.networks import build_network

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    env = make_vector_env(cfg.env.id, num_envs=cfg.env.num_envs)
    n = env.num_envs
    obs_dim, num_actions = env.single_observation_space.shape[0], int(env.single_action_space.n)
    q = build_network(instantiate(cfg.network), (obs_dim,), num_actions)
    target = copy.deepcopy(q).requires_grad_(False)
    opt = instantiate(cfg.optimizer)(q.parameters())
    col, algo = cfg.collector, cfg.algo
    cap = cfg.buffer.capacity
    b_obs = torch.zeros(cap, obs_dim)
    b_next = torch.zeros(cap, obs_dim)
    b_act = torch.zeros(cap, dtype=torch.int64)
    b_rew = torch.zeros(cap)
    b_term = torch.zeros(cap, dtype=torch.bool)
    size, ptr = 0, 0
    obs, _ = env.reset(seed=cfg.seed)
    last_done = np.zeros(n, bool)
    env_steps, updates, phases = 0, 0, 0
    decay = max(ramp_env_steps(cfg), 1)
    t_fit = time.perf_counter()
    while env_steps < cfg.env_steps:
        eps = max(col.epsilon_end, 1.0 + (col.epsilon_end - 1.0) * env_steps / decay)
        if env_steps < col.learning_starts or rng.random() < eps:
            actions = rng.integers(num_actions, size=n)
        else:
            with torch.no_grad():
                actions = q(torch.as_tensor(obs)).argmax(1).numpy()
        nxt, rew, term, trunc, _ = env.step(actions)
        for i in np.flatnonzero(~last_done):  # NEXT_STEP autoreset: skip the reset transition
            b_obs[ptr], b_next[ptr] = torch.as_tensor(obs[i]), torch.as_tensor(nxt[i])
            b_act[ptr], b_rew[ptr], b_term[ptr] = int(actions[i]), float(rew[i]), bool(term[i])
            ptr, size = (ptr + 1) % cap, min(size + 1, cap)
        obs, last_done = nxt, term | trunc
        env_steps += n
        # Update phases the env steps taken allow (several per vector step when num_envs > train_freq).
        due = max(env_steps - col.learning_starts, 0) // col.train_freq
        for _ in range((due - phases) * col.gradient_steps):
            idx = torch.randint(size, (algo.batch_size,))
            obs_b, next_b = b_obs[idx], b_next[idx]
            if algo.double:
                q_all = q(torch.cat([obs_b, next_b]))
                q_b, next_online = q_all[: len(idx)], q_all[len(idx) :].detach()
            else:
                q_b = q(obs_b)
            q_taken = q_b.gather(1, b_act[idx, None]).squeeze(1)
            with torch.no_grad():
                next_t = target(next_b)
                next_v = (
                    next_t.gather(1, next_online.argmax(1, keepdim=True)).squeeze(1)
                    if algo.double
                    else next_t.max(1).values
                )
                y = b_rew[idx] + algo.gamma * (~b_term[idx]) * next_v
            if algo.loss == "huber":
                loss = torch.nn.functional.smooth_l1_loss(q_taken, y)
            else:
                loss = torch.nn.functional.mse_loss(q_taken, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if algo.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(q.parameters(), algo.max_grad_norm)
            opt.step()
            updates += 1
            if updates % cfg.target.interval == 0:
                with torch.no_grad():
                    torch._foreach_lerp_(list(target.parameters()), list(q.parameters()), cfg.target.tau)
        phases = due
    fit_s = time.perf_counter() - t_fit
    env.close()
    return {"fit_s": fit_s, "env_steps": env_steps, "updates": updates}


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


def suite_cartpole_cpu(args) -> dict:
    quick = ["env_steps=1000", "collector.learning_starts=400", "env.max_episode_steps=50"]
    overrides = [
        *(quick if args.quick else ["env_steps=30000"]),
        "progress_bar=false",
        "logger=[]",
        "eval.every=0",
        "eval.episodes=1",
        *args.overrides,
    ]
    cfg = compose(overrides)
    results, ratio = time_loops(cfg, (("bare", bare_loop), ("dqnlab", dqnlab_loop), ("bare_again", bare_loop)), "us")
    rows = [
        (k, f"{v['updates']:,}", f"{v['us_per_update']:.0f}", f"{v['env_steps_per_s']:,.0f}")
        for k, v in results.items()
    ]
    table = format_table(["loop", "updates", "us / update (incl. env steps)", "env steps / s"], rows)
    table += f"\n\ndqnlab / bare time per update: **{ratio:.2f}x** (target <= 1.25x)"
    return {"suite": "cartpole-cpu", "ratio": ratio, "results": results, "table": table, "overrides": overrides}


# ---------------------------------------------------------------------------------------------- cartpole-solve
def suite_cartpole_solve(args) -> dict:
    """`python train.py seed=S` with the defaults for seeds 0-4 (or ``--seeds``), one after another.

    Reports the final greedy eval return and the wall clock of each run, with the 1-minute load average just
    before and just after it: wall clock on a shared machine means nothing without the load it ran under.
    """
    import subprocess
    import tempfile

    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    extra = ["env_steps=800", "collector.learning_starts=400", "eval.episodes=2"] if args.quick else []
    rows, results = [], []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                str(ROOT / "train.py"),
                f"seed={seed}",
                "progress_bar=false",
                f"hydra.run.dir={tmp}",
                *extra,
                *args.overrides,
            ]
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            process_s = time.perf_counter() - t0
            load_after = os.getloadavg()[0]
            summary = json.loads((Path(tmp) / "summary.json").read_text())
        results.append(
            {"seed": seed, "process_s": process_s, "load_before": load_before, "load_after": load_after, **summary}
        )
        rows.append(
            (
                seed,
                f"{summary['eval/return_mean']:.1f} +- {summary['eval/return_std']:.1f}",
                int(summary["eval/episodes"]),
                f"{summary['wall_time_s']:.1f}",
                f"{process_s:.1f}",
                f"{summary['env_steps_per_s']:,.0f}",
                f"{load_before:.2f} / {load_after:.2f}",
            )
        )
    solved = all(r["eval/return_mean"] >= 475 for r in results)
    header = ["seed", "final greedy eval return", "episodes", "run() wall s", "process wall s", "env steps/s"]
    table = format_table([*header, "load avg before / after"], rows)
    table += f"\n\nall seeds >= 475: **{solved}**; slowest run() {max(r['wall_time_s'] for r in results):.1f} s"
    return {"suite": "cartpole-solve", "solved_all": solved, "results": results, "table": table}


# ---------------------------------------------------------------------------------------------- replay-memory
def suite_replay_memory(args) -> dict:
    from dqnlab.replay import ReplayBuffer

    transitions = 1_000_000
    frame = (84, 84)
    dedup = ReplayBuffer.nbytes_for(transitions, 1, frame, torch.uint8)
    naive_stacks = 2 * transitions * 4 * 84 * 84  # obs + next_obs stacks, as most libraries store them
    small = ReplayBuffer(4_000, (4, *frame), torch.uint8, num_envs=8, frame_stack=4)
    allocated_ok = small.nbytes == ReplayBuffer.nbytes_for(500, 8, frame, torch.uint8)
    rows = [
        ("dqnlab (each frame once)", f"{dedup / 1e9:.2f} GB"),
        ("obs + next_obs 4-stacks", f"{naive_stacks / 1e9:.2f} GB"),
    ]
    table = format_table(["1M Atari transitions", "bytes"], rows)
    table += f"\n\nformula matches a real allocation: {allocated_ok}; target <= 7.5 GB"
    return {
        "suite": "replay-memory",
        "bytes": dedup,
        "naive_bytes": naive_stacks,
        "table": table,
        "allocation_matches": allocated_ok,
    }


# ---------------------------------------------------------------------------------------------- atari-gpu
class _Span(pl.Callback):
    """Wall clock, env steps and gradient steps from the first update to the last (no prefill, no final eval)."""

    def __init__(self, collector) -> None:
        self.collector = collector
        self.t0 = self.t1 = 0.0
        self.env0 = self.env1 = self.grad0 = self.grad1 = 0

    def on_train_start(self, trainer, pl_module) -> None:
        _sync()
        self.t0, self.env0, self.grad0 = time.perf_counter(), self.collector.env_steps, trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step >= trainer.max_steps:
            _sync()
            self.t1, self.env1, self.grad1 = time.perf_counter(), self.collector.env_steps, trainer.global_step

    def rates(self) -> dict[str, float]:
        dt = max(self.t1 - self.t0, 1e-9)
        return {
            "train_s": dt,
            "env_steps": self.env1 - self.env0,
            "updates": self.grad1 - self.grad0,
            "env_steps_per_s": (self.env1 - self.env0) / dt,
            "updates_per_s": (self.grad1 - self.grad0) / dt,
        }


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def dqnlab_atari(overrides: list[str]) -> dict[str, float]:
    """One dqnlab Atari run (Trainer.fit), timed from its first update to its last."""
    from dqnlab.train import _quiet_lightning, build

    _quiet_lightning()
    cfg = compose(overrides)
    torch.set_num_threads(int(cfg.torch_threads or torch.get_num_threads()))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    parts = build(cfg)
    span = _Span(parts.collector)
    parts.trainer.callbacks.append(span)
    try:
        parts.trainer.fit(parts.module)
    finally:
        parts.close()
    out = span.rates()
    runner = parts.module._runner
    out["captured"] = bool(runner is not None and runner.captured)
    out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0.0
    return out


def _atari_overrides(num_envs: int, graph: bool, async_envs: bool, learning_starts: int, steps: int) -> list[str]:
    return [
        "experiment=atari_cleanrl",
        f"env.num_envs={num_envs}",
        f"env.num_threads={num_envs}",
        f"algo.cuda_graph={str(graph).lower()}",
        f"collector.async_envs={str(async_envs).lower()}",
        f"collector.learning_starts={learning_starts}",
        f"env_steps={learning_starts + steps}",
        "eval.every=0",
        "eval.episodes=1",
        "env.eval_max_episode_frames=400",  # the final evaluation is not what is measured: keep it short
        "~checkpoint",
        "logger=[]",
        "progress_bar=false",
    ]


def suite_atari_gpu(args) -> dict:
    """Breakout, experiment=atari_cleanrl: env steps/s and updates/s after learning starts, eager vs CUDA graphs."""
    cuda = torch.cuda.is_available()
    if args.quick:
        plan = [(2, False, False)]
        learning_starts, steps, eager_steps = 200, 200, 200
        extra = ["buffer.capacity=5000", "env.max_episode_steps=100"]
    else:
        if not cuda:
            raise SystemExit("atari-gpu measures the GPU path: run it on a CUDA machine (or with --quick)")
        plan = [(n, True, True) for n in args.envs]
        plan += [(args.envs[len(args.envs) // 2], True, False), (args.envs[len(args.envs) // 2], False, True)]
        learning_starts, steps, eager_steps = 10_000, args.steps, max(args.steps // 4, 2_000)
        extra = []
    rows, results = [], []
    for num_envs, graph, async_envs in plan:
        n_steps = steps if graph else eager_steps
        overrides = [*_atari_overrides(num_envs, graph, async_envs, learning_starts, n_steps), *extra, *args.overrides]
        r = {"num_envs": num_envs, "cuda_graph": graph, "async_envs": async_envs, **dqnlab_atari(overrides)}
        results.append(r)
        print(json.dumps(r), flush=True)
        rows.append(
            (
                num_envs,
                "graph" if r["captured"] else "eager",
                "async" if async_envs else "sync",
                f"{r['env_steps']:,}",
                f"{r['env_steps_per_s']:,.0f}",
                f"{r['updates_per_s']:,.0f}",
                f"{r['peak_gpu_gb']:.2f}",
            )
        )
    best = max(results, key=lambda r: r["env_steps_per_s"])
    table = format_table(
        ["envs", "update", "env stepping", "env steps timed", "env steps/s", "updates/s", "peak GPU GB"], rows
    )
    table += f"\n\nbest: **{best['env_steps_per_s']:,.0f} env steps/s** (target >= 4,000) with {best['num_envs']} envs"
    return {"suite": "atari-gpu", "results": results, "best": best, "table": table}


# ---------------------------------------------------------------------------------------------- peers
def sb3_atari(game: str, learning_starts: int, steps: int, buffer_size: int, seed: int) -> dict[str, float]:
    """Stable-Baselines3 DQN with RL Zoo's Atari settings on the same game, timed after learning starts."""
    try:
        import ale_py
        import gymnasium as gym
        from stable_baselines3 import DQN
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack
    except ImportError as err:
        raise SystemExit(f"peers needs Stable-Baselines3: pip install 'dqnlab[bench]' ({err})") from err

    gym.register_envs(ale_py)
    env_id = "".join(w.capitalize() for w in game.split("_")) + "NoFrameskip-v4"
    env = VecFrameStack(make_atari_env(env_id, n_envs=1, seed=seed), n_stack=4)

    class Span(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == learning_starts + 1:
                _sync()
                self.t0 = time.perf_counter()
            return True

        def _on_training_end(self) -> None:
            _sync()
            self.t1 = time.perf_counter()

    # rl-zoo3 hyperparams/dqn.yml, atari: batch 32 (default), train_freq 4, gradient_steps 1, lr 1e-4,
    # target_update_interval 1000 env steps, buffer_size 100k; learning_starts shortened for the benchmark.
    model = DQN(
        "CnnPolicy",
        env,
        learning_rate=1e-4,
        buffer_size=buffer_size,
        learning_starts=learning_starts,
        batch_size=32,
        train_freq=4,
        gradient_steps=1,
        target_update_interval=1000,
        exploration_fraction=0.1,
        exploration_final_eps=0.01,
        optimize_memory_usage=False,
        seed=seed,
        device="cuda" if torch.cuda.is_available() else "cpu",
        verbose=0,
    )
    span = Span()
    model.learn(total_timesteps=learning_starts + steps, callback=span)
    env.close()
    dt = max(span.t1 - span.t0, 1e-9)
    return {"train_s": dt, "env_steps": steps, "env_steps_per_s": steps / dt, "updates_per_s": steps / 4 / dt}


def suite_peers(args) -> dict:
    """Stable-Baselines3 DQN vs dqnlab on Breakout: same network, batch, replay ratio, target cadence, device."""
    torch.set_num_threads(1)  # both frameworks alike (dqnlab's torch_threads default)
    if args.quick:
        ls, sb3_steps, dq_steps, buf = 100, 40, 200, 2_000
        plan = [(1, False, False)]
        extra = ["buffer.capacity=5000", "env.max_episode_steps=100"]
    else:
        ls, sb3_steps, dq_steps, buf = 5_000, args.sb3_steps, args.steps, 100_000
        graph = torch.cuda.is_available()
        plan = [(1, graph, False), (args.envs[len(args.envs) // 2], graph, True)]
        extra = []
    sb3 = sb3_atari("breakout", ls, sb3_steps, buf, seed=0)
    print(json.dumps({"sb3": sb3}), flush=True)
    rows = [("Stable-Baselines3 2.9 DQN", 1, "eager", f"{sb3['env_steps_per_s']:,.0f}", "1.0x")]
    results = {"sb3": sb3, "dqnlab": []}
    for num_envs, graph, async_envs in plan:
        overrides = [*_atari_overrides(num_envs, graph, async_envs, ls, dq_steps), *extra, *args.overrides]
        r = {"num_envs": num_envs, **dqnlab_atari(overrides)}
        r["vs_sb3"] = r["env_steps_per_s"] / sb3["env_steps_per_s"]
        results["dqnlab"].append(r)
        print(json.dumps(r), flush=True)
        update = "graph" if r["captured"] else "eager"
        rows.append(("dqnlab", num_envs, update, f"{r['env_steps_per_s']:,.0f}", f"{r['vs_sb3']:.1f}x"))
    best = max(r["vs_sb3"] for r in results["dqnlab"])
    table = format_table(["framework", "envs", "update", "env steps/s after learning starts", "vs SB3"], rows)
    table += f"\n\ndqnlab / SB3: **{best:.1f}x** (target >= 15x)"
    return {"suite": "peers", "results": results, "ratio": best, "table": table}


# ---------------------------------------------------------------------------------------------- zoo
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


def greedy_returns(env_id: str, act, episodes: int, seed: int, max_episode_steps: int | None = None) -> list[float]:
    """Raw returns of ``episodes`` greedy episodes on a fresh env (episode i reset with ``seed + i``)."""
    import gymnasium as gym

    env = gym.make(env_id, **({"max_episode_steps": max_episode_steps} if max_episode_steps else {}))
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def _sb3_dqn():
    """Stable-Baselines3's DQN class, or exit with the extra to install."""
    try:
        from stable_baselines3 import DQN
    except ImportError as err:
        raise SystemExit(f"zoo needs Stable-Baselines3: pip install 'dqnlab[bench]' ({err})") from err
    return DQN


def sb3_zoo_model(name: str, seed: int, quick: bool):
    """SB3's DQN with RL Zoo's hyperparameters for ``name`` on a new env (one torch thread), and its episode cap."""
    import gymnasium as gym

    DQN = _sb3_dqn()
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


def sb3_zoo_run(name: str, seed: int, env_steps: int, episodes: int, quick: bool) -> dict:
    """One SB3 DQN run with RL Zoo's hyperparameters, then the same final evaluation protocol as dqnlab's."""
    _sb3_dqn()  # imported before the clock starts
    t0 = time.perf_counter()
    model, env, limit = sb3_zoo_model(name, seed, quick)
    env_id = ZOO_DQN[name][0]
    model.learn(total_timesteps=env_steps)
    fit_s = time.perf_counter() - t0

    def act(obs):
        return model.predict(obs, deterministic=True)[0]

    returns = greedy_returns(env_id, act, episodes, seed=10_000 * (seed + 1), max_episode_steps=limit)
    env.close()
    return {"eval/return_mean": float(np.mean(returns)), "eval/episodes": len(returns), "fit_s": fit_s}


def _timed_process(cmd: list[str]) -> tuple[float, str]:
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def _zoo_dqnlab(name: str, seed: int, overrides: list[str]) -> dict:
    """One ``python train.py env=<name>`` run in its own process: its summary and the process's wall time."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        wall, _ = _timed_process(
            [sys.executable, str(ROOT / "train.py"), f"env={name}", f"seed={seed}", "progress_bar=false",
             "logger=[]", f"hydra.run.dir={tmp}", *overrides]
        )  # fmt: skip
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    return {"seed": seed, "wall_s": wall, "overrides": overrides, **summary}


def _zoo_sb3(name: str, seed: int, worker_args: list[str]) -> dict:
    """One SB3 run in its own process (``zoo-worker``): its result and the process's wall time."""
    wall, out = _timed_process(
        [sys.executable, __file__, "zoo-worker", "--envs", name, "--seeds", str(seed), *worker_args]
    )
    return {"seed": seed, "wall_s": wall, **json.loads(out.strip().splitlines()[-1])}


def _zoo_record(out: Path | None, name: str, framework: str, seed: int, run: Callable[[], dict]) -> dict:
    """One run's record: read from ``out/<env>/<framework>_seed<k>.json`` if an earlier invocation wrote it, else
    made by ``run()`` and written there, so that a zoo sweep longer than a session continues where it stopped.
    """
    path = out / name / f"{framework}_seed{seed}.json" if out else None
    if path and path.exists():
        return json.loads(path.read_text())
    record = run()
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)  # atomic: a stopped sweep never leaves half a record
    return record


def suite_zoo(args) -> dict:
    """Per env: dqnlab's preset (``python train.py env=<name>``) and SB3 DQN with RL Zoo's hyperparameters, on
    the same seeds and env-step budget (the preset's ``env_steps``), one process at a time, alternating.

    Both end with greedy episodes on a separate env scored by raw return (dqnlab: its Evaluator with
    ``eval.episodes``; SB3: ``predict(deterministic=True)``, the same count). Wall time is each process's, from
    launch to exit, so both pay their imports. With ``--out DIR`` every finished run is kept there and a later
    invocation with the same arguments skips it (records of another configuration are the user's to remove).
    """
    from dqnlab.stats import bootstrap_ci

    names = args.env_names or (["mountaincar"] if args.quick else ["acrobot", "mountaincar", "lunarlander"])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    quick = ["env_steps=600", "collector.learning_starts=200", "buffer.capacity=2000", "eval.every=0"]
    quick += ["eval.episodes=2", "env.max_episode_steps=100", "~checkpoint"]
    out = Path(args.out) if args.out else None
    rows, results = [], {}
    for name in names:
        cfg = compose([f"env={name}", *(quick if args.quick else []), *args.overrides])
        per = {"dqnlab": [], "sb3": []}
        extra = [*(quick if args.quick else []), *args.overrides]
        sb3_args = [f"--steps={cfg.env_steps}", f"--episodes={cfg.eval.episodes}", *(["--quick"] * args.quick)]
        for seed in seeds:
            per["dqnlab"].append(_zoo_record(out, name, "dqnlab", seed, partial(_zoo_dqnlab, name, seed, extra)))
            per["sb3"].append(_zoo_record(out, name, "sb3", seed, partial(_zoo_sb3, name, seed, sb3_args)))
            print(json.dumps({"env": name, "seed": seed, "dqnlab": per["dqnlab"][-1], "sb3": per["sb3"][-1]}))
        summary_env = {"env_id": cfg.env.id, "env_steps": int(cfg.env_steps), **per}
        for fw in ("dqnlab", "sb3"):
            scores = [r["eval/return_mean"] for r in per[fw]]
            iqm = bootstrap_ci(scores, seed=0)
            summary_env[f"{fw}_iqm"] = [iqm.value, iqm.low, iqm.high]
            # The median: the box is shared, so one slow run should not move the figure.
            summary_env[f"{fw}_wall_s"] = float(np.median([r["wall_s"] for r in per[fw]]))
            rows.append((cfg.env.id, fw, f"{cfg.env_steps:,}", iqm.format(), f"{np.mean(scores):.1f}",
                         f"{min(scores):.1f}", f"{summary_env[f'{fw}_wall_s']:.0f}"))  # fmt: skip
        # Per seed, side by side (the two runs of a seed ran one after the other), then the median of the ratios.
        ratios = [d["wall_s"] / s["wall_s"] for d, s in zip(per["dqnlab"], per["sb3"], strict=True)]
        summary_env["wall_ratio"] = float(np.median(ratios))
        rows.append((cfg.env.id, "dqnlab / SB3 wall time", "", "", "", "", f"**{summary_env['wall_ratio']:.2f}x**"))
        results[name] = summary_env
    header = ["env", "framework", "env steps", "final eval IQM [95% CI]", "mean", "worst seed", "median wall s / run"]
    table = format_table(header, rows) + f"\n\nseeds {seeds}; SB3 {_sb3_version()} with RL Zoo's dqn.yml (ce95481)"
    return {"suite": "zoo", "seeds": seeds, "results": results, "table": table}


def _sb3_version() -> str:
    try:
        import stable_baselines3

        return stable_baselines3.__version__
    except ImportError:
        return "(not installed)"


def suite_zoo_worker(args) -> dict:
    """One SB3 run of the zoo suite in its own process (so its wall time includes its imports, as dqnlab's)."""
    result = sb3_zoo_run(args.env_names[0], args.seeds[0], args.steps, args.episodes, args.quick)
    print(json.dumps(result))
    raise SystemExit(0)


# ---------------------------------------------------------------------------------------------- helpers
def format_table(header: list[str], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


SUITES = {
    "cartpole-cpu": suite_cartpole_cpu,
    "cartpole-solve": suite_cartpole_solve,
    "replay-memory": suite_replay_memory,
    "atari-gpu": suite_atari_gpu,
    "peers": suite_peers,
    "zoo": suite_zoo,
    "zoo-worker": suite_zoo_worker,
    "minatar-cpu": suite_minatar_cpu,
    "update-floor": suite_update_floor,
    "zoo-split": suite_zoo_split,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the composed config")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (used by the tests)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="cartpole-solve/zoo: the seeds to run (default 0-4); zoo-split: its seed"
    )
    parser.add_argument("--episodes", type=int, default=20, help="zoo-worker: final greedy episodes")
    parser.add_argument("--append", action="store_true", help="append the result to docs/benchmarks.md")
    parser.add_argument("--out", help="zoo: keep each run's record in this dir and skip runs already recorded there")
    parser.add_argument(
        "--envs",
        nargs="+",
        help=f"atari-gpu/peers: num_envs (default 8 16 32); zoo, zoo-split: env names of {sorted(ZOO_DQN)}",
    )
    parser.add_argument("--steps", type=int, default=60_000, help="atari-gpu/peers: dqnlab env steps timed")
    parser.add_argument("--sb3-steps", type=int, default=4_000, help="peers: SB3 env steps timed")
    args = parser.parse_args()
    if args.suite.startswith("zoo"):
        args.env_names = args.envs
        if unknown := sorted(set(args.envs or []) - set(ZOO_DQN)):
            parser.error(f"--envs {' '.join(unknown)}: zoo knows {', '.join(sorted(ZOO_DQN))}")
    else:
        try:
            args.envs = [int(e) for e in args.envs or [8, 16, 32]]
        except ValueError:
            parser.error(f"{args.suite} --envs takes env counts (integers), got {' '.join(args.envs)}")
    result = SUITES[args.suite](args)
    result["machine"] = machine()
    result["date"] = dt.date.today().isoformat()
    print(result["table"])
    print(json.dumps({k: v for k, v in result.items() if k != "table"}))
    if args.append:
        cmd = "python scripts/benchmark.py " + " ".join(sys.argv[1:]).replace("--append", "").strip()
        with (ROOT / "docs" / "benchmarks.md").open("a") as f:
            f.write(f"\n### {args.suite} ({result['date']})\n\n`{cmd}` on {result['machine']}\n\n{result['table']}\n")


if __name__ == "__main__":
    main()
