"""Atari 100k scoring: the 26 games, human-normalized scores, and where our runs stand beside DrQ(eps) and SPR.

Atari 100k (Kaiser et al. 2020) trains 100k agent steps (400k emulator frames) per game on 26 games and scores
each run by its final raw game score, human-normalized: (score - random) / (human - random). Results are
aggregated as rliable does (Agarwal et al. 2021): the IQM over all runs of all games, and the median and mean of
the games' mean scores, each with a 95% stratified bootstrap CI (:mod:`dqnlab.share.stats`).

The comparison uses the per-run scores that paper released (100 runs per game of DrQ(eps) and of SPR) and
computes the published methods' statistics on the same games as ours, since an aggregate over 5 games says
nothing about one over 26. With 3 seeds a faithful DrQ(eps) still lands anywhere in a wide range, so
:func:`compare` also gives that range: the IQM of many draws of as many DrQ(eps) runs per game as we have.

Pure functions, and :func:`load_reference` reading the reference files from a directory the caller names (the
repo keeps them in ``docs/results/atari100k/reference/``, with their source).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dqnlab.share import stats

# ale-py ROM id (what env.game resolves to) -> the game's name in the reference files. Spelled out rather than
# derived: the reference writes James Bond "Jamesbond" and Up'n Down "UpNDown", which no case rule recovers.
GAMES: dict[str, str] = {
    "alien": "Alien",
    "amidar": "Amidar",
    "assault": "Assault",
    "asterix": "Asterix",
    "bank_heist": "BankHeist",
    "battle_zone": "BattleZone",
    "boxing": "Boxing",
    "breakout": "Breakout",
    "chopper_command": "ChopperCommand",
    "crazy_climber": "CrazyClimber",
    "demon_attack": "DemonAttack",
    "freeway": "Freeway",
    "frostbite": "Frostbite",
    "gopher": "Gopher",
    "hero": "Hero",
    "jamesbond": "Jamesbond",
    "kangaroo": "Kangaroo",
    "krull": "Krull",
    "kung_fu_master": "KungFuMaster",
    "ms_pacman": "MsPacman",
    "pong": "Pong",
    "private_eye": "PrivateEye",
    "qbert": "Qbert",
    "road_runner": "RoadRunner",
    "seaquest": "Seaquest",
    "up_n_down": "UpNDown",
}

METHODS: dict[str, str] = {"DrQ(eps)": "DrQ_eps.json", "SPR": "SPR.json"}  # published method -> its run file
BAND_METHOD = "DrQ(eps)"  # the agent experiment=atari100k configures: the one our runs should match
OURS = "dqnlab"
STATISTICS = ("iqm", "median", "mean")


class Atari100kError(ValueError):
    """Runs or reference files that cannot be scored as Atari 100k; the message says which and why."""


def _compact(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_COMPACT = {_compact(rom): name for rom, name in GAMES.items()}


def reference_game(game: str) -> str:
    """The reference files' name of ``env.game``, spelled any way ``env.game`` accepts.

    ``ms_pacman``, ``MsPacman``, ``mspacman`` and ``ALE/MsPacman-v5`` all give ``MsPacman``; ``james_bond``
    and ``jamesbond`` give ``Jamesbond``.

    Raises:
        Atari100kError: The game is not one of the 26.

    """
    name = re.sub(r"^ALE/|(NoFrameskip)?-v\d+$", "", str(game).strip())
    found = _BY_COMPACT.get(_compact(name))
    if found is None:
        raise Atari100kError(f"env.game={game!r} is not one of the 26 Atari 100k games: {', '.join(GAMES)}")
    return found


@dataclass(frozen=True)
class Reference:
    """The reference files, by reference game name.

    Attributes:
        random: Random-policy score (normalized 0).
        human: Human score (normalized 1).
        methods: Published method (``DrQ(eps)``, ``SPR``) -> game -> raw score of each of its runs.

    """

    random: dict[str, float]
    human: dict[str, float]
    methods: dict[str, dict[str, np.ndarray]]

    def normalize(self, game: str, scores: np.ndarray | list[float]) -> np.ndarray:
        """Human-normalized ``scores`` of ``game``."""
        return stats.normalize(scores, self.random[game], self.human[game])

    def normalized(self, method: str, games: list[str]) -> dict[str, np.ndarray]:
        """Human-normalized scores of all of ``method``'s runs on ``games``."""
        return {g: self.normalize(g, self.methods[method][g]) for g in games}


def load_reference(directory: Path) -> Reference:
    """Read ``HUMAN.json``, ``RANDOM.json`` and the published methods' run files from ``directory``.

    Raises:
        Atari100kError: A file is missing or lacks one of the 26 games.

    """

    def read(name: str) -> dict[str, np.ndarray]:
        path = Path(directory) / name
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise Atari100kError(f"cannot read the Atari 100k reference file {path}: {err}") from err
        missing = [g for g in GAMES.values() if not data.get(g)]
        if missing:
            raise Atari100kError(f"{path} has no scores for {', '.join(missing)}")
        return {g: np.asarray(data[g], dtype=float) for g in GAMES.values()}

    random, human = read("RANDOM.json"), read("HUMAN.json")
    return Reference(
        random={g: float(v[0]) for g, v in random.items()},
        human={g: float(v[0]) for g, v in human.items()},
        methods={method: read(file) for method, file in METHODS.items()},
    )


def aggregate(scores: Mapping[str, np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, stats.Estimate]:
    """Rliable's three aggregates of normalized scores, each with a 95% stratified bootstrap CI.

    Args:
        scores: Game -> normalized score of each run.
        reps: Bootstrap resamples.
        seed: Seed of the resampling (the three intervals share their resamples).

    Returns:
        ``iqm`` (over all runs of all games), ``median`` and ``mean`` (of the games' mean scores).

    """
    return {
        "iqm": stats.stratified_bootstrap_ci(scores, stats.iqm, reps=reps, seed=seed),
        "median": stats.stratified_bootstrap_of_means(scores, stats.median, reps=reps, seed=seed),
        "mean": stats.stratified_bootstrap_of_means(scores, stats.mean, reps=reps, seed=seed),
    }


@dataclass(frozen=True)
class Comparison:
    """Our runs beside the published methods on the same games.

    Attributes:
        ours: Reference game name -> seed -> our run's raw score.
        aggregates: Method (``OURS`` first, then the published ones) -> statistic -> estimate.
        runs: Method -> number of runs on these games.
        band: ``(low, high)``: where ``coverage`` of the draws of ``BAND_METHOD``'s IQM fall.
        draws: Draws behind ``band``.
        coverage: Share of the draws inside ``band``.
        reps: Bootstrap resamples behind the CIs.

    """

    ours: dict[str, dict[int, float]]
    aggregates: dict[str, dict[str, stats.Estimate]]
    runs: dict[str, int]
    band: tuple[float, float]
    draws: int
    coverage: float
    reps: int

    @property
    def games(self) -> list[str]:
        """Our games, sorted."""
        return sorted(self.ours)


def compare(
    ours: Mapping[str, Mapping[int, float]],
    reference: Reference,
    reps: int = 2000,
    draws: int = 10_000,
    coverage: float = 0.90,
    seed: int = 0,
) -> Comparison:
    """Our runs' aggregates, the published methods' on the same games, and the band ``BAND_METHOD`` spans.

    Args:
        ours: Reference game name -> seed -> raw score (at least one run per game).
        reference: The reference files.
        reps: Bootstrap resamples of the CIs.
        draws: Draws of ``BAND_METHOD`` runs for the band (as many runs per game as ``ours`` has, without
            replacement).
        coverage: Share of the draws inside the band (0.90: 5th to 95th percentile).
        seed: Seed of the bootstrap and of the draws.

    """
    ours = {g: dict(sorted(runs.items())) for g, runs in sorted(ours.items()) if runs}
    if not ours:
        raise Atari100kError("no Atari 100k runs to score")
    games = list(ours)
    scores = {OURS: {g: reference.normalize(g, list(runs.values())) for g, runs in ours.items()}}
    scores |= {m: reference.normalized(m, games) for m in reference.methods}
    band = stats.subsample_interval(
        scores[BAND_METHOD], {g: len(r) for g, r in ours.items()}, stats.iqm, draws, coverage, seed
    )
    return Comparison(
        ours=ours,
        aggregates={m: aggregate(s, reps, seed) for m, s in scores.items()},
        runs={m: sum(len(v) for v in s.values()) for m, s in scores.items()},
        band=band,
        draws=draws,
        coverage=coverage,
        reps=reps,
    )


def _where(value: float, band: tuple[float, float]) -> str:
    if value < band[0]:
        return "below it"
    return "above it" if value > band[1] else "inside it"


def format_markdown(comparison: Comparison, reference: Reference) -> str:
    """The aggregate table, the band and the per-game table as Markdown."""
    c, games = comparison, comparison.games
    lines = [
        f"Atari 100k, human-normalized (random = 0, human = 1) on the {len(games)} games of these runs; "
        f"[95% stratified bootstrap CI, {c.reps} resamples]; median and mean are of the games' mean scores",
        "",
        "| method | games | runs | IQM | median | mean |",
        "|---|---|---|---|---|---|",
    ]
    for method, agg in c.aggregates.items():
        label = method if method == OURS else f"{method} (published runs)"
        cells = " | ".join(agg[s].format(3) for s in STATISTICS)
        lines.append(f"| {label} | {len(games)} | {c.runs[method]} | {cells} |")
    counts = sorted({len(r) for r in c.ours.values()})
    per_game = str(counts[0]) if len(counts) == 1 else f"as many (from {counts[0]} to {counts[-1]})"
    available = sorted({len(reference.methods[BAND_METHOD][g]) for g in games})
    low, high = c.band
    ours_iqm = c.aggregates[OURS]["iqm"].value
    lines += [
        "",
        f"Band to land in: {BAND_METHOD}'s IQM on these games, drawing {per_game} of its "
        f"{'/'.join(map(str, available))} runs per game (without replacement) {c.draws:,} times: "
        f"{100 * c.coverage:.0f}% of draws within [{low:.3f}, {high:.3f}]; "
        f"the IQM of these runs, {ours_iqm:.3f}, is {_where(ours_iqm, c.band)}.",
        "",
        f"| game | runs | score mean | score per run | normalized mean | {BAND_METHOD} score mean | "
        f"{BAND_METHOD} score 25th-75th pct | "
        + " | ".join(f"{m} score mean" for m in reference.methods if m != BAND_METHOD)
        + " | random | human |",
        "|---|---|---|---|---|---|---|" + "---|" * (len(reference.methods) - 1) + "---|---|",
    ]
    for g in games:
        runs = np.array(list(c.ours[g].values()))
        each = ", ".join(f"{v:.2f} (s{s})" for s, v in c.ours[g].items())  # a mean of 100 games: 2 decimals
        band_runs = reference.methods[BAND_METHOD][g]
        q25, q75 = np.percentile(band_runs, [25, 75])
        others = " | ".join(f"{reference.methods[m][g].mean():.1f}" for m in reference.methods if m != BAND_METHOD)
        lines.append(
            f"| {g} | {len(runs)} | {runs.mean():.2f} | {each} | {reference.normalize(g, runs).mean():.3f} | "
            f"{band_runs.mean():.1f} | [{q25:.1f}, {q75:.1f}] | {others} | "
            f"{reference.random[g]:.1f} | {reference.human[g]:.1f} |"
        )
    return "\n".join(lines)
