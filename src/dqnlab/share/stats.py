"""Few-run statistics for RL results: IQM, percentile bootstrap CIs, normalized scores, stratified bootstrap.

The method is rliable's (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice", NeurIPS): report the interquartile mean (IQM, the mean of the middle 50% of runs) next to the mean
and median, each with a 95% percentile bootstrap confidence interval over runs, and aggregate several envs on
normalized scores with a stratified bootstrap (runs resampled within each env). The method is taken, not the
dependency: rliable pulls about 24 packages (arch, statsmodels, pandas, seaborn) for what is a few lines of
NumPy and ``scipy.stats.trim_mean`` here. Every bootstrap is seeded, so a table is reproducible. Across envs,
rliable's median and mean are of the envs' mean scores (:func:`stratified_bootstrap_of_means`), and
:func:`subsample_interval` says where a few runs of a method published with many runs per env would land.

Pure functions on arrays; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import trim_mean

Statistic = Callable[[np.ndarray], np.ndarray]  # reduces axis -1 of an array


def iqm(x: np.ndarray | Sequence[float], axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean after cutting 25% of the values at each end (``trim_mean(x, 0.25)``).

    With 5 runs that is the mean of the middle 3; with 4, of the middle 2 (scipy cuts ``int(0.25 n)`` per end).
    """
    return trim_mean(np.asarray(x, dtype=float), 0.25, axis=axis)


def mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over ``axis``."""
    return np.mean(x, axis=axis)


def median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median over ``axis``."""
    return np.median(x, axis=axis)


STATISTICS: dict[str, Statistic] = {"mean": mean, "median": median, "iqm": iqm}


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def format(self, digits: int = 1) -> str:
        """``value [low, high]``."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _resample_indices(n: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(reps, n))


def bootstrap_ci(
    x: np.ndarray | Sequence[float],
    statistic: Statistic = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``statistic`` of the runs ``x`` with a percentile bootstrap CI that resamples runs with replacement.

    Args:
        x: One score per run.
        statistic: Reduces the last axis (``iqm``, ``mean``, ``median``).
        reps: Bootstrap resamples.
        confidence: Coverage of the interval (0.95: the 2.5th and 97.5th percentiles of the resampled statistic).
        seed: Seed of the resampling; the same inputs give the same interval.

    Returns:
        The statistic on ``x`` and its interval; with one run the interval is that run's value.

    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D array of per-run scores, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    samples = statistic(x[_resample_indices(len(x), reps, rng)])
    return _estimate(float(statistic(x)), samples, confidence)


def _stratified_resamples(
    scores: Mapping[str, np.ndarray | Sequence[float]], reps: int, seed: int, caller: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per env (sorted by name): its runs, and ``[reps, runs]`` resamples of them drawn with replacement.

    One seeded generator in sorted-env order, so every stratified statistic of one seed uses the same resamples.
    """
    envs = sorted(scores)
    if not envs:
        raise ValueError(f"{caller} needs at least one env")
    arrays = [np.asarray(scores[e], dtype=float) for e in envs]
    rng = np.random.default_rng(seed)
    return arrays, [a[_resample_indices(len(a), reps, rng)] for a in arrays]


def stratified_bootstrap_ci(
    scores: Mapping[str, np.ndarray | Sequence[float]],
    statistic: Statistic = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``statistic`` over the pooled runs of several envs, with a stratified percentile bootstrap CI.

    Each resample draws, within every env, as many runs as it has (with replacement), then pools them: the
    share of each env in the aggregate stays fixed, as in rliable's ``StratifiedBootstrap``. Scores should be
    normalized (:func:`normalize`) so envs are comparable.

    Args:
        scores: Env name -> one (normalized) score per run; envs may have different numbers of runs.
        statistic: Reduces the last axis of the pooled scores.
        reps: Bootstrap resamples.
        confidence: Coverage of the interval.
        seed: Seed of the resampling; envs are resampled in sorted-name order, so the result does not depend
            on the mapping's order.

    """
    arrays, resamples = _stratified_resamples(scores, reps, seed, "stratified_bootstrap_ci")
    pooled = np.concatenate(resamples, axis=1)
    return _estimate(float(statistic(np.concatenate(arrays))), statistic(pooled), confidence)


def stratified_bootstrap_of_means(
    scores: Mapping[str, np.ndarray | Sequence[float]],
    statistic: Statistic = median,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``statistic`` across envs of each env's mean score, with a stratified percentile bootstrap CI.

    rliable's median and mean aggregates: the median (or mean) of the per-env mean scores, so an env counts
    once whatever its number of runs (a pooled median would be a median of runs). Each resample draws within
    every env as many runs as it has, with replacement, in the same order and from the same seed as
    :func:`stratified_bootstrap_ci`: with one seed, the IQM's interval and this one come from the same resamples.

    Args:
        scores: Env name -> one (normalized) score per run; envs may have different numbers of runs.
        statistic: Reduces the last axis, the envs' means (``median``, ``mean``).
        reps: Bootstrap resamples.
        confidence: Coverage of the interval.
        seed: Seed of the resampling (envs in sorted-name order).

    """
    arrays, resamples = _stratified_resamples(scores, reps, seed, "stratified_bootstrap_of_means")
    means = np.stack([r.mean(axis=1) for r in resamples], axis=1)
    value = float(statistic(np.array([a.mean() for a in arrays])))
    return _estimate(value, statistic(means), confidence)


def subsample_interval(
    scores: Mapping[str, np.ndarray | Sequence[float]],
    runs: Mapping[str, int] | int,
    statistic: Statistic = iqm,
    draws: int = 10_000,
    coverage: float = 0.90,
    seed: int = 0,
) -> tuple[float, float]:
    """Where ``statistic`` of a few runs lands when they are drawn from a method with many runs per env.

    The question a reproduction asks: with 3 seeds per game, how far from a published method's all-runs value
    can a faithful re-implementation land by luck alone? Each draw takes, within every env, ``runs`` of its
    runs without replacement (a seed is not run twice) and pools them; the interval holds ``coverage`` of the
    draws' statistic.

    Args:
        scores: Env name -> (normalized) score of each of the method's runs.
        runs: Runs drawn per env: one count for all envs, or env name -> count (at most that env's runs).
        statistic: Reduces the last axis of the pooled draw.
        draws: Random draws.
        coverage: Share of the draws inside the interval (0.90: the 5th and 95th percentiles).
        seed: Seed of the draws (envs in sorted-name order).

    Returns:
        ``(low, high)``.

    """
    envs = sorted(scores)
    if not envs:
        raise ValueError("subsample_interval needs at least one env")
    rng = np.random.default_rng(seed)
    parts = []
    for env in envs:
        x = np.asarray(scores[env], dtype=float)
        k = runs if isinstance(runs, int) else runs[env]
        if not 1 <= k <= len(x):
            raise ValueError(f"cannot draw {k} of the {len(x)} runs of {env} without replacement")
        # The k smallest of n uniform keys are a uniformly random k-subset; argpartition finds them in O(n).
        keys = rng.random((draws, len(x)))
        parts.append(x[np.argpartition(keys, k - 1, axis=1)[:, :k]])
    tail = 100 * (1 - coverage) / 2
    low, high = np.percentile(statistic(np.concatenate(parts, axis=1)), [tail, 100 - tail])
    return float(low), float(high)


def _estimate(value: float, samples: np.ndarray, confidence: float) -> Estimate:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Estimate(value, float(low), float(high))


def curve_band(
    values: np.ndarray, statistic: Statistic = iqm, reps: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise ``statistic`` over runs of learning curves on a common grid, with its bootstrap CI band.

    Args:
        values: ``(runs, points)``: each run's curve on the same x grid.
        statistic: Reduces the runs axis.
        reps: Bootstrap resamples (the same run indices at every point: a resample is a set of whole runs).
        confidence: Coverage of the band.
        seed: Seed of the resampling.

    Returns:
        ``(center, low, high)``, each of length ``points``.

    """
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = _resample_indices(values.shape[0], reps, rng)
    samples = statistic(np.moveaxis(values[idx], 1, -1))  # (reps, points)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    return statistic(values.T), low, high


def normalize(x: np.ndarray | Sequence[float], random: float, reference: float) -> np.ndarray:
    """Scores rescaled so a uniform random policy gets 0 and the reference gets 1."""
    if reference == random:
        raise ValueError(f"reference score {reference} equals the random score: cannot normalize")
    return (np.asarray(x, dtype=float) - random) / (reference - random)


@dataclass(frozen=True)
class EnvScores:
    """Per-env constants for tables and plots.

    Attributes:
        random: Mean return of uniform random actions (normalized score 0).
        reference: Normalized score 1: gymnasium's ``reward_threshold`` ("solved") for the env.
        low: Lowest possible episode return (None: unbounded or unknown).
        high: Highest possible episode return.

    """

    random: float
    reference: float
    low: float | None = None
    high: float | None = None


# random: mean return of 100 episodes of uniform random actions (episode i reset with seed i), measured with
# gymnasium 1.4.0 on 2026-12-01; reference: gymnasium's registered reward_threshold; low/high: the env's
# return range (-1 per step or +1 per step up to the registered time limit).
ENV_SCORES: dict[str, EnvScores] = {
    "CartPole-v1": EnvScores(random=25.0, reference=475.0, low=0.0, high=500.0),
    "Acrobot-v1": EnvScores(random=-500.0, reference=-100.0, low=-500.0, high=0.0),
    "MountainCar-v0": EnvScores(random=-200.0, reference=-110.0, low=-200.0, high=0.0),
    "LunarLander-v3": EnvScores(random=-191.0, reference=200.0),
}
