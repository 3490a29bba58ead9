"""The real entry point end to end: compose -> run(cfg) -> summary.json, through a real Lightning Trainer."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from dqnlab.run.report import TIMING_KEYS
from dqnlab.train import build, run
from tests.conftest import PYTHON, ROOT

SUMMARY_KEYS = {
    "eval/return_mean",
    "eval/return_std",
    "eval/episodes",
    "env_steps",
    "gradient_steps",
    "wall_time_s",
    "env_steps_per_s",
    "seed",
}


def test_smoke_run_writes_summary_and_metrics(make_cfg, tmp_path):
    summary = run(make_cfg("debug=smoke"))
    assert summary.keys() >= SUMMARY_KEYS
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary  # JSON keeps floats exactly
    (segment,) = summary["provenance"]  # one segment: where and with what it ran
    assert segment["started_utc"] <= segment["ended_utc"] and segment["torch_threads"] == torch.get_num_threads()
    assert summary["env_steps"] == 400
    # (400 - 100 learning starts) / 4 env steps per update = 75 gradient steps
    assert summary["gradient_steps"] == 75
    assert summary["eval/episodes"] == 2
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    names = set(rows[0])
    for name in (
        "train/loss",
        "train/q_mean",
        "rollout/episode_return",
        "rollout/epsilon",
        "eval/return_mean",
        "perf/env_steps_per_s",
        "env_steps",
    ):
        assert name in names
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] == 400  # x axis is env steps


def test_same_seed_same_summary(make_cfg, tmp_path):
    a = run(make_cfg("debug=smoke", "seed=3", f"paths.output_dir={tmp_path / 'a'}"))
    b = run(make_cfg("debug=smoke", "seed=3", f"paths.output_dir={tmp_path / 'b'}"))
    c = run(make_cfg("debug=smoke", "seed=4", "env_steps=1000", f"paths.output_dir={tmp_path / 'c'}"))
    timing = TIMING_KEYS
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    ma = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    mb = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    loss_col = ma[0].split(",").index("train/loss")
    assert [r.split(",")[loss_col] for r in ma] == [r.split(",")[loss_col] for r in mb]
    assert c["seed"] == 4


def test_a_wall_clock_limit_ends_training_early_and_still_evaluates(make_cfg, tmp_path):
    # scripts/gpu_session.sh's Pong check trains for a fixed wall clock (Lightning's max_time).
    summary = run(make_cfg("debug=smoke", "env_steps=10000000", "+trainer.max_time=00:00:00:02"))
    assert 100 < summary["env_steps"] < 10_000_000 and summary["gradient_steps"] > 0
    assert summary["eval/episodes"] == 2  # the final evaluation ran
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    last_train = [r for r in rows if r["perf/wall_s"]][-1]
    assert float(last_train["env_steps"]) == summary["env_steps"]  # a closing row at the step training stopped
    assert rows[-1]["eval/return_mean"] and float(rows[-1]["env_steps"]) == summary["env_steps"]


class SyncRecorder(pl.Callback):
    """After each step, record whether the target network equals the online one."""

    def __init__(self):
        self.equal_after_step: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        same = all(torch.equal(a, b) for a, b in zip(pl_module.q_net.parameters(), pl_module.target_net.parameters()))
        self.equal_after_step.append(same)


@pytest.mark.parametrize("interval", [1, 7])
def test_hard_target_sync_cadence(make_cfg, interval):
    parts = build(make_cfg("debug=smoke", f"target.interval={interval}", "target.tau=1.0"))
    rec = SyncRecorder()
    parts.trainer.callbacks.insert(parts.trainer.callbacks.index(parts.evaluator), rec)  # after the sync hook
    parts.trainer.fit(parts.module)
    parts.close()
    n = len(rec.equal_after_step)
    assert n == 75
    expected = [(step + 1) % interval == 0 for step in range(n)]  # synced after gradient steps k*interval
    assert rec.equal_after_step == expected


def test_polyak_target_moves_by_tau(make_cfg):
    parts = build(make_cfg("debug=smoke", "target=polyak", "target.tau=0.5", "target.interval=1"))
    sync = next(c for c in parts.trainer.callbacks if type(c).__name__ == "TargetNetworkSync")
    before_t = [p.clone() for p in parts.module.target_net.parameters()]
    with torch.no_grad():
        for p in parts.module.q_net.parameters():
            p.add_(1.0)
    sync.sync(parts.module)
    for b, t, o in zip(before_t, parts.module.target_net.parameters(), parts.module.q_net.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * o)
    parts.close()


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal_sets_how_this_thread_treats_subnormal_floats(make_cfg, flush):
    subnormal = torch.tensor(1e-40)  # below float32's smallest normal, 1.18e-38
    build(make_cfg("debug=smoke", "~checkpoint", f"flush_denormal={str(flush).lower()}")).close()
    assert bool((subnormal * 1.0) == 0) is flush  # flushed to 0, or kept as the subnormal it is


class DueRecorder(pl.Callback):
    def __init__(self, collector):
        self.collector = collector
        self.rows: list[tuple[int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.rows.append((trainer.global_step, self.collector.env_steps))


def test_replay_ratio_is_exact_whatever_num_envs(make_cfg):
    # 3 envs, 5 env steps then 2 updates per phase: 2/5 update per env step
    parts = build(
        make_cfg(
            "debug=smoke",
            "env.num_envs=3",
            "collector.train_freq=5",
            "collector.gradient_steps=2",
            "collector.learning_starts=30",
            "env_steps=600",
        )
    )
    rec = DueRecorder(parts.collector)
    parts.trainer.callbacks.append(rec)
    parts.trainer.fit(parts.module)
    parts.close()
    assert parts.trainer.global_step == (600 - 30) // 5 * 2
    for step, env_steps in rec.rows:  # step = updates done so far
        phase = (step - 1) // 2
        due = 30 + (phase + 1) * 5
        assert due <= env_steps < due + 3  # never behind, never ahead by a whole vector step
    assert (rec.rows[-1][1] - 30) / rec.rows[-1][0] == pytest.approx(5 / 2, rel=0.02)


def test_epsilon_follows_the_env_step_schedule(make_cfg):
    parts = build(
        make_cfg("debug=smoke", "env_steps=1000", "collector.exploration_fraction=0.5", "collector.epsilon_end=0.1")
    )
    c = parts.collector
    for steps, eps in [(0, 1.0), (250, 0.55), (500, 0.1), (900, 0.1)]:
        c.env_steps = steps
        assert c.epsilon == pytest.approx(eps)
    parts.close()
    # A ramp in env steps replaces the fraction and does not follow env_steps.
    for env_steps in (1000, 4000):
        parts = build(make_cfg("debug=smoke", f"env_steps={env_steps}", "collector.exploration_steps=200"))
        assert parts.collector.epsilon_decay_env_steps == 200
        parts.close()


@pytest.mark.slow
def test_default_config_learns_cartpole(tmp_path):
    """`python train.py` as a new user types it: the defaults, progress bar included, solve CartPole."""
    proc = subprocess.run(
        [PYTHON, "train.py", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval/episodes"] >= 20
    assert summary["eval/return_mean"] >= 475, summary


@pytest.mark.slow
def test_cli_multirun_writes_one_summary_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [PYTHON, "train.py", "-m", "seed=0,1", "debug=smoke", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = sorted(Path(sweep).glob("*/summary.json"))
    assert len(summaries) == 2
    seeds = sorted(json.loads(p.read_text())["seed"] for p in summaries)
    assert seeds == [0, 1]
