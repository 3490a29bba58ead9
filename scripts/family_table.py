"""CartPole final greedy return of each DQN family switch, alone and all together, over seeds.

    python scripts/family_table.py                          # 8 variants x seeds 0-2 on the default CartPole config
    python scripts/family_table.py --seeds 0 --variants vanilla all
    python scripts/family_table.py --append                 # also append the table to docs/benchmarks.md
    python scripts/family_table.py --quick                  # tiny runs (checks the script, learns nothing)

Each run is ``dqnlab.train.run`` on the default CartPole config (``python train.py``: the tuned
conf/hparams/cartpole.yaml, Double DQN, 30k env steps, Huber loss, Polyak target) plus the variant's overrides
(and any extra overrides given on the command line), one after the other in this process. ``vanilla`` turns
the Double DQN target off; dueling, n_step=3, noisy, c51 and all run their presets
(conf/experiment/cartpole_*.yaml). ``--variants dueling/vanilla ...`` runs a switch on vanilla DQN instead, and
``dueling/64-64`` or ``n_step=3/64-64`` a switch alone on the default 64-64 network (see ``OTHER``). The table shows
the final eval return (mean of ``eval.episodes`` greedy episodes) per seed, how
many seeds reached 475 (CartPole-v1's "solved" threshold), and the mean wall time per run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from dqnlab.share.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SOLVED = 475.0  # CartPole-v1's reward threshold

VANILLA = ["algo.double=false"]  # the default CartPole config uses Double DQN
# Each switch on the default CartPole config (Double DQN, Huber, Polyak; conf/hparams/cartpole.yaml), the way a
# user turns it on (`python train.py buffer=prioritized`); dueling, n-step, noisy, c51 and all need their presets
# (conf/experiment/cartpole_*.yaml, each citing where its values come from and why it is needed).
VARIANTS: dict[str, list[str]] = {
    "vanilla": VANILLA,
    "double": [],  # the default config itself
    "dueling": ["experiment=cartpole_dueling"],  # a 256-256 network
    "n_step=3": ["experiment=cartpole_nstep"],  # a 256-256 network
    "prioritized": ["buffer=prioritized"],
    "noisy": ["experiment=cartpole_noisy"],
    "c51": ["experiment=cartpole_c51"],  # algo=c51 replaces the algo group: no Double DQN
    "all": ["experiment=cartpole_all"],
}
# Rows behind the analyses in docs/benchmarks.md: dueling and n-step alone on the default 64-64 network (the last
# network falls back, Q runs away), and switches on vanilla DQN (Double DQN off; the max over the target
# network's own estimates overestimates and some runs diverge).
OTHER: dict[str, list[str]] = {
    "dueling/64-64": ["network.dueling=true"],
    "n_step=3/64-64": ["algo.n_step=3"],
    "dueling/vanilla": [*VANILLA, "network.dueling=true"],
    "n_step=3/vanilla": [*VANILLA, "algo.n_step=3"],
    "prioritized/vanilla": [*VANILLA, "buffer=prioritized"],
    "noisy/vanilla": [*VANILLA, "network.noisy=true"],
}
QUICK = ["env_steps=1000", "collector.learning_starts=300", "collector.train_freq=4", "collector.gradient_steps=1"]


def compose(overrides: list[str], output_dir: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    return cfg


def run_one(overrides: list[str]) -> tuple[float, float | None, float]:
    """Final eval return, the last-iterate network's return (``eval.keep_best``; else ``None``) and wall time."""
    from dqnlab.train import run

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        summary = run(compose(overrides, out))
        return summary["eval/return_mean"], summary.get("eval/last_return_mean"), time.perf_counter() - t


def table(
    results: dict[str, dict[int, float]],
    lasts: dict[str, dict[int, float | None]],
    walls: dict[str, list[float]],
    seeds: list[int],
) -> str:
    """Markdown table; a cell shows the last-iterate network's return in parentheses where keep_best changed it."""
    header = ["variant", *[f"seed {s}" for s in seeds], "mean", f">= {SOLVED:g}", "s / run"]
    rows = []
    for name, by_seed in results.items():
        values = [by_seed[s] for s in seeds]
        solved = sum(v >= SOLVED for v in values)
        wall = sum(walls[name]) / len(walls[name])
        shown = []
        for s, v in zip(seeds, values, strict=True):
            last = lasts[name][s]
            shown.append(f"{v:.0f}" + (f" ({last:.0f})" if last is not None and round(last) != round(v) else ""))
        cells = [name, *shown, f"{sum(values) / len(values):.0f}"]
        rows.append([*cells, f"{solved}/{len(values)}", f"{wall:.0f}"])
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *OTHER])
    parser.add_argument("--quick", action="store_true", help="tiny runs: checks the script, learns nothing")
    parser.add_argument("--append", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()

    from dqnlab.train import _quiet_lightning

    _quiet_lightning()
    base = ["logger=[]", "progress_bar=false", *(QUICK if args.quick else [])]
    results: dict[str, dict[int, float]] = {}
    lasts: dict[str, dict[int, float | None]] = {}
    walls: dict[str, list[float]] = {}
    for name in args.variants:
        for seed in args.seeds:
            ret, last, wall = run_one([*base, *{**VARIANTS, **OTHER}[name], *args.overrides, f"seed={seed}"])
            results.setdefault(name, {})[seed] = ret
            lasts.setdefault(name, {})[seed] = last
            walls.setdefault(name, []).append(wall)
            row = {"variant": name, "seed": seed, "eval_return": ret, "last_return": last, "wall_s": round(wall, 1)}
            print(json.dumps(row), flush=True)
    text = table(results, lasts, walls, args.seeds)
    print(text)
    if args.append:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        machine = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {gpu}"
        cmd = "python scripts/family_table.py " + " ".join(a for a in sys.argv[1:] if a != "--append")
        with (ROOT / "docs" / "benchmarks.md").open("a") as f:
            f.write(f"\n### DQN family on CartPole ({dt.date.today().isoformat()})\n\n`{cmd}` on {machine}\n\n{text}\n")


if __name__ == "__main__":
    main()
