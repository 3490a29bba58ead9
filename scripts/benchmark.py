"""dqnlab benchmarks: speed and memory targets live here, never in timed unit tests.

    python scripts/benchmark.py cartpole-cpu              # dqnlab loop vs a bare PyTorch loop
    python scripts/benchmark.py cartpole-solve            # `python train.py` on seeds 0-4: return, wall clock
    python scripts/benchmark.py replay-memory             # bytes of a 1M-transition Atari buffer
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
from pathlib import Path

import numpy as np
import torch

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
    env_steps, updates = 0, 0
    decay = col.exploration_fraction * cfg.env_steps
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
        if env_steps > col.learning_starts and (env_steps - col.learning_starts) % col.train_freq < n:
            for _ in range(col.gradient_steps):
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
    fit_s = time.perf_counter() - t_fit
    env.close()
    return {"fit_s": fit_s, "env_steps": env_steps, "updates": updates}


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
    torch.set_num_threads(int(cfg.torch_threads or torch.get_num_threads()))
    results = {}
    for name, fn in (("bare", bare_loop), ("dqnlab", dqnlab_loop), ("bare_again", bare_loop)):
        r = fn(cfg)
        results[name] = {
            **r,
            "us_per_update": 1e6 * r["fit_s"] / max(r["updates"], 1),
            "env_steps_per_s": r["env_steps"] / r["fit_s"],
        }
    bare_us = min(results["bare"]["us_per_update"], results["bare_again"]["us_per_update"])
    ratio = results["dqnlab"]["us_per_update"] / bare_us
    rows = [
        (k, f"{v['updates']:,}", f"{v['us_per_update']:.0f}", f"{v['env_steps_per_s']:,.0f}")
        for k, v in results.items()
    ]
    table = format_table(["loop", "updates", "us / update (incl. env steps)", "env steps / s"], rows)
    table += f"\n\ndqnlab / bare time per update: **{ratio:.2f}x** (target <= 1.25x)"
    return {"suite": "cartpole-cpu", "ratio": ratio, "results": results, "table": table, "overrides": overrides}


# ---------------------------------------------------------------------------------------------- cartpole-solve
def suite_cartpole_solve(args) -> dict:
    """`python train.py seed=S` with the defaults for seeds 0-4, one after another: eval return and wall clock."""
    import subprocess
    import tempfile

    seeds = [0] if args.quick else [0, 1, 2, 3, 4]
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
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            process_s = time.perf_counter() - t0
            summary = json.loads((Path(tmp) / "summary.json").read_text())
        results.append({"seed": seed, "process_s": process_s, **summary})
        rows.append(
            (
                seed,
                f"{summary['eval/return_mean']:.1f} +- {summary['eval/return_std']:.1f}",
                int(summary["eval/episodes"]),
                f"{summary['wall_time_s']:.1f}",
                f"{process_s:.1f}",
                f"{summary['env_steps_per_s']:,.0f}",
            )
        )
    solved = all(r["eval/return_mean"] >= 475 for r in results)
    table = format_table(
        ["seed", "final greedy eval return", "episodes", "run() wall s", "process wall s", "env steps/s"], rows
    )
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


# ---------------------------------------------------------------------------------------------- helpers
def format_table(header: list[str], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


SUITES = {
    "cartpole-cpu": suite_cartpole_cpu,
    "cartpole-solve": suite_cartpole_solve,
    "replay-memory": suite_replay_memory,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the composed config")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (used by the tests)")
    parser.add_argument("--append", action="store_true", help="append the result to docs/benchmarks.md")
    args = parser.parse_args()
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
