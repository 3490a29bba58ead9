"""Results statistics (share/stats.py) on numbers checked by hand, and scripts/results.py on a real two-seed sweep."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pytest

from dqnlab.run.provenance import code_version, cpu_model
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
    # How each run ran: this checkout's commit and this machine, from the runs' own summaries.
    for job in ("0", "1"):
        (record,) = [line for line in proc.stdout.splitlines() if line.startswith(f"| {job} |")]
        cells = [c.strip() for c in record.strip("|").split("|")]
        assert cells[1] == code_version() and cells[2] == f"{cpu_model()}, {os.cpu_count()} CPUs"
        assert cells[4].startswith(datetime.now(timezone.utc).date().isoformat()) and cells[6] == "1"


def test_the_record_of_a_resumed_run_names_each_code_and_what_was_not_recorded(tmp_path):
    from dqnlab.share.records import record_row

    def entry(code, started, ended, **more):
        return {"code": code, "machine": "AMD EPYC, 2 CPUs", "torch": "2.13.0", "started_utc": started,
                "ended_utc": ended, **more}  # fmt: skip

    two = [entry("aaa", "2026-12-07T10:00:00Z", "2026-12-07T11:00:00Z"),
           entry("bbb", "2026-12-08T09:00:00Z", "2026-12-08T09:30:00Z", gpu="NVIDIA H100")]  # fmt: skip
    resumed = Run(tmp_path / "pong_s0", (), {"wall_time_s": 5400.4, "segments": 2, "provenance": two}, {})
    assert record_row(resumed) == [
        "pong_s0", "aaa then bbb", "AMD EPYC, 2 CPUs (NVIDIA H100)", "2.13.0",
        "2026-12-07T10:00:00Z to 2026-12-08T09:30:00Z", "5,400", "2",
    ]  # fmt: skip
    # Resumed from a checkpoint of older code: its first segment is not listed, and the row says so.
    partly = Run(tmp_path / "r", (), {"wall_time_s": 10.0, "segments": 3, "provenance": two[1:]}, {})
    assert record_row(partly)[4].endswith("(the first 2 of 3 segments not recorded)")
    older = Run(tmp_path / "old", (), {"wall_time_s": 6524.0}, {})  # a summary from before provenance
    assert record_row(older) == ["old"] + ["not recorded"] * 4 + ["6,524", "not recorded"]


# ---------------------------------------------------------------------------------------------- Atari 100k
REFERENCE_DIR = ROOT / "docs" / "results" / "atari100k" / "reference"
TEN_GAMES = ["Alien", "Assault", "Boxing", "Breakout", "Freeway", "Krull", "MsPacman", "Pong", "Qbert", "Seaquest"]


def test_stratified_bootstrap_of_means_weighs_each_env_once():
    # Env a has one run at 0, env b three at 1: the mean of the env means is 0.5 (the pooled mean would be
    # 0.75), and every resample keeps both means, so the interval is the point.
    ci = stats.stratified_bootstrap_of_means({"a": [0.0], "b": [1.0, 1.0, 1.0]}, stats.mean)
    assert (ci.value, ci.low, ci.high) == (0.5, 0.5, 0.5)
    median = stats.stratified_bootstrap_of_means({"a": [0, 2], "b": [5, 5], "c": [9, 9]}, stats.median, seed=1)
    assert median.value == 5.0 and median.low == median.high == 5.0  # b's mean is the middle one in every resample


def test_subsample_interval_draws_without_replacement():
    scores = {"a": [0.0, 1.0, 2.0], "b": [10.0, 11.0]}
    every_run = stats.subsample_interval(scores, {"a": 3, "b": 2}, stats.mean, draws=50)
    assert every_run == pytest.approx((24 / 5, 24 / 5))  # drawing all 5 runs: their mean in every draw
    low, high = stats.subsample_interval({"a": [0.0, 1.0]}, 1, stats.mean, draws=2000, coverage=0.9)
    assert (low, high) == (0.0, 1.0)  # each of the two runs in about half of the draws
    with pytest.raises(ValueError, match="without replacement"):
        stats.subsample_interval(scores, 3, stats.mean)


def test_atari100k_names_cover_the_26_reference_games():
    from dqnlab.share import atari100k

    for name in ("DrQ_eps.json", "SPR.json", "HUMAN.json", "RANDOM.json"):
        assert set(json.loads((REFERENCE_DIR / name).read_text())) == set(atari100k.GAMES.values()), name
    assert len(atari100k.GAMES) == 26
    for rom, name in atari100k.GAMES.items():
        assert atari100k.reference_game(rom) == name
    spellings = {
        "ms_pacman": "MsPacman",
        "MsPacman": "MsPacman",
        "ALE/MsPacman-v5": "MsPacman",
        "up_n_down": "UpNDown",
        "kung_fu_master": "KungFuMaster",
        "private_eye": "PrivateEye",
        "james_bond": "Jamesbond",
        "jamesbond": "Jamesbond",
        "battle_zone": "BattleZone",
    }
    assert {s: atari100k.reference_game(s) for s in spellings} == spellings
    for unknown in ("space_invaders", "pacman", ""):
        with pytest.raises(atari100k.Atari100kError, match="not one of the 26"):
            atari100k.reference_game(unknown)


def test_atari100k_reference_aggregates_are_the_published_ones():
    # Agarwal et al. 2021 (rliable), Atari 100k: DrQ(eps) and SPR over all 100 runs of all 26 games.
    from dqnlab.share import atari100k

    reference = atari100k.load_reference(REFERENCE_DIR)
    games = sorted(atari100k.GAMES.values())
    published = {"DrQ(eps)": (0.280, 0.313, 0.465), "SPR": (0.337, 0.396, 0.616)}  # IQM, median, mean
    for method, values in published.items():
        agg = atari100k.aggregate(reference.normalized(method, games), reps=200)
        assert [agg[s].value for s in atari100k.STATISTICS] == pytest.approx(values, abs=5e-4), method
        assert all(agg[s].low < agg[s].value < agg[s].high for s in atari100k.STATISTICS)


def test_atari100k_band_of_three_drq_runs_on_ten_games():
    # DrQ(eps)'s IQM on these 10 games is 0.372 over its 100 runs per game; 3 runs per game land in
    # [0.302, 0.461] in 90% of draws (the draws are random: a small tolerance).
    from dqnlab.share import atari100k

    reference = atari100k.load_reference(REFERENCE_DIR)
    scores = reference.normalized("DrQ(eps)", TEN_GAMES)
    assert stats.iqm(np.concatenate(list(scores.values()))) == pytest.approx(0.372, abs=5e-4)
    low, high = stats.subsample_interval(scores, 3, stats.iqm, draws=10_000, coverage=0.90, seed=0)
    assert low == pytest.approx(0.302, abs=0.01) and high == pytest.approx(0.461, abs=0.01)


def _atari100k_run(root, game: str, seed: int, score: float | None, kept: bool = True, compute: str = "bf16 NCHW"):
    """A run dir as ``train.py experiment=atari100k`` leaves it (``score`` None: not finished)."""
    run = root / f"{game}_s{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"protocol: atari100k\nenv_steps: 100000\nenv:\n  game: {game}\n")
    (run / ".hydra" / "overrides.yaml").write_text(f"- experiment=atari100k\n- env.game={game}\n- seed={seed}\n")
    (run / "metrics.csv").write_text("step,rollout/return_ma100\n5000,1.0\n")
    if score is not None:
        summary = {"eval/return_mean": score, "protocol": "atari100k", "protocol_kept": kept, "seed": seed,
                   "update_compute": compute}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_parity_holds_when_the_means_differ_by_less_than_the_larger_spread():
    from dqnlab.share.parity import parity

    bf16 = {"Boxing": {0: 10.0, 1: 14.0, 2: 30.0}, "Pong": {0: -10.0, 1: -9.0}, "Qbert": {0: 500.0, 1: 700.0},
            "Alien": {0: 1.0}, "Krull": {0: 1.0, 1: 2.0}}  # fmt: skip
    fp32 = {
        "Boxing": {0: 11.0, 1: 12.0},
        "Pong": {0: -20.0, 1: -19.0},
        "Qbert": {0: 300.0, 1: 500.0},
        "Krull": {1: 2.0, 2: 3.0},
    }
    games, skipped = parity(bf16, fp32)
    assert [g.game for g in games] == ["Boxing", "Pong", "Qbert"]
    boxing, pong, qbert = games
    # Boxing: on the seeds run both ways (0 and 1; seed 2's 30 would widen bf16's spread alone), means 12 and 11.5
    # (0.5 apart), spreads 4 and 1: parity holds.
    assert boxing.a == {0: 10.0, 1: 14.0}
    assert (boxing.mean_a, boxing.mean_b, boxing.difference, boxing.spread, boxing.holds) == (12, 11.5, 0.5, 4, True)
    assert (pong.difference, pong.spread, pong.holds) == (10, 1, False)  # 10 apart, spreads of 1
    assert (qbert.difference, qbert.spread, qbert.holds) == (200, 200, False)  # "less than": a tie does not hold
    assert skipped == [
        "Alien: 1 and 0 runs, 0 seeds in common; parity needs at least 2 seeds run both ways",
        "Krull: 2 and 2 runs, 1 seed in common; parity needs at least 2 seeds run both ways",
    ]


def test_results_parity_table_on_hand_made_runs(tmp_path, capsys):
    results = _results_module()
    for game, seed, bf16, fp32 in [("boxing", 0, 10.0, 11.0), ("boxing", 1, 14.0, 12.0), ("pong", 0, -10.0, -20.0),
                                   ("pong", 1, -9.0, -19.0), ("breakout", 0, 20.0, 21.0)]:  # fmt: skip
        _atari100k_run(tmp_path / "bf16", game, seed, bf16)
        _atari100k_run(tmp_path / "fp32", game, seed, fp32, compute="fp32 channels-last")
    argv = [str(tmp_path / "bf16"), "--atari100k", "--parity", str(tmp_path / "fp32"), "--draws", "200"]
    assert results.main([*argv, "--reps", "200"]) == 0
    out, err = capsys.readouterr()
    table = out[out.index("Parity of bf16 NCHW and fp32 channels-last") : out.index("How each run ran")]
    assert "| game | bf16 NCHW runs | bf16 NCHW mean | bf16 NCHW spread | fp32 channels-last runs |" in table
    assert _row(table, "Boxing")[-7:] == ["12.00", "4.00", "11.00 (s0), 12.00 (s1)", "11.50", "1.00", "0.50", "holds"]
    assert _row(table, "Pong")[-2:] == ["10.00", "does not hold"]
    assert "it holds for 1 of 2 games" in table and "parity: left out Breakout: 1 and 1 runs, 1 seed in common" in err
    assert out.count("| boxing_s0 |") == 2  # both sets' runs in the table of how each run ran
    # Without --atari100k there is nothing to compare: one error line.
    with pytest.raises(SystemExit) as exit_info:
        results.main([str(tmp_path / "bf16"), "--parity", str(tmp_path / "fp32")])
    assert exit_info.value.code == 2 and "--parity compares Atari 100k runs: add --atari100k" in capsys.readouterr().err


def _results(*args: str) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "scripts/results.py", "--atari100k", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _row(stdout: str, first: str) -> list[str]:
    (line,) = [x for x in stdout.splitlines() if x.startswith(f"| {first} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def _estimate(cell: str) -> tuple[float, float, float]:
    value, interval = cell.split(" [")
    low, high = interval.rstrip("]").split(", ")
    return float(value), float(low), float(high)


@pytest.mark.slow  # a subprocess, about a second
def test_atari100k_table_on_hand_made_runs(tmp_path):
    from scipy.stats import trim_mean

    # Boxing: random 0.1, human 12.1; Pong: random -20.7, human 14.6. Normalized: Boxing 0.75 and 1.0, Pong 0.0
    # and 0.5. IQM of the four (the middle two, 0.5 and 0.75) 0.625; the game means 0.875 and 0.25, their mean
    # and median 0.5625. A resample draws each game's two runs with replacement: the lowest IQM (Boxing 0.75
    # twice, Pong 0 twice) is 0.375, the highest (1.0 twice, 0.5 twice) 0.75, each with probability 1/16 >
    # 2.5%, so those are the CI ends; the same holds for the mean of the game means.
    for game, seed, score in [("boxing", 0, 9.1), ("boxing", 1, 12.1), ("pong", 0, -20.7), ("pong", 1, -3.05)]:
        _atari100k_run(tmp_path, game, seed, score)
    short = _atari100k_run(tmp_path, "pong", 2, 14.6, kept=False)
    going = _atari100k_run(tmp_path, "pong", 3, None)
    md = tmp_path / "atari100k.md"
    proc = _results(str(tmp_path), "--markdown", str(md), "--draws", "2000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = _row(proc.stdout, "dqnlab")
    assert ours[1:3] == ["2", "4"]
    assert _estimate(ours[3]) == pytest.approx((0.625, 0.375, 0.75), abs=1e-3)  # IQM
    assert _estimate(ours[4]) == pytest.approx((0.5625, 0.375, 0.75), abs=1e-3)  # median
    assert _estimate(ours[5]) == pytest.approx((0.5625, 0.375, 0.75), abs=1e-3)  # mean
    # DrQ(eps) on the same two games, all its runs, recomputed here from the reference files.
    ref = {n: json.loads((REFERENCE_DIR / f"{n}.json").read_text()) for n in ("DrQ_eps", "HUMAN", "RANDOM")}
    drq = {
        g: (np.array(ref["DrQ_eps"][g]) - ref["RANDOM"][g][0]) / (ref["HUMAN"][g][0] - ref["RANDOM"][g][0])
        for g in ("Boxing", "Pong")
    }
    row = _row(proc.stdout, "DrQ(eps) (published runs)")
    assert row[2] == "200"
    assert _estimate(row[3])[0] == pytest.approx(trim_mean(np.concatenate(list(drq.values())), 0.25), abs=1e-3)
    assert _estimate(row[5])[0] == pytest.approx(np.mean([v.mean() for v in drq.values()]), abs=1e-3)
    assert "SPR (published runs)" in proc.stdout
    (band,) = [x for x in proc.stdout.splitlines() if x.startswith("Band to land in")]
    assert "drawing 2 of its 100 runs per game" in band and "2,000 times" in band
    boxing, pong = _row(proc.stdout, "Boxing"), _row(proc.stdout, "Pong")
    assert boxing[1:5] == ["2", "10.60", "9.10 (s0), 12.10 (s1)", "0.875"]
    assert pong[1:5] == ["2", "-11.88", "-20.70 (s0), -3.05 (s1)", "0.250"]
    assert float(boxing[5]) == pytest.approx(np.mean(ref["DrQ_eps"]["Boxing"]), abs=0.05)
    # The skipped runs are named on stderr with the reason; the Markdown file holds what was printed.
    assert f"skipped {short}: protocol not kept" in proc.stderr
    assert f"skipped {going}: unfinished" in proc.stderr
    assert md.read_text().strip() == proc.stdout.strip()


@pytest.mark.slow  # a subprocess, about a second
def test_atari100k_unknown_game_and_duplicate_seed_are_one_error_line(tmp_path):
    _atari100k_run(tmp_path / "a", "pong", 0, -20.0)
    _atari100k_run(tmp_path / "a", "space_invaders", 0, 300.0)
    proc = _results(str(tmp_path / "a"))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: env.game='space_invaders' is not one of the 26 Atari 100k games")
    _atari100k_run(tmp_path / "b" / "again", "pong", 0, -19.0)
    _atari100k_run(tmp_path / "b", "pong", 0, -20.0)
    proc = _results(str(tmp_path / "b"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: two runs of Pong seed 0")


def test_the_atari100k_tables_in_the_docs_are_the_scripts_output_on_the_records():
    # docs/results.md quotes `scripts/results.py --atari100k docs/results/atari100k --parity ...`: a record added
    # without its tables (or a table edited by hand) fails here. The script's first two tables (the aggregate, one
    # row per game) and the parity of bf16 and float32 with its verdict.
    proc = _results("docs/results/atari100k", "--parity", "docs/results/atari100k_fp32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks = proc.stdout.split("\n\n")
    tables = [b for b in blocks if b.startswith("| ")]
    (verdict,) = [b for b in blocks if b.startswith("Parity of ")]
    (parity,) = [t for t in tables if "| difference of means |" in t.splitlines()[0]]
    section = (ROOT / "docs" / "results.md").read_text().split("## Atari 100k", 1)[1].split("\n## ", 1)[0]
    for table in [*tables[:2], verdict, parity]:
        assert table.strip() in section, table
