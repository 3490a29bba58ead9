"""Files written before the package had folders: the ``_target_`` paths their configs name, mapped to today's.

Until 2026-12-07 every module sat directly in ``dqnlab/`` (``dqnlab.module.DQNModule``,
``dqnlab.networks.MLP``, ``dqnlab.envs.make_vector_env``). Checkpoints and agent files keep the config of the run
that wrote them, so the loaders pass it through :func:`upgrade_targets` before checking or building anything:
an old file plays, exports and resumes as it did. Only ``_target_`` strings change; nothing is imported here.
"""

from __future__ import annotations

from typing import Any

# Flat module (before 2026-12-07) -> its module today.
MOVED_MODULES: dict[str, str] = {
    "dqnlab.envs": "dqnlab.envs.vector",
    "dqnlab.atari": "dqnlab.envs.atari",
    "dqnlab.minatar": "dqnlab.envs.minatar",
    "dqnlab.video": "dqnlab.envs.video",
    "dqnlab.replay": "dqnlab.data.replay",
    "dqnlab.prioritized": "dqnlab.data.prioritized",
    "dqnlab.memory": "dqnlab.data.memory",
    "dqnlab.collect": "dqnlab.data.collect",
    "dqnlab.networks": "dqnlab.learn.networks",
    "dqnlab.rl_math": "dqnlab.learn.rl_math",
    "dqnlab.module": "dqnlab.learn.module",
    "dqnlab.target": "dqnlab.learn.target",
    "dqnlab.mlp_update": "dqnlab.learn.fast.mlp_update",
    "dqnlab.optim_step": "dqnlab.learn.fast.optim_step",
    "dqnlab.graphs": "dqnlab.learn.fast.graphs",
    "dqnlab.checkpoint": "dqnlab.run.checkpoint",
    "dqnlab.stopping": "dqnlab.run.stopping",
    "dqnlab.progress": "dqnlab.run.progress",
    "dqnlab.report": "dqnlab.run.report",
    "dqnlab.tracking": "dqnlab.run.tracking",
    "dqnlab.evaluation": "dqnlab.run.evaluation",
    "dqnlab.nonfinite": "dqnlab.run.nonfinite",
    "dqnlab.slurm": "dqnlab.cluster.slurm",
    "dqnlab.sacct_standin": "dqnlab.cluster.sacct_standin",
    "dqnlab.optuna_storage": "dqnlab.cluster.optuna_storage",
    "dqnlab.sweep_logging": "dqnlab.cluster.sweep_logging",
    "dqnlab.agent_file": "dqnlab.share.agent_file",
    "dqnlab.playback": "dqnlab.share.playback",
    "dqnlab.stats": "dqnlab.share.stats",
    "dqnlab.plotting": "dqnlab.share.plotting",
}


def upgrade_target(target: str) -> str:
    """``dqnlab.networks.MLP`` -> ``dqnlab.learn.networks.MLP``; any other string is returned as it is."""
    module, _, name = target.rpartition(".")
    new = MOVED_MODULES.get(module)
    return f"{new}.{name}" if new and name else target


def upgrade_targets(node: Any) -> Any:
    """A copy of a plain config container (dicts, lists) with every old ``_target_`` path upgraded."""
    if isinstance(node, dict):
        return {
            k: upgrade_target(v) if k == "_target_" and isinstance(v, str) else upgrade_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [upgrade_targets(v) for v in node]
    return node
