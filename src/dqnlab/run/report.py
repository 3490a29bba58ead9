"""What a run tells its user: one line on what it trains, a hint when a CPU is in for a day, and a summary.

The same lines go to the terminal and to ``train.log`` (Hydra's log handlers).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

# Summary keys that count things: integers in summary.json and in the printed summary.
COUNT_KEYS = ("env_steps", "gradient_steps", "episodes", "seed", "eval/episodes", "eval/best_env_steps")

ATARI_100K_ENV_STEPS = 100_000  # Kaiser et al. 2020: 100k agent steps (400k frames) per game

# From this many env steps on, an image-based run on a CPU is a job of many hours (Atari's 10M: about a day).
LONG_IMAGE_RUN_ENV_STEPS = 1_000_000


def as_counts(summary: dict[str, float]) -> dict[str, Any]:
    """``summary`` with its counters as ``int`` (``30000``, not ``30000.0``)."""
    return {k: int(v) if k in COUNT_KEYS and float(v).is_integer() else v for k, v in summary.items()}


def _env_name(cfg: DictConfig) -> str:
    env = cfg.env
    name = env.get("game") or env.get("id") or "env"
    return f"{name} x{env.num_envs} envs" if int(env.get("num_envs", 1)) > 1 else str(name)


def _algo_name(cfg: DictConfig) -> str:
    algo = cfg.algo
    target_class = str(algo.get("_target_", "")).rsplit(".", 1)[-1]
    own = target_class not in ("", "DQNModule")  # a subclass of your own: its name, not DQN's
    parts = [target_class if own else "C51" if "num_atoms" in algo else "DQN"]
    parts += [s for s, on in (("double", algo.get("double")), ("dueling", cfg.network.get("dueling"))) if on]
    parts += ["noisy"] if cfg.network.get("noisy") else []
    parts += [f"{algo.n_step}-step"] if int(algo.get("n_step", 1)) > 1 else []
    parts += ["prioritized replay"] if "alpha" in cfg.buffer else []
    target = "polyak target" if float(cfg.target.get("tau", 1.0)) < 1.0 else f"target copy/{cfg.target.interval}"
    return f"{' '.join(parts)} ({algo.loss}, {target})"


def describe_run(cfg: DictConfig, device: str) -> str:
    """One line: algorithm, env, network, optimizer, budget, seed, device and run dir."""
    net = cfg.network.get("_target_", "").rsplit(".", 1)[-1]
    hidden = cfg.network.get("hidden_sizes")
    net += f" {'-'.join(map(str, hidden))}" if hidden else ""
    opt = cfg.optimizer.get("_target_", "").rsplit(".", 1)[-1]
    return (
        f"dqnlab: {_algo_name(cfg)} on {_env_name(cfg)}, {net} net, {opt} lr {cfg.optimizer.lr:g}; "
        f"{int(cfg.env_steps):,} env steps, seed {cfg.seed}, {device}; run dir {cfg.paths.output_dir}"
    )


def _protocol_kept(cfg: DictConfig) -> str | None:
    """For a run whose preset follows a benchmark protocol: ``None`` when it keeps it, else what departs."""
    if cfg.get("protocol") == "atari100k" and int(cfg.env_steps) != ATARI_100K_ENV_STEPS:
        return f"env_steps={int(cfg.env_steps):,} instead of {ATARI_100K_ENV_STEPS:,}"
    return None


# summary.json's keys that differ between a resumed run and the same run never stopped: the timings, how many
# segments (processes) the run took with the last one's share, and where and when they ran.
TIMING_KEYS = frozenset(
    {"wall_time_s", "env_steps_per_s", "segments", "segment_env_steps", "segment_wall_time_s", "provenance"}
)


def describe_update(cfg: DictConfig, module: Any) -> list[str]:
    """Lines after the header: how the update computes (gradients, a conv net's precision and layout,
    augmentation, action masks), and a benchmark protocol the run departs from.
    """
    if module.gradients == "hand-written":
        grads = (
            "hand-written gradients of the stock TD loss (learn/fast/mlp_update.py; algo.fast_update=false: autograd)"
        )
    elif module.overridden:
        grads = f"autograd: {type(module).__name__} redefines {', '.join(module.overridden)}"
    else:
        grads = "autograd"
    compute = f"; {module.compute.describe()}" if hasattr(module.q_net, "set_compute") else ""
    augment = f"; augmentation {module.augment!r}" if module.augment is not None else ""
    one_pass = getattr(module, "target_is_online", False) and module.gradients != "hand-written"
    shared = "; one pass over s' (the target is the online net, copied every step)" if one_pass else ""
    masks = (
        "; action masks from the env's info: explore, act and bootstrap among the valid actions only "
        "(collector.action_mask=false: off)"
        if getattr(module, "action_masked", False)
        else ""
    )
    lines = [f"update: {grads}{compute}{augment}{shared}{masks}"]
    if cfg.get("reset"):
        from dqnlab.learn.reset import describe_reset  # here: this module imports nothing heavy at its top

        lines.append(describe_reset(cfg.reset))
    if cfg.get("protocol"):
        departs = _protocol_kept(cfg)
        lines.append(
            f"protocol: {cfg.protocol}" + (f" NOT kept ({departs}): not comparable with its results" if departs else "")
        )
    return lines


def update_summary(cfg: DictConfig, module: Any) -> dict[str, Any]:
    """``summary.json``'s keys for the same: the gradients, a conv net's compute, action masks (only when used), the
    protocol and if it was kept.
    """
    out: dict[str, Any] = {"update_gradients": module.gradients}
    if hasattr(module.q_net, "set_compute"):
        out["update_compute"] = module.compute.name
    if getattr(module, "action_masked", False):
        out["action_mask"] = True
    if cfg.get("protocol"):
        out["protocol"] = str(cfg.protocol)
        out["protocol_kept"] = _protocol_kept(cfg) is None
    return out


def cpu_hint(cfg: DictConfig, obs_shape: tuple[int, ...], device: str) -> str | None:
    """A word before a long run on Atari-sized images on a CPU (Atari's 10M env steps take about a day there).

    MinAtar's 10x10 grids are images too, but made for a CPU: no hint for them.
    """
    if device != "cpu" or len(obs_shape) < 3 or int(cfg.env_steps) < LONG_IMAGE_RUN_ENV_STEPS:
        return None
    if min(obs_shape[-2:]) < 32:
        return None
    return (
        f"{int(cfg.env_steps):,} env steps of an image-based env on a CPU take many hours (Atari runs are made "
        "for a GPU: trainer=gpu); the bar's ETA says how many. To check the whole pipeline on a CPU in seconds, add "
        "debug=smoke; for learning on a CPU, use a classic-control, Box2D or MinAtar env (env=cartpole, "
        "env=lunarlander, env=minatar)"
    )


def _cmd(*args: str) -> str:
    return " ".join(["python", *map(shlex.quote, args)])


def format_summary(
    summary: dict[str, Any],
    out_dir: Path,
    last_ckpt: Path | None,
    play_args: tuple[str, ...] = (),
    play_ckpt: Path | None = None,
    can_film: bool = True,
) -> str:
    """The end of a run, for people: the score, the budget, the time, the run dir and what to do next.

    ``play_args`` go to the printed ``evaluate.py`` command (``env.id=<module>:<Id>`` for an env of your own),
    which plays ``play_ckpt`` (``best.ckpt`` with ``eval.keep_best``; default ``last_ckpt``) and films an episode
    when the env ``can_film``.
    """
    lines = []
    if "eval/return_mean" in summary:
        std = summary.get("eval/return_std", 0.0)
        episodes = int(summary.get("eval/episodes", 0))
        lines.append(f"result: eval return {summary['eval/return_mean']:.2f} +- {std:.2f} over {episodes} episodes")
    if "eval/best_return_mean" in summary and summary.get("eval/best_env_steps") != summary.get("env_steps"):
        lines.append(
            f"        the network kept is the one of env step {int(summary['eval/best_env_steps']):,} (eval.keep_best;"
            f" the last one scored {summary['eval/last_return_mean']:.2f})"
        )
    trained = (
        f"trained: {int(summary['env_steps']):,} env steps, {int(summary['gradient_steps']):,} updates, "
        f"{int(summary['episodes']):,} episodes in {summary['wall_time_s']:.1f} s"
    )
    if int(summary.get("segments", 1)) > 1:  # resumed: the run's totals, then this segment's own
        trained += (
            f" over {int(summary['segments'])} segments (this one: {int(summary['segment_env_steps']):,} env steps"
            f" in {summary['segment_wall_time_s']:.1f} s, {summary['env_steps_per_s']:,.0f} env steps/s)"
        )
    else:
        trained += f" ({summary['env_steps_per_s']:,.0f} env steps/s)"
    lines.append(trained)
    lines.append(f"run dir: {out_dir}  (summary.json, metrics.csv, train.log, .hydra/)")
    if last_ckpt is not None and last_ckpt.is_file():
        ckpt, film = str(last_ckpt), ["video=true"] if can_film else []
        lines += [
            "next:    "
            + _cmd("scripts/evaluate.py", str(play_ckpt or ckpt), "episodes=20", *film, *play_args)
            + f"   # play {'the kept network' if play_ckpt else 'it'}{', film it' if film else ''}",
            "         "
            + _cmd("train.py", f"ckpt_path={ckpt}", f"env_steps={2 * int(summary['env_steps'])}")
            + "   # train it further (the run's own config comes back)",
            "         " + _cmd("scripts/plot.py", str(out_dir)) + "   # learning curve",
        ]
    return "\n".join(lines)
