"""Under load: parallel jobs on one machine share its memory through reservations, and refuse at start.

The jobs are real processes: helpers that build a real replay buffer (and so take a real reservation) and hold it
until told to exit or killed, and a real ``python train.py``. The memory they share is a real limit,
``DQNLAB_MEMORY_LIMIT``, sized so that two buffers fit and three do not; the reservations live in a temp dir
(``DQNLAB_RESERVATIONS_DIR``), apart from any other dqnlab job on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from dqnlab.data.memory import (
    MEMORY_LIMIT_ENV,
    RESERVATIONS_ENV,
    BufferTooLargeError,
    available_memory_bytes,
    memory_for_a_new_buffer,
)
from dqnlab.data.replay import ReplayBuffer
from dqnlab.errors import EXIT_CONFIG_ERROR
from tests.conftest import PYTHON, ROOT, compose_cfg

# A job's buffer: what `debug=smoke` builds for CartPole (float32 observations of 4 numbers).
_SMOKE = compose_cfg(["debug=smoke"], Path("/tmp"))
CAPACITY, NUM_ENVS = int(_SMOKE.buffer.capacity), int(_SMOKE.env.num_envs)
BUFFER_BYTES = ReplayBuffer.nbytes_for(CAPACITY // NUM_ENVS, NUM_ENVS, (4,), torch.float32)
# Two buffers fit and three do not, with buffer.memory_fraction=0.9: 0.9 * (L - B) >= B > 0.9 * (L - 2B).
LIMIT = int(2.6 * BUFFER_BYTES / 0.9)

_HOLDER = textwrap.dedent(f"""
    import sys, torch
    from dqnlab.data.memory import BufferTooLargeError
    from dqnlab.data.replay import ReplayBuffer
    try:
        buffer = ReplayBuffer({CAPACITY}, (4,), torch.float32, num_envs={NUM_ENVS})
    except BufferTooLargeError as e:
        print("refused:", e, flush=True)
        sys.exit(2)
    print("ready", flush=True)
    sys.stdin.read()  # hold the buffer until the test closes stdin (or kills us)
""")


@pytest.fixture
def shared_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of jobs on one machine whose replay buffers may take LIMIT bytes together."""
    monkeypatch.setenv(RESERVATIONS_ENV, str(tmp_path / "reservations"))
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(LIMIT))
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _holders(n: int, env: dict[str, str]) -> list[tuple[subprocess.Popen, str]]:
    """``n`` jobs started together, each building a buffer; each with what it said (``ready`` or ``refused: ...``)."""
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", _HOLDER], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    return [(p, p.stdout.readline().strip()) for p in procs]


def _stop(holders: list[tuple[subprocess.Popen, str]]) -> None:
    for p, _ in holders:
        if p.poll() is None:
            p.stdin.close()
        p.wait(timeout=30)


def test_three_jobs_started_together_two_fit_and_the_third_is_refused(shared_machine):
    holders = _holders(3, shared_machine)
    try:
        answers = sorted(answer for _, answer in holders)
        assert answers[:2] == ["ready", "ready"], answers
        assert answers[2].startswith("refused: buffer.capacity=") and "hydra.launcher.n_jobs" in answers[2]
        assert "2 other dqnlab job(s)" in answers[2]
        refused = next(p for p, answer in holders if answer != "ready")
        assert refused.wait(timeout=30) == 2
        assert all(p.poll() is None for p, answer in holders if answer == "ready")  # the two that fit go on
    finally:
        _stop(holders)
    assert memory_for_a_new_buffer(torch.device("cpu"))[1:] == (0, 0)  # their reservations went with them


def test_train_refuses_at_start_with_one_line_and_runs_once_a_job_died(shared_machine, tmp_path):
    holders = _holders(2, shared_machine)
    try:
        assert [answer for _, answer in holders] == ["ready", "ready"]
        cmd = [PYTHON, "train.py", "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=shared_machine, capture_output=True, text=True, timeout=120)
        assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert f"buffer.capacity={CAPACITY:_}" in errors[0] and "hydra.launcher.n_jobs" in errors[0]
        assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was trained

        holders[0][0].send_signal(signal.SIGKILL)  # dies without cleaning up: its reservation file stays behind
        holders[0][0].wait(timeout=30)
        proc = subprocess.run(cmd, cwd=ROOT, env=shared_machine, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]  # the dead job's reservation is ignored: this one fits
        assert (tmp_path / "run" / "summary.json").is_file()
    finally:
        _stop(holders)


def test_a_pending_reservation_of_a_live_job_counts_against_free_memory(tmp_path, monkeypatch):
    """Without a limit: the free memory less what live jobs reserved but have not allocated yet."""
    folder = tmp_path / "reservations"
    folder.mkdir()
    monkeypatch.setenv(RESERVATIONS_ENV, str(folder))
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    cpu = torch.device("cpu")
    free = available_memory_bytes(cpu)
    sleeper = subprocess.Popen(["sleep", "60"])  # a live job that has not allocated its buffer yet
    try:
        start = Path(f"/proc/{sleeper.pid}/stat").read_text().rpartition(")")[2].split()[19]
        pending = {
            "pid": sleeper.pid,
            "start": start,
            "device": "cpu",
            "bytes": 2 * free,
            "allocated": False,
        }  # twice: memory another test frees meanwhile cannot make room
        (folder / f"{sleeper.pid}-a.json").write_text(json.dumps(pending))
        dead = {**pending, "pid": 2**22 + 1, "start": "1"}  # beyond pid_max: no such process
        (folder / "dead-b.json").write_text(json.dumps(dead))
        reused = {**pending, "pid": os.getpid(), "start": "1"}  # our pid, but another process's start time
        (folder / "reused-c.json").write_text(json.dumps(reused))
        assert available_memory_bytes(cpu) < free // 100  # the sleeper's claim, and only it, counts
        assert sorted(p.name for p in folder.glob("*.json")) == [f"{sleeper.pid}-a.json"]  # stale files went
        with pytest.raises(
            BufferTooLargeError, match=r"buffer\.capacity=.*1 other dqnlab job.*hydra\.launcher\.n_jobs"
        ):
            ReplayBuffer(CAPACITY, (4,), torch.float32, num_envs=NUM_ENVS)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert available_memory_bytes(cpu) > free // 2  # the job died: its claim is gone


def test_writing_a_checkpoint_of_the_buffer_needs_no_second_copy(tmp_path):
    """A full 240 MiB buffer's state is written with under 5% of its size in extra peak memory (a new process)."""
    script = textwrap.dedent(f"""
        import resource, torch
        from dqnlab.data.replay import ReplayBuffer
        b = ReplayBuffer(36_000, (84, 84), torch.uint8)
        b.obs.fill_(7)
        b.obs_written = b.slots  # every row counts as filled: the state holds all of them
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        torch.save(b.state_dict(), {str(tmp_path / "buffer.pt")!r})
        print(b.nbytes, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """)
    env = {**os.environ, RESERVATIONS_ENV: str(tmp_path / "reservations")}
    out = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    nbytes, extra = map(int, out.stdout.split())
    assert (tmp_path / "buffer.pt").stat().st_size >= nbytes - 2**20  # the whole buffer was written
    assert extra < 0.05 * nbytes, (extra, nbytes)
