"""The command-line surface a newcomer meets first: ``--help`` pages and what a sweep prints and leaves behind.

Each test runs the real CLI in a subprocess with its output piped, as a log file or CI would see it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT

# Keeps a trial short but valid whatever batch size the search draws (up to 512 transitions per gradient step).
TINY_TRIAL = [
    "env_steps=1200",
    "collector.learning_starts=600",
    "eval.episodes=2",
    "eval.every=0",
    "env.max_episode_steps=100",
    "progress_bar=false",
]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python <args>`` from the repo root; stdout and stderr are captured (not a terminal)."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run(
        [PYTHON, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_train_help_is_dqnlab_help() -> None:
    proc = run_cli("train.py", "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "dqnlab" in out
    assert "powered by Hydra" not in out  # Hydra's stock page
    for hint in ("README.md", "--cfg job", "--info", "--hydra-help", "env: ", "algo: ", "outputs/"):
        assert hint in out, f"{hint!r} missing from train.py --help"
    assert "_target_" not in out  # the whole composed config is not dumped: --cfg job shows it


def test_evaluate_help_prints_its_description_once() -> None:
    proc = run_cli("scripts/evaluate.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Rebuilds the env and the Q-network") == 1
    assert proc.stdout.count("Score a saved agent") == 1
    assert "episodes=10" in proc.stdout  # the keys are still listed


@pytest.mark.slow
def test_optuna_sweep_output_is_clean_when_piped(tmp_path: Path) -> None:
    proc = run_cli(
        "train.py",
        "hparams_search=cartpole_optuna",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweep.dir={tmp_path}",
        *TINY_TRIAL,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "alembic" not in out
    assert "\x1b[" not in out  # no colour codes in a pipe
    assert "A new study created" in out  # Optuna's own lines still show, through Hydra's log format
    assert (tmp_path / "optimization_results.yaml").is_file()


def test_optuna_search_space_fits_cartpole_defaults() -> None:
    # The search tunes the Polyak target CartPole uses, not hard-copy intervals (which break it).
    proc = run_cli("train.py", "hparams_search=cartpole_optuna", "--cfg", "hydra", "--package", "hydra.sweeper")
    assert proc.returncode == 0, proc.stderr
    assert "target.tau" in proc.stdout
    assert "target.interval" not in proc.stdout
    assert "choice(128, 256, 512)" in proc.stdout


@pytest.mark.slow
def test_submitit_local_sweep_runs_its_jobs_leaves_no_empty_dir_and_reports_them(tmp_path: Path) -> None:
    proc = run_cli("train.py", "-m", "seed=0,1", "hydra/launcher=submitit_local", "debug=smoke",
                   f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    seeds = sorted(json.loads(p.read_text())["seed"] for p in tmp_path.glob("*/summary.json"))
    assert seeds == [0, 1]
    submitit = tmp_path / ".submitit"
    assert list(submitit.glob("*/*_result.pkl"))  # the jobs really went through submitit
    empty = [str(p) for p in submitit.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not empty, f"empty folders left: {empty}"
    logs = sorted(submitit.glob("*/*_log.out"))
    assert len(logs) == 2, list(submitit.rglob("*"))
    # One result line per job in the terminal, naming its run dir and its log file.
    for job in (0, 1):
        line = next((ln for ln in out.splitlines() if f"#{job} seed={job} debug=smoke: eval/return_mean" in ln), None)
        assert line is not None, out
        assert str(tmp_path / str(job)) in line and any(str(log) in line for log in logs)


def test_help_into_a_closed_pipe_stops_quietly() -> None:
    """`python train.py --help | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    proc = subprocess.Popen([PYTHON, "train.py", "--help"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err  # 128 + SIGPIPE, as a Unix tool killed by it
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_scripts_heavy_imports_run_without_gc_and_only_its_own_process_freezes() -> None:
    import gc

    from dqnlab.startup import imports_without_gc

    frozen = gc.get_freeze_count()
    with imports_without_gc(freeze=False):  # as when a test calls a script's main(argv) in-process
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    # In the script's own process: what the imports created is frozen (later collections skip it), GC back on.
    code = (
        "import gc; from dqnlab.startup import imports_without_gc\n"
        "with imports_without_gc():\n    import torch\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 100_000)"
    )
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert proc.stdout.split() == ["True", "True"]
