"""Sweeps on a real one-node SLURM cluster (``scripts/slurm_local.sh``): no mock of SLURM or submitit.

One cluster per test process, started under a temp dir and stopped by PID. The jobs are real ``train.py``
runs at ``debug=smoke`` size submitted by Hydra's submitit launcher; preemption is ``scontrol requeue`` (SLURM's
SIGTERM), the time limit is the signal SLURM sends before it (SIGUSR2, which submitit counts as a timeout for
``timeout_min`` <= 10), a dead job is ``scancel``. Needs root and ``apt-get install slurm-wlm munge``; without
them these tests skip, saying so. Run them alone: ``python -m pytest tests/test_slurm.py -q``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dqnlab.train import run
from tests.conftest import PYTHON, ROOT, compose_cfg
from tests.test_workflow import _env, _metric_rows, _same

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
SLURMCTLD = shutil.which("slurmctld") or shutil.which("slurmctld", path="/usr/sbin:/usr/local/sbin")
# Slow enough per env step (one update per env step) that a signal lands mid-training: ~4 s of training, most
# of it after the first checkpoint (1,000 env steps, ~1 s, let a requeue under the full test run's load land
# after the job had finished).
LONG = ["debug=smoke", "env_steps=4000", "collector.train_freq=1", "checkpoint.every=200"]
# dqnlab's launcher sized for this node: CPU only, one core and 1 GB per job.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=5",
    "hydra.launcher.signal_delay_s=10",
    "progress_bar=false",
]

pytestmark = pytest.mark.slow
needs_slurm = pytest.mark.skipif(
    SLURMCTLD is None or os.geteuid() != 0,
    reason="no local SLURM: needs root and `apt-get install -y --no-install-recommends slurm-wlm munge` "
    "(.ci/run installs them; docs/workflow.md, 'Running on a SLURM cluster')",
)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Path]:
    """A one-node SLURM cluster per test process (each xdist worker that runs one of these tests starts its own, on
    ports of its own); ``SLURM_CONF`` points every client (and job) at it."""
    # Not pytest's tmp dir: that one is 0700 and munged (user munge) must reach its socket dir.
    folder = Path(tempfile.mkdtemp(prefix="dqnlab-slurm-"))
    folder.chmod(0o755)
    old_conf = os.environ.get("SLURM_CONF")
    started = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
        yield folder
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=60)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        shutil.rmtree(folder, ignore_errors=True)


def _sweep(sweep: Path, *overrides: str, launcher: list[str] = SLURM) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "train.py", "-m", *launcher, *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _wait_for(what: str, check, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _job_id(run_dir: Path) -> str:
    """The SLURM job id Hydra's launcher recorded for the job of ``run_dir`` (``ARRAYID_TASKID``)."""
    return str(yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])


def _training(run_dir: Path) -> bool:
    return (run_dir / ".hydra" / "hydra.yaml").is_file() and any((run_dir / "checkpoints").glob("env_steps_*.ckpt"))


def _job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True)
    return dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)


def _summary(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


# ---------------------------------------------------------------------------------------------- the sacct stand-in
def test_sacct_standin_answers_submitits_query_in_its_format():
    from dqnlab.cluster.sacct_standin import parse_args, sacct_line

    assert parse_args(["-o", "JobID,State,NodeList", "--parsable2", "-j", "7", "-j", "9"]) == ["7", "9"]
    assert parse_args(["-j", "7"]) is None  # anything but submitit's query: sacct's own failure
    task = {"JobId": "8", "ArrayJobId": "7", "ArrayTaskId": "1", "JobState": "CANCELLED", "NodeList": "vm"}
    assert sacct_line(task) == "7_1|CANCELLED|vm"
    pending = {"JobId": "7", "ArrayJobId": "7", "ArrayTaskId": "0-3%2", "JobState": "PENDING", "NodeList": "(null)"}
    assert sacct_line(pending) == "7_[0-3%2]|PENDING|(null)"
    assert sacct_line({"JobId": "5", "JobState": "SUSPENDED"}) == "5|RUNNING|"  # not finished, as submitit needs


# ---------------------------------------------------------------------------------------------- bad input
def test_no_sbatch_is_one_error_line_naming_the_local_launchers(tmp_path):
    env = _env(PATH=str(Path(PYTHON).parent))  # no /usr/bin: no sbatch, as on a laptop
    proc = subprocess.run(
        [
            PYTHON,
            "train.py",
            "-m",
            "seed=0,1",
            "debug=smoke",
            "hydra/launcher=submitit_slurm",
            f"hydra.sweep.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and "SLURM was not found" in line
    assert "hydra/launcher=submitit_local" in line and "hydra/launcher=joblib" in line


@needs_slurm
def test_a_partition_that_does_not_exist_is_slurms_message_in_one_line(cluster, tmp_path):
    rc, output = _finish(_sweep(tmp_path / "sweep", "debug=smoke", "hydra.launcher.partition=nope"), timeout=60)
    assert rc == 1, output[-3000:]
    assert "Traceback" not in output
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert "SLURM refused the sweep" in line and "Invalid partition name specified" in line


# ---------------------------------------------------------------------------------------------- sweeps
@needs_slurm
def test_array_sweep_writes_a_summary_per_job_and_a_requeued_finished_job_leaves_it(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    # The plugin's own launcher: dqnlab's sweep callback gives it the sacct stand-in this cluster needs.
    rc, output = _finish(_sweep(sweep, "seed=0,1", "debug=smoke", launcher=["hydra/launcher=submitit_slurm"]))
    assert rc == 0, output[-3000:]
    assert sorted(_summary(sweep / n)["seed"] for n in ("0", "1")) == [0, 1]
    ids = [_job_id(sweep / n) for n in ("0", "1")]
    (array,) = {_job(i)["ArrayJobId"] for i in ids}  # one array job, two tasks
    assert sorted(ids) == [f"{array}_0", f"{array}_1"]
    assert "#0 seed=0 debug=smoke: eval/return_mean" in output  # dqnlab's per-job result line

    # A node lost after the job wrote its summary: SLURM requeues the finished job, which resumes at its end.
    run_dir, before = sweep / "0", _summary(sweep / "0")
    rows = _metric_rows(run_dir / "metrics.csv")
    subprocess.run(["scontrol", "requeue", ids[0]], check=True, capture_output=True)
    _wait_for("the requeue", lambda: _job(ids[0])["Restarts"] == "1")
    _wait_for("the requeued job to finish", lambda: _job(ids[0])["JobState"] == "COMPLETED")
    after = _summary(run_dir)
    assert after == before  # its second process took no env step: nothing retrained, the summary left as it was
    assert _metric_rows(run_dir / "metrics.csv") == rows
    log = (run_dir / "train.log").read_text()
    assert "SLURM job" in log and "restart 1" in log and "resuming from" in log
    assert "summary.json is left as it was" in log


@needs_slurm
def test_preempted_and_timed_out_jobs_save_requeue_and_end_like_uninterrupted_runs(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, "seed=5,6", *LONG, "hydra.launcher.max_num_timeout=1")
    _wait_for("both jobs to train", lambda: _training(sweep / "0") and _training(sweep / "1"), proc=proc)
    preempted, timed_out = _job_id(sweep / "0"), _job_id(sweep / "1")
    # Preemption: SLURM's requeue (SIGTERM to the job, SIGKILL after KillWait). Time limit: the SIGUSR2 SLURM sends
    # signal_delay_s before it, which submitit counts as a timeout (timeout_min <= 10) and requeues.
    subprocess.run(["scontrol", "requeue", preempted], check=True, capture_output=True)
    subprocess.run(["scancel", "--signal=USR2", timed_out], check=True, capture_output=True)
    references = {
        n: (tmp_path / f"ref{n}", run(compose_cfg([*LONG, f"seed={s}"], tmp_path / f"ref{n}")))
        for n, s in ((0, 5), (1, 6))
    }
    rc, output = _finish(proc)
    assert rc == 0, output[-3000:]
    for n, (ref_dir, reference) in references.items():
        run_dir = sweep / str(n)
        assert _same(_summary(run_dir)) == pytest.approx(_same(reference))
        assert _metric_rows(run_dir / "metrics.csv") == _metric_rows(ref_dir / "metrics.csv")
        log = (run_dir / "train.log").read_text()
        assert "resuming from" in log and "last.ckpt" in log
        # Exactly one requeue per signal: submitit's (or SLURM's own); Lightning's auto-requeue is off.
        assert _job(_job_id(run_dir))["Restarts"] == "1"
        assert not list(run_dir.rglob("hpc_ckpt_*.ckpt"))
    assert "stopped by SIGTERM at env step" in (sweep / "0" / "train.log").read_text()
    log1 = (sweep / "1" / "train.log").read_text()
    assert "SIGUSR2 (SLURM: time limit near, or preempted): saved" in log1
    assert "Requeued job" in log1 and "this job is timed-out" in log1  # submitit's lines: it requeued, not Lightning


@needs_slurm
def test_out_of_timeouts_fails_that_job_and_a_job_that_dies_fails_the_sweep_in_seconds(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep(sweep, "seed=0,1", *LONG, "env_steps=50_000", "hydra.launcher.max_num_timeout=0")
    _wait_for("both jobs to train", lambda: _training(sweep / "0") and _training(sweep / "1"), proc=proc)
    killed, timed_out = _job_id(sweep / "0"), _job_id(sweep / "1")
    # The time limit with no requeue left: last.ckpt is saved, the job fails as submitit says, the others go on.
    subprocess.run(["scancel", "--signal=USR2", timed_out], check=True, capture_output=True)
    _wait_for("the timed-out job's result", lambda: list(sweep.glob(f".submitit/{timed_out}/*_result.pkl")), proc=proc)
    log1 = (sweep / "1" / "train.log").read_text()
    assert "saved" in log1 and "timed-out too many times" in log1
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file() and not (sweep / "1" / "summary.json").exists()
    # A job that dies (scancel: SIGTERM, then SIGKILL): the sweep stops within seconds, naming it and its log.
    t_kill = time.monotonic()
    subprocess.run(["scancel", killed], check=True, capture_output=True)
    rc, output = _finish(proc, timeout=60)
    waited = time.monotonic() - t_kill
    assert rc == 1, output[-3000:]
    assert waited < 20, f"the sweep took {waited:.0f} s to notice"
    assert "Traceback" not in output
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert f"SLURM job {killed} (#0 " in line and "seed=0" in line and "ended CANCELLED" in line
    assert f"/.submitit/{killed}/{killed}_0_log.err" in line


@needs_slurm
def test_parallel_optuna_jobs_work_on_one_sqlite_study(cluster, tmp_path):
    # Two SLURM jobs, each an Optuna worker (a sweep in its own process) asking and telling one SQLite study.
    folder = tmp_path
    db = folder / "optuna.db"
    trials = [
        "hparams_search=cartpole_optuna",
        "debug=smoke",
        "collector.learning_starts=600",  # env steps: room for the search space's largest batch (512)
        "env_steps=800",
        "progress_bar=false",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage=sqlite:///{db}",
    ]
    ids = []
    for i in (0, 1):
        command = [
            PYTHON,
            "train.py",
            *trials,
            f"hydra.sweeper.sampler.seed={i}",
            f"hydra.sweep.dir={folder / f'w{i}'}",
        ]
        submit = ["sbatch", "--parsable", "-c", "1", "--mem=1G", "-o", str(folder / f"worker{i}.log")]
        out = subprocess.run(
            [*submit, "--wrap", " ".join(command)], cwd=ROOT, capture_output=True, text=True, env=_env()
        )
        assert out.returncode == 0, out.stderr
        ids.append(out.stdout.strip())
    _wait_for("both workers", lambda: all(_job(i)["JobState"] not in ("PENDING", "RUNNING", "COMPLETING") for i in ids))
    for i, job_id in enumerate(ids):
        assert _job(job_id)["JobState"] == "COMPLETED", (folder / f"worker{i}.log").read_text()[-3000:]
    with sqlite3.connect(db) as con:
        studies = con.execute("SELECT study_name FROM studies").fetchall()
        states = con.execute("SELECT state FROM trials").fetchall()
    assert studies == [("cartpole_dqn",)]
    assert sorted(s for (s,) in states) == ["COMPLETE"] * 4  # 2 trials from each job, in one study
    for i in (0, 1):
        assert len(list((folder / f"w{i}").glob("*/summary.json"))) == 2
