"""A resume continues the run it was (dqnlab.run.resume_config): the checkpoint's config comes back, the command
line changes only what a resume may change, and every "next:" command a run prints works as printed."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dqnlab.errors import ConfigError
from dqnlab.run.provenance import code_version
from dqnlab.run.resume_config import may_change, named_keys, restore_config
from tests.conftest import PYTHON, ROOT, compose_cfg


def _train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [PYTHON, str(ROOT / "train.py"), *args]  # the default path: progress bar on, default logger
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def _next_train_command(output: str) -> list[str]:
    """The printed "train it further" command, as words."""
    (line,) = [x for x in output.splitlines() if "train it further" in x]
    words = shlex.split(line.split("#")[0].replace("next:", ""))
    assert words[:2] == ["python", "train.py"], line
    return words[2:]


def _one_error(proc: subprocess.CompletedProcess) -> str:
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


# ------------------------------------------------------------------ the pure part
def test_named_keys_and_what_may_change() -> None:
    assert named_keys(["env_steps=6000", "ckpt_path=x", "hydra.run.dir=y", "env=pong", "+algo.foo=1"]) == {
        "env_steps",
        "ckpt_path",
        "env",
        "algo.foo",
    }
    assert named_keys(["experiment=atari100k"]) == {""}  # a global group can set anything
    assert may_change("env_steps") and may_change("eval.episodes") and may_change("logger.csv._target_")
    assert not may_change("seed") and not may_change("network.hidden_sizes") and not may_change("env.id")
    assert may_change("optimizer.lr")  # the recovery knob after a non-finite stop


def test_restore_keeps_the_runs_values_and_reroots_its_paths(tmp_path: Path) -> None:
    run = compose_cfg(["env=acrobot", "seed=3", "env_steps=4000"], tmp_path / "old")
    saved = OmegaConf.to_container(run, resolve=True)
    today = compose_cfg(["ckpt_path=x.ckpt", "env_steps=8000"], tmp_path / "new")  # CartPole's defaults
    restored, changed = restore_config(today, saved, ["ckpt_path=x.ckpt", "env_steps=8000"])
    assert restored.env.id == "Acrobot-v1" and restored.seed == 3 and restored.env_steps == 8000
    assert changed == ["env_steps: 4000 -> 8000"]
    assert restored.paths.output_dir == str(tmp_path / "new")
    assert restored.checkpoint.dirpath == str(tmp_path / "new" / "checkpoints")  # was under the old run dir
    # The epsilon ramp was a fraction of the first budget: it stays that many env steps.
    assert restored.collector.exploration_steps == int(run.collector.exploration_fraction * 4000)
    other_seed = compose_cfg(["ckpt_path=x.ckpt", "seed=5"], tmp_path / "new")
    with pytest.raises(ConfigError, match=r"cannot change seed=5 \(the run's: 3\)"):
        restore_config(other_seed, saved, ["ckpt_path=x.ckpt", "seed=5"])


def test_the_runs_own_command_repeated_keeps_what_the_run_set_for_itself(tmp_path: Path) -> None:
    # What an Atari run's checkpoint holds after one resume: the env's frame stacking (set at build) and the
    # epsilon ramp fixed in env steps (set by that resume); the command line composes the defaults there again.
    command = ["experiment=atari100k", "env.game=breakout", "seed=1", "ckpt_path=last"]
    run = compose_cfg(command, tmp_path / "old")
    saved = OmegaConf.to_container(run, resolve=True)
    saved["buffer"] |= {"frame_stack": 4, "stack_padding": "zero"}
    saved["collector"]["exploration_steps"] = 5000
    again = compose_cfg(command, tmp_path / "new")
    assert again.buffer.frame_stack == 1 and again.buffer.stack_padding == "reset"  # the defaults: "from the env"
    restored, changed = restore_config(again, saved, command)
    assert restored.buffer.frame_stack == 4 and restored.buffer.stack_padding == "zero" and changed == []
    assert restored.collector.exploration_steps == 5000
    # Named one by one, such a key is a change like any other: refused.
    other = compose_cfg([*command, "buffer.frame_stack=8"], tmp_path / "new")
    with pytest.raises(ConfigError, match=r"cannot change buffer\.frame_stack=8 \(the run's: 4\)"):
        restore_config(other, saved, [*command, "buffer.frame_stack=8"])


def test_a_run_written_before_a_key_existed_resumes_with_its_own_command(tmp_path: Path) -> None:
    # A checkpoint from older code lacks keys added since (algo.fast_update, collector.action_mask); its own
    # command names every key through experiment=, and was refused over "(the run's: <absent>)".
    command = ["experiment=atari100k", "env.game=alien", "seed=0", "ckpt_path=last"]
    saved = OmegaConf.to_container(compose_cfg(command, tmp_path / "old"), resolve=True)
    del saved["algo"]["fast_update"], saved["collector"]["action_mask"]
    restored, changed = restore_config(compose_cfg(command, tmp_path / "new"), saved, command)
    assert changed == [] and "fast_update" not in restored.algo and "action_mask" not in restored.collector
    # Named one by one, such a key asks for a value the run never had: refused like any other change.
    other = compose_cfg([*command, "algo.fast_update=false"], tmp_path / "new")
    with pytest.raises(ConfigError, match=r"cannot change algo\.fast_update=False \(the run's: <absent>\)"):
        restore_config(other, saved, [*command, "algo.fast_update=false"])


# ------------------------------------------------------------------ end to end, as a user types it
@pytest.mark.slow
def test_a_run_extended_twice_with_its_own_overrides_goes_on(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = ["debug=smoke", "seed=3", f"hydra.run.dir={run_dir}", "ckpt_path=last"]
    for env_steps, said in [(400, None), (800, "400 -> 800"), (1200, "800 -> 1200")]:
        proc = _train(*command, f"env_steps={env_steps}")
        assert proc.returncode == 0, proc.stderr[-3000:]  # the third was refused: exploration_steps=None (80)
        assert said is None or f"changed env_steps: {said}" in proc.stdout + proc.stderr
        # .hydra/ keeps the run's command line (a plot groups the run by it), with its budget as it is now.
        assert OmegaConf.load(run_dir / ".hydra" / "overrides.yaml") == ["debug=smoke", "seed=3", "ckpt_path=last",
                                                                          f"env_steps={env_steps}"]  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 1200 and summary["segments"] == 3 and len(summary["provenance"]) == 3
    assert [e["overrides"][-1] for e in summary["provenance"]] == ["env_steps=400", "env_steps=800", "env_steps=1200"]
    # A refused resume in the run's own dir: Hydra wrote the refused command's files there; the run's come back.
    _one_error(_train(f"hydra.run.dir={run_dir}", "ckpt_path=last", "seed=5"))
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").seed == 3
    assert OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")[:2] == ["debug=smoke", "seed=3"]


@pytest.mark.slow
def test_the_printed_next_command_continues_a_non_default_run(tmp_path: Path) -> None:
    overrides = ["env=acrobot", "seed=3", "env_steps=3000", "target=hard", "target.interval=100",
                 "collector.exploration_fraction=0.9", "algo.batch_size=32"]  # fmt: skip
    first = _train(*overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert first.returncode == 0, first.stderr[-3000:]
    first_summary = (tmp_path / "run" / "summary.json").read_bytes()
    # Resuming the finished run again (a repeated or requeued command) trains nothing and leaves its summary,
    # and its command line: .hydra/overrides.yaml is the run's, not "ckpt_path=last".
    again = _train(f"hydra.run.dir={tmp_path / 'run'}", "ckpt_path=last")
    assert again.returncode == 0 and "summary.json is left as it was" in again.stdout + again.stderr
    assert (tmp_path / "run" / "summary.json").read_bytes() == first_summary
    assert OmegaConf.load(tmp_path / "run" / ".hydra" / "overrides.yaml") == overrides
    words = _next_train_command(first.stdout + first.stderr)
    proc = subprocess.run([PYTHON, "train.py", *words], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    run_dir = Path(next(x for x in out.splitlines() if x.startswith("run dir:")).split()[2])
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        run_overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    finally:
        if run_dir.resolve().is_relative_to(ROOT / "outputs"):
            shutil.rmtree(run_dir)
    assert "restored from the checkpoint; the command line changed env_steps: 3000 -> 6000" in out
    assert summary["seed"] == 3 and summary["env_steps"] == 6000
    assert run_overrides == [o.replace("env_steps=3000", "env_steps=6000") for o in overrides]  # the run's, longer
    # The run's totals across its two segments, and this segment's own share.
    assert summary["segments"] == 2 and summary["segment_env_steps"] == 3000
    earlier = json.loads(first_summary)["wall_time_s"]  # the first segment's time up to its last checkpoint
    assert earlier - 2.0 <= summary["wall_time_s"] - summary["segment_wall_time_s"] <= earlier
    assert "6,000 env steps" in out and "over 2 segments (this one: 3,000 env steps in" in out
    # Where and with what each segment ran: the first one's entry came back from the checkpoint, unchanged.
    (first_entry,) = json.loads(first_summary)["provenance"]
    earlier_entry, this_entry = summary["provenance"]
    assert earlier_entry["started_utc"] == first_entry["started_utc"]
    assert earlier_entry["ended_utc"] <= this_entry["started_utc"] <= this_entry["ended_utc"]
    assert {e["code"] for e in summary["provenance"]} == {code_version()} and this_entry["torch"] == torch.__version__
    assert f"ran by: code {code_version()}, torch {torch.__version__}" in out
    assert config.env.id == "Acrobot-v1" and config.target.interval == 100 and config.target.tau == 1.0
    assert config.algo.batch_size == 32  # Acrobot's preset samples 128
    # Exploration goes on where it stood (0.9 x 3,000 env steps), not stretched over the new budget.
    later = [float(r["rollout/epsilon"]) for r in rows if r.get("rollout/epsilon") and float(r["env_steps"]) > 3000]
    assert later and max(later) == pytest.approx(config.collector.epsilon_end, abs=1e-6)


@pytest.mark.slow
def test_a_resume_that_would_change_the_experiment_is_refused_before_any_file(tmp_path: Path) -> None:
    first = _train("seed=3", "env_steps=2500", f"hydra.run.dir={tmp_path / 'run'}")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    error = _one_error(_train(f"ckpt_path={ckpt}", "seed=5", "env=acrobot", f"hydra.run.dir={tmp_path / 'b'}"))
    assert "seed=5 (the run's: 3)" in error and "env.id=Acrobot-v1 (the run's: CartPole-v1)" in error
    assert not (tmp_path / "b").exists()
    # A new run over the old one's dir is refused too; the old run's files stay as they were.
    before = (tmp_path / "run" / "summary.json").read_text()
    error = _one_error(_train("env_steps=3000", f"hydra.run.dir={tmp_path / 'run'}"))
    assert "holds a run" in error and "ckpt_path=last" in error
    assert (tmp_path / "run" / "summary.json").read_text() == before


@pytest.mark.slow
def test_ckpt_path_last_without_a_run_dir_names_the_newest_run(tmp_path: Path) -> None:
    old = tmp_path / "outputs" / "2026-01-01" / "00-00-00" / "checkpoints"
    old.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "fixtures" / "legacy_v0" / "cartpole_2500.ckpt", old / "last.ckpt")
    error = _one_error(_train("ckpt_path=last", cwd=tmp_path))
    assert "hydra.run.dir=outputs/2026-01-01/00-00-00" in error  # relative, as the user's outputs/ is
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["2026-01-01"]  # no new run dir


def test_a_resume_that_fails_while_loading_reports_no_elapsed_time(make_cfg, caplog) -> None:
    # Before: the progress bar closed with the time since its clock's zero, the machine's uptime ("0/0 28:33").
    import io
    import logging

    from rich.console import Console

    from dqnlab.run.progress import EnvStepProgressBar
    from dqnlab.train import build

    parts = build(make_cfg("debug=smoke"))
    bar = EnvStepProgressBar(parts.collector, console=Console(file=io.StringIO()))
    with caplog.at_level(logging.INFO, logger="dqnlab.run.progress"):
        bar.on_exception(None, None, RuntimeError("size mismatch for q_net.net.0.weight"))
    parts.close()
    assert not [r for r in caplog.records if r.name == "dqnlab.run.progress"]


def test_a_resume_is_checked_against_the_runs_config_not_todays_defaults(tmp_path: Path) -> None:
    # CartPole's defaults prefill 2,000 env steps (and sample 256): checked against them, extending this run to
    # 2,000 env steps would be refused as "no update after the prefill". The run's own values are what resume.
    first = _train("collector.learning_starts=500", "algo.batch_size=64", "env_steps=1000",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    words = _next_train_command(first.stdout + first.stderr)
    assert "env_steps=2000" in words
    proc = _train(*words, f"hydra.run.dir={tmp_path / 'more'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "more" / "summary.json").read_text())
    assert summary["env_steps"] == 2000


# ------------------------------------------------------------------ provenance
def test_the_code_version_is_the_checkouts_commit_and_a_copy_says_it_is_none(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout

    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    assert code_version() == git("rev-parse", "--short=12", "HEAD").strip() + ("+modified" if dirty else "")
    # dqnlab installed into a venv inside a git repository of yours: not your repository's commit.
    project = tmp_path / "project"
    site = project / ".venv" / "lib" / "site-packages"
    shutil.copytree(ROOT / "src" / "dqnlab", site / "dqnlab", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / "README").write_text("a project of yours\n")
    commit = ["git", "-C", str(project), "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "first"]
    subprocess.run(["git", "-C", str(project), "add", "README"], check=True)
    subprocess.run(commit, check=True)
    code = "from dqnlab.run.provenance import code_version; print(code_version())"
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env, cwd=project, check=True)
    assert out.stdout.strip() == "dqnlab 0.1.0 (not a git checkout)"
