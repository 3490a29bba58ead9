"""Files users already have keep working: a checkpoint and an agent file written before the package had folders.

Their configs name the flat module paths of that time (``dqnlab.networks.MLP``, ``dqnlab.envs.make_vector_env``);
the loaders map them to today's paths (``dqnlab/legacy.py``). ``tests/fixtures/legacy_v0/README.md`` says how the
files were made.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "legacy_v0"
# What `scripts/evaluate.py <file> episodes=3` printed for both files on the commit that wrote them.
RETURNS_THEN = [9.0, 9.0, 8.0]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["cartpole_2500.ckpt", "cartpole_2500.safetensors"])
def test_old_files_play_as_they_did(name: str) -> None:
    proc = _run("scripts/evaluate.py", str(FIXTURES / name), "episodes=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["returns"] == RETURNS_THEN
    assert result["env_steps"] == 2500


def test_old_checkpoint_exports_to_an_agent_file_that_plays(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes((FIXTURES / "cartpole_2500.ckpt").read_bytes())
    proc = _run("scripts/export.py", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    agent = json.loads(proc.stdout.strip().splitlines()[-1])["agent_file"]
    proc = _run("scripts/evaluate.py", agent, "episodes=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["returns"] == RETURNS_THEN


def test_old_checkpoint_resumes_with_its_own_config(tmp_path: Path) -> None:
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes((FIXTURES / "cartpole_2500.ckpt").read_bytes())
    proc = _run("train.py", f"ckpt_path={ckpt}", "env_steps=3000", f"hydra.run.dir={tmp_path / 'run'}",
                "progress_bar=false")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval/episodes"] == 2  # eval.episodes=2: the old run's, not today's default
    # Its buffer was not saved (checkpoint.save_buffer=false): the resume refills 2,000 env steps, extra ones that
    # the budget does not count.
    assert summary["env_steps"] == 3000 and summary["refill_env_steps"] == 2000
