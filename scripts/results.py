"""Final scores with honest statistics: ``python scripts/results.py <run or multirun dirs> [--markdown out.md]``
``[--png curves.png] [--reference ENV_ID=RANDOM:REFERENCE ...]``, or ``--atari100k`` to score Atari 100k runs.

Per group of runs (same overrides apart from ``seed``, grouped as ``dqnlab.share.plotting`` does), the final greedy
evaluation (``summary.json`` ``eval/return_mean``) as mean, median and IQM, each with a seeded 95% percentile
bootstrap CI over runs, the number of runs and the worst seed. When the runs cover several envs, the groups that
differ only in their env overrides are also aggregated on normalized scores (uniform random = 0, reference = 1;
defaults in ``dqnlab.share.stats.ENV_SCORES``, override with ``--reference ENV_ID=RANDOM:REFERENCE``) with a
stratified bootstrap. ``--png`` draws the learning curves: the IQM over seeds with its bootstrap band, one PNG
per env. The method is rliable's (Agarwal et al. 2021), see ``dqnlab.share.stats``.

``--atari100k``: the runs of ``python train.py experiment=atari100k env.game=<game> seed=<s>`` whose summary
says the protocol was kept (the others are named on stderr and left out), on human-normalized scores: IQM,
median and mean of the games' means with 95% stratified bootstrap CIs; beside them DrQ(eps) and SPR on the same
games from their 100 published runs per game (``docs/results/atari100k/reference/``); the band to land in (the
5th to 95th percentile of DrQ(eps)'s IQM over ``--draws`` draws of as many of its runs per game as ours); and a
per-game table of raw scores. See ``dqnlab.share.atari100k``.

``--parity DIR...`` (with ``--atari100k``): the same games and seeds run another way (``algo.precision=fp32``
against the bf16 records) and, per game, whether the two sets' mean scores differ by less than the larger of
their seed-to-seed spreads (``dqnlab.share.parity``).

Last, a table of how each run ran: its code's git commit, machine, torch version, UTC start and end and wall time
(``summary.json``'s ``provenance``, ``dqnlab.share.records``).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dqnlab.conf_keys import override_key
from dqnlab.errors import EXIT_CONFIG_ERROR, ArgumentParser, positive_int, print_error
from dqnlab.share import atari100k, parity, stats
from dqnlab.share.atari100k_runs import compute_label, scores_by_game
from dqnlab.share.plotting import (
    Run,
    final_value,
    find_run_dirs,
    group_labels,
    group_runs,
    load_run,
    plot_learning_curves,
)
from dqnlab.share.records import records_markdown

ATARI100K_REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "results" / "atari100k" / "reference"


@dataclass
class Group:
    """One group of runs and its final scores.

    Attributes:
        label: The overrides that tell it apart from the other groups.
        overrides: All its grouping overrides.
        env_id: The env its runs trained on (None if unknown or mixed).
        runs: Its runs, finished or not.
        scores: The final ``metric`` of each finished run.
        seeds: The seed of each finished run, aligned with ``scores``.

    """

    label: str
    overrides: tuple[str, ...]
    env_id: str | None
    runs: list[Run]
    scores: np.ndarray
    seeds: list[int]

    @property
    def method(self) -> tuple[str, ...]:
        """The overrides apart from the env ones: groups with the same method on different envs aggregate."""
        return tuple(o for o in self.overrides if override_key(o).split(".")[0] != "env")


def collect_groups(runs: list[Run], metric: str = "eval/return_mean") -> list[Group]:
    """Runs grouped by their overrides without ``seed``, with the final ``metric`` of each finished run."""
    groups = group_runs(runs)
    labels = group_labels(groups)
    out = []
    for key, members in groups.items():
        done = [r for r in members if final_value(r, metric) is not None]
        ids = {r.env_id for r in members}
        out.append(
            Group(
                label=labels[key],
                overrides=key,
                env_id=ids.pop() if len(ids) == 1 else None,
                runs=members,
                scores=np.array([final_value(r, metric) for r in done], dtype=float),
                seeds=[int(r.summary.get("seed", -1)) for r in done],
            )
        )
    return out


def group_row(group: Group, reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean, median and IQM with 95% bootstrap CIs, the run count and the worst seed of one group."""
    row: dict[str, Any] = {"group": group.label, "env": group.env_id, "runs": len(group.runs)}
    row["finished"] = len(group.scores)
    if len(group.scores) == 0:
        return row
    for name, fn in stats.STATISTICS.items():
        row[name] = stats.bootstrap_ci(group.scores, fn, reps=reps, seed=seed)
    worst = int(np.argmin(group.scores))
    row["worst"], row["worst_seed"] = float(group.scores[worst]), group.seeds[worst]
    row["scores"] = group.scores.tolist()
    wall = [r.summary["wall_time_s"] for r in group.runs if "wall_time_s" in r.summary]
    row["wall_s"] = float(np.mean(wall)) if wall else None
    steps = [r.summary["env_steps"] for r in group.runs if "env_steps" in r.summary]
    row["env_steps"] = int(max(steps)) if steps else None
    return row


def aggregate_rows(
    groups: list[Group], references: dict[str, stats.EnvScores], reps: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """Per method on two or more envs: normalized mean, median and IQM with stratified bootstrap CIs."""
    methods: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
    ambiguous: set[tuple[str, ...]] = set()  # two groups of one method on one env: no single aggregate
    for g in groups:
        if g.env_id in references and len(g.scores):
            ref = references[g.env_id]
            per_env = methods.setdefault(g.method, {})
            if g.env_id in per_env:
                ambiguous.add(g.method)
            per_env[g.env_id] = stats.normalize(g.scores, ref.random, ref.reference)
    rows = []
    for method, per_env in methods.items():
        if len(per_env) < 2 or method in ambiguous:
            continue
        row: dict[str, Any] = {"group": ", ".join(method) or "defaults", "envs": sorted(per_env)}
        row["runs"] = sum(len(v) for v in per_env.values())
        for name, fn in stats.STATISTICS.items():
            row[name] = stats.stratified_bootstrap_ci(per_env, fn, reps=reps, seed=seed)
        rows.append(row)
    return rows


def format_markdown(rows: list[dict[str, Any]], aggregates: list[dict[str, Any]], metric: str) -> str:
    """The tables as Markdown."""
    lines = [
        f"Final `{metric}` per group; [95% percentile bootstrap CI over runs]",
        "",
        "| group | env | runs | IQM | mean | median | worst (seed) | env steps | wall s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = f"{r['finished']}/{r['runs']}" if r["finished"] != r["runs"] else str(r["runs"])
        if not r["finished"]:
            lines.append(f"| {r['group']} | {r['env']} | {runs} | - | - | - | - | - | - |")
            continue
        wall = f"{r['wall_s']:.0f}" if r.get("wall_s") is not None else "-"
        steps = f"{r['env_steps']:,}" if r.get("env_steps") is not None else "-"
        lines.append(
            f"| {r['group']} | {r['env']} | {runs} | {r['iqm'].format()} | {r['mean'].format()} | "
            f"{r['median'].format()} | {r['worst']:.1f} ({r['worst_seed']}) | {steps} | {wall} |"
        )
    if aggregates:
        lines += [
            "",
            "Normalized across envs (random = 0, reference = 1); [95% stratified bootstrap CI]",
            "",
            "| group | envs | runs | IQM | mean | median |",
            "|---|---|---|---|---|---|",
        ]
        for a in aggregates:
            lines.append(
                f"| {a['group']} | {', '.join(a['envs'])} | {a['runs']} | {a['iqm'].format(3)} | "
                f"{a['mean'].format(3)} | {a['median'].format(3)} |"
            )
    return "\n".join(lines)


def parse_reference(text: str) -> tuple[str, stats.EnvScores]:
    """``ENV_ID=RANDOM:REFERENCE`` -> (env id, scores)."""
    try:
        env_id, values = text.split("=", 1)
        random, reference = (float(v) for v in values.split(":"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--reference {text!r}: expected ENV_ID=RANDOM:REFERENCE") from err
    known = stats.ENV_SCORES.get(env_id)
    bounds = (known.low, known.high) if known else (None, None)
    return env_id, stats.EnvScores(random, reference, *bounds)


def write_curves(runs: list[Run], png: Path, metric: str, seed: int) -> list[Path]:
    """One PNG of IQM learning curves per env (``png`` itself when there is one env)."""
    by_env: dict[str | None, list[Run]] = {}
    finished = [r for r in runs if r.summary] or runs  # a run still going would cut every curve at its step
    for r in finished:
        by_env.setdefault(r.env_id, []).append(r)
    written = []
    for env_id, members in by_env.items():
        out = png if len(by_env) == 1 else png.with_name(f"{png.stem}-{env_id}{png.suffix}")
        fig = plot_learning_curves(members, metric, title=env_id or metric, center="iqm", seed=seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90)
        written.append(out)
    return written


def atari100k_report(runs: list[Run], args: argparse.Namespace) -> tuple[str, list[Run]]:
    """The ``--atari100k`` tables as Markdown and the runs they score; the skipped runs go to stderr."""
    scores, kept, skipped = scores_by_game(runs, args.metric)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not scores:
        raise atari100k.Atari100kError(
            f"no finished Atari 100k run that kept the protocol under {', '.join(map(str, args.dirs))}"
        )
    reference = atari100k.load_reference(ATARI100K_REFERENCE)
    comparison = atari100k.compare(scores, reference, reps=args.reps, draws=args.draws, seed=args.seed)
    text = atari100k.format_markdown(comparison, reference)
    if args.parity:
        text, kept = _with_parity(text, kept, scores, args)
    return text, kept


def _with_parity(text: str, kept: list[Run], scores: dict, args: argparse.Namespace) -> tuple[str, list[Run]]:
    """``text`` with ``--parity``'s table: the runs under ``args.dirs`` against those under ``args.parity``."""
    others = [load_run(d) for d in find_run_dirs(args.parity)]
    other_scores, other_kept, skipped = scores_by_game(others, args.metric)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    games, left_out = parity.parity(scores, other_scores)
    for line in left_out:
        print(f"parity: left out {line}", file=sys.stderr)
    if not games:
        raise atari100k.Atari100kError(
            f"no game with 2 or more runs both under {', '.join(map(str, args.dirs))} and under "
            f"{', '.join(map(str, args.parity))}: --parity compares the same games run twice"
        )
    labels = (compute_label(kept), compute_label(other_kept))
    return text + "\n\n" + parity.format_markdown(games, labels), kept + other_kept


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or dirs above them (multirun dirs)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this Markdown file")
    parser.add_argument("--png", type=Path, help="write IQM learning curves here (one file per env)")
    parser.add_argument("--metric", default="eval/return_mean", help="summary.json key of the final score")
    parser.add_argument("--curve-metric", default="eval/return_mean", help="metrics.csv column of the curves")
    parser.add_argument(
        "--reference",
        type=parse_reference,
        action="append",
        default=[],
        metavar="ENV_ID=RANDOM:REFERENCE",
        help="normalization of an env (repeatable); defaults: " + ", ".join(stats.ENV_SCORES),
    )
    parser.add_argument(
        "--atari100k", action="store_true", help="score Atari 100k runs beside DrQ(eps) and SPR (see above)"
    )
    parser.add_argument(
        "--draws", type=positive_int, default=10_000, help="draws of DrQ(eps) runs for --atari100k's band"
    )
    parser.add_argument(
        "--parity",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="with --atari100k: the same games and seeds run another way (algo.precision=fp32); a table says "
        "per game whether the two sets' means differ by less than the larger seed-to-seed spread",
    )
    parser.add_argument("--reps", type=positive_int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    run_dirs = find_run_dirs(args.dirs)
    if not run_dirs:
        parser.error(f"no metrics.csv under {', '.join(map(str, args.dirs))}: pass run dirs of `python train.py`")
    runs = [load_run(d) for d in run_dirs]
    # Say what is left out: jobs that failed before their first metrics row (a .hydra/ dir, no metrics.csv).
    for job in sorted({p.parent for d in args.dirs for p in Path(d).rglob(".hydra")} - set(run_dirs)):
        print(f"skipped {job}: no metrics.csv (the job failed or stopped before its first row)", file=sys.stderr)
    keys = sorted({key for run in runs for key in run.summary})
    if not args.atari100k and keys and args.metric not in keys:
        close = difflib.get_close_matches(args.metric, keys, n=1)
        fix = f"did you mean --metric {close[0]}?" if close else f"the keys are {', '.join(keys)}"
        print_error(ValueError(f"--metric {args.metric} is in no run's summary.json: {fix}"))
        return EXIT_CONFIG_ERROR
    if args.parity and not args.atari100k:
        parser.error("--parity compares Atari 100k runs: add --atari100k")
    if args.atari100k:
        try:
            text, runs = atari100k_report(runs, args)
        except atari100k.Atari100kError as err:  # an unknown game, a duplicate seed: one line, no traceback
            print_error(err)
            return EXIT_CONFIG_ERROR
    else:
        groups = collect_groups(runs, args.metric)
        references = {**stats.ENV_SCORES, **dict(args.reference)}
        rows = [group_row(g, args.reps, args.seed) for g in groups]
        text = format_markdown(rows, aggregate_rows(groups, references, args.reps, args.seed), args.metric)
    text += (
        "\n\nHow each run ran (summary.json's provenance: the code's git commit, the machine, the UTC start and end;"
        " the wall time is the run's across its segments, any time its process was paused included):\n\n"
        + records_markdown(runs)
    )
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    if args.png:
        for out in write_curves(runs, args.png, args.curve_metric, args.seed):
            print(f"learning curves: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
