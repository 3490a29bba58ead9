"""A checkpoint that cannot be written (a full disk, a file size limit): one ``error:`` line naming the file and
what to change, exit status 3, the checkpoint it was to replace intact, and the printed resume command works.

Two real failures, no mocks: a file size limit (``RLIMIT_FSIZE``, any user: the OS refuses the rest of the file)
and, where this process may mount one, a tmpfs that fills up (``ENOSPC``, as on a full disk).
"""

from __future__ import annotations

import os
import resource
import shlex
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dqnlab.errors import EXIT_TRAINING_ERROR
from tests.conftest import PYTHON, ROOT

# CartPole, checkpoints at 2,000 and 4,000 env steps and at the end (6,000). With the default replay each file holds
# the replay filled so far: about 0.39 MB at 4,000 env steps and 0.47 MB at 6,000.
RUN = ["env_steps=6000", "checkpoint.every=2000", "checkpoint.keep=1", "eval.episodes=2"]  # the default path


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _train(args: list[str], preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=240, env=_env(),
        preexec_fn=preexec,
    )  # fmt: skip


def _check_refusal(proc: subprocess.CompletedProcess, run_dir: Path, *causes: str) -> None:
    assert proc.returncode == EXIT_TRAINING_ERROR, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = errors
    assert f"could not write the checkpoint {run_dir / 'checkpoints' / 'last.ckpt'}" in line
    assert any(cause in line for cause in causes), line
    assert "checkpoint.save_buffer=false (the replay is" in line and "checkpoint.every" in line
    # The checkpoint it was to replace is intact: the one of env step 4,000; no temp file is left.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["callbacks"]["EnvStepper"]["env_steps"] == 4000
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert not (run_dir / "summary.json").exists()


def _resume_as_printed(line: str, run_dir: Path) -> None:
    cmd = line.split("then resume: ", 1)[1].strip()
    args = shlex.split(cmd)
    assert args[:2] == ["python", "train.py"] and f"hydra.run.dir={run_dir}" in args
    proc = _train([*args[2:], "progress_bar=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"env_steps": 6000' in (run_dir / "summary.json").read_text()


def test_a_file_size_limit_mid_run_is_one_error_line_and_the_last_checkpoint_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"

    def limit() -> None:  # the 4,000-step checkpoint fits, the final one does not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (430_000, 430_000))

    proc = _train([*RUN, f"hydra.run.dir={run_dir}"], preexec=limit)
    # EFBIG comes from torch's writer (which says only that the write fell short) or from the final flush
    _check_refusal(proc, run_dir, "the file system took only part of it", "File too large, errno 27")
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    _resume_as_printed(line, run_dir)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the file size limit test covers the same path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_mid_run_is_one_error_line_naming_the_file(small_tmpfs: Path) -> None:
    run_dir = small_tmpfs / "run"
    proc = _train([*RUN, "checkpoint.keep=-1", f"hydra.run.dir={run_dir}"])
    # ENOSPC surfaces from the final flush (errno named) or inside torch's writer (which only says it fell short)
    _check_refusal(proc, run_dir, "No space left on device, errno 28", "the file system took only part of it")
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "MiB free there" in line
