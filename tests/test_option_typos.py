"""A misspelled config group option, or a scalar where a list belongs, gets dqnlab's one error line with the fix
(not Hydra's dozen lines of search paths, nor a TypeError traceback)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT

CASES = [
    ("env=cartpol", "did you mean env=cartpole?"),
    ("network=mpl", "did you mean network=mlp?"),
    ("algo=ddqn", "did you mean algo=dqn?"),
    ("optimizer=sgd", "the options are adam, adamw, rmsprop"),
    ("env=CartPole-v1", "did you mean env=cartpole? For any gymnasium id: env=gym env.id=CartPole-v1"),
    ("logger=[csv,wandbb]", "did you mean logger=wandb?"),
    # Hydra's hint, +logger.wandb.mode, would add a key no logger reads (also on a resume of a W&B run).
    ("logger.wandb.mode=offline", "this command's loggers are csv and wandb is not one of them"),
    # A group that is none by default: Hydra's +reset.every would add a node without its _target_.
    ("reset.every=100", "reset.every is a setting of the reset group, which this command does not choose"),
    ("augment.pad=2", "(none by default): add augment=drq"),
    (
        "network.hidden_sizes=64",
        "network.hidden_sizes=64 must be a list of layer widths: e.g. network.hidden_sizes=[64,64]",
    ),
]


@pytest.mark.parametrize(("override", "fix"), CASES, ids=[c[0] for c in CASES])
def test_one_error_line_with_the_fix(override: str, fix: str, tmp_path: Path) -> None:
    cmd = [PYTHON, "train.py", override, "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert fix in errors[0] and "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["env.id=Taxi-v3", "env.id=Pendulum-v1"])
def test_an_env_refused_once_built_leaves_no_run_dir(override: str, tmp_path: Path) -> None:
    # Taxi-v3 is gone from gymnasium (a close match is named); Pendulum's actions are continuous. (FrozenLake, once
    # refused for its Discrete observations, now trains one-hot encoded: tests/test_own_env.py.)
    cmd = [PYTHON, "train.py", "env=gym", override, "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()
