"""The ``cartpole-cpu`` and ``cartpole-solve`` suites: dqnlab's loop against a bare PyTorch loop on CartPole, and
``python train.py`` on seeds 0-4 with the defaults (final return, wall clock and the load it ran under).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .common import ROOT, compose, dqnlab_loop, format_table, ramp_env_steps, time_loops


# ---------------------------------------------------------------------------------------------- cartpole-cpu
def bare_loop(cfg) -> dict[str, float]:
    """The same DQN updates written as one plain PyTorch loop: no Lightning, no callbacks, no Hydra objects.

    Same env, network class, optimizer, batch, replay ratio, loss (MSE/Huber, Double or not), gradient clipping
    and target sync (hard or Polyak) as the dqnlab run it is compared with; no evaluation, logging or checkpoints.
    """
    from hydra.utils import instantiate

    from dqnlab.envs.vector import make_vector_env
    from dqnlab.learn.networks import build_network

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
