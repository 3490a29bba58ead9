"""A resume continues the run it was: the checkpoint's config is rebuilt, and the command line changes only what
it names, and only where a change keeps the experiment the same.

``python train.py ckpt_path=<run>/checkpoints/last.ckpt env_steps=60000`` composes today's defaults (CartPole's)
before dqnlab sees the checkpoint; :func:`restore_config` puts the run's own config back (every checkpoint
holds it, resolved, as plain data) and lays over it only the keys the command line names:

- keys that may change under a resume (:data:`MAY_CHANGE`: the budget, evaluation, checkpointing, logging,
  progress, threads, the device) take the command line's value;
- any other key the command line names must keep the run's value, or the resume is refused with one line per
  key (``seed=5``, ``env=pong``, ``optimizer.lr=1e-3``: a different experiment is a new run);
- keys the command line does not name keep the run's value, whatever the defaults are today, and so do the keys
  a run sets for itself (:data:`SET_BY_THE_RUN`) unless named one by one: the run's own command repeated (a
  requeue, a second extension) resumes it; a key added to dqnlab since the run was written keeps out of it (the
  code's default) unless named one by one, also through an ``experiment=`` that names every key;
- where the run's files go follows this run dir (paths the old run dir rooted are re-rooted here);
- the run dir's ``.hydra/overrides.yaml`` stays the run's command line (:func:`run_overrides`: the first segment's
  overrides with the changes a resume made), not the resume's ``ckpt_path=... env_steps=...``, so plots group a
  resumed run with its sweep; a refused resume puts the run's own ``config.yaml`` and overrides back
  (:func:`write_run_files`), which Hydra had replaced by the refused command's.

Schedules stay where the run set them: an epsilon ramp given as a fraction of ``env_steps`` is fixed, in env
steps, at the fraction of the run's first budget, so extending a run does not restart its exploration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dqnlab.conf_keys import override_key
from dqnlab.errors import ConfigError
from dqnlab.io import atomic_write_bytes
from dqnlab.legacy import upgrade_targets

# Keys (and key prefixes, ending in ".") whose value may differ between a run and its resume: they change how
# long it runs, how it is watched and saved, and where it computes, not what it learns.
MAY_CHANGE = (
    "env_steps",
    "eval.",
    "checkpoint.",
    "logger.",
    "progress_bar",
    "torch_threads",
    "flush_denormal",
    "nonfinite",
    "optimized_metric",
    "ckpt_path",
    "paths.",
    "trainer.",
    "buffer.device",
    "buffer.memory_fraction",
    "collector.log_every",
    "collector.async_envs",
    "env.num_threads",
    # What a run stopped by non-finite updates is resumed with (run/nonfinite.py names them): a deliberate change
    # of the optimization, recorded in .hydra/config.yaml and said in the log.
    "optimizer.lr",
    "algo.max_grad_norm",
    "algo.loss",
)
# Groups placed at the top level (`# @package _global_`): they may set any key, so naming one names them all.
GLOBAL_GROUPS = ("experiment", "debug", "hparams", "hparams_search")
# Keys a run sets for itself, so its checkpoint holds a value its command line never gave: the frame stacking an
# env declares (envs/vector.match_frame_stacking: Atari's 4 frames, zero padding), and an epsilon ramp given as a
# fraction, fixed in env steps at the first resume (below). Repeating the run's own command (a requeue, a second
# extension) composes the defaults there again; only naming such a key itself (`buffer.frame_stack=8`) asks for
# another value.
SET_BY_THE_RUN = frozenset({"buffer.frame_stack", "buffer.stack_padding", "collector.exploration_steps"})


_ABSENT = object()


def _show(value: Any) -> str:
    return "<absent>" if value is _ABSENT else str(value)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def may_change(key: str) -> bool:
    """Whether ``key`` may take another value in a resume (see :data:`MAY_CHANGE`)."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in MAY_CHANGE)


def named_keys(overrides: list[str]) -> set[str]:
    """The config keys a command line's overrides name: ``a.b=1`` names ``a.b``, a group ``env=pong`` names
    ``env`` (all its keys), a global group (``experiment=...``) names everything (``""``).
    """
    named = set()
    for text in overrides:
        key = override_key(text).split("@")[0].replace("/", ".")
        if key.startswith("hydra.") or key == "hydra":
            continue
        named.add("" if key.split(".")[0] in GLOBAL_GROUPS else key)
    return named


def _is_named(key: str, named: set[str]) -> bool:
    return any(n == "" or key == n or key.startswith(n + ".") for n in named)


def _reroot(value: Any, old_dir: str | None, new_dir: str) -> Any:
    """A path under the old run dir, moved under this run's dir."""
    if isinstance(value, str) and old_dir and (value == old_dir or value.startswith(old_dir.rstrip("/") + "/")):
        return new_dir + value[len(old_dir) :]
    return value


def restore_config(cfg: DictConfig, saved: dict[str, Any], overrides: list[str] | None) -> tuple[DictConfig, list[str]]:
    """The config a resume runs: the checkpoint's run config with the command line's named keys laid over it.

    Args:
        cfg: The config Hydra composed for this command (today's defaults plus the overrides).
        saved: The run's resolved config stored in the checkpoint.
        overrides: The command line's overrides (Hydra's ``overrides.task``); ``None`` when unknown (the compose
            API): then every key counts as named, and must match the run unless it may change.

    Returns:
        The restored config and, for the log, the keys the command line changed (``key: run's -> now``).

    Raises:
        ConfigError: The command line changes keys a resume cannot change (one line each).

    """
    saved = upgrade_targets(saved)
    now = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(now, dict)
    named = {""} if overrides is None else named_keys(overrides)
    old_dir = (saved.get("paths") or {}).get("output_dir")
    new_dir = str(cfg.paths.output_dir)
    flat_saved = {k: _reroot(v, old_dir, new_dir) for k, v in _flatten(saved).items()}
    flat_now = _flatten(now)
    merged, changed, refused = dict(flat_saved), [], []
    for key in sorted(set(flat_saved) | set(flat_now)):
        old, new = flat_saved.get(key, _ABSENT), flat_now.get(key, _ABSENT)
        if key.startswith("paths.") or key == "ckpt_path":
            merged[key] = new  # where this run's files go
        elif old == new or not _is_named(key, named):
            continue  # the run's value (a key added to dqnlab since the run was written stays out: its default)
        elif (key in SET_BY_THE_RUN or old is _ABSENT) and key not in named:
            # Named only through its group or an experiment: the run's own value, set when it ran; or, for a key
            # added to dqnlab since the run was written, its default (what the run's code did without the key).
            continue
        elif may_change(key):
            if new is _ABSENT:
                merged.pop(key, None)
            else:
                merged[key] = new
            changed.append(f"{key}: {_show(old)} -> {_show(new)}")
        else:
            refused.append(f"{key}={_show(new)} (the run's: {_show(old)})")
    if refused:
        raise ConfigError(
            f"ckpt_path resumes the run it was, and a resume cannot change {', '.join(refused)}: drop "
            f"{'that override' if len(refused) == 1 else 'those overrides'} to continue the run, or drop ckpt_path "
            "to start a new one"
        )
    collector = saved.get("collector") or {}
    if collector.get("exploration_steps") is None and "collector.exploration_fraction" in merged:
        # The ramp was a fraction of the first budget: fix it in env steps, so a longer run keeps it.
        first_budget = int(saved.get("env_steps", 0))
        merged["collector.exploration_steps"] = int(float(collector["exploration_fraction"]) * first_budget)
    restored = OmegaConf.create({})
    for key, value in merged.items():
        if value is not _ABSENT:
            OmegaConf.update(restored, key, value, force_add=True)
    return restored, changed


def run_overrides(first: list[str], now: list[str]) -> list[str]:
    """The run's command line after a resume: its first segment's overrides, each key this resume may change and
    names (``env_steps=200000``) set to the resume's value; the resume's ``ckpt_path`` and the keys it only
    repeats add nothing.
    """
    keys = {o: override_key(o) for o in now}
    changes = {keys[o]: o for o in now if may_change(keys[o]) and keys[o] != "ckpt_path"}  # hydra.* may not change
    kept = [changes.pop(override_key(o), o) for o in first]
    return kept + list(changes.values())


def write_run_files(hydra_dir: Path, config: dict[str, Any] | DictConfig, overrides: list[str] | None) -> None:
    """Write the run's config (and its command line, when known) to its ``.hydra/`` dir, if there is one."""
    if not hydra_dir.is_dir():
        return
    atomic_write_bytes(hydra_dir / "config.yaml", OmegaConf.to_yaml(config).encode())
    if overrides is not None:
        atomic_write_bytes(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))).encode())
