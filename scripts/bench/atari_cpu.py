"""The ``atari-cpu`` speed suite: dqnlab's Atari 100k update on a CPU against a bare PyTorch float32 update.

    python scripts/benchmark.py atari-cpu                          # experiment=atari100k on Pong, one thread
    python scripts/benchmark.py atari-cpu env.game=breakout        # any override of the composed config

Both updates take the same minibatch, drawn from a replay filled by 2,000 random env steps of the real game: the
DrQ(eps) update of ``experiment=atari100k`` (Nature CNN with a shared dueling layer, double 10-step targets,
Huber, Adam, the random-shift and intensity augmentation, a target copy after every step). dqnlab's is
``DQNModule._update`` with the compute ``algo.precision``/``algo.channels_last`` chose (it measures the four
candidates at start; they are printed too); the bare one is plain PyTorch in float32 NCHW: ``F.pad`` and a crop
per image for the shift, one pass with gradients over s and two without over s' (online and target, as CleanRL
writes it), autograd, ``torch.optim.Adam``, ``load_state_dict`` for the copy. They alternate in
rounds (a load that comes and goes hits both), and each row is the median over rounds of the mean per update.
A last measurement runs dqnlab's whole loop (Trainer, env stepping, target sync; no evaluation) for a few
thousand env steps: the run's env steps per second and its time per update, env steps included.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from .common import compose, dqnlab_loop, format_table

PRESET = ["experiment=atari100k", "logger=[]", "progress_bar=false", "checkpoint.every=0"]


def _bare_augment(x: torch.Tensor, pad: int, max_shift: int, scale: float) -> torch.Tensor:
    """DrQ's augmentation written plainly: replicate padding, one crop per image, a brightness factor per image."""
    b, _, h, w = x.shape
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, max_shift + 1, (b, 2)).tolist()
    out = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    return out * (1.0 + scale * torch.randn(b, 1, 1, 1).clamp(-2.0, 2.0))


def _bare_update(q, target, opt, cfg: Any, batch: Any) -> None:
    """One DrQ(eps) update in float32 NCHW: Double DQN n-step target, Huber loss, Adam, then a target copy."""
    aug = cfg.augment
    obs = _bare_augment(batch.obs, aug.pad, aug.max_shift or 2 * aug.pad - 1, aug.intensity_scale)
    nxt = _bare_augment(batch.next_obs, aug.pad, aug.max_shift or 2 * aug.pad - 1, aug.intensity_scale)
    q_taken = q(obs).gather(1, batch.actions[:, None]).squeeze(1)
    with torch.no_grad():
        best = q(nxt).argmax(1, keepdim=True)
        next_v = target(nxt).gather(1, best).squeeze(1)
        y = batch.rewards + batch.discounts * (~batch.terminated) * next_v
    loss = F.smooth_l1_loss(q_taken, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    target.load_state_dict(q.state_dict())


def suite_atari_cpu(args: Any) -> dict:
    from hydra.utils import instantiate

    from dqnlab.learn.fast.cpu_compute import bf16_instructions
    from dqnlab.learn.fast.optim_step import fast_step
    from dqnlab.learn.rl_math import hard_update
    from dqnlab.train import _quiet_lightning, build

    _quiet_lightning()
    torch.set_num_threads(1)
    quick = bool(args.quick)
    cfg = compose([*PRESET, *(["env.game=pong"] if not any("env.game" in o for o in args.overrides) else []),
                   *args.overrides])  # fmt: skip
    parts = build(cfg)
    module, buffer = parts.module, parts.buffer
    parts.collector.restart_episodes(int(cfg.seed))  # what on_fit_start does before its prefill
    parts.collector.prefill(module, 300 if quick else 2_000)
    opt = module.optimizer_factory(module.q_net.parameters())
    step = fast_step(opt)
    online = list(module.q_net.parameters())
    target_params = list(module.target_net.parameters())

    # The bare network: the same architecture and weights, float32 NCHW, torch's own Adam.
    bare_q = instantiate(cfg.network)(obs_shape=tuple(buffer.obs_shape), num_actions=module.q_net.num_actions)
    bare_q.load_state_dict(module.q_net.state_dict())
    bare_q.set_compute(False, False)
    bare_target = copy.deepcopy(bare_q).requires_grad_(False)
    bare_opt = instantiate(cfg.optimizer)(bare_q.parameters())

    instantiate(cfg.target).attach(module)  # what the Trainer's TargetNetworkSync does at fit start

    def dqnlab_update(batch: Any) -> None:
        module._update(batch, opt, step)
        hard_update(target_params, online)  # target.interval=1: TargetNetworkSync's copy after every step

    rounds, per_round = (2, 2) if quick else (5, 20)
    batch = buffer.sample(int(cfg.algo.batch_size))
    for fn in (dqnlab_update, lambda b: _bare_update(bare_q, bare_target, bare_opt, cfg, b)):
        fn(batch)  # warm-up: oneDNN picks its kernels on first use
    samples: dict[str, list[float]] = {"dqnlab": [], "bare_fp32": []}
    for _ in range(rounds):
        for name, fn in (
            ("dqnlab", dqnlab_update),
            ("bare_fp32", lambda b: _bare_update(bare_q, bare_target, bare_opt, cfg, b)),
        ):
            t = time.perf_counter()
            for _ in range(per_round):
                fn(batch)
            samples[name].append((time.perf_counter() - t) / per_round * 1e3)
    ms = {k: statistics.median(v) for k, v in samples.items()}
    parts.close()

    run_steps = 1_700 if quick else 6_600
    loop = dqnlab_loop(compose([*PRESET, f"env_steps={run_steps}", "eval.episodes=1", "eval.every=0",
                                *args.overrides]))  # fmt: skip
    updates = max(loop["updates"], 1)
    result = {
        "suite": "atari-cpu",
        "bf16_instructions": bf16_instructions(),
        "compute": module.compute.name,
        "candidates_ms": module.compute.measured_ms,
        "update_ms": {k: round(v, 2) for k, v in ms.items()},
        "ratio": round(ms["dqnlab"] / ms["bare_fp32"], 3),
        "run": {
            "env_steps": loop["env_steps"],
            "updates": loop["updates"],
            "fit_s": round(loop["fit_s"], 2),
            "env_steps_per_s": round(loop["env_steps"] / loop["fit_s"], 1),
            "ms_per_update_with_env": round(loop["fit_s"] / updates * 1e3, 2),
        },
    }
    rows = [
        ("dqnlab update", result["compute"], f"{ms['dqnlab']:.2f}"),
        ("bare PyTorch update", "fp32 NCHW", f"{ms['bare_fp32']:.2f}"),
        ("ratio", "", f"{result['ratio']:.3f}"),
        ("dqnlab whole loop", f"{loop['env_steps']:,} env steps", f"{result['run']['ms_per_update_with_env']:.2f}"),
    ]
    result["table"] = format_table(["what", "compute", "ms / update"], rows)
    return result
