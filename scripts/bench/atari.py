"""The ``atari-gpu`` and ``peers`` suites: Breakout with ``experiment=atari_cleanrl``, eager vs CUDA graphs and
over ``num_envs``, and Stable-Baselines3's DQN with RL Zoo's Atari settings beside it.
"""

from __future__ import annotations

import json
import time

import pytorch_lightning as pl
import torch

from .common import compose, format_table


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
