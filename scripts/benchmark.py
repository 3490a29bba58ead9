"""dqnlab benchmarks: speed and memory targets live here, never in timed unit tests.

    python scripts/benchmark.py cartpole-cpu              # dqnlab loop vs a bare PyTorch loop
    python scripts/benchmark.py cartpole-solve            # `python train.py` on seeds 0-4: return, wall clock
    python scripts/benchmark.py minatar-cpu               # MinAtar Breakout: dqnlab loop vs a bare PyTorch loop
    python scripts/benchmark.py replay-memory             # bytes of a 1M-transition Atari buffer
    python scripts/benchmark.py atari-gpu                 # Breakout on a GPU: eager vs CUDA graphs, num_envs
    python scripts/benchmark.py atari-cpu                 # the Atari 100k update on a CPU vs a bare fp32 one
    python scripts/benchmark.py peers                     # Stable-Baselines3 DQN vs dqnlab, same settings
    python scripts/benchmark.py zoo                       # dqnlab presets vs SB3 with RL Zoo's hyperparameters
    python scripts/benchmark.py update-floor              # one MLP update's cost and its matrix products alone
    python scripts/benchmark.py zoo-split --envs acrobot  # where a zoo run's time goes, dqnlab and SB3
    python scripts/benchmark.py cartpole-cpu --append     # also append the table to docs/benchmarks.md

Each suite prints a table and one JSON line (``{"suite": ..., ...}``); ``--quick`` runs tiny sizes (tests).
This file only parses the arguments and dispatches; the suites live in scripts/bench/, one module per topic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

# scripts/bench/ (scripts/ is on sys.path when this file runs): the suite modules import bench.common only.
from bench.atari import suite_atari_gpu, suite_peers
from bench.atari_cpu import suite_atari_cpu
from bench.cartpole import suite_cartpole_cpu, suite_cartpole_solve
from bench.common import ROOT, ZOO_DQN, machine
from bench.floor import suite_update_floor
from bench.minatar import suite_minatar_cpu
from bench.replay import suite_replay_memory
from bench.split import suite_zoo_split
from bench.zoo import suite_zoo, suite_zoo_worker

SUITES = {
    "cartpole-cpu": suite_cartpole_cpu,
    "cartpole-solve": suite_cartpole_solve,
    "replay-memory": suite_replay_memory,
    "atari-gpu": suite_atari_gpu,
    "atari-cpu": suite_atari_cpu,
    "peers": suite_peers,
    "zoo": suite_zoo,
    "zoo-worker": suite_zoo_worker,
    "minatar-cpu": suite_minatar_cpu,
    "update-floor": suite_update_floor,
    "zoo-split": suite_zoo_split,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the composed config")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (used by the tests)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="cartpole-solve/zoo: the seeds to run (default 0-4); zoo-split: its seed"
    )
    parser.add_argument("--episodes", type=int, default=20, help="zoo-worker: final greedy episodes")
    parser.add_argument("--append", action="store_true", help="append the result to docs/benchmarks.md")
    parser.add_argument("--out", help="zoo: keep each run's record in this dir and skip runs already recorded there")
    parser.add_argument(
        "--envs",
        nargs="+",
        help=f"atari-gpu/peers: num_envs (default 8 16 32); zoo, zoo-split: env names of {sorted(ZOO_DQN)}",
    )
    parser.add_argument("--steps", type=int, default=60_000, help="atari-gpu/peers: dqnlab env steps timed")
    parser.add_argument("--sb3-steps", type=int, default=4_000, help="peers: SB3 env steps timed")
    args = parser.parse_args(argv)
    if args.suite.startswith("zoo"):
        args.env_names = args.envs
        if unknown := sorted(set(args.envs or []) - set(ZOO_DQN)):
            parser.error(f"--envs {' '.join(unknown)}: zoo knows {', '.join(sorted(ZOO_DQN))}")
    else:
        try:
            args.envs = [int(e) for e in args.envs or [8, 16, 32]]
        except ValueError:
            parser.error(f"{args.suite} --envs takes env counts (integers), got {' '.join(args.envs)}")
    result = SUITES[args.suite](args)
    result["machine"] = machine()
    result["date"] = dt.date.today().isoformat()
    print(result["table"])
    print(json.dumps({k: v for k, v in result.items() if k != "table"}))
    if args.append:
        words = sys.argv[1:] if argv is None else argv
        cmd = "python scripts/benchmark.py " + " ".join(words).replace("--append", "").strip()
        with (ROOT / "docs" / "benchmarks.md").open("a") as f:
            f.write(f"\n### {args.suite} ({result['date']})\n\n`{cmd}` on {result['machine']}\n\n{result['table']}\n")


if __name__ == "__main__":
    main()
