"""``hydra/launcher=slurm``: Hydra's submitit SLURM launcher, failures reported at once and in one line.

The plugin's launcher (``hydra/launcher=submitit_slurm``) submits the sweep as one array job and then waits for
its jobs in order, so a job that dies is only noticed once every job before it is done, and is reported as a
submitit traceback. This one submits the same array job the same way, and then:

- watches all jobs at once: the first that ends without a result (``scancel``, SIGKILL, out of memory, a lost
  node) fails the sweep within seconds, naming the job, its state and its log file; the other jobs are left
  running (they write their own run dirs; ``scancel`` them if they are not wanted);
- a submission that SLURM refuses (a partition or account that does not exist, a time over the partition's
  limit) ends with SLURM's own message in one line;
- a job that ran but failed (e.g. "timed-out too many times") is returned to the sweeper as a failed job,
  as the plugin's launcher does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as PluginSlurmLauncher
except ImportError:  # no sweep extra: Hydra still imports every hydra_plugins module; this one then offers nothing
    BaseQueueConf = None
    PluginSlurmLauncher = object

log = logging.getLogger(__name__)

POLL_S = 1.0  # seconds between looks at the jobs' states (one squeue-sized query for the whole array)


class SlurmJobFailed(CompactHydraException):
    """A SLURM job of the sweep ended without a result, or SLURM refused the sweep (Hydra prints one line)."""


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1]


class SlurmLauncher(PluginSlurmLauncher):  # type: ignore[misc,valid-type]
    """Hydra's submitit SLURM launcher that fails fast and plainly (see the module docstring)."""

    def _executor(self) -> Any:
        """The submitit executor, set up exactly as the plugin's ``launch`` sets it up."""
        import submitit

        params = self.params
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=params["submitit_folder"],
            **{f"{self._EXECUTOR}_max_num_timeout": params["max_num_timeout"]} if "max_num_timeout" in params else {},
        )
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in baseparams else f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k not in init_keys}
        )
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit one array job for the batch, wait for all of it, fail at the first job that died."""
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info("Submitit 'slurm' sweep output dir : %s", sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        params, labels = [], {}
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            labels[idx] = " ".join(filter_overrides(overrides))
            log.info("\t#%d : %s", idx, labels[idx])
            params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        try:
            jobs = executor.map_array(self, *zip(*params))
        except submitit.core.utils.FailedJobError as err:  # sbatch said no: its own words, one line
            raise SlurmJobFailed(f"error: SLURM refused the sweep: {_one_line(str(err))}") from None
        log.info("submitted SLURM job %s (%d tasks)", jobs[0].job_id.split("_")[0], len(jobs))
        numbered = list(zip(labels, jobs))
        pending = dict(numbered)
        watcher = jobs[0].watcher
        while pending:
            watcher.update()  # one state query for the whole array (submitit's own backs off to minutes)
            for idx, job in list(pending.items()):
                if job.paths.result_pickle.exists():
                    del pending[idx]
                elif watcher.is_done(job.job_id, mode="cache"):
                    self._died(idx, labels[idx], job)
                    del pending[idx]
            if pending:
                time.sleep(POLL_S)
        returns = []
        for idx, job in numbered:
            try:
                returns.append(job.results()[0])
            except Exception as err:  # an error outside the task function (submitit's own): its last line
                raise SlurmJobFailed(
                    f"error: SLURM job {job.job_id} (#{idx} {labels[idx]}) failed: {_one_line(str(err))}; "
                    f"see {job.paths.stderr}"
                ) from None
        return returns

    @staticmethod
    def _died(idx: int, label: str, job: Any) -> None:
        time.sleep(0.5)  # a result written just as the state turned final: not a death
        if job.paths.result_pickle.exists():
            return
        raise SlurmJobFailed(
            f"error: SLURM job {job.job_id} (#{idx} {label}) ended {job.state} without a result: the sweep stops "
            f"(its other jobs keep running); see {job.paths.stderr} (and {job.paths.stdout})"
        )
