"""Every ``next:`` command a run prints works as printed, for each family of presets and for a sweep job with
overrides: "play it" (``scripts/evaluate.py``, verbatim, video included) and "train it further" (``train.py
ckpt_path=... env_steps=...``, verbatim, from a fresh directory: it brings the run's own config back).

The runs are ``debug=smoke``-sized; the first one of each preset runs in this process (its printed lines come from
the log), the printed ``train.py`` command in a new process, as a user would type it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import subprocess
from pathlib import Path

import pytest

from dqnlab.train import run
from tests.conftest import PYTHON, ROOT, compose_cfg

PRESETS = {
    "mountaincar": ["env=mountaincar"],
    "lunarlander": ["env=lunarlander"],  # its envs cannot be saved (EzPickle): the resume starts new episodes
    "cartpole_all": ["experiment=cartpole_all"],  # C51, noisy, dueling, n-step, prioritized replay
    "minatar": ["env=minatar", "env.game=breakout"],
    "atari100k": ["experiment=atari100k", "env.game=boxing"],  # an Atari env (the other Atari presets: README)
}


def _printed(text: str, marker: str) -> list[str]:
    """The words of the printed command whose comment starts with ``marker``."""
    (line,) = {x.split(" - ")[-1] for x in text.splitlines() if f"# {marker}" in x}
    words = shlex.split(line.split("#")[0].replace("next:", ""))
    assert words[0] == "python", line
    return words[1:]


def _evaluate(words: list[str], capsys: pytest.CaptureFixture) -> dict:
    assert words[0] == "scripts/evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    capsys.readouterr()
    assert script.main(words[1:]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def _train_as_printed(words: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert words[0] == "train.py"
    proc = subprocess.run([PYTHON, str(ROOT / "train.py"), *words[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_printed_commands_work_for_each_preset(
    preset: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dqnlab.train")
    run(compose_cfg([*PRESETS[preset], "debug=smoke", "progress_bar=false"], tmp_path / "run"))
    played = _evaluate(_printed(caplog.text, "play"), capsys)
    assert played["episodes"] == 20 and (played["videos"] or "video=true" not in caplog.text)
    more = _train_as_printed(_printed(caplog.text, "train it further"), tmp_path)
    out = more.stdout + more.stderr
    assert "the run's config is restored from the checkpoint" in out and "800 env steps" in out


@pytest.mark.slow
def test_the_printed_commands_work_for_a_sweep_job_with_overrides(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [PYTHON, "train.py", "-m", "env=acrobot", "seed=3,4", "debug=smoke", "target.interval=7", "progress_bar=false",
         f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (sweep / "1" / "train.log").read_text()  # the job with seed=4
    more = _train_as_printed(_printed(log, "train it further"), tmp_path)
    out = more.stdout + more.stderr
    run_dir = Path(next(x for x in out.splitlines() if x.startswith("run dir:")).split()[2])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seed"] == 4 and summary["env_steps"] == 800
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "id: Acrobot-v1" in config and "interval: 7" in config
