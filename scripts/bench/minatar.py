"""The ``minatar-cpu`` speed suite: dqnlab's loop against a bare PyTorch loop doing the same MinAtar updates.

    python scripts/benchmark.py minatar-cpu                       # the paper's DQN on Breakout, one thread
    python scripts/benchmark.py minatar-cpu env.game=seaquest     # any override of the composed config

Both loops run ``experiment=minatar_paper`` (the paper's network at batch 32, centered RMSprop, Huber, one
update per env step, hard target copies) on the same env for the same env steps, with one intra-op thread
(``torch_threads``). Rows: each loop's fit time per update with its env steps in it (``ms / update``) and its
env steps per second; the bare loop is run before and after dqnlab and the faster of the two is the reference.
A last row times the bare loop's updates alone, on its filled replay, without any env step: the update's own
cost (issue 15 measured about 2.0 ms with fused Adam while scoping).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .common import compose, dqnlab_loop, format_table, ramp_env_steps, time_loops

PAPER = ["experiment=minatar_paper"]


def _update(q, target, opt, algo, batch) -> None:
    """One DQN update of ``q`` on ``batch`` (obs, actions, rewards, next obs, terminated), as dqn.py's train()."""
    obs, actions, rewards, nxt, term = batch
    q_taken = q(obs.float()).gather(1, actions[:, None]).squeeze(1)
    with torch.no_grad():
        if algo.double:
            next_v = target(nxt.float()).gather(1, q(nxt.float()).argmax(1, keepdim=True)).squeeze(1)
        else:
            next_v = target(nxt.float()).max(1).values
        y = rewards + algo.gamma * (~term) * next_v
    loss = F.smooth_l1_loss(q_taken, y) if algo.loss == "huber" else F.mse_loss(q_taken, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if algo.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(q.parameters(), algo.max_grad_norm)
    opt.step()


def bare_minatar_loop(cfg: Any, update_only: int = 0) -> dict[str, float]:
    """The same updates as one plain PyTorch loop: replay of uint8 ``obs``/``next_obs`` pairs, no Lightning.

    Same env, network class, optimizer, batch, replay ratio, loss, clipping and target cadence as the dqnlab
    run; no evaluation, logging or checkpoints. With ``update_only`` it then times that many more updates on the
    filled replay, with no env step between them.
    """
    from hydra.utils import instantiate

    from dqnlab.learn.networks import build_network

    col, algo = cfg.collector, cfg.algo
    if int(algo.get("n_step", 1)) != 1 or int(algo.get("num_atoms", 1)) != 1 or float(cfg.target.tau) != 1.0:
        raise SystemExit("minatar-cpu's bare loop does one-step, expected-value DQN with hard target copies")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    env = instantiate(cfg.env)()
    n, shape = env.num_envs, env.single_observation_space.shape
    num_actions = int(env.single_action_space.n)
    q = build_network(instantiate(cfg.network), shape, num_actions)
    target = copy.deepcopy(q).requires_grad_(False)
    opt = instantiate(cfg.optimizer)(q.parameters())
    cap = int(cfg.buffer.capacity)
    b_obs = torch.zeros((cap, *shape), dtype=torch.uint8)
    b_next = torch.zeros((cap, *shape), dtype=torch.uint8)
    b_act = torch.zeros(cap, dtype=torch.int64)
    b_rew = torch.zeros(cap)
    b_term = torch.zeros(cap, dtype=torch.bool)
    size, ptr = 0, 0
    obs, _ = env.reset(seed=cfg.seed)
    last_done = np.zeros(n, bool)
    env_steps, updates, phases = 0, 0, 0
    decay = max(ramp_env_steps(cfg), 1)

    def draw() -> tuple[torch.Tensor, ...]:
        idx = torch.randint(size, (algo.batch_size,))
        return b_obs[idx], b_act[idx], b_rew[idx], b_next[idx], b_term[idx]

    t_fit = time.perf_counter()
    while env_steps < cfg.env_steps:
        eps = max(col.epsilon_end, 1.0 + (col.epsilon_end - 1.0) * env_steps / decay)
        if env_steps < col.learning_starts or rng.random() < eps:
            actions = rng.integers(num_actions, size=n)
        else:
            with torch.no_grad():
                actions = q(torch.as_tensor(obs).float()).argmax(1).numpy()
        nxt, rew, term, trunc, _ = env.step(actions)
        for i in np.flatnonzero(~last_done):  # NEXT_STEP autoreset: skip the reset transition
            b_obs[ptr], b_next[ptr] = torch.from_numpy(obs[i]), torch.from_numpy(nxt[i])
            b_act[ptr], b_rew[ptr], b_term[ptr] = int(actions[i]), float(rew[i]), bool(term[i])
            ptr, size = (ptr + 1) % cap, min(size + 1, cap)
        obs, last_done = nxt, term | trunc
        env_steps += n
        due = max(env_steps - col.learning_starts, 0) // col.train_freq
        for _ in range((due - phases) * col.gradient_steps):
            _update(q, target, opt, algo, draw())
            updates += 1
            if updates % cfg.target.interval == 0:
                target.load_state_dict(q.state_dict())
        phases = due
    fit_s = time.perf_counter() - t_fit
    env.close()
    out = {"fit_s": fit_s, "env_steps": env_steps, "updates": updates}
    if update_only:
        t0 = time.perf_counter()
        for _ in range(update_only):
            _update(q, target, opt, algo, draw())
        out["update_only_ms"] = 1e3 * (time.perf_counter() - t0) / update_only
    return out


def suite_minatar_cpu(args: Any) -> dict:
    """The dqnlab and bare loops on MinAtar (see the module docstring); ``args.overrides`` go to the config."""
    quick = ["env_steps=600", "collector.learning_starts=200", "env.max_episode_steps=100"]
    overrides = [
        *PAPER,
        *(quick if args.quick else ["env_steps=15000"]),
        "progress_bar=false",
        "logger=[]",
        "~checkpoint",
        "eval.every=0",
        "eval.episodes=1",
        "env.eval_max_episode_steps=100",  # the final greedy episode is not what is timed; keep it short
        *args.overrides,
    ]
    cfg = compose(overrides)
    only = 50 if args.quick else 2_000
    loops = (
        ("bare", bare_minatar_loop),
        ("dqnlab", dqnlab_loop),
        ("bare_again", lambda c: bare_minatar_loop(c, update_only=only)),
    )
    results, ratio = time_loops(cfg, loops, "ms")
    rows = [
        (k, f"{v['updates']:,}", f"{v['ms_per_update']:.3f}", f"{v['env_steps_per_s']:,.0f}")
        for k, v in results.items()
    ]
    rows.append((f"bare, {only:,} updates alone", f"{only:,}", f"{results['bare_again']['update_only_ms']:.3f}", "-"))
    table = format_table(["loop", "updates", "ms / update (incl. env steps)", "env steps / s"], rows)
    table += f"\n\ndqnlab / bare time per update: **{ratio:.2f}x** (issue 15's target: <= 1.0x)"
    return {"suite": "minatar-cpu", "ratio": ratio, "results": results, "table": table, "overrides": overrides}
