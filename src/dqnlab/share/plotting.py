"""Learning curves and a results table from run dirs: ``scripts/plot.py`` is the command line of this module.

A run dir is what ``python train.py`` leaves: ``metrics.csv`` (CSV logger, ``step`` = env steps),
``summary.json`` and ``.hydra/overrides.yaml``. Runs are grouped by their overrides without ``seed`` (and
without the overrides that only move files), so a sweep ``-m seed=0,1,2 optimizer.lr=1e-4,3e-4`` gives two
groups of three seeds: one line each, the mean over seeds with a band of one standard deviation, or the IQM
over seeds with its 95% bootstrap confidence band (``center="iqm"``; the statistics are :mod:`dqnlab.share.stats`).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from dqnlab.conf_keys import override_key
from dqnlab.share import stats

# Overrides that do not change what is trained: never a reason to put two runs in different groups.
_NOT_GROUPING = ("seed", "hydra.", "paths.", "ckpt_path", "progress_bar", "torch_threads", "flush_denormal", "logger")


@dataclass
class Run:
    """One run dir's logged results.

    Attributes:
        path: The run dir.
        overrides: Its command-line overrides (``.hydra/overrides.yaml``).
        summary: ``summary.json`` (empty if the run did not finish).
        curves: Metric name -> ``(env_steps, values)`` arrays from ``metrics.csv``.
        env_id: The gymnasium id (or Atari game) the run trained on, from ``.hydra/config.yaml`` (None if absent).

    """

    path: Path
    overrides: list[str]
    summary: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    env_id: str | None = None

    @property
    def group(self) -> tuple[str, ...]:
        """The overrides that define the run's group: all but the seed and the bookkeeping ones."""
        keep = [o for o in self.overrides if not override_key(o).startswith(_NOT_GROUPING)]
        return tuple(sorted(keep))


def final_value(run: Run, metric: str) -> float | None:
    """A finished run's ``metric``: its ``summary.json`` key, else the last value of that ``metrics.csv`` column
    (a summary written before the key existed); ``None`` for a run that has not finished.
    """
    if metric in run.summary:
        return float(run.summary[metric])
    if run.summary and metric in run.curves and len(run.curves[metric][1]):
        return float(run.curves[metric][1][-1])
    return None


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run dirs under ``paths``: each path itself if it holds ``metrics.csv``, else every dir below that does."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.csv").is_file():
            found.append(p)
        else:
            found.extend(sorted(m.parent for m in p.rglob("metrics.csv")))
    return list(dict.fromkeys(found))


def load_run(path: Path) -> Run:
    """Read a run dir's overrides, summary and metric curves."""
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    columns: dict[str, tuple[list[float], list[float]]] = {}
    with (path / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            step = float(row["step"])
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    xs, ys = columns.setdefault(key, ([], []))
                    xs.append(step)
                    ys.append(float(value))
    curves = {k: (np.asarray(xs), np.asarray(ys)) for k, (xs, ys) in columns.items()}
    return Run(path, overrides, summary, curves, _env_id(path))


def _env_id(path: Path) -> str | None:
    config_file = path / ".hydra" / "config.yaml"
    if not config_file.is_file():
        return None
    env = OmegaConf.load(config_file).get("env") or {}
    value = env.get("id") or env.get("game")  # plain values: no interpolation is resolved
    return str(value) if value else None


def group_runs(runs: list[Run]) -> dict[tuple[str, ...], list[Run]]:
    """Runs by group, in the order groups first appear."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def group_labels(groups: dict[tuple[str, ...], list[Run]]) -> dict[tuple[str, ...], str]:
    """A short label per group: its overrides minus those every group shares (``debug=smoke``)."""
    shared = set.intersection(*(set(g) for g in groups)) if groups else set()
    return {g: ", ".join(o for o in g if o not in shared) or ", ".join(g) or "defaults" for g in groups}


def aligned_curves(runs: list[Run], metric: str, points: int = 200) -> tuple[np.ndarray, np.ndarray] | None:
    """``(grid, values)``: each run's ``metric`` on a common env-step grid (linear interpolation), ``values`` of
    shape ``(runs, points)``.

    The grid spans the env steps all runs cover, so a run that stopped early does not bend the curve.
    """
    curves = [r.curves[metric] for r in runs if metric in r.curves and len(r.curves[metric][0])]
    if not curves:
        return None
    lo = max(float(xs[0]) for xs, _ in curves)
    hi = min(float(xs[-1]) for xs, _ in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    return grid, np.stack([np.interp(grid, xs, ys) for xs, ys in curves])


def mean_curve(runs: list[Run], metric: str, points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean and standard deviation over runs of ``metric`` on a common env-step grid (see :func:`aligned_curves`)."""
    aligned = aligned_curves(runs, metric, points)
    if aligned is None:
        return None
    grid, values = aligned
    return grid, values.mean(axis=0), values.std(axis=0)


def return_range(runs: list[Run]) -> tuple[float | None, float | None]:
    """The episode-return bounds of the runs' env (``stats.ENV_SCORES``), or ``(None, None)`` if unknown or mixed."""
    ids = {r.env_id for r in runs}
    scores = stats.ENV_SCORES.get(ids.pop()) if len(ids) == 1 else None
    return (scores.low, scores.high) if scores else (None, None)


BANDS = {"mean": "band: +- 1 std over seeds", "iqm": "band: 95% bootstrap CI of the IQM (seeds resampled)"}


def plot_learning_curves(
    runs: list[Run],
    metric: str = "rollout/episode_return",
    title: str | None = None,
    center: str = "mean",
    seed: int = 0,
) -> Any:
    """A matplotlib figure: one line per group over its seeds, with a shaded band that the title explains.

    Args:
        runs: The runs; grouped by :func:`group_runs`.
        metric: ``metrics.csv`` column against env steps.
        title: First title line (default: the metric); the second line says what the line and band are.
        center: ``"mean"`` (band: +- one standard deviation) or ``"iqm"`` (band: 95% percentile bootstrap CI
            over seeds, :func:`dqnlab.share.stats.curve_band`).
        seed: Seed of the bootstrap.

    Returns:
        The ``matplotlib.figure.Figure``; its single axes holds one ``Line2D`` and one band per group. A band
        of a return metric is clipped to the env's return range where it is known (CartPole: 0 to 500).

    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    if center not in BANDS:
        raise ValueError(f"center={center!r}: choose one of {sorted(BANDS)}")
    groups = group_runs(runs)
    labels = group_labels(groups)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for group, members in groups.items():
        aligned = aligned_curves(members, metric)
        if aligned is None:
            continue
        x, values = aligned
        if center == "iqm":
            line_y, low, high = stats.curve_band(values, seed=seed)
        else:
            line_y, spread = values.mean(axis=0), values.std(axis=0)
            low, high = line_y - spread, line_y + spread
        if "return" in metric:  # a band past the possible returns (e.g. above CartPole's 500) misleads
            lo_bound, hi_bound = return_range(members)
            low, high = np.clip(low, lo_bound, hi_bound), np.clip(high, lo_bound, hi_bound)
        (line,) = ax.plot(x, line_y, label=f"{labels[group]} (n={len(members)})")
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("env steps")
    ax.set_ylabel(metric)
    ax.set_title(
        f"{title or metric}\nline: {'IQM' if center == 'iqm' else 'mean'} over seeds; {BANDS[center]}",
        fontsize="medium",
    )
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")
    return fig


def results_table(runs: list[Run], metric: str = "eval/return_mean") -> list[dict[str, Any]]:
    """Per group: the final ``metric`` from ``summary.json`` as mean and standard deviation over its runs."""
    groups = group_runs(runs)
    labels = group_labels(groups)
    rows = []
    for group, members in groups.items():
        values = np.array([r.summary[metric] for r in members if metric in r.summary], dtype=float)
        rows.append(
            {
                "group": labels[group],
                "runs": len(members),
                "finished": len(values),
                "mean": float(values.mean()) if len(values) else math.nan,
                "std": float(values.std()) if len(values) else math.nan,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The results table as Markdown."""
    lines = [f"| group | runs | {metric} (mean +- std) |", "|---|---|---|"]
    for r in rows:
        runs = f"{r['finished']}/{r['runs']}" if r["finished"] != r["runs"] else str(r["runs"])
        lines.append(f"| {r['group']} | {runs} | {r['mean']:.2f} +- {r['std']:.2f} |")
    return "\n".join(lines)
