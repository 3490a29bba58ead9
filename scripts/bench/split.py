"""The ``zoo-split`` suite: where a zoo run's time goes, per gradient step, in dqnlab and in Stable-Baselines3.

    python scripts/benchmark.py zoo-split env_steps=30000 --envs acrobot      # overrides before --envs
    python scripts/benchmark.py zoo-split env_steps=40000 --envs mountaincar

Both frameworks run in this process, one after the other, on the preset (dqnlab) and RL Zoo's hyperparameters
(SB3) of each env, for the composed ``env_steps``. ``time.perf_counter`` timers wrap the functions a gradient
step goes through (dqnlab: ``DQNModule.training_step``, ``DQNModule._update``, ``mlp_td_grads``,
``ReplayBuffer.draw``; SB3: ``DQN.train``, its replay buffer's ``sample``) and env stepping (dqnlab: the
collector's ``EnvStepper.step_until``; SB3: ``learn()`` outside ``train()``). The wrappers cost about a
microsecond a call; the numbers are sums over the run divided by its gradient steps.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch

from .common import compose, format_table, sb3_zoo_model


@contextlib.contextmanager
def _timed(owner: Any, name: str, totals: defaultdict[str, float], key: str) -> Iterator[None]:
    """Replace ``owner.name`` by a wrapper that adds each call's seconds to ``totals[key]``; restore it after."""
    original = getattr(owner, name)

    @functools.wraps(original)  # Lightning reads training_step's signature
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - t0

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _dqnlab_split(cfg: Any) -> dict[str, float]:
    """Seconds in each timed part of one dqnlab run of ``cfg``, its wall time and its gradient steps."""
    import dqnlab.learn.module as module
    from dqnlab.data.collect import EnvStepper
    from dqnlab.data.replay import ReplayBuffer
    from dqnlab.train import _quiet_lightning, build

    totals: defaultdict[str, float] = defaultdict(float)
    parts = [
        (module.DQNModule, "training_step", "update"),
        (module.DQNModule, "_update", "step"),
        (module, "mlp_td_grads", "grads"),  # module.py's own name for it: the one its update calls
        (ReplayBuffer, "draw", "draw"),
        (EnvStepper, "step_until", "env"),
    ]
    _quiet_lightning()
    with contextlib.ExitStack() as stack:
        for owner, name, key in parts:
            stack.enter_context(_timed(owner, name, totals, key))
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        built = build(cfg)
        built.trainer.fit(built.module)
        built.close()
        totals["wall"] = time.perf_counter() - t0
    totals["gradient_steps"] = built.trainer.global_step
    return dict(totals)


def _sb3_split(name: str, seed: int, env_steps: int, quick: bool) -> dict[str, float]:
    """Seconds in each timed part of one SB3 run with RL Zoo's hyperparameters, and its gradient steps."""
    model, env, _ = sb3_zoo_model(name, seed, quick)
    totals: defaultdict[str, float] = defaultdict(float)
    steps = [0]
    train = model.train

    def counted_train(gradient_steps: int, batch_size: int = 100) -> None:
        steps[0] += gradient_steps
        train(gradient_steps, batch_size)

    model.train = counted_train
    with _timed(model, "train", totals, "update"), _timed(model.replay_buffer, "sample", totals, "draw"):
        t0 = time.perf_counter()
        model.learn(total_timesteps=env_steps)
        totals["wall"] = time.perf_counter() - t0
    env.close()
    totals["env"] = totals["wall"] - totals["update"]  # collection, the rest of learn() outside train()
    totals["gradient_steps"] = steps[0]
    return dict(totals)


ROWS = (
    ("draw", "drawing the minibatch"),
    ("grads", "products, loss and gradients (`mlp_td_grads`; SB3: autograd)"),
    ("clip_adam", "clipping, the non-finite check and the Adam step"),
    ("update", "the whole update (dqnlab: `training_step`; SB3: `train()` per gradient step)"),
    ("env", "env stepping (dqnlab: the collector callback; SB3: `learn()` outside `train()`)"),
)


def suite_zoo_split(args: Any) -> dict:
    """Per env of ``--envs``: the time per gradient step of each timed part, dqnlab's preset and SB3's."""
    from omegaconf import open_dict

    names = args.env_names or ["mountaincar"]
    seed = (args.seeds or [0])[0]
    quick = ["env_steps=600", "collector.learning_starts=200", "buffer.capacity=2000", "eval.every=0"]
    quick += ["eval.episodes=2", "env.max_episode_steps=100", "~checkpoint"]
    results, header, columns = {}, ["per gradient step, us"], []
    for name in names:
        overrides = [f"env={name}", f"seed={seed}", "progress_bar=false", "logger=[]"]
        cfg = compose([*overrides, *(quick if args.quick else []), *args.overrides])
        with tempfile.TemporaryDirectory() as tmp, open_dict(cfg):
            cfg.paths.output_dir = tmp  # a fresh run dir: nothing there to resume from
            dq = _dqnlab_split(cfg)
        dq["clip_adam"] = dq.pop("step") - dq["grads"]
        sb3 = _sb3_split(name, seed, int(cfg.env_steps), args.quick)
        results[name] = {"env_steps": int(cfg.env_steps), "dqnlab": dq, "sb3": sb3}
        for fw, t in (("dqnlab", dq), ("SB3", sb3)):
            header.append(f"{cfg.env.id} {fw}")
            columns.append({k: 1e6 * t[k] / max(t["gradient_steps"], 1) for k, _ in ROWS if k in t})
    rows = [(label, *(f"{c[k]:,.0f}" if k in c else "" for c in columns)) for k, label in ROWS]
    table = (
        format_table(header, rows)
        + f"\n\nseed {seed}; "
        + ", ".join(
            f"{n}: {r['env_steps']:,} env steps, {r['dqnlab']['gradient_steps']:,} / {r['sb3']['gradient_steps']:,} "
            "gradient steps (dqnlab / SB3)"
            for n, r in results.items()
        )
    )
    return {"suite": "zoo-split", "seed": seed, "results": results, "table": table}
