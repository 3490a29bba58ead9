"""Whether a change of how the update computes changes what is learned: the parity test of two sets of runs.

The CPU update may run under bf16 autocast (``algo.precision``); the test pre-registered for it (docs/results.md,
"bf16 against float32") runs the same games and seeds once per precision and asks, game by game, whether the two
precisions' mean scores differ by less than the runs of one precision differ among themselves. A game's
**seed-to-seed spread** under one precision is its best run's score minus its worst's (with two seeds, the one
difference there is); parity holds for the game when ``|mean_a - mean_b|`` is below the larger of the two spreads.
Only the seeds both sets ran count (a third bf16 seed would widen one spread and not the other); a game needs at
least two of them, or it has no spread to compare with.

Pure functions over ``game -> seed -> score`` mappings (``scripts/results.py --parity`` reads them from run dirs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dqnlab.share.tables import markdown_table

Scores = Mapping[str, Mapping[int, float]]  # game -> seed -> final score


@dataclass(frozen=True)
class GameParity:
    """One game's runs under the two settings and the verdict.

    Attributes:
        game: The game.
        a: Seed -> score under the first setting (the records: bf16 where the CPU chose it).
        b: Seed -> score under the second setting (float32).

    """

    game: str
    a: Mapping[int, float]
    b: Mapping[int, float]

    @property
    def mean_a(self) -> float:
        """The first setting's mean score."""
        return _mean(self.a)

    @property
    def mean_b(self) -> float:
        """The second setting's mean score."""
        return _mean(self.b)

    @property
    def difference(self) -> float:
        """``|mean_a - mean_b|``."""
        return abs(self.mean_a - self.mean_b)

    @property
    def spread(self) -> float:
        """The larger of the two settings' seed-to-seed spreads."""
        return max(_spread(self.a), _spread(self.b))

    @property
    def holds(self) -> bool:
        """Whether the means differ by less than the larger spread."""
        return self.difference < self.spread


def _mean(runs: Mapping[int, float]) -> float:
    return sum(runs.values()) / len(runs)


def _spread(runs: Mapping[int, float]) -> float:
    """Best run minus worst run."""
    return max(runs.values()) - min(runs.values())


def parity(a: Scores, b: Scores) -> tuple[list[GameParity], list[str]]:
    """The games both sets ran with at least two common seeds, on those seeds, and one line per game left out.

    Args:
        a: The first set's scores (``game -> seed -> score``).
        b: The second set's.

    Returns:
        ``(games, skipped)``: the comparable games in name order; for every other game, why it is left out.

    """
    games, skipped = [], []
    for game in sorted(set(a) | set(b)):
        runs_a, runs_b = a.get(game, {}), b.get(game, {})
        seeds = sorted(set(runs_a) & set(runs_b))
        if len(seeds) < 2:
            skipped.append(
                f"{game}: {len(runs_a)} and {len(runs_b)} runs, {len(seeds)} seed{'s' * (len(seeds) != 1)} in "
                "common; parity needs at least 2 seeds run both ways"
            )
        else:
            games.append(GameParity(game, {s: runs_a[s] for s in seeds}, {s: runs_b[s] for s in seeds}))
    return games, skipped


def format_markdown(games: list[GameParity], labels: tuple[str, str]) -> str:
    """One row per game: each setting's runs, mean and spread, the difference of the means and the verdict."""
    first, second = labels

    def runs(scores: Mapping[int, float]) -> str:
        return ", ".join(f"{v:.2f} (s{s})" for s, v in sorted(scores.items()))

    rows = [
        [
            g.game,
            runs(g.a),
            f"{g.mean_a:.2f}",
            f"{_spread(g.a):.2f}",
            runs(g.b),
            f"{g.mean_b:.2f}",
            f"{_spread(g.b):.2f}",
            f"{g.difference:.2f}",
            "holds" if g.holds else "does not hold",
        ]
        for g in games
    ]
    header = ["game", f"{first} runs", f"{first} mean", f"{first} spread", f"{second} runs", f"{second} mean",
              f"{second} spread", "difference of means", "parity"]  # fmt: skip
    held = sum(g.holds for g in games)
    return (
        f"Parity of {first} and {second}: it holds for a game when the difference of the two means is below the "
        f"larger seed-to-seed spread (best run minus worst) of the two; it holds for {held} of {len(games)} "
        f"game{'s' if len(games) != 1 else ''}.\n\n" + markdown_table(header, rows)
    )
