"""The scripts a run points to check their arguments as train.py does: one ``error:`` line and exit status 2
(no usage block, no traceback), before they play, plot or write anything; and they say what they leave out."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import PYTHON, ROOT

AGENT = ROOT / "tests" / "fixtures" / "legacy_v0" / "cartpole_2500.safetensors"
CASES = [
    (["episodes=0"], "episodes=0 is out of range"),
    (["episodes=-3"], "episodes=-3 is out of range"),
    (["seed=-1"], "seed=-1 is out of range"),
    (["video=true", "video_fps=0"], "video_fps=0 is out of range"),
    (["epsilon=2"], "epsilon=2.0 is out of range: the random-action probability must be in [0.0, 1.0]"),
    (["num_envs=0"], "num_envs=0 is out of range"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_evaluate_refuses_out_of_range_numbers_in_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([PYTHON, "scripts/evaluate.py", str(AGENT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert (proc.returncode == 2 and errors == [f"error: {message}"]) or message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_plot_names_a_misspelled_metric_and_what_it_leaves_out(tmp_path) -> None:
    import shutil

    # A finished run, one that did not finish (no summary.json) and a job that failed before its first row.
    run = tmp_path / "sweep" / "0"
    proc = subprocess.run([PYTHON, "train.py", "debug=smoke", f"hydra.run.dir={run}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(run, tmp_path / "sweep" / "1")
    (tmp_path / "sweep" / "1" / "summary.json").unlink()
    (tmp_path / "sweep" / "2" / ".hydra").mkdir(parents=True)

    def plot(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "scripts/plot.py", str(tmp_path / "sweep"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    typo = plot("--metric", "eval/retrun_mean")
    assert typo.returncode == 2 and "did you mean --metric eval/return_mean?" in typo.stderr
    proc = plot()
    assert proc.returncode == 0, proc.stderr
    assert "sweep/2: no metrics.csv" in proc.stderr and "sweep/1: no summary.json" in proc.stderr

    def results(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "scripts/results.py", str(tmp_path / "sweep"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    typo = results("--metric", "eval/retrun_mean")
    assert typo.returncode == 2 and typo.stderr.count("error:") == 1
    assert "error: --metric eval/retrun_mean is in no run's summary.json: did you mean --metric eval/return_mean?" in (
        typo.stderr
    )
    proc = results()
    assert proc.returncode == 0, proc.stderr
    assert "sweep/2: no metrics.csv" in proc.stderr  # the failed job is named, not dropped


SCRIPT_CASES = [
    (["scripts/export.py", "nowhere"], "nowhere is not a file: pass a run dir (with checkpoints/last.ckpt)"),
    (["scripts/export.py"], "the following arguments are required: source"),
    (["scripts/plot.py", "nowhere"], "no metrics.csv under nowhere"),
    (["scripts/plot.py", ".", "--center", "median"], "argument --center: invalid choice: 'median'"),
    (["scripts/results.py", "nowhere"], "no metrics.csv under nowhere"),
    (["scripts/results.py", ".", "--reps", "0"], "argument --reps: 0 must be >= 1"),
    (["scripts/results.py", ".", "--draws", "many"], "argument --draws: invalid positive_int value: 'many'"),
    (["scripts/evaluate.py", str(AGENT), "episode=3"], "unknown setting 'episode=3'"),
    (["scripts/evaluate.py", "nowhere.ckpt"], "nowhere.ckpt is not a file"),
]


@pytest.mark.parametrize(("args", "message"), SCRIPT_CASES, ids=[" ".join(c[0]) for c in SCRIPT_CASES])
def test_every_script_refuses_bad_arguments_in_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([PYTHON, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1 and proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert "usage:" not in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""
