"""The experiment workflow end to end: tracking, checkpoints and exact resume, evaluation and video, sweeps, plots.

Everything runs for real at ``debug=smoke`` size: offline W&B runs read back from disk, signals sent to a real
``python train.py``, Hydra's joblib, Optuna and submitit plugins launching real jobs.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from dqnlab.errors import ConfigError
from dqnlab.run.checkpoint import AtomicCheckpointIO, Interrupted
from dqnlab.run.report import TIMING_KEYS
from dqnlab.train import run
from tests.conftest import PYTHON, ROOT, compose_cfg
from tests.wandb_offline import read_offline_run

TIMING = TIMING_KEYS  # what a resume may change in summary.json
# Short, and slow enough per env step (one update per env step) that a signal lands mid-run.
RESUMABLE = ["debug=smoke", "seed=5", "env_steps=600", "checkpoint.every=100"]


def _same(a: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in a.items() if k not in TIMING}


def _metric_rows(path: Path) -> list[dict[str, str]]:
    """metrics.csv rows without the timing columns (perf/*), which differ between any two runs."""
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in csv.DictReader(f)]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _train(*overrides: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "train.py", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _env(),
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """One uninterrupted run that writes checkpoints every 100 env steps (shared by several tests)."""
    out = tmp_path_factory.mktemp("reference")
    return out, run(compose_cfg(RESUMABLE, out))


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_holds_everything_an_exact_resume_needs(reference_run):
    out, _ = reference_run
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    # At each multiple of checkpoint.every=100 env steps after the 100-step prefill, but the last (last.ckpt)
    # 600: last.ckpt; and best.ckpt, the network CartPole's preset keeps (eval.keep_best)
    assert names == ["best.ckpt", *(f"env_steps_{n}.ckpt" for n in (200, 300, 400, 500)), "last.ckpt"]
    ckpt = torch.load(out / "checkpoints" / "env_steps_300.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 50
    assert any(k.startswith("q_net.") for k in ckpt["state_dict"])
    assert any(k.startswith("target_net.") for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"][0]["state"]  # Adam moments
    callbacks = ckpt["callbacks"]
    collector = callbacks["EnvStepper"]
    assert collector["env_steps"] == 300
    assert {"rng", "obs", "buffer", "new_returns"} <= collector.keys()
    assert "generator" in collector["buffer"]  # the replay sampler's RNG
    assert {"syncs"} <= callbacks["TargetNetworkSync"].keys()
    assert {"next_eval", "evaluations"} <= callbacks["Evaluator"].keys()
    resume = callbacks["ResumeState"]
    assert {"python", "numpy", "torch"} <= resume["rng"].keys()
    assert resume["env"] is not None  # CartPole's SyncVectorEnv is saved whole
    config = ckpt["dqnlab"]["config"]
    assert config["env"]["id"] == "CartPole-v1" and config["paths"]["output_dir"] == str(out)
    # Written through a temp file and a rename: no temp file is left behind.
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resume_from_a_checkpoint_ends_exactly_like_the_uninterrupted_run(reference_run, tmp_path):
    out, uninterrupted = reference_run
    ckpt = out / "checkpoints" / "env_steps_300.ckpt"
    resumed = run(compose_cfg([*RESUMABLE, f"ckpt_path={ckpt}"], tmp_path))
    assert _same(resumed) == _same(uninterrupted)
    # Every row logged after the checkpoint (losses, episode returns, evaluations) is the same too.
    after = [r for r in _metric_rows(out / "metrics.csv") if int(r["step"]) > 300]
    assert _metric_rows(tmp_path / "metrics.csv") == after


def test_resume_without_the_buffer_refills_it_and_warns(tmp_path, caplog):
    overrides = ["debug=smoke", "seed=2", "env_steps=500", "checkpoint.every=100", "checkpoint.save_buffer=false"]
    run(compose_cfg(overrides, tmp_path / "a"))
    assert "leave out the replay buffer" in caplog.text
    ckpt = tmp_path / "a" / "checkpoints" / "env_steps_300.ckpt"
    assert "buffer" not in torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]["EnvStepper"]
    caplog.clear()
    summary = run(compose_cfg([*overrides, f"ckpt_path={ckpt}"], tmp_path / "b"))
    assert "without the replay buffer" in caplog.text
    assert summary["env_steps"] == 500 and summary["gradient_steps"] == 100  # the budget is unchanged
    assert summary["refill_env_steps"] >= 100  # the refill's env steps, extra to the budget


class _SignalAt(pl.Callback):
    """Sends a real signal to this process after gradient step ``step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigterm_saves_last_checkpoint_and_stops_cleanly(tmp_path, monkeypatch):
    from dqnlab import train as train_module

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread (the CLI test covers SIGINT)")

    handler_before = signal.getsignal(signal.SIGTERM)
    real_build = train_module.build

    def build_with_signal(cfg, stop=None, kept_compute=None):
        parts = real_build(cfg, stop, kept_compute)
        parts.trainer.callbacks.insert(0, _SignalAt(30, signal.SIGTERM))
        return parts

    monkeypatch.setattr(train_module, "build", build_with_signal)
    with pytest.raises(Interrupted) as stopped:
        run(compose_cfg(["debug=smoke"], tmp_path))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at env step 220" in str(stopped.value)  # 100 prefill + 30 steps x 4 env steps
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 30 and last["callbacks"]["EnvStepper"]["env_steps"] == 220
    assert not (tmp_path / "summary.json").exists()  # no final evaluation of a stopped run
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_atomic_checkpoint_write_never_leaves_a_partial_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full, say")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000), "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=False)["step"] == 1  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not a private temp file


@pytest.mark.slow
def test_cli_sigint_then_resume_in_the_run_dir_matches_an_uninterrupted_run(tmp_path):
    overrides = ["debug=smoke", "seed=7", "env_steps=3000", "collector.train_freq=1", "checkpoint.every=200"]
    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [PYTHON, "train.py", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("env_steps_*.ckpt")):  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output[-3000:]
    assert "stopped by SIGINT at env step" in output and "last.ckpt" in output
    assert "Traceback" not in output
    assert not (run_dir / "summary.json").exists()

    resumed = _train(*overrides, f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr

    uninterrupted = run(compose_cfg(overrides, tmp_path / "uninterrupted"))
    assert _same(json.loads((run_dir / "summary.json").read_text())) == pytest.approx(_same(uninterrupted))
    # The run dir's metrics.csv is whole: the rows before the stop were kept, the rest match the reference.
    assert _metric_rows(run_dir / "metrics.csv") == _metric_rows(tmp_path / "uninterrupted" / "metrics.csv")


# ---------------------------------------------------------------------------------------------- evaluation, video
@pytest.mark.slow
def test_evaluate_script_prints_one_json_line_and_writes_a_video(reference_run, tmp_path):
    import imageio_ffmpeg

    out, _ = reference_run
    proc = subprocess.run(
        [
            PYTHON,
            "scripts/evaluate.py",
            str(out / "checkpoints" / "last.ckpt"),
            "episodes=3",
            "video=true",
            f"video_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert result["episodes"] == 3 and len(result["returns"]) == 3
    assert result["return_mean"] == pytest.approx(sum(result["returns"]) / 3)
    assert result["return_std"] >= 0 and result["env_steps"] == 600 and result["epsilon"] == 0.0
    (video,) = result["videos"]
    frames, _ = imageio_ffmpeg.count_frames_and_secs(video)
    assert frames >= 2  # the reset frame and at least one step


def test_evaluate_script_rejects_unknown_settings(reference_run):
    out, _ = reference_run
    proc = subprocess.run(
        [PYTHON, "scripts/evaluate.py", str(out / "checkpoints" / "last.ckpt"), "episode=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown setting 'episode=3'" in proc.stderr


# ---------------------------------------------------------------------------------------------- tracking
@pytest.mark.slow
def test_wandb_without_credentials_falls_back_offline_and_records_history_and_config(tmp_path):
    run_dir = tmp_path / "run"
    env = _env(HOME=str(tmp_path / "home"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT"):
        env.pop(name, None)
    started = time.monotonic()
    proc = _train(
        "debug=smoke",
        "seed=3",
        "logger=[csv,wandb]",
        "logger.wandb.mode=online",
        "eval.video=true",
        f"hydra.run.dir={run_dir}",
        env=env,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B could not start online" in proc.stdout + proc.stderr
    assert elapsed < 90  # interpreter start and a 2 s run; no login prompt, no network wait

    (offline_dir,) = (run_dir / "wandb").glob("offline-run-*")
    wb = read_offline_run(offline_dir)
    assert "seed=3" in wb.name and "logger.wandb.mode=online" in wb.name  # the job's overrides name the run
    assert "seed=3" in wb.tags
    # The fully resolved config: nested groups, interpolations resolved.
    assert wb.config["env"]["id"] == "CartPole-v1"
    assert wb.config["paths"]["output_dir"] == str(run_dir)
    assert wb.config["seed"] == 3 and wb.config["collector"]["learning_starts"] == 100
    returns = [row["rollout/episode_return"] for row in wb.history if "rollout/episode_return" in row]
    assert returns and all(r > 0 for r in returns)
    assert [row["env_steps"] for row in wb.history if "eval/return_mean" in row][-1] == 400
    videos = [row for row in wb.history if row.get("eval/video/_type") == "video-file"]
    assert videos and (offline_dir / "files" / videos[0]["eval/video/path"]).is_file()
    videos_on_disk = sorted(p.name for p in (run_dir / "videos").iterdir())
    assert videos_on_disk == ["eval_env_steps_200.mp4", "eval_env_steps_400.mp4"]
    # Extended (a new W&B run), it keeps the run's name and tags, with the new budget: not "ckpt_path=last".
    more = _train(f"hydra.run.dir={run_dir}", "ckpt_path=last", "env_steps=600", "logger=[csv,wandb]",
                  "logger.wandb.mode=offline", env=env)  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    (second,) = set((run_dir / "wandb").glob("offline-run-*")) - {offline_dir}
    wb = read_offline_run(second)
    assert "seed=3" in wb.name and "env_steps=600" in wb.name and "ckpt_path" not in wb.name, wb.name
    assert "seed=3" in wb.tags and "logger.wandb.mode=offline" in wb.tags


def test_wandb_fails_fast_naming_offline_mode_when_fallback_is_off(tmp_path, monkeypatch):
    from dqnlab.run.tracking import make_wandb_logger

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="WANDB_MODE=offline"):
        make_wandb_logger(save_dir=str(tmp_path), mode="online", offline_fallback=False, init_timeout=5)
    assert time.monotonic() - started < 30


def test_progress_without_a_terminal_is_plain_lines_in_the_log(make_cfg, caplog):
    caplog.set_level("INFO")
    run(make_cfg("debug=smoke"))  # progress_bar=true: debug=smoke keeps the bar a user has
    lines = [r.getMessage() for r in caplog.records if r.name == "dqnlab.run.progress"]
    assert lines[0].startswith("100/100 random env steps (prefill)")
    assert re.match(
        r"400/400 env steps  \d+:\d\d eta \d+:\d\d  train return \d+\.\d  eps 0\.\d{3}  [\d,]+ steps/s", lines[-1]
    )


def test_progress_line_keeps_the_count_the_time_and_the_eta_at_80_columns():
    from dqnlab.run.progress import progress_line

    line = progress_line("train", 8_668, 30_000, 4.2, 2_044.0, "160.0", 0.01, width=70)
    assert line.startswith("8,668/30,000 env steps  0:04 eta 0:10") and len(line) <= 70
    assert "train return 160.0" in line  # the return of training episodes, said as such
    wide = progress_line("train", 8_668, 30_000, 4.2, 2_044.0, "160.0", 0.01, width=200)
    assert wide.endswith("eps 0.010  2,044 steps/s")


def test_every_run_writes_metrics_csv_and_integer_counts(make_cfg, tmp_path):
    summary = run(make_cfg("debug=smoke", "logger=tensorboard"))  # not the default logger: metrics.csv still
    assert (tmp_path / "metrics.csv").is_file() and list((tmp_path / "tensorboard").iterdir())
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("env_steps", "gradient_steps", "episodes", "seed", "eval/episodes"):
        assert isinstance(saved[key], int) and saved[key] == summary[key], key


def test_a_resume_reports_its_own_speed(reference_run, tmp_path):
    out, _ = reference_run
    # Resuming the finished run takes no env step in this process: its speed is 0, not 600 over a short fit.
    resumed = run(compose_cfg([*RESUMABLE, f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"], tmp_path))
    assert resumed["env_steps"] == 600 and resumed["env_steps_per_s"] == 0


def test_a_checkpoint_holds_only_the_filled_part_of_the_replay(tmp_path):
    from dqnlab.data.replay import ReplayBuffer

    buffer = ReplayBuffer(20_000, (4, 84, 84), torch.uint8, num_envs=1, frame_stack=4)  # 141 MB of frames
    obs = torch.randint(0, 255, (1, 4, 84, 84), dtype=torch.uint8).numpy()
    buffer.start(obs)
    for _ in range(100):
        buffer.add(np.zeros(1, int), np.ones(1), np.zeros(1, bool), np.zeros(1, bool), obs)
    path = tmp_path / "b.pt"
    torch.save(buffer.state_dict(), path)
    assert path.stat().st_size < 2_000_000  # 101 frames of 7 KB, not 20,000
    again = ReplayBuffer(20_000, (4, 84, 84), torch.uint8, num_envs=1, frame_stack=4)
    again.load_state_dict(torch.load(path, weights_only=False))
    assert torch.equal(again.obs, buffer.obs) and torch.equal(again.sample(32).obs, buffer.sample(32).obs)


# ---------------------------------------------------------------------------------------------- sweeps and plots
@pytest.mark.slow
def test_joblib_sweep_then_plot_one_line_per_override_set(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _train(
        "-m",
        "seed=0,1",
        "optimizer.lr=1e-3,2e-3",
        "debug=smoke",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    assert len(list(sweep.glob("*/summary.json"))) == 4

    from dqnlab.share.plotting import find_run_dirs, load_run, plot_learning_curves, results_table

    runs = [load_run(d) for d in find_run_dirs([sweep])]
    fig = plot_learning_curves(runs)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 2  # one per learning rate, the seeds averaged
    assert len(ax.collections) == 2  # one band each
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
        "optimizer.lr=0.001 (n=2)",
        "optimizer.lr=0.002 (n=2)",
    ]
    table = results_table(runs)
    assert [r["runs"] for r in table] == [2, 2]
    cli = subprocess.run(
        [PYTHON, "scripts/plot.py", str(sweep), "-o", str(tmp_path / "curves.png")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| optimizer.lr=0.001 | 2 |" in cli.stdout and "eval/return_mean (mean +- std)" in cli.stdout


@pytest.mark.slow
def test_optuna_sweep_tunes_and_each_job_is_one_wandb_run(tmp_path):
    sweep = tmp_path / "optuna"
    proc = _train(
        "hparams_search=cartpole_optuna",
        "debug=smoke",
        "collector.learning_starts=600",  # env steps: room for the search space's largest batch (512)
        "env_steps=800",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "logger=[csv,wandb]",
        f"hydra.sweep.dir={sweep}",
        env=_env(WANDB_MODE="offline"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "optimizer.lr" in results
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 3
    # The three jobs ran in one process: each got its own W&B run (wandb.finish between them), named by its trial.
    runs = [read_offline_run(d) for d in sweep.glob("*/wandb/offline-run-*")]
    assert len(runs) == 3 and len({r.run_id for r in runs}) == 3
    assert all("optimizer.lr=" in r.name for r in runs) and len({r.name for r in runs}) == 3
    assert len({r.group for r in runs}) == 1 and str(sweep) in runs[0].group


def test_slurm_launcher_config_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=60"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node) == ("gpu", 60, 1)
    assert launcher.max_num_timeout >= 1
