"""The ``replay-memory`` suite: the bytes of a 1M-transition Atari replay, computed, checked against an allocation."""

from __future__ import annotations

import torch

from .common import format_table


def suite_replay_memory(args) -> dict:
    from dqnlab.data.replay import ReplayBuffer

    transitions = 1_000_000
    frame = (84, 84)
    dedup = ReplayBuffer.nbytes_for(transitions, 1, frame, torch.uint8)
    naive_stacks = 2 * transitions * 4 * 84 * 84  # obs + next_obs stacks, as most libraries store them
    small = ReplayBuffer(4_000, (4, *frame), torch.uint8, num_envs=8, frame_stack=4)
    allocated_ok = small.nbytes == ReplayBuffer.nbytes_for(500, 8, frame, torch.uint8)
    rows = [
        ("dqnlab (each frame once)", f"{dedup / 1e9:.2f} GB"),
        ("obs + next_obs 4-stacks", f"{naive_stacks / 1e9:.2f} GB"),
    ]
    table = format_table(["1M Atari transitions", "bytes"], rows)
    table += f"\n\nformula matches a real allocation: {allocated_ok}; target <= 7.5 GB"
    return {
        "suite": "replay-memory",
        "bytes": dedup,
        "naive_bytes": naive_stacks,
        "table": table,
        "allocation_matches": allocated_ok,
    }
