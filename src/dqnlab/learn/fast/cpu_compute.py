"""How a conv network's update runs on this CPU: float32 or bf16 autocast, NCHW or channels-last, measured.

Which is fastest depends on the CPU and on its load. On an Intel Xeon with AMX and AVX512-BF16, a Nature CNN
update at batch 32 on one thread took 43.3 ms in float32 and 31.1 ms under bf16 autocast (median of three
interleaved repeats, 2026-12); on other CPUs bf16 convolutions are slower than float32 ones (pytorch#183815,
torch 2.13). So with ``algo.precision=auto`` and ``algo.channels_last=auto`` the run times each candidate on a
copy of its network before training (about two seconds) and takes the fastest: bf16 only where the CPU has native
bf16 instructions (AVX512-BF16 or AMX) and only when it beats the best float32 layout by ``BF16_MARGIN``, since it
changes the numbers. Weights, optimizer state, TD targets and the loss stay float32 either way
(:meth:`dqnlab.learn.networks.NatureCNN.set_compute`). The run header and ``summary.json`` say what ran; the
choice is saved in checkpoints, so a resumed run computes as it did.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from typing import Any, NamedTuple

import torch
from torch import nn

from dqnlab.errors import ConfigError

BF16_MARGIN = 0.9  # bf16 must take at most this fraction of the best float32 time to be chosen
# The measurement runs one update's network work 11 times per candidate (2 warm-up, 9 timed): 44 updates' work for
# the four candidates. Even the largest saving measured (bf16 halving the update) repays that only over ~90 updates,
# so a run of fewer than about ten times that takes the first candidate (float32 NCHW where allowed) unmeasured.
MIN_UPDATES_TO_MEASURE = 1_000
PRECISIONS = ("auto", "fp32", "bf16")


# Why a resumed run measures nothing: it computes as it did before (the same numerics as the uninterrupted run).
KEPT = "the run's own, from its checkpoint: a resume computes as the run did"
# A bf16 run resumed where the CPU lacks bf16 instructions keeps its numerics, at the cost of speed.
EMULATED = (
    "; this CPU has no bf16 instructions, so torch emulates them, several times slower than float32 "
    "(a new run here would choose float32)"
)


class Compute(NamedTuple):
    """The chosen way, the median milliseconds per update of every candidate measured (empty: none), and why
    nothing was measured when there was a choice.
    """

    bf16: bool
    channels_last: bool
    measured_ms: dict[str, float]
    unmeasured: str = ""

    @property
    def name(self) -> str:
        """``fp32 NCHW``, ``bf16 channels-last``, ..."""
        return candidate_name(self.bf16, self.channels_last)

    def describe(self) -> str:
        """For the run header: what runs and why."""
        if self.unmeasured:
            return f"{self.name} ({self.unmeasured})"
        if not self.measured_ms:
            return self.name
        times = ", ".join(f"{k} {v:.1f} ms" for k, v in self.measured_ms.items())
        return f"{self.name} (fastest measured per update: {times})"


def candidate_name(bf16: bool, channels_last: bool) -> str:
    """The name a candidate goes by in the header, the summary and the benchmark."""
    return f"{'bf16' if bf16 else 'fp32'} {'channels-last' if channels_last else 'NCHW'}"


def bf16_instructions() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16), as torch detects them."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def kept(saved: dict[str, Any], native_bf16: bool | None = None) -> Compute:
    """A resumed run's own compute (its checkpoint's ``dqn_compute``), kept without measuring; a bf16 one on a CPU
    without bf16 instructions (``native_bf16``, detected when ``None``) says that it runs emulated.
    """
    bf16 = bool(saved["bf16"])
    native = bf16_instructions() if native_bf16 is None and bf16 else bool(native_bf16)
    return Compute(bf16, bool(saved["channels_last"]), {}, KEPT + (EMULATED if bf16 and not native else ""))


def candidates(precision: str, channels_last: bool | str) -> list[tuple[bool, bool]]:
    """The ``(bf16, channels_last)`` pairs the knobs allow on this CPU.

    Raises:
        ConfigError: ``algo.precision=bf16`` on a CPU without bf16 instructions (it would be emulated, slower
            than float32), or an unknown value.

    """
    if precision not in PRECISIONS:
        raise ConfigError(f"algo.precision={precision!r} is not known: use one of {', '.join(PRECISIONS)}")
    if channels_last not in (True, False, "auto"):
        raise ConfigError(f"algo.channels_last={channels_last!r}: use auto, true or false")
    has_bf16 = bf16_instructions()
    if precision == "bf16" and not has_bf16:
        raise ConfigError(
            "algo.precision=bf16 but this CPU has no bf16 instructions (AVX512-BF16 or AMX): torch would emulate "
            "them, slower than float32; use algo.precision=auto or algo.precision=fp32"
        )
    precisions = {"fp32": [False], "bf16": [True], "auto": [False, True] if has_bf16 else [False]}[precision]
    layouts = [False, True] if channels_last == "auto" else [bool(channels_last)]
    return list(itertools.product(precisions, layouts))


def _update_ms(online: nn.Module, target: nn.Module, obs: torch.Tensor, rounds: int, next_passes: int) -> list[float]:
    """Milliseconds of one update's network work, as the update does it on a CPU (learn/passes.py): the online
    net over s with gradients, ``next_passes`` passes over s' without (2: the online net picks, the target rates;
    1: the target alone, or the online net when it is the target), the backward pass.
    """
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = online(obs)
        with torch.no_grad():
            for net in (target, online)[:next_passes]:
                net(obs)
        out.float().square().mean().backward()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def choose(
    network: nn.Module,
    obs_shape: tuple[int, ...],
    batch_size: int,
    pairs: list[tuple[bool, bool]],
    next_passes: int = 2,
) -> Compute:
    """Time each candidate on copies of ``network`` (interleaved, medians) and return the fastest.

    ``next_passes``: how many passes over s' the update makes (see :func:`_update_ms`).

    The copies and a private generator keep the run's own weights and random streams untouched.
    """
    if len(pairs) == 1:
        return Compute(*pairs[0], {})
    generator = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (batch_size, *obs_shape), generator=generator, dtype=torch.uint8)
    nets = {}
    for bf16, last in pairs:
        online, target = copy.deepcopy(network), copy.deepcopy(network).requires_grad_(False)
        for net in (online, target):
            net.set_compute(bf16, last)
        nets[(bf16, last)] = (online, target)
        _update_ms(online, target, obs, 2, next_passes)  # warm-up: oneDNN picks and caches its kernels
    samples: dict[tuple[bool, bool], list[float]] = {pair: [] for pair in pairs}
    for _ in range(3):  # interleaved rounds: a load that comes and goes hits every candidate alike
        for pair, (online, target) in nets.items():
            samples[pair].append(statistics.mean(_update_ms(online, target, obs, 3, next_passes)))
    ms = {pair: statistics.median(v) for pair, v in samples.items()}
    best_fp32 = min((v for (bf16, _), v in ms.items() if not bf16), default=None)
    best = min(ms, key=ms.__getitem__)
    if best[0] and best_fp32 is not None and ms[best] > BF16_MARGIN * best_fp32:
        best = min((p for p in ms if not p[0]), key=ms.__getitem__)
    return Compute(*best, {candidate_name(*p): round(v, 2) for p, v in ms.items()})


def pick(
    network: nn.Module,
    device: torch.device,
    obs_shape: tuple[int, ...],
    batch_size: int,
    precision: str,
    channels_last: bool | str,
    updates: int | None = None,
    next_passes: int = 2,
) -> Compute:
    """The way ``network`` computes its update: measured among what the knobs allow on a CPU, float32 elsewhere.

    Only networks with ``set_compute`` (the Nature CNN) on a CPU have a choice; the others run float32. A run of
    fewer than :data:`MIN_UPDATES_TO_MEASURE` ``updates`` (a smoke run) takes the first candidate unmeasured: the
    measurement would cost more than it could save. ``next_passes``: the update's passes over s' (1 or 2).

    Raises:
        ConfigError: ``algo.precision=bf16`` where it cannot run (another network, a GPU, no bf16 instructions).

    """
    settable = hasattr(network, "set_compute")
    if not settable or device.type != "cpu":
        if precision == "bf16":
            where = "a GPU" if settable else f"network {type(network).__name__}"
            raise ConfigError(f"algo.precision=bf16 is for the Nature CNN's update on a CPU, not {where}: use auto")
        return Compute(False, False, {})
    pairs = candidates(precision, channels_last)
    if len(pairs) > 1 and updates is not None and updates < MIN_UPDATES_TO_MEASURE:
        why = f"not measured: {updates:,} updates, fewer than the {MIN_UPDATES_TO_MEASURE:,} that repay measuring"
        return Compute(*pairs[0], {}, why)
    return choose(network, obs_shape, batch_size, pairs, next_passes)
