"""Results statistics (share/stats.py) on numbers checked by hand, and scripts/results.py on a real two-seed sweep."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from dqnlab.share import stats
from dqnlab.share.plotting import Run, plot_learning_curves
from tests.conftest import PYTHON, ROOT


def _results_module():
    spec = importlib.util.spec_from_file_location("results_script", ROOT / "scripts" / "results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- point estimates
def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm([5, 1, 4, 2, 3]) == pytest.approx(3.0)  # 5 runs: the middle 3 (2, 3, 4)
    assert stats.iqm([0, 1, 2, 3, 10, 100, 4, 5]) == pytest.approx(3.5)  # 8 runs: the middle 4 (2, 3, 4, 5)
    assert stats.iqm([-500, -80, -78, -76, -75]) == pytest.approx(-78.0)  # one collapsed seed does not count


# ---------------------------------------------------------------------------------------------- bootstrap CIs
def test_bootstrap_ci_on_one_outlier_matches_the_binomial_by_hand():
    # Resampling 5 runs of [0, 0, 0, 0, 10]: k, the number of 10s drawn, is Binomial(5, 0.2), so
    # P(k <= 2) = 0.942 and P(k <= 3) = 0.993: the 97.5th percentile of any statistic sits at k = 3, the
    # 2.5th at k = 0 (P = 0.33). At k = 3 the mean is 6, the median 10 and the IQM (middle three of
    # 0, 0, 10, 10, 10) 20/3.
    x = [0, 0, 0, 0, 10]
    mean = stats.bootstrap_ci(x, stats.mean, reps=4000, seed=0)
    median = stats.bootstrap_ci(x, stats.median, reps=4000, seed=0)
    iqm = stats.bootstrap_ci(x, stats.iqm, reps=4000, seed=0)
    assert (mean.value, mean.low, mean.high) == pytest.approx((2.0, 0.0, 6.0))
    assert (median.value, median.low, median.high) == pytest.approx((0.0, 0.0, 10.0))
    assert (iqm.value, iqm.low, iqm.high) == pytest.approx((0.0, 0.0, 20 / 3))
    assert iqm.format() == "0.0 [0.0, 6.7]"


def test_bootstrap_ci_is_seeded_and_degenerate_cases_are_exact():
    x = np.array([-90.0, -80.0, -77.0, -75.0, -70.0])
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)
    assert stats.bootstrap_ci(x, seed=3) != stats.bootstrap_ci(x, seed=4)
    one = stats.bootstrap_ci([-100.0])
    assert (one.value, one.low, one.high) == (-100.0, -100.0, -100.0)
    with pytest.raises(ValueError, match="non-empty"):
        stats.bootstrap_ci([])


def test_stratified_bootstrap_keeps_each_env_share_and_is_deterministic():
    # Env a scores 0 on every run and env b 1: a stratified resample always pools 3 zeros and 3 ones, so the
    # pooled mean is exactly 0.5 on every resample (an unstratified one would range from 0 to 1).
    ci = stats.stratified_bootstrap_ci({"a": [0, 0, 0], "b": [1, 1, 1]}, stats.mean)
    assert (ci.value, ci.low, ci.high) == (0.5, 0.5, 0.5)
    scores = {"acrobot": [0.9, 1.0, 1.05, 1.1, 0.2], "mountaincar": [0.8, 1.0, 1.02, 1.1, 1.2]}
    first = stats.stratified_bootstrap_ci(scores, seed=7)
    assert first == stats.stratified_bootstrap_ci(dict(reversed(list(scores.items()))), seed=7)  # order-free
    assert first.low <= first.value <= first.high
    assert first != stats.stratified_bootstrap_ci(scores, seed=8)


def test_normalize_maps_random_to_0_and_reference_to_1():
    ref = stats.ENV_SCORES["MountainCar-v0"]
    assert stats.normalize([-200, -110, -155], ref.random, ref.reference) == pytest.approx([0.0, 1.0, 0.5])
    with pytest.raises(ValueError):
        stats.normalize([1.0], 2.0, 2.0)


def test_curve_band_of_identical_runs_is_the_curve_itself():
    curve = np.linspace(0, 1, 7)
    center, low, high = stats.curve_band(np.stack([curve] * 4))
    assert center == pytest.approx(curve) and low == pytest.approx(curve) and high == pytest.approx(curve)


# ---------------------------------------------------------------------------------------------- plots and tables
def _run(seed: int, env_id: str, final: float, overrides: tuple[str, ...] = ()) -> Run:
    steps = np.array([0.0, 1000.0, 2000.0])
    values = np.array([20.0, 400.0 + 40 * seed, final])
    summary = {"eval/return_mean": final, "seed": float(seed), "env_steps": 2000.0, "wall_time_s": 10.0}
    return Run(ROOT, list(overrides), summary, {"eval/return_mean": (steps, values)}, env_id)


def test_band_is_labelled_and_clipped_to_the_env_return_range():
    runs = [_run(s, "CartPole-v1", final) for s, final in enumerate([500.0, 500.0, 300.0, 500.0])]
    for center in ("mean", "iqm"):
        fig = plot_learning_curves(runs, "eval/return_mean", center=center)
        (ax,) = fig.axes
        (band,) = ax.collections
        assert band.get_paths()[0].vertices[:, 1].max() <= 500.0  # mean + std would reach past 500
        assert "band:" in ax.get_title()


def test_aggregate_over_envs_uses_normalized_scores():
    results = _results_module()
    runs = [_run(s, "Acrobot-v1", -100.0, ("env=acrobot",)) for s in range(3)]
    runs += [_run(s, "MountainCar-v0", -110.0 - 90 * (s == 0), ("env=mountaincar",)) for s in range(3)]
    groups = results.collect_groups(runs)
    (agg,) = results.aggregate_rows(groups, stats.ENV_SCORES)
    assert agg["envs"] == ["Acrobot-v1", "MountainCar-v0"] and agg["runs"] == 6
    assert agg["mean"].value == pytest.approx(5 / 6)  # five runs at the reference (1), one at random (0)
    row = results.group_row(groups[1])
    assert row["worst"] == -200.0 and row["worst_seed"] == 0 and row["finished"] == 3


def test_a_score_missing_from_the_summary_is_the_curves_last_value_of_a_finished_run():
    results = _results_module()
    finished, going = _run(0, "CartPole-v1", 450.0), _run(1, "CartPole-v1", 480.0)
    going.summary.clear()  # still training: no summary.json yet
    assert results.final_value(finished, "eval/return_mean") == 450.0  # from summary.json
    finished.summary.pop("eval/return_mean")
    assert results.final_value(finished, "eval/return_mean") == 450.0  # from metrics.csv's last row
    assert results.final_value(going, "eval/return_mean") is None
    (group,) = results.collect_groups([finished, going])
    assert group.scores.tolist() == [450.0]


@pytest.mark.slow
def test_two_seed_sweep_gives_a_table_row_and_a_png(tmp_path):
    sweep = tmp_path / "sweep"
    train = subprocess.run(
        [PYTHON, "train.py", "-m", "seed=0,1", "debug=smoke", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    md, png = tmp_path / "results.md", tmp_path / "curves.png"
    proc = subprocess.run(
        [PYTHON, "scripts/results.py", str(sweep), "--markdown", str(md), "--png", str(png)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| debug=smoke |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "CartPole-v1" and cells[2] == "2"
    finals = sorted(json.loads((sweep / str(i) / "summary.json").read_text())["eval/return_mean"] for i in (0, 1))
    assert cells[4].startswith(f"{np.mean(finals):.1f} [")  # the mean column is the two runs' mean
    assert cells[5].split(" [")[0] == f"{np.median(finals):.1f}"
    assert md.read_text().strip() == proc.stdout.split("\nlearning curves:")[0].strip()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
