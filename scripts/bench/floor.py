"""The ``update-floor`` suite: what one MLP update costs on this CPU, and how much of it is arithmetic.

    python scripts/benchmark.py update-floor                         # Acrobot's preset: 256-256 at batch 128
    python scripts/benchmark.py update-floor env=mountaincar         # any override of the composed config

It answers "how fast can a run with this network, batch and number of updates be here": on random data of
the env's shapes it times, at one and at two intra-op threads, (1) only the matrix products of one
one-step update (online forward, target forward, the backward products; bias adds and ReLUs fused in as
``addmm``), in float32 and in bfloat16, and (2) dqnlab's hand-written update (``mlp_td_grads``: loss, TD
targets and every gradient) with a fused Adam step. Row (1) in float32 is the floor of any float32
framework doing the same updates; times the run's number of updates, it is the least a run can take.
bfloat16 is timed to show what lower precision would buy; dqnlab does not use it (its Q-values keep
float32 resolution).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import torch

from .common import compose, format_table


def _median_us(fn: Callable[[], object], reps: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time of ``reps`` calls, in microseconds, after a warm-up."""
    for _ in range(max(reps // 3, 1)):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps * 1e6)
    return sorted(times)[rounds // 2]


def _matmuls(sizes: list[int], batch: int, dtype: torch.dtype) -> tuple[Callable[[], object], float]:
    """The matrix products of one update of an MLP with layer ``sizes``, and their FLOPs."""
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(o, i, generator=gen).to(dtype) for i, o in itertools.pairwise(sizes)]
    bs = [torch.randn(o, generator=gen).to(dtype) for o in sizes[1:]]
    x, nxt = (torch.randn(batch, sizes[0], generator=gen).to(dtype) for _ in range(2))

    def forward(h: torch.Tensor) -> list[torch.Tensor]:
        acts = [h]
        for k, (w, b) in enumerate(zip(ws, bs)):
            h = torch.addmm(b, h, w.t())
            acts.append(h.relu_() if k < len(ws) - 1 else h)
        return acts

    def update() -> None:
        acts = forward(x)
        g = acts[-1] - forward(nxt)[-1]  # stands in for the TD error's gradient: same shape, same products
        for k in range(len(ws) - 1, -1, -1):
            g.t().mm(acts[k])  # weight gradient
            if k:
                g = g.mm(ws[k])  # gradient of the layer's input (no ReLU mask: it costs no product)

    macs = sum(i * o for i, o in itertools.pairwise(sizes))
    # 2 forwards + weight gradients of every layer + input gradients of all but the first, 2 FLOPs a MAC.
    flops = 2 * batch * (3 * macs + macs - sizes[0] * sizes[1])
    return update, flops


def _dqnlab_update(obs_dim: int, actions: int, hidden: list[int], batch: int) -> Callable[[], object]:
    """The hand-written one-step update of dqnlab (Huber) plus a fused Adam step, on random data."""
    from dqnlab.learn.fast.mlp_update import mlp_td_grads, plain_relu_layers
    from dqnlab.learn.fast.optim_step import fast_step
    from dqnlab.learn.networks import MLP

    torch.manual_seed(0)
    online, target = MLP((obs_dim,), actions, hidden), MLP((obs_dim,), actions, hidden)
    layers_on, layers_tg = plain_relu_layers(online), plain_relu_layers(target)
    params = list(online.parameters())
    step = fast_step(torch.optim.Adam(params, lr=1e-4, fused=True))  # the step DQNModule takes
    obs, nxt = torch.randn(batch, obs_dim), torch.randn(batch, obs_dim)
    acts, rewards = torch.randint(actions, (batch,)), -torch.ones(batch)
    term, disc = torch.zeros(batch, dtype=torch.bool), torch.full((batch,), 0.99)

    def update() -> None:
        out = mlp_td_grads(layers_on, layers_tg, obs, acts, rewards, nxt, term, disc, None, "huber", False)
        for p, g in zip(params, out.grads, strict=True):
            p.grad = g
        step()

    return update


def suite_update_floor(args: Any) -> dict:
    """Time the update's matrix products and dqnlab's update for the composed config's MLP and batch."""
    import gymnasium as gym

    cfg = compose(["env=acrobot", *args.overrides])
    env = gym.make(cfg.env.id)
    obs_dim, num_actions = int(env.observation_space.shape[0]), int(env.action_space.n)
    env.close()
    hidden, batch = [int(h) for h in cfg.network.hidden_sizes], int(cfg.algo.batch_size)
    sizes = [obs_dim, *hidden, num_actions]
    reps = 20 if args.quick else 1000
    before = torch.get_num_threads()
    rows, results = [], []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
                fn, flops = _matmuls(sizes, batch, dtype)
                us = _median_us(fn, reps)
                gflops = flops / us / 1e3
                results.append({"what": "matmuls", "dtype": name, "threads": threads, "us": us, "gflops": gflops})
                rows.append((f"the update's matrix products, {name}", threads, f"{us:.0f}", f"{gflops:.0f}"))
            us = _median_us(_dqnlab_update(obs_dim, num_actions, hidden, batch), reps)
            results.append({"what": "dqnlab update", "dtype": "float32", "threads": threads, "us": us})
            rows.append(("dqnlab's update (mlp_td_grads + fused Adam), float32", threads, f"{us:.0f}", ""))
    finally:
        torch.set_num_threads(before)
    head = f"{cfg.env.id}: MLP {'-'.join(map(str, sizes))}, batch {batch}, one-step Huber targets, random data"
    table = head + "\n\n" + format_table(["what", "threads", "us / update (median of 5)", "GFLOP/s"], rows)
    return {"suite": "update-floor", "sizes": sizes, "batch": batch, "results": results, "table": table}
