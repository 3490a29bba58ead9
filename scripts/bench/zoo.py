"""The ``zoo`` suite and its ``zoo-worker``: dqnlab's presets against SB3's DQN with RL Zoo's hyperparameters, each
run in a process of its own, scored by the same greedy final evaluation.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from .common import BENCHMARK, ROOT, ZOO_DQN, compose, format_table, sb3_dqn, sb3_zoo_model


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


def sb3_zoo_run(name: str, seed: int, env_steps: int, episodes: int, quick: bool) -> dict:
    """One SB3 DQN run with RL Zoo's hyperparameters, then the same final evaluation protocol as dqnlab's."""
    sb3_dqn()  # imported before the clock starts
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
        [sys.executable, str(BENCHMARK), "zoo-worker", "--envs", name, "--seeds", str(seed), *worker_args]
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
    from dqnlab.share.stats import bootstrap_ci

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
