"""Atari 100k runs on disk, scored: which runs count (finished, the benchmark's protocol kept) and their final
scores by reference game and seed, for ``scripts/results.py --atari100k`` (:mod:`dqnlab.share.atari100k` scores
them beside the published runs, :mod:`dqnlab.share.parity` compares two sets).
"""

from __future__ import annotations

import json
from pathlib import Path

from dqnlab.share import atari100k
from dqnlab.share.plotting import Run, final_value


def scores_by_game(runs: list[Run], metric: str) -> tuple[dict[str, dict[int, float]], list[Run], list[str]]:
    """The final ``metric`` of each finished Atari 100k run that kept the protocol, by reference game and seed.

    Returns:
        ``(scores, kept, skipped)``: reference game -> seed -> score; the runs scored; one line per run left
        out, saying why.

    Raises:
        atari100k.Atari100kError: A run's game is not one of the 26, or two runs share a game and a seed.

    """
    scores: dict[str, dict[int, float]] = {}
    where: dict[tuple[str, int], Path] = {}
    kept, skipped = [], []
    for run in runs:
        value = final_value(run, metric)
        protocol = run.summary.get("protocol")
        if not run.summary or value is None:
            skipped.append(f"{run.path}: unfinished (no summary.json or no {metric})")
        elif protocol != "atari100k":
            said = f"protocol: {protocol}" if protocol else "no protocol"
            skipped.append(f"{run.path}: not an Atari 100k run (summary.json {said})")
        elif run.summary.get("protocol_kept") is not True:
            # A shortened or lengthened run would compare unlike with the published 100k-step runs.
            kept_flag = json.dumps(run.summary.get("protocol_kept"))
            skipped.append(f"{run.path}: protocol not kept (summary.json protocol_kept: {kept_flag})")
        else:
            if run.env_id is None:
                raise atari100k.Atari100kError(f"{run.path}: no env.game in .hydra/config.yaml")
            game, seed = atari100k.reference_game(run.env_id), int(run.summary.get("seed", -1))
            if (game, seed) in where:  # counting one seed twice would narrow the CIs for nothing
                raise atari100k.Atari100kError(
                    f"two runs of {game} seed {seed}: {where[game, seed]} and {run.path}; pass only one"
                )
            where[game, seed] = run.path
            scores.setdefault(game, {})[seed] = value
            kept.append(run)
    return scores, kept, skipped


def compute_label(runs: list[Run]) -> str:
    """How the runs' updates computed (summary.json ``update_compute``: ``bf16 NCHW``), joined when they differ."""
    return " / ".join(sorted({str(r.summary.get("update_compute", "not recorded")) for r in runs}))
