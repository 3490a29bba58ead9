"""``run(cfg)``: build env, network, module, replay, callbacks, loggers and trainer from the config; fit."""

from __future__ import annotations

import inspect
import json
import logging
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from gymnasium.vector import VectorEnv
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from dqnlab.checks import raise_all
from dqnlab.cluster.slurm import lightning_plugins, requeue_ckpt_path
from dqnlab.data.action_masks import detect_action_masks
from dqnlab.data.collect import EnvStepper
from dqnlab.data.replay import ReplayBuffer
from dqnlab.envs.encoding import describe_observations
from dqnlab.envs.vector import match_frame_stacking, play_arguments, torch_dtype
from dqnlab.envs.video import make_render_env, render_problem
from dqnlab.errors import ConfigError
from dqnlab.io import atomic_write_json, remove_if_only_started, remove_stale_temp_files
from dqnlab.learn.module import DQNModule
from dqnlab.learn.networks import build_network
from dqnlab.learn.reset import PeriodicReset
from dqnlab.learn.target import TargetNetworkSync
from dqnlab.run.checkpoint import (
    CHECKPOINT_DIR,
    AtomicCheckpointIO,
    DQNCheckpoint,
    resolve_ckpt_path,
)
from dqnlab.run.checks import check_writable_dir
from dqnlab.run.ckpt_file import check_checkpoint, peek_checkpoint
from dqnlab.run.evaluation import Evaluator
from dqnlab.run.nonfinite import NonFiniteGuard
from dqnlab.run.progress import EnvStepProgressBar
from dqnlab.run.provenance import describe as describe_provenance
from dqnlab.run.provenance import segment_start, utc_now
from dqnlab.run.report import as_counts, cpu_hint, describe_run, describe_update, format_summary, update_summary
from dqnlab.run.resume import ResumeState
from dqnlab.run.resume_config import restore_config, run_overrides, write_run_files
from dqnlab.run.stopping import SignalStop, StopOnSignal
from dqnlab.run.tracking import AtomicCSVLogger, carry_over_csv_rows, finish_wandb, read_metric_rows
from dqnlab.share.agent_file import network_module
from dqnlab.validate import validate_config, validate_env

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def resolve_device(accelerator: str) -> torch.device:
    """The device Lightning will put the module on, known before the Trainer exists (for the buffer)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


def _quiet_lightning() -> None:
    # Lightning's banners ("GPU available...", "TPU available...") drown the progress bar on every run.
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    # dqnlab takes one batch per step from `dataloader_iter` on purpose (sampling after env stepping).
    warnings.filterwarnings("ignore", message=".*dataloader_iter.*")
    # Hydra's train.log shares the run dir with metrics.csv.
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
    # The checkpoint is taken after the update on purpose: it is the state a resume continues from.
    warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")
    # A resume restarts the replay stream, which is stateless (it samples the restored buffer).
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    # Resuming into a new run dir: the checkpoint callback starts a fresh list of files there, as it should.
    warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")
    # Wherever SLURM's client is installed (every cluster login node) Lightning suggests `srun python ...`; dqnlab
    # goes to SLURM through Hydra's submitit launcher, one process per job, so the advice does not apply.
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")


def build_loggers(cfg: DictConfig) -> list[Any]:
    """Every logger selected in the ``logger`` group (several may be combined: ``logger=[csv,wandb]``).

    ``metrics.csv`` is always among them (``plot.py``, a resume and the summary read it): ``logger=wandb`` or
    ``logger=tensorboard`` add to it. Only ``logger=[]`` logs nothing (benchmarks).
    """
    if not cfg.get("logger"):
        return []
    loggers = [instantiate(node) for node in cfg.logger.values() if node is not None and "_target_" in node]
    if loggers and not any(isinstance(logger, CSVLogger) for logger in loggers):
        loggers.insert(0, AtomicCSVLogger(save_dir=cfg.paths.output_dir, name="", version=""))
    return loggers


@dataclass
class Components:
    """Everything a run is made of, built from the config but not yet fitted."""

    env: VectorEnv
    module: DQNModule
    buffer: ReplayBuffer
    collector: EnvStepper
    evaluator: Evaluator
    trainer: pl.Trainer
    checkpoint: DQNCheckpoint | None = None

    def close(self, failed: bool = False) -> None:
        """Close the envs (Lightning skips teardown hooks after an exception) and end the W&B run, if any."""
        self.collector.close()
        self.env.close()
        self.evaluator.teardown(self.trainer, self.module, "fit")
        if any(isinstance(logger, WandbLogger) for logger in self.trainer.loggers):
            finish_wandb(failed)


def build(cfg: DictConfig, stop: SignalStop | None = None, kept_compute: dict[str, bool] | None = None) -> Components:
    """Instantiate env, network, module, replay, callbacks, loggers and trainer from a composed config.

    The network and buffer are completed with what only the env knows (observation shape and dtype,
    action count, number of env streams); the trainer with ``max_steps`` derived from ``env_steps``. ``stop``
    holds the run's SIGINT/SIGTERM handlers (``run`` installs them around ``fit``; ``None``: a new set).
    ``kept_compute``: a resumed run's own compute choice from its checkpoint, kept instead of measured.
    """
    stop = stop if stop is not None else SignalStop()
    # Adam's and RMSprop's moments of dead ReLU units decay geometrically into subnormal floats, which make
    # torch's CPU kernels 10-20x slower (Acrobot's fused Adam step: 648 us a call, 85 us flushed). Flushing them to 0
    # changes no value above 1.2e-38. It sets this thread's CPU flags, the one thread that trains.
    torch.set_flush_denormal(bool(cfg.get("flush_denormal", True)))
    env_factory = instantiate(cfg.env, _recursive_=False)  # env.wrappers: built by the factory, on each copy
    env = env_factory()
    try:
        match_frame_stacking(cfg.buffer, env)  # an env that stacks frames (Atari) sets buffer.frame_stack
        # An env whose reset info has action_mask: the buffer stores the masks, and the run acts and bootstraps
        # among the valid actions only (data/action_masks.py). The look is one seeded reset; false: none.
        masked = detect_action_masks(env, cfg.collector.get("action_mask", "auto"), cfg.seed)
        validate_env(cfg, env, masked)  # spaces, and the replay size with its masks, before anything is allocated
        obs_space, num_actions = env.single_observation_space, int(env.single_action_space.n)
        device = resolve_device(cfg.trainer.get("accelerator", "auto"))

        # A distributional learner (algo=c51) sets the network's output atoms.
        num_atoms = int(cfg.algo.get("num_atoms", 1))
        network_factory = partial(build_network, instantiate(cfg.network), obs_space.shape, num_actions, num_atoms)
        network = network_factory()
        augment = instantiate(cfg.augment) if cfg.get("augment") else None
        module: DQNModule = instantiate(
            cfg.algo, network=network, optimizer=instantiate(cfg.optimizer), augment=augment
        )

        buffer_device = device if cfg.buffer.get("device", "auto") == "auto" else cfg.buffer.device
        buffer: ReplayBuffer = instantiate(
            cfg.buffer,
            obs_shape=obs_space.shape,
            obs_dtype=torch_dtype(obs_space.dtype),
            num_envs=env.num_envs,
            device=buffer_device,
            seed=cfg.seed,
            n_step=module.n_step,  # the buffer sums the learner's n-step returns
            gamma=module.gamma,
            **({"mask_size": num_actions} if masked else {}),  # a buffer of your own needs the key only then
        )
        module.attach_buffer(buffer)

        collector: EnvStepper = instantiate(
            cfg.collector, env=env, buffer=buffer, total_env_steps=cfg.env_steps, seed=cfg.seed
        )
        target_sync: pl.Callback = instantiate(cfg.target)
        if isinstance(target_sync, TargetNetworkSync):
            target_sync.attach(module)  # before the header and the measurement: is the pass over s' shared?
        # A conv net on a CPU: fp32 or bf16, measured (unless the run is too short to repay measuring).
        module.keep_compute(kept_compute)  # a resume: the run's own choice, not measured again
        module.pick_compute(device, tuple(obs_space.shape), collector.total_gradient_steps)
        evaluator: Evaluator = instantiate(
            cfg.eval,
            env_factory=env_factory,
            collector=collector,
            seed=cfg.seed + 1_000_000,
            video_dir=str(Path(cfg.paths.output_dir) / "videos"),
            render_env_factory=partial(make_render_env, cfg.env),
        )
        # ResumeState first: it restores the global RNG states before any other hook of the first step runs.
        # The guard right after the collector: it acts on the non-finite count of the row the collector logs.
        config = OmegaConf.to_container(cfg, resolve=True)
        guard = NonFiniteGuard(collector, cfg.get("nonfinite", "error"), checkpoint_dir(cfg))
        # The progress bar before the collector: it is open during the collector's random prefill.
        checkpoint = build_checkpoint(cfg, collector, stop)
        reset: pl.Callback | None = instantiate(cfg.reset) if cfg.get("reset") else None
        if isinstance(reset, PeriodicReset):
            reset.attach(module, network_factory, cfg.seed)  # fresh inits as the network's config builds them
        callbacks: list[pl.Callback] = [
            ResumeState(collector, config),
            StopOnSignal(stop, collector, checkpointing=checkpoint is not None and checkpoint.handle_signals),
            *([EnvStepProgressBar(collector)] if cfg.get("progress_bar", True) else []),
            collector,
            guard,
            target_sync,
            *([reset] if reset is not None else []),  # after the target sync: a reset's target copy comes last
            evaluator,
        ]
        if checkpoint is not None:
            callbacks.append(checkpoint)  # Lightning runs it after all others, whatever its place

        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            max_steps=max(collector.total_gradient_steps, 1),
            callbacks=callbacks,
            logger=build_loggers(cfg) or False,
            enable_checkpointing=checkpoint is not None,
            plugins=[AtomicCheckpointIO(), *lightning_plugins()],  # under SLURM: Lightning's auto-requeue off
        )
    except BaseException:
        env.close()
        raise
    return Components(env, module, buffer, collector, evaluator, trainer, checkpoint)


def build_checkpoint(cfg: DictConfig, collector: EnvStepper, stop: SignalStop | None = None) -> DQNCheckpoint | None:
    """The checkpoint callback of the ``checkpoint`` group, completed with the collector (``None``: no group)."""
    node = cfg.get("checkpoint")
    if not node or "_target_" not in node:
        return None
    return instantiate(node)(collector=collector, stop=stop)


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where the run's checkpoints go (``ckpt_path=last`` looks for ``last.ckpt`` there)."""
    node = cfg.get("checkpoint")
    if node and node.get("dirpath"):
        return Path(node.dirpath)
    return Path(cfg.paths.output_dir) / CHECKPOINT_DIR


def _without_run_dir_on_refusal(fn: Any, out_dir: Path) -> Any:
    """``fn`` that removes a run dir holding nothing but Hydra's start files when it raises a ConfigError."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError:
            remove_if_only_started(out_dir)
            raise

    return wrapped


def _overrides() -> list[str] | None:
    """The command's overrides (Hydra's task overrides); ``None`` outside Hydra (the compose API)."""
    return [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else None


def restore_run_config(cfg: DictConfig, resume: dict[str, Any], ckpt_path: str, out_dir: Path) -> DictConfig:
    """The checkpoint's run config with the command line's allowed changes (:mod:`dqnlab.run.resume_config`),
    checked like any config and written to the run dir's ``.hydra/`` (``config.yaml``, where the run's config is
    read, and the run's own ``overrides.yaml``). A refused resume of the run in its own dir puts its files back.
    """
    overrides, saved = _overrides(), resume["config"]
    first = (resume["provenance"] or [{}])[0].get("overrides")  # the run's command line, when its checkpoint has it
    try:
        restored, changed = restore_config(cfg, saved, overrides)
        validate_config(restored)
    except ConfigError:
        if Path(ckpt_path).resolve().parent == Path(checkpoint_dir(cfg)).resolve():  # this run dir's own run:
            # Hydra has written the refused command's config and overrides over the run's.
            write_run_files(out_dir / ".hydra", restore_config(cfg, saved, [])[0], first)
        raise
    said = f"; the command line changed {'; '.join(changed)}" if changed else ""
    log.info("the run's config is restored from the checkpoint%s", said)
    write_run_files(out_dir / ".hydra", restored, run_overrides(first, overrides or []) if first is not None else None)
    return restored


def run(cfg: DictConfig) -> dict[str, float]:
    """Train one DQN agent as configured and return the run summary (also written to ``summary.json``).

    Args:
        cfg: The composed Hydra config (``conf/train.yaml``).

    Returns:
        Final metrics, the same dict as ``summary.json``: ``eval/return_mean`` and friends, counters and
        throughput. Hydra sweepers optimise a key of it.
    """
    t_start, started_utc = time.perf_counter(), utc_now()  # the segment's start, as wall time and in UTC
    if not cfg.get("ckpt_path"):  # a resume checks the run's own config once restored (restore_run_config)
        validate_config(cfg)  # fail in a second with the key and the fix, not minutes later in a traceback
    else:
        raise_all(check_checkpoint(str(cfg.ckpt_path)))  # a truncated or foreign file: one line, untouched
    _quiet_lightning()
    out_dir = Path(cfg.paths.output_dir)
    check_writable_dir(out_dir, "paths.output_dir")

    # A requeued SLURM job resumes from its run dir's last.ckpt (cluster/slurm.py); a corrupt last.ckpt: ConfigError.
    ckpt_path = resolve_ckpt_path(requeue_ckpt_path(cfg.get("ckpt_path")), checkpoint_dir(cfg))
    earlier_rows: list[dict[str, Any]] = []
    kept_compute = None  # a resumed conv net computes as the run did (precision, layout): no new measurement
    if ckpt_path is not None:
        resume = peek_checkpoint(ckpt_path)
        kept_compute = resume["compute"]
        log.info("resuming from %s at env step %d", ckpt_path, resume["env_steps"])
        if resume["config"]:  # the run's own config, with what the command line may change laid over it
            cfg = restore_run_config(cfg, resume, str(ckpt_path), out_dir)
        else:  # a checkpoint without its config: the command line's config runs
            validate_config(cfg)
        # Resumed in its own run dir: keep metrics.csv's rows up to the checkpoint (the CSV logger starts anew).
        earlier_rows = read_metric_rows(out_dir / "metrics.csv", resume["env_steps"])
    elif cfg.get("ckpt_path"):
        validate_config(cfg)  # ckpt_path=last with nothing to resume: a new run
    for folder in (checkpoint_dir(cfg), out_dir):  # temp files of a process killed mid-write (SIGKILL, OOM)
        remove_stale_temp_files(folder)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    pl.seed_everything(cfg.seed, verbose=False)

    parts: Components | None = None
    failed = True
    # Refused once the env exists (its spaces, the replay's size): no run dir is left behind for a new run.
    builder = build if ckpt_path is not None else _without_run_dir_on_refusal(build, out_dir)
    # Ctrl-C / SIGTERM from here to the end of the final evaluation (dqnlab.run.stopping): a first signal during the
    # set-up (allocating a large replay takes seconds) stops at the first env step, a second one at once.
    stop = SignalStop()
    try:
        stop.install()
        parts = builder(cfg, stop, kept_compute)
        # The run's wall time counts from here on (and across segments: ResumeState adds the earlier ones).
        resume_state = next(cb for cb in parts.trainer.callbacks if isinstance(cb, ResumeState))
        resume_state.started = t_start
        torch_device = resolve_device(cfg.trainer.get("accelerator", "auto"))
        device = torch_device.type
        resume_state.segment = segment_start(torch_device, started_utc, _overrides())
        log.info("%s", describe_run(cfg, device))
        log.info("%s", describe_provenance(resume_state.segment))
        for line in describe_update(cfg, parts.module):
            log.info("%s", line)
        if type(parts.collector).act is not EnvStepper.act:  # an exploration policy of your own
            log.info("exploration: %s redefines act (collector._target_)", type(parts.collector).__name__)
        if observations := describe_observations(parts.env):  # Discrete or Dict observations: how they were encoded
            log.info("%s", observations)
        hint = cpu_hint(cfg, tuple(parts.env.single_observation_space.shape), device)
        if hint and ckpt_path is None:
            log.warning("%s", hint)
        for logger in parts.trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        carry_over_csv_rows(parts.trainer.loggers, earlier_rows)
        t_fit = time.perf_counter()
        # A resume reads the training env's state, a pickle of gymnasium envs (ResumeState): not loadable with
        # torch's weights_only=True, so resume only from your own runs (Lightning >= 2.5 takes the flag).
        takes_flag = "weights_only" in inspect.signature(parts.trainer.fit).parameters
        fit_kwargs = {"weights_only": False} if takes_flag else {}
        parts.trainer.fit(parts.module, ckpt_path=ckpt_path, **fit_kwargs)
        fit_s = time.perf_counter() - t_fit
        failed = False
    finally:
        stop.restore()
        if parts is not None:
            parts.close(failed)
        finish_wandb(failed)  # one W&B run per job, also when a multirun runs its jobs in one process

    collector = parts.collector
    segment_steps = collector.env_steps - collector.fit_start_env_steps
    if ckpt_path is not None and segment_steps == 0 and (out_dir / SUMMARY_FILE).is_file():
        # The resume of a finished run (a repeated or requeued command) trains nothing: its summary stays.
        summary = json.loads((out_dir / SUMMARY_FILE).read_text())
        log.info("the run had finished before: %s is left as it was", SUMMARY_FILE)
        log.info("%s", format_summary(summary, out_dir, *_next_files(cfg, parts)))
        return summary
    resumed = resume_state.totals()
    summary: dict[str, Any] = {
        **parts.evaluator.final,
        "env_steps": float(collector.env_steps),
        "gradient_steps": float(parts.trainer.global_step),
        "episodes": float(collector.episodes),
        "wall_time_s": resumed["wall_time_s"],  # across segments: this process's and those it resumed
        # This process's own env steps over its own fit time (a resume took the earlier ones in another).
        "env_steps_per_s": segment_steps / max(fit_s, 1e-9),
        "seed": float(cfg.seed),
        # The mean training return of the last 100 episodes: the learning curves papers report (MinAtar's)
        **(
            {"rollout/return_ma100": sum(collector.recent_returns) / len(collector.recent_returns)}
            if collector.recent_returns
            else {}
        ),
        # A resume without the replay buffer: the extra env steps that refilled it (not counted in env_steps)
        **({"refill_env_steps": collector.refill_env_steps} if collector.refill_env_steps else {}),
        "update_path": parts.module.update_path,  # cuda_graph, or eager (the CPU, or a failed recording)
        **update_summary(cfg, parts.module),
        "provenance": resume_state.provenance(),  # per segment: code version, machine, versions, UTC start and end
    }
    if resumed["segments"] > 1:  # this segment's own share, beside the run's totals
        segment = {"segment_env_steps": segment_steps, "segment_wall_time_s": time.perf_counter() - t_start}
        summary |= {"segments": resumed["segments"], **segment}
    summary = as_counts(summary)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    log.info("%s", format_summary(summary, out_dir, *_next_files(cfg, parts)))
    return summary


def _next_files(cfg: DictConfig, parts: Components) -> tuple[Path | None, tuple[str, ...], Path | None, bool]:
    """What the printed next commands take (``format_summary``'s arguments after the run dir): ``last.ckpt``; the
    overrides that playing needs (``env.id=`` for your own env, ``allow_module=`` for your wrappers and network:
    a file never makes dqnlab import a module by itself); ``best.ckpt`` when ``eval.keep_best`` wrote one; and
    whether the env can be filmed (``video=true``).
    """
    last = parts.checkpoint.last_path if parts.checkpoint is not None else None
    own_network = network_module(OmegaConf.to_container(cfg, resolve=True))
    play_args = play_arguments(cfg.env, (own_network,) if own_network else ())
    best = parts.checkpoint.best_path if parts.checkpoint is not None else None
    play = best if best is not None and best.is_file() and cfg.eval.get("keep_best") else None
    can_film = render_problem(cfg.env, parts.env.single_observation_space) is None
    return last, play_args, play, can_film
