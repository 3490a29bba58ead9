"""Reject a bad run before anything heavy starts, with one message that names the key and the fix.

Each part checks its own knobs beside its code (``dqnlab/{envs,data,learn,run}/checks.py``, the SLURM launcher
in ``dqnlab/cluster/slurm.py``); this module only gathers them, at three moments, each as early as what it
checks allows:

1. :class:`ValidateOnStart`, a Hydra callback (``conf/hydra/default.yaml``), runs :func:`validate_config` and
   checks that the output directory is writable before Hydra creates the run directory, so a bad command line
   leaves no empty ``outputs/<date>/<time>`` behind. :func:`refuse_unknown_override_keys` (called by
   ``train.py`` before Hydra starts) names the key a misspelled override meant.
2. :func:`validate_config`, called again at the top of :func:`dqnlab.train.run` (so the compose API and every
   multirun job get it too): required values, types and ranges of the knobs, their relations, config keys that
   the ``_target_`` does not accept, a GPU that is not there, a checkpoint that is not one, and a replay buffer
   too large for memory whatever the observations.
3. :func:`validate_env`, once the env exists and before the network and buffer are built: its spaces, and the
   exact replay buffer size. The networks check their own input shape right after.

Problems found together are reported together, in one :class:`~dqnlab.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dqnlab.checks import Knob, check_knobs, raise_all, select
from dqnlab.cluster.slurm import check_slurm_launcher
from dqnlab.conf_keys import (
    chosen_options,
    group_not_chosen,
    key_of_another_option,
    logger_not_chosen,
    unknown_group_key,
)
from dqnlab.data import checks as data_checks
from dqnlab.envs import checks as env_checks
from dqnlab.errors import EXIT_CONFIG_ERROR, ConfigError, full_error_requested, print_error
from dqnlab.learn import checks as learn_checks
from dqnlab.run import checks as run_checks
from dqnlab.run.checks import GROUPS, check_writable_dir, unknown_top_level_key
from dqnlab.run.ckpt_file import check_checkpoint, peek_checkpoint
from dqnlab.run.resume_config import restore_config

if TYPE_CHECKING:
    from gymnasium.vector import VectorEnv

# Every numeric knob, in the order its problems are reported.
KNOBS: tuple[Knob, ...] = (*run_checks.KNOBS, *env_checks.KNOBS, *learn_checks.KNOBS, *data_checks.KNOBS)


def _raw(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, interpolations and ``???`` left as written, without ``hydra``.

    Unresolved, because the Hydra callback sees the config before ``${hydra:runtime.output_dir}`` exists.
    """
    raw = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    return raw


# Hydra's flags that take a value (`--cfg job`, `-cn NAME`, ...): the value is not an override.
_FLAGS_WITH_VALUE = frozenset(
    [
        "--cfg",
        "-c",
        "--package",
        "-p",
        "--config-path",
        "-cp",
        "--config-name",
        "-cn",
        "--config-dir",
        "-cd",
        "--experimental-rerun",
    ]
)
# Flags that give Hydra other config files, whose groups may hold keys dqnlab's conf/ does not.
_CONFIG_SOURCE_FLAGS = frozenset(["--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"])


def unknown_group_option(group: str, value: str, conf_dir: Path) -> str | None:
    """``env=cartpol``: an option no file under ``conf/<group>/`` defines, with the close match (Hydra's own
    message is a dozen lines of search paths).
    """
    options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
    if not options:
        return None
    for name in (v.strip() for v in value.strip("[]").split(",")):
        if not name or name in options or name == "null":
            continue
        close = difflib.get_close_matches(name.lower(), options, n=1, cutoff=0.6)
        fix = f"did you mean {group}={close[0]}?" if close else f"the options are {', '.join(options)}"
        if group == "env" and re.fullmatch(r"[\w/:.-]+-v\d+", name):  # a gymnasium id given as a preset
            fix += f" For any gymnasium id: env=gym env.id={name}"
        return f"{group} has no option {name!r} (conf/{group}/{name}.yaml): {fix}"
    return None


def refuse_unknown_override_keys(argv: list[str], conf_dir: Path | None = None) -> None:
    """``optimzer.lr=1e-3``: Hydra's own message suggests ``+optimzer.lr=1e-3``, which would add a key nothing
    reads; name the key dqnlab has instead (exit status 2), keeping Hydra's words in the message.

    With ``conf_dir`` (dqnlab's ``conf/``), ``optimizer.lrr=1`` too: a second-level key that no file there gives
    its group (:mod:`dqnlab.conf_keys`); skipped when the command line points Hydra at other config files.
    """
    if conf_dir is not None and any(arg.split("=")[0] in _CONFIG_SOURCE_FLAGS for arg in argv):
        conf_dir = None  # the user's own config files may give a group any key
    # The group options the command line selects (one each: a sweep over options, env=a,b, checks nothing here).
    picks = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in GROUPS and "," not in a)
    chosen = chosen_options(picks, str(conf_dir)) if conf_dir is not None else {}
    skip = False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg in _FLAGS_WITH_VALUE
            continue
        match = re.match(r"([A-Za-z_][\w./@-]*)=", arg)  # plain `key=value`; `+key=`/`~key` are checked in run()
        if not match:
            continue
        key = match.group(1)
        problem = unknown_top_level_key(key.replace("/", ".").split("@")[0])
        if not problem and conf_dir is not None and key in GROUPS:
            problem = unknown_group_option(key, arg.split("=", 1)[1], conf_dir)
        if not problem and conf_dir is not None and "/" not in key and "@" not in key:
            problem = unknown_group_key(key, str(conf_dir), GROUPS)
            problem = problem or key_of_another_option(key, chosen, str(conf_dir))
            problem = problem or logger_not_chosen(key, argv, str(conf_dir))
            problem = problem or group_not_chosen(key, argv, chosen, str(conf_dir))
        if problem:
            print(f"error: {arg}: {problem} (Hydra: Could not override {key!r})", file=sys.stderr)
            sys.exit(EXIT_CONFIG_ERROR)


def validate_config(cfg: DictConfig) -> None:
    """Check the composed config before anything is built; raise one :class:`ConfigError` listing the problems.

    The import-free checks (required values, ranges, relations, choices) run first and report together; the
    checks that import torch and the ``_target_``s (unknown keys, devices, memory, checkpoint) run once they pass.

    Args:
        cfg: The composed config of ``conf/train.yaml`` (with or without its ``hydra`` node).

    Raises:
        ConfigError: Naming each offending key and its fix.

    """
    raw = _raw(cfg)
    problems = run_checks.top_level_problems(raw) + run_checks.missing_problems(raw)
    knob_problems, valid = check_knobs(cfg, KNOBS)
    problems += knob_problems
    problems += data_checks.relation_problems(valid) + learn_checks.relation_problems(valid)
    problems += learn_checks.choice_problems(cfg) + data_checks.choice_problems(cfg) + run_checks.choice_problems(cfg)
    problems += learn_checks.list_problems(cfg)
    # The checks above import nothing, so a mistyped number fails in under a second; the ones below import
    # torch and every _target_ (Lightning alone takes seconds), so they run once those pass.
    raise_all(problems)
    problems += run_checks.target_problems(raw)
    problems += env_checks.config_problems(cfg)  # env=minatar: an unknown env.game, before the run dir exists
    problems += run_checks.device_problems(cfg) + data_checks.device_problems(cfg)
    if not problems:  # the memory estimate needs a sane device and capacity
        problems += data_checks.memory_problems(cfg, valid)
    ckpt_path = select(cfg, "ckpt_path")
    if isinstance(ckpt_path, str):
        problems += check_checkpoint(ckpt_path)
    raise_all(problems)


def validate_env(cfg: DictConfig, env: VectorEnv, masked: bool = False) -> None:
    """Check what only the built env tells: its spaces, and the exact replay buffer size for its observations
    (and its action masks when ``masked``: one byte per action per transition).

    Call it right after the env is built, before the network and the buffer are.

    Raises:
        EnvConfigError: The env's spaces do not suit DQN.
        BufferTooLargeError: The replay buffer would not fit in its device's memory.

    """
    env_checks.check_spaces(cfg, env)
    env_checks.check_render(cfg, env)  # eval.video=true on an env that cannot be filmed: refused before training
    learn_checks.check_augment(cfg, env)
    data_checks.check_buffer_fits(cfg, env, masked)


def _newest_run_with_a_checkpoint(root: Path) -> Path | None:
    """The most recent ``<run dir>`` under ``root`` (``outputs/``) with a ``checkpoints/last.ckpt``."""
    found = sorted(root.glob("*/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime_ns) if root.is_dir() else []
    return found[-1].parent.parent if found else None


def check_run_dir(config: DictConfig) -> DictConfig | None:
    """Before Hydra creates the run dir: a resume that cannot resume, or a new run over an old one, is refused.

    Returns the config a resume will run (the checkpoint's, with the command line's allowed changes), for
    :func:`validate_config` to check instead of today's defaults; ``None`` for a new run.

    - ``ckpt_path=last`` needs the run dir that holds the run: without ``hydra.run.dir`` Hydra makes a new,
      empty timestamped dir, which never holds a ``last.ckpt``.
    - A run dir that holds a run (``summary.json`` or ``checkpoints/last.ckpt``) is never overwritten by a new
      run; it is resumed with ``ckpt_path=last``.
    - ``ckpt_path`` with overrides a resume cannot take (:mod:`dqnlab.run.resume_config`): refused here, before
      any file is written, with the run's own values in the message.

    Raises:
        ConfigError: Naming what to do instead.

    """
    run_dir = Path(str(config.hydra.run.dir))
    ckpt_path = select(config, "ckpt_path")
    chose_dir = any(o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in config.hydra.overrides.hydra)
    if ckpt_path == "last" and not chose_dir and not (run_dir / "checkpoints" / "last.ckpt").is_file():
        newest = _newest_run_with_a_checkpoint(run_dir.parent.parent)
        example = f" (the newest run with one: hydra.run.dir={newest})" if newest else ""
        raise ConfigError(
            "ckpt_path=last resumes the run in hydra.run.dir, but none was given, so this would be a new, empty "
            f"run dir: add hydra.run.dir=<the run's dir>{example}, or give the file: "
            "ckpt_path=<run dir>/checkpoints/last.ckpt"
        )
    if not ckpt_path:
        held = [name for name in ("summary.json", "checkpoints/last.ckpt") if (run_dir / name).is_file()]
        if held:
            raise ConfigError(
                f"hydra.run.dir={run_dir} holds a run ({', '.join(held)}): resume it with ckpt_path=last, or choose "
                "another hydra.run.dir for a new run"
            )
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(str(ckpt_path)).expanduser()
    if not path.is_file() or check_checkpoint(str(path)):
        return None  # ckpt_path=last with nothing to resume starts fresh; an unreadable file is validate_config's
    saved = peek_checkpoint(str(path))["config"]
    if not saved:
        return None  # a checkpoint older than its stored config: the command line's config runs
    task = OmegaConf.to_container(config, resolve=False)
    assert isinstance(task, dict)
    task.pop("hydra", None)
    task.setdefault("paths", {})["output_dir"] = str(run_dir)  # ${hydra:...} cannot resolve before the run
    return restore_config(OmegaConf.create(task), saved, list(config.hydra.overrides.task))[0]


class ValidateOnStart(Callback):
    """Hydra callback: validate before Hydra creates the run directory (see the module docstring).

    A config error ends the process here with ``error: <message>`` and exit status 2, like errors raised
    inside the run (see :mod:`dqnlab.errors`).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check the whole config and what the run dir holds, then that ``hydra.run.dir`` is writable."""
        try:
            # A resume runs the checkpoint's config, not today's defaults: that is the one to check.
            restored = check_run_dir(config)
            validate_config(restored if restored is not None else config)
            check_writable_dir(config.hydra.run.dir, "hydra.run.dir")
        except ConfigError as err:
            self._exit(err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check that ``hydra.sweep.dir`` is writable; each job validates its own config in ``run()``.

        The config seen here lacks the sweep's overrides (``env.id=A,B`` leaves ``env.id`` at ``???``), so
        validating it would reject good sweeps.
        """
        try:
            check_writable_dir(config.hydra.sweep.dir, "hydra.sweep.dir")
            check_slurm_launcher(config)  # a SLURM launcher where there is no sbatch
        except ConfigError as err:
            self._exit(err)

    @staticmethod
    def _exit(err: ConfigError) -> None:
        # Hydra's run_and_report would print a traceback for an exception from a callback; SystemExit it lets by.
        if full_error_requested():
            raise err
        print_error(err)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
