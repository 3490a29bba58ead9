"""Export a trained agent to share: ``python scripts/export.py <run dir or .ckpt> [out]``.

Writes an agent file: the online network's weights as safetensors, with the env and network config, the dqnlab
version and the env steps trained as plain JSON in its header; no pickle, no replay buffer, no optimizer. Playing
it (``python scripts/evaluate.py <agent file>``) runs no code from the file (see ``dqnlab.share.agent_file``).

A run dir exports its ``checkpoints/last.ckpt`` (the final network, or with ``eval.keep_best`` the kept one).
``out`` defaults to ``<run dir>/agent.safetensors`` (``agent_<checkpoint name>.safetensors`` for another
checkpoint than ``last.ckpt``). Prints one line of JSON on stdout: ``{"agent_file": ..., "bytes": ...,
"env_steps": ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _source_checkpoint(source: Path) -> Path:
    return source / "checkpoints" / "last.ckpt" if source.is_dir() else source


def _default_out(ckpt: Path) -> Path:
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / ("agent.safetensors" if ckpt.name == "last.ckpt" else f"agent_{ckpt.stem}.safetensors")


def main(argv: list[str] | None = None) -> int:
    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(description=paragraphs[0], epilog="\n\n".join(paragraphs[1:]))
    parser.add_argument("source", type=Path, help="a run dir (its checkpoints/last.ckpt) or a .ckpt file")
    parser.add_argument("out", type=Path, nargs="?", help="the agent file to write (default: in the run dir)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    ckpt = _source_checkpoint(args.source)
    if not ckpt.is_file():
        parser.error(f"{ckpt} is not a file: pass a run dir with checkpoints/last.ckpt, or a .ckpt file")

    from omegaconf import OmegaConf  # torch loads after the arguments are known good

    from dqnlab.errors import EXIT_CONFIG_ERROR, ConfigError, print_error
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
    print(json.dumps({"agent_file": str(out), "bytes": out.stat().st_size, "env_steps": env_steps}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
