"""Score a saved agent: ``python scripts/evaluate.py <.ckpt or agent file> [episodes=N] [video=true] [key=value ...]``.

Rebuilds the env and the Q-network from the config stored in the checkpoint (or the run dir's
``.hydra/config.yaml``) or in an agent file (``scripts/export.py``), plays greedy episodes on a fresh evaluation
env and prints ONE line of JSON on stdout: ``{"episodes": N, "return_mean": ..., "return_std": ..., ...}``;
everything else goes to stderr. ``"network"`` says which network the file holds: the one ``eval.keep_best``
kept (``best.ckpt``), the final one (``last.ckpt``) or that of env step N. Nothing from the file runs:
checkpoints are read with torch's weights_only=True, agent files are safetensors, and only dqnlab's env and
network factories are built (others: error, exit 2).
Resuming (python train.py ckpt_path=...) does run code from the file: resume only from your own runs.

Keys (Hydra-style ``key=value``):
  episodes=10        episodes to score
  epsilon=<run's>    random-action probability (default: the run's eval.epsilon)
  seed=<run's+2M>    seed of the resets and of exploration
  num_envs=<auto>    parallel env copies (default: one per episode, at most 32)
  video=false        also film video_episodes episodes to mp4 (gymnasium envs render rgb_array frames headless)
  video_dir=<dir>    where the mp4 files go (default: <run dir>/videos)
  video_episodes=1   how many episodes to film
  video_fps=30       frames per second
  device=cpu         where the network runs
  env.id=<run's>     required for an env of your own (module:EnvId): names the module dqnlab may import
  allow_module=<m>   modules (comma-separated) whose env.wrappers the file may name, besides gymnasium's and dqnlab's
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from dqnlab.errors import ArgumentParser  # light: one error line for a bad argument
from dqnlab.startup import imports_without_gc

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame greets on stdout, which is for the JSON line

KEYS = {
    "episodes": int,
    "epsilon": float,
    "seed": int,
    "num_envs": int,
    "video": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "video_dir": str,
    "video_episodes": int,
    "video_fps": int,
    "device": str,
    "env.id": str,
    "allow_module": lambda v: tuple(m for m in v.split(",") if m),
}


# The range each number must lie in, checked before anything is played: (low, high or None, what it is).
RANGES = {
    "episodes": (1, None, "episodes to score"),
    "epsilon": (0.0, 1.0, "the random-action probability"),
    "seed": (0, None, "the seed"),
    "num_envs": (1, None, "parallel env copies"),
    "video_episodes": (1, None, "episodes to film"),
    "video_fps": (1, None, "frames per second"),
}


def _out_of_range(key: str, value: float) -> str | None:
    if key not in RANGES:
        return None
    low, high, what = RANGES[key]
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        return f"{key}={value} is out of range: {what} must be {bound}"
    return None


def parse_args(argv: list[str]) -> tuple[Path, dict]:
    # The docstring's first two paragraphs describe the script, the rest lists the keys: each printed once.
    paragraphs = __doc__.split("\n\n")
    parser = ArgumentParser(
        description="\n\n".join(paragraphs[:2]),
        epilog="\n\n".join(paragraphs[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by a dqnlab run, or an agent file")
    parser.add_argument("overrides", nargs="*", help="key=value settings (see below)")
    args = parser.parse_args(argv)
    settings: dict = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        key = key.lstrip("+")
        if not sep or key not in KEYS:
            parser.error(f"unknown setting {item!r}: use key=value with a key among {', '.join(KEYS)}")
        try:
            settings[key] = KEYS[key](value)
        except ValueError:
            parser.error(f"{key}={value!r} is not a valid value")
        if problem := _out_of_range(key, settings[key]):
            print(f"error: {problem}", file=sys.stderr)  # one line, as train.py says it
            sys.exit(2)
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint} is not a file: pass a .ckpt from <run dir>/checkpoints or an agent file")
    return args.checkpoint, settings


def main(argv: list[str] | None = None) -> int:
    checkpoint, settings = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    with imports_without_gc(freeze=argv is None):  # frozen only in the script's own process
        from dqnlab.errors import EXIT_CONFIG_ERROR, ConfigError, print_error
        from dqnlab.run.ckpt_file import which_network
        from dqnlab.share.playback import evaluate_agent, load_agent  # torch loads after the arguments are known good

    if settings.get("video") and "video_dir" not in settings:
        run_dir = checkpoint.resolve().parent.parent if checkpoint.parent.name == "checkpoints" else Path(".")
        settings["video_dir"] = run_dir / "videos"
    try:
        agent = load_agent(
            checkpoint,
            device=settings.pop("device", "cpu"),
            env_id=settings.pop("env.id", None),
            allow_modules=settings.pop("allow_module", ()),
        )
        result = {"checkpoint": str(checkpoint), "network": which_network(checkpoint)}
        result |= evaluate_agent(agent, **settings)
    except ConfigError as err:  # unsafe, malformed or foreign file; an env that cannot be built or filmed: one line
        print_error(err)
        return EXIT_CONFIG_ERROR
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
