"""Train a DQN agent: ``python train.py [overrides]`` (see README.md)."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

# No cyclic garbage collection while torch, Lightning and the config's targets are imported: the collector would
# scan their ~400k new objects many times over (a sixth of the start). main() freezes them and turns it back on.
gc.disable()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from dqnlab.errors import exit_on_config_error  # noqa: E402
from dqnlab.validate import refuse_unknown_override_keys  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the metric named by ``optimized_metric`` for sweepers.

    A bad config ends the run with ``error: <message>`` on stderr and exit status 2, no traceback
    (``HYDRA_FULL_ERROR=1`` shows it); see ``docs/robustness.md``.
    """
    # Hydra catches what the task function raises and prints a traceback, so config errors are caught here.
    with exit_on_config_error():
        from dqnlab.train import run  # imported late so `--help` and config errors stay fast

        if not gc.isenabled():
            # The process's first job: the imported modules live as long as the process, later collections skip
            # them. Only then: a sweep's later job (Hydra's launchers run several in one process) would freeze the
            # job before it, its trainer, replay memory and envs, for the rest of the sweep.
            gc.freeze()
            gc.enable()
        try:
            summary = run(cfg)
        finally:
            # The run's trainer, callbacks, replay memory and envs are cyclic garbage now: free them before the
            # next job starts (ale-py's C++ vector env also reports itself leaked if it is still alive at exit).
            gc.collect()
    metric = cfg.get("optimized_metric")
    return summary.get(metric) if metric else None


if __name__ == "__main__":
    # Before Hydra, whose hint for a misspelled key is a `+key=` that adds a key nothing reads.
    refuse_unknown_override_keys(sys.argv[1:], conf_dir=Path(__file__).parent / "conf")
    try:
        main()
    except BrokenPipeError:
        # The reader of stdout left (`python train.py --help | head`): stop quietly, as a Unix tool killed by
        # SIGPIPE would (exit 128 + 13), and point stdout at /dev/null so the exit's flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    # Everything is written and each job freed its own garbage. Interpreter shutdown would collect the ~400k
    # objects that torch and Lightning keep alive, several times over (~0.7 s of a CartPole run's ~20 s); the OS
    # frees them anyway, so they are frozen instead.
    gc.freeze()
