"""scripts/evaluate.py checks its numbers as train.py does: one error line and exit status 2, before playing."""

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
