"""Nothing lost: atomic files, corrupt checkpoints refused and left untouched, SIGKILL then resume, non-finite steps.

The bad-input half of the robustness work is tested in ``tests/test_validation.py``; SIGINT/SIGTERM (save and
stop), the atomic checkpoint writer and W&B without network in ``tests/test_workflow.py``. Everything here runs
for real: ``python train.py`` subprocesses killed with real signals, real files cut in half, a learning rate that
really overflows the network, an env that really emits NaN observations.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control import CartPoleEnv

from dqnlab import io as dqn_io
from dqnlab import train as train_module
from dqnlab.errors import EXIT_CONFIG_ERROR, EXIT_TRAINING_ERROR, ConfigError, TrainingError
from dqnlab.learn.module import DQNModule
from dqnlab.run.ckpt_file import check_checkpoint
from dqnlab.run.report import TIMING_KEYS
from dqnlab.train import run
from dqnlab.validate import validate_config
from tests.conftest import PYTHON, ROOT, compose_cfg


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("HYDRA_FULL_ERROR", None)  # the user-facing behaviour: one message, no traceback
    return env


def _train(*overrides: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _all_finite(state: dict[str, torch.Tensor], prefixes: tuple[str, ...] = ("q_net.", "target_net.")) -> bool:
    tensors = [v for k, v in state.items() if k.startswith(prefixes) and torch.is_floating_point(v)]
    return bool(tensors) and all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished smoke run with periodic checkpoints (its files are only read, or copied before changing)."""
    out = tmp_path_factory.mktemp("finished")
    run(compose_cfg(["debug=smoke", "seed=1", "checkpoint.every=100"], out))
    return out


# ---------------------------------------------------------------------------------------------- atomic files
# The checkpoint writer's own test: tests/test_workflow.py::test_atomic_checkpoint_write_never_leaves_a_partial_file
def test_summary_json_is_written_atomically(finished_run, tmp_path):
    """A write of summary.json that fails half-way (file size limit: a full disk) leaves the old file whole."""
    assert train_module.atomic_write_json is dqn_io.atomic_write_json  # run() writes summary.json through it
    summary = tmp_path / "summary.json"
    summary.write_bytes((finished_run / "summary.json").read_bytes())
    before = summary.read_bytes()
    # The child may write 4 KiB per file: the new summary (40 KiB) fails in the middle of its temp file.
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        from dqnlab.io import atomic_write_json
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            atomic_write_json({str(summary)!r}, {{f"eval/metric_{{i}}": float(i) for i in range(2000)}})
        except OSError as e:
            print("write failed:", e)
            sys.exit(0)
        sys.exit(1)
        """
    )
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    assert proc.returncode == 0 and "write failed" in proc.stdout, proc.stdout + proc.stderr
    assert summary.read_bytes() == before  # the old summary, byte for byte
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # the temp file was removed
    assert not [p for p in finished_run.iterdir() if p.name.endswith(".tmp")]  # none left by the real run either


# ---------------------------------------------------------------------------------------------- corrupt checkpoints
def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _random_bytes(data: bytes) -> bytes:
    return random.Random(7).randbytes(len(data))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_truncated, _random_bytes], ids=["truncated_to_half", "random_bytes"])
def test_corrupt_checkpoint_is_refused_clearly_and_left_untouched(finished_run, tmp_path, damage):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(damage((finished_run / "checkpoints" / "last.ckpt").read_bytes()))
    before = bad.read_bytes()
    run_dir = tmp_path / "run"
    proc = _train("debug=smoke", f"ckpt_path={bad}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr[-3000:]
    assert f"error: ckpt_path={bad} is not a torch checkpoint, or is truncated or corrupt" in proc.stderr
    assert "drop ckpt_path" in proc.stderr  # the fix
    assert "Traceback" not in proc.stdout + proc.stderr
    assert bad.read_bytes() == before
    assert not run_dir.exists()  # refused before Hydra created the run dir


@pytest.mark.slow
def test_corrupt_last_checkpoint_is_an_error_not_a_fresh_start(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("metrics.csv", "summary.json"):
        (run_dir / name).write_bytes((finished_run / name).read_bytes())
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir()
    for name in ("env_steps_300.ckpt", "last.ckpt"):
        (ckpts / name).write_bytes((finished_run / "checkpoints" / name).read_bytes())
    last = ckpts / "last.ckpt"
    last.write_bytes(_truncated(last.read_bytes()))
    checkpoints_before, run_files_before = _snapshot(ckpts), _snapshot(run_dir)

    proc = _train("debug=smoke", "seed=1", "checkpoint.every=100", f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr[-3000:]
    err = proc.stderr
    assert f"error: ckpt_path=last ({last}) is not a torch checkpoint, or is truncated or corrupt" in err
    assert f"ckpt_path={ckpts / 'env_steps_300.ckpt'}" in err  # the fix: the run's readable checkpoint
    assert f"move {last} away to start the run afresh" in err
    assert "Traceback" not in proc.stdout + err
    assert "starting fresh" not in proc.stdout + err
    assert _snapshot(ckpts) == checkpoints_before  # nothing overwritten, nothing new, byte for byte
    assert {k: v for k, v in _snapshot(run_dir).items() if k != "train.log"} == {
        k: v for k, v in run_files_before.items() if k != "train.log"
    }  # metrics.csv and summary.json untouched (Hydra's own train.log aside)


# ---------------------------------------------------------------------------------------------- SIGKILL, then resume
# Small enough for a few seconds of training, long enough that every kill lands mid-run; one update per env step.
KILLED = [
    "seed=11",
    "env_steps=3500",
    "checkpoint.every=500",
    "collector.learning_starts=200",
    "collector.train_freq=1",
    "collector.log_every=100",
    "algo.batch_size=32",
    "buffer.capacity=5000",
    "eval.every=0",
    "eval.episodes=2",
    "env.max_episode_steps=200",
    "progress_bar=false",
]
LOG_EVERY, LEARNING_STARTS, ENV_STEPS = 100, 200, 3500
# At each multiple of checkpoint.every env steps but the last (last.ckpt is written there).
# best.ckpt: the network CartPole's preset keeps (eval.keep_best)
CHECKPOINTS = ["best.ckpt"] + [f"env_steps_{n}.ckpt" for n in range(500, ENV_STEPS, 500)] + ["last.ckpt"]


def _untimed(row: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in row.items() if not k.startswith("perf/")}


def _checkpoint_times(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("env_steps_*.ckpt")} if folder.is_dir() else {}


def _wait_for_a_new_checkpoint(proc: subprocess.Popen, folder: Path, log_path: Path, timeout: float = 90) -> float:
    """Block until ``proc`` writes (or rewrites) an ``env_steps_N.ckpt``; return when it was seen."""
    before = _checkpoint_times(folder)
    deadline = time.monotonic() + timeout
    while _checkpoint_times(folder).items() <= before.items():
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.01)
    return time.monotonic()


def _plant_half_written_checkpoint(folder: Path) -> None:
    """A real writer killed mid-write: a child streams half a checkpoint through atomic_open, then SIGKILLs itself."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from dqnlab.io import atomic_open
        with atomic_open({str(folder / "last.ckpt")!r}) as f:
            f.write(os.urandom(200_000))
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([PYTHON, "-c", code], timeout=60, env=_env())
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path):
    """Killed three times at random moments, resumed with the same command each time: nothing is lost."""
    rng = random.Random(20240611)  # the delays are random but the test is reproducible
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    command = [PYTHON, "train.py", *KILLED, f"hydra.run.dir={run_dir}", "ckpt_path=last"]  # a requeueable job
    interval = None  # seconds between two checkpoints on this machine, measured in the first trial
    for trial in range(3):
        log_path = tmp_path / f"trial_{trial}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=_env())
            written = _wait_for_a_new_checkpoint(proc, ckpts, log_path)  # training is under way
            if interval is None:
                interval = _wait_for_a_new_checkpoint(proc, ckpts, log_path) - written
            # Anywhere in the first half of a checkpoint interval (mid-update, mid-logging, mid-write): each trial
            # then ends before the run does, whatever the machine's speed.
            time.sleep(rng.uniform(0.0, 0.5) * interval)
            proc.kill()  # SIGKILL: no handler, no finally, no flush
            assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before the kill: lengthen it"
        assert not (run_dir / "summary.json").exists()
        assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] > 0
    _plant_half_written_checkpoint(ckpts)
    assert [p for p in ckpts.iterdir() if p.name.endswith(".tmp")]

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr

    # summary.json is there and the run did its whole budget.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == ENV_STEPS and "eval/return_mean" in summary
    # No temp file left over, and every file under a final name is a whole checkpoint.
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(CHECKPOINTS)
    for path in ckpts.iterdir():  # best.ckpt is whole too, and refused for resuming as it should be
        problems = check_checkpoint(str(path))
        assert problems == [] or (path.name == "best.ckpt" and "eval.keep_best kept" in problems[0]), path
    # metrics.csv: every row from the first update to the end, none twice, no gap beyond the log interval.
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for column in ("rollout/epsilon", "train/loss", "eval/return_mean"):
        steps = [int(r["step"]) for r in rows if r[column]]
        assert len(steps) == len(set(steps)), f"{column} logged twice at one env step: {steps}"
        assert steps == sorted(steps)
    steps = [int(r["step"]) for r in rows if r["rollout/epsilon"]]
    assert steps[0] <= LEARNING_STARTS + LOG_EVERY and steps[-1] == ENV_STEPS
    assert max(b - a for a, b in itertools.pairwise(steps)) <= LOG_EVERY
    assert [int(r["step"]) for r in rows if r["eval/return_mean"]] == [ENV_STEPS]

    # And it is the very history of the same run never killed (exact resume): only the timings differ.
    uninterrupted = run(compose_cfg(KILLED, tmp_path / "uninterrupted"))
    timing = TIMING_KEYS
    assert {k: v for k, v in summary.items() if k not in timing} == pytest.approx(
        {k: v for k, v in uninterrupted.items() if k not in timing}
    )
    with (tmp_path / "uninterrupted" / "metrics.csv").open(newline="") as f:
        reference = list(csv.DictReader(f))
    assert [_untimed(r) for r in rows] == [_untimed(r) for r in reference]


def test_killed_after_the_final_checkpoint_resume_writes_the_same_summary(finished_run, tmp_path):
    """A kill between the final last.ckpt and summary.json (or a requeued finished job): same summary, same rows."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "summary.json").unlink()
    metrics_before = (run_dir / "metrics.csv").read_text()
    run(compose_cfg(["debug=smoke", "seed=1", "checkpoint.every=100", "ckpt_path=last"], run_dir))
    timing = TIMING_KEYS
    summary, original = (json.loads((d / "summary.json").read_text()) for d in (run_dir, finished_run))
    assert {k: v for k, v in summary.items() if k not in timing} == {
        k: v for k, v in original.items() if k not in timing
    }  # eval/return_mean and friends included: the final evaluation is in the final last.ckpt
    assert (run_dir / "metrics.csv").read_text() == metrics_before


# ---------------------------------------------------------------------------------------------- non-finite training
def test_nonfinite_knob_is_validated(make_cfg):
    with pytest.raises(ConfigError, match="nonfinite='ignore' is not known: use one of error, warn"):
        validate_config(make_cfg("nonfinite=ignore"))


@pytest.mark.slow
def test_cli_nonfinite_loss_saves_a_finite_checkpoint_and_stops_naming_the_env_step(tmp_path):
    # lr 1e30: the first Adam step puts the weights near 1e30, so every later Q-value overflows to inf/NaN.
    run_dir = tmp_path / "run"
    proc = _train("debug=smoke", "optimizer.lr=1e30", f"hydra.run.dir={run_dir}")
    assert proc.returncode == EXIT_TRAINING_ERROR, proc.stderr[-3000:]
    err = proc.stderr
    # debug=smoke: 100 random env steps, then one gradient step per 4 env steps; gradient step 1 is the first bad.
    assert "error: non-finite loss, Q-value or gradient at env step 108 (gradient step 1)" in err
    saved = run_dir / "checkpoints" / "nonfinite.ckpt"
    assert f"Saved the last finite state to {saved}" in err
    assert "optimizer.lr (now 1e+30)" in err and "nonfinite=warn" in err  # what to try
    assert "Traceback" not in proc.stdout + err
    assert not (run_dir / "summary.json").exists()
    ckpt = torch.load(saved, map_location="cpu", weights_only=False)
    assert _all_finite(ckpt["state_dict"])
    moments = [t for s in ckpt["optimizer_states"][0]["state"].values() for t in s.values()]
    assert moments and all(bool(torch.isfinite(t).all()) for t in moments)
    assert check_checkpoint(str(saved)) == []  # a checkpoint a run can resume from
    assert not [p for p in saved.parent.iterdir() if p.name.endswith(".tmp")]


def test_nonfinite_error_with_a_non_fused_optimizer(make_cfg, tmp_path):
    # RMSprop has no fused kernel to skip the update: the gradients are zeroed on the device instead.
    with pytest.raises(TrainingError, match=r"at env step 108 \(gradient step 1\)"):
        run(make_cfg("debug=smoke", "optimizer=rmsprop", "optimizer.lr=1e30"))
    ckpt = torch.load(tmp_path / "checkpoints" / "nonfinite.ckpt", map_location="cpu", weights_only=False)
    assert _all_finite(ckpt["state_dict"])


class _BrokenSensor(gym.ObservationWrapper):
    """CartPole whose observation is all NaN at every ``period``-th step: a sensor that drops out."""

    def __init__(self, env: gym.Env, period: int = 37) -> None:
        super().__init__(env)
        self.period, self.t = period, 0

    def observation(self, observation: np.ndarray) -> np.ndarray:
        self.t += 1
        return np.full_like(observation, np.nan) if self.t % self.period == 0 else observation


def _broken_sensor_cartpole(**kwargs: object) -> gym.Env:
    return _BrokenSensor(CartPoleEnv(**kwargs))


def test_nonfinite_warn_skips_those_updates_and_goes_on(make_cfg, tmp_path, caplog):
    gym.register("BrokenSensorCartPole-v0", entry_point=_broken_sensor_cartpole, max_episode_steps=200)
    try:
        with caplog.at_level(logging.WARNING, logger="dqnlab.run.nonfinite"):
            summary = run(make_cfg("debug=smoke", "env=gym", "env.id=BrokenSensorCartPole-v0", "nonfinite=warn"))
    finally:
        gym.registry.pop("BrokenSensorCartPole-v0")
    assert summary["env_steps"] == 400
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert warnings and "at env step" in warnings[0] and "nonfinite=warn" in warnings[0]
    with (tmp_path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    skipped = sum(float(r["train/nonfinite_steps"]) for r in rows if r.get("train/nonfinite_steps"))
    assert 0 < skipped < summary["gradient_steps"]  # batches holding a NaN observation only
    assert all(math.isfinite(float(r["train/loss"])) for r in rows if r["train/loss"])  # means of finite steps
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert _all_finite(last["state_dict"])


def test_training_step_makes_no_host_sync(make_cfg, monkeypatch):
    """The non-finite check must not read the device: no item/bool/float/tolist/cpu in a gradient step."""
    parts = train_module.build(make_cfg("debug=smoke", "~checkpoint"))
    calls: list[str] = []
    inside = [False]

    def spy(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if inside[0]:
                calls.append(name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"):
        spy(name)
    real_step = DQNModule.training_step

    def watched_step(self, dataloader_iter):
        inside[0] = True
        try:
            return real_step(self, dataloader_iter)
        finally:
            inside[0] = False

    monkeypatch.setattr(DQNModule, "training_step", watched_step)
    try:
        parts.trainer.fit(parts.module)
    finally:
        parts.close()
    assert parts.trainer.global_step == 75
    assert calls == []
