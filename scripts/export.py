"""Export a trained agent to share: ``python scripts/export.py <run dir or .ckpt> [out]``.

Writes an agent file: the online network's weights as safetensors, with the env and network config, the dqnlab
version and the env steps trained as plain JSON in its header; no pickle, no replay buffer, no optimizer. Playing
it (``python scripts/evaluate.py <agent file>``) runs no code from the file (see ``dqnlab.share.agent_file``).

A run dir exports the network its summary scores: ``checkpoints/best.ckpt`` when ``eval.keep_best`` kept one,
else ``checkpoints/last.ckpt`` (the final network). ``out`` defaults to ``<run dir>/agent.safetensors``
(``agent_<checkpoint name>.safetensors`` for another checkpoint). Prints one line of JSON on stdout:
``{"agent_file": ..., "bytes": ..., "env_steps": ..., "checkpoint": ..., "network": <which one, in words>}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dqnlab.errors import ArgumentParser  # light: one error line for a bad argument
from dqnlab.startup import imports_without_gc


def _source_checkpoint(source: Path) -> Path:
    """A run dir's network: the one ``eval.keep_best`` kept (``best.ckpt``, what its summary scores), else the
    final one (``last.ckpt``); a file: itself.
    """
    if not source.is_dir():
        return source
    best = source / "checkpoints" / "best.ckpt"
    return best if best.is_file() else source / "checkpoints" / "last.ckpt"


def _default_out(ckpt: Path) -> Path:
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    default = ckpt.parent.name == "checkpoints" and ckpt == _source_checkpoint(run_dir)
    return run_dir / ("agent.safetensors" if default else f"agent_{ckpt.stem}.safetensors")


def main(argv: list[str] | None = None) -> int:
    paragraphs = __doc__.split("\n\n")
    parser = ArgumentParser(description=paragraphs[0], epilog="\n\n".join(paragraphs[1:]))
    parser.add_argument("source", type=Path, help="a run dir (its best.ckpt or last.ckpt) or a .ckpt file")
    parser.add_argument("out", type=Path, nargs="?", help="the agent file to write (default: in the run dir)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    ckpt = _source_checkpoint(args.source)
    if not ckpt.is_file():
        parser.error(f"{ckpt} is not a file: pass a run dir (with checkpoints/last.ckpt), or a .ckpt file")

    with imports_without_gc(freeze=argv is None):  # frozen only in the script's own process
        from omegaconf import OmegaConf  # torch loads after the arguments are known good

        from dqnlab.errors import EXIT_CONFIG_ERROR, ConfigError, print_error
        from dqnlab.run.ckpt_file import which_network
        from dqnlab.share.agent_file import write_agent_file
        from dqnlab.share.playback import read_checkpoint

    out = args.out or _default_out(ckpt)
    try:
        cfg, weights, env_steps = read_checkpoint(ckpt)  # weights_only=True: nothing from the file runs
        # Resolved where it can be; Hydra's runtime values (${hydra:...}) are not needed to play.
        plain = OmegaConf.to_container(cfg, resolve=False)
        for group in ("env", "network", "algo", "eval"):
            if group in cfg:
                plain[group] = OmegaConf.to_container(cfg[group], resolve=True)
        write_agent_file(out, weights, plain, env_steps)
    except ConfigError as err:
        print_error(err)
        return EXIT_CONFIG_ERROR
    result = {"agent_file": str(out), "bytes": out.stat().st_size, "env_steps": env_steps, "checkpoint": str(ckpt)}
    print(json.dumps({**result, "network": which_network(ckpt)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
