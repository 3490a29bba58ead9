"""Learning curves and a results table: ``python scripts/plot.py <multirun or run dirs> [-o curves.png]``.

Reads each run's ``metrics.csv`` (x = env steps) and ``.hydra/overrides.yaml``, draws one line per override set
without ``seed`` (mean over seeds, shaded +- one standard deviation; ``--center iqm``: the IQM with its 95%
bootstrap band) and prints a Markdown table of the final ``eval/return_mean`` (mean +- std over seeds, from
``summary.json``). Bands of returns are clipped to the env's return range where known. See ``dqnlab.share.plotting``;
``scripts/results.py`` gives the final scores with bootstrap confidence intervals.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from dqnlab.errors import ArgumentParser  # light: one error line for a bad argument
from dqnlab.startup import imports_without_gc


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or dirs above them (a multirun dir)")
    parser.add_argument("-o", "--output", type=Path, help="PNG to write (default: <first dir>/curves.png)")
    parser.add_argument("--metric", default="rollout/episode_return", help="metrics.csv column to plot")
    parser.add_argument("--table-metric", default="eval/return_mean", help="summary.json key of the table")
    parser.add_argument("--title", help="plot title (default: the metric)")
    parser.add_argument("--center", choices=["mean", "iqm"], default="mean", help="line over seeds (and its band)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    with imports_without_gc(freeze=argv is None):  # frozen only in the script's own process
        from dqnlab.share.plotting import find_run_dirs, format_table, load_run, plot_learning_curves, results_table

    run_dirs = find_run_dirs(args.dirs)
    if not run_dirs:
        parser.error(f"no metrics.csv under {', '.join(map(str, args.dirs))}: pass run dirs of `python train.py`")
    runs = [load_run(d) for d in run_dirs]
    columns = sorted({key for run in runs for key in run.curves})
    if args.metric not in columns:
        close = difflib.get_close_matches(args.metric, columns, n=1)
        fix = f"did you mean --metric {close[0]}?" if close else f"the columns are {', '.join(columns)}"
        print(f"error: --metric {args.metric} is in no run's metrics.csv: {fix}", file=sys.stderr)
        return 2
    # Say what is left out: jobs that failed before their first row, runs that did not finish.
    without_rows = [p.parent for d in args.dirs for p in Path(d).rglob(".hydra") if p.parent not in run_dirs]
    for job in sorted(without_rows):
        print(f"skipped {job}: no metrics.csv (the job failed or stopped before its first row)", file=sys.stderr)
    for run in runs:
        if not run.summary:
            print(
                f"{run.path}: no summary.json (failed or unfinished): its curve is drawn, not tabled", file=sys.stderr
            )
    fig = plot_learning_curves(runs, args.metric, args.title, center=args.center)
    output = args.output or args.dirs[0] / "curves.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    print(format_table(results_table(runs, args.table_metric), args.table_metric))
    print(f"\n{len(runs)} runs; learning curves: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
