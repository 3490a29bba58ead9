"""The default path as a user meets it: ``python train.py`` in a real 80-column terminal, stopped with Ctrl-C.

Each test runs the CLI with its defaults (progress bar on, the default logger) on a pseudo-terminal that is
the process's controlling terminal, and stops it the way a person does: Ctrl-C is the byte 0x03 typed into
the terminal, which the kernel turns into SIGINT for the foreground process group.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import PYTHON, ROOT

pytestmark = pytest.mark.slow

CTRL_C = b"\x03"


class Terminal:
    """``python train.py ...`` on a pseudo-terminal of ``cols`` columns; read what it shows, type into it."""

    def __init__(self, args: list[str], cols: int = 80, rows: int = 24) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TTY_COMPATIBLE")}
        env["WANDB_MODE"] = "offline"
        self.proc = subprocess.Popen(
            [PYTHON, "train.py", *args],
            cwd=ROOT,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,  # its own session, with this terminal as its controlling terminal:
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # Ctrl-C reaches it as from a shell
        )
        os.close(slave)
        os.set_blocking(self.master, False)
        self.output = b""

    def _read(self) -> None:
        try:
            while chunk := os.read(self.master, 65536):
                self.output += chunk
        except (BlockingIOError, OSError):  # nothing more now / the child closed the terminal
            pass

    @property
    def text(self) -> str:
        """Everything shown so far, with rich's cursor and colour codes removed."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.output.decode(errors="replace"))

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        """Wait until ``pattern`` (a regex) has been shown."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            self._read()
            assert self.proc.poll() is None or re.search(pattern, self.text), self.text[-3000:]
            assert time.monotonic() < deadline, f"{pattern!r} not shown:\n{self.text[-3000:]}"
            time.sleep(0.05)

    def type(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""
        os.write(self.master, data)

    def finish(self, timeout: float = 120) -> int:
        """Wait for the process to end; its exit status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            self._read()
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"did not exit:\n{self.text[-3000:]}")
            time.sleep(0.05)
        self._read()
        os.close(self.master)
        return self.proc.returncode


def test_ctrl_c_in_an_80_column_terminal_saves_and_exits_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "run1"
    term = Terminal([f"hydra.run.dir={run_dir}"])
    # The bar keeps what matters at 80 columns: env steps of the total, elapsed time and ETA, the training return.
    term.wait_for(r"\d[\d,]*/30,000 env steps\s+\d+:\d\d eta \d+:\d\d\s+train return")
    term.type(CTRL_C)
    rc = term.finish()
    assert rc == 130, term.text[-3000:]
    assert "stopped by SIGINT at env step" in term.text and "last.ckpt" in term.text
    assert "Traceback" not in term.text and "Error" not in term.text
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    log = (run_dir / "train.log").read_text()
    assert "dqnlab: DQN" in log and "stopped by SIGINT" in log  # what the terminal showed, without the bar


def test_sigterm_with_the_progress_bar_saves_and_exits_143(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    term = Terminal([f"hydra.run.dir={run_dir}"])
    term.wait_for(r"/30,000 env steps")
    term.proc.send_signal(signal.SIGTERM)
    rc = term.finish()
    assert rc == 143, term.text[-3000:]
    assert "stopped by SIGTERM at env step" in term.text and "Traceback" not in term.text
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_ctrl_c_during_the_random_prefill_stops_cleanly_with_nothing_to_save(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A long prefill, as on Atari (50-80k random env steps): it has its own bar.
    args = ["collector.learning_starts=1_000_000", "env_steps=1_100_000", "buffer.capacity=1_000_000"]
    term = Terminal([*args, f"hydra.run.dir={run_dir}"])
    term.wait_for(r"/1,000,000 random env steps \(prefill\)")
    term.type(CTRL_C)
    rc = term.finish()
    assert rc == 130, term.text[-3000:]
    assert "stopped by SIGINT during the random prefill" in term.text and "nothing was saved" in term.text
    assert "Traceback" not in term.text
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


def test_a_second_ctrl_c_stops_at_once_and_says_what_is_on_disk(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A big replay makes the checkpoint write long enough for the second Ctrl-C to land in it (or just after).
    args = ["collector.learning_starts=50_000", "env_steps=1_000_000", "buffer.capacity=1_000_000"]
    term = Terminal([*args, f"hydra.run.dir={run_dir}"])
    term.wait_for(r"/1,000,000 env steps")
    term.type(CTRL_C)
    term.wait_for(r"SIGINT received")
    term.type(CTRL_C)
    rc = term.finish()
    # -2: the second Ctrl-C came in the interpreter's last moments, after Python put back the default handler;
    # a shell shows both as 130, and everything was written by then.
    assert rc in (130, -signal.SIGINT), term.text[-3000:]
    assert "Traceback" not in term.text and "RuntimeError" not in term.text
    said = term.text
    assert "stopped at once by a second SIGINT" in said or "stopped by SIGINT at env step" in said
    if "stopped at once" in said:  # it says what is on disk, and that is so
        assert ("was being written and was not saved" in said) != (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.suffix == ".tmp"]


def test_divergence_with_the_progress_bar_exits_3_with_one_error_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    term = Terminal(["optimizer.lr=1e12", "algo.loss=mse", "env_steps=8000", f"hydra.run.dir={run_dir}"])
    rc = term.finish()
    assert rc == 3, term.text[-3000:]
    assert "error: non-finite" in term.text and "Traceback" not in term.text
    assert (run_dir / "checkpoints" / "nonfinite.ckpt").is_file()


def test_a_finished_run_ends_with_a_readable_summary(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    term = Terminal(["env_steps=4000", f"hydra.run.dir={run_dir}"], cols=100)
    rc = term.finish()
    assert rc == 0, term.text[-3000:]
    text = term.text
    assert re.search(r"result: eval return -?\d+\.\d\d \+- \d+\.\d\d over 20 episodes", text)
    assert re.search(r"trained: 4,000 env steps, [\d,]+ updates", text)
    assert f"run dir: {run_dir}" in text and "scripts/evaluate.py" in text and "ckpt_path=" in text
    assert "Traceback" not in text and "`srun` command" not in text


def test_no_srun_advice_where_slurm_is_installed(tmp_path: Path) -> None:
    # Lightning warns wherever an executable named `srun` is on PATH (every cluster login node); dqnlab goes to
    # SLURM through Hydra's launcher, so that advice is noise. An `srun` on PATH is all Lightning looks for.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [PYTHON, "train.py", "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "`srun` command" not in proc.stdout + proc.stderr and "Warning" not in proc.stderr
