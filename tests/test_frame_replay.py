"""Frame-deduplicated replay: stacks rebuilt at sample time must equal the stacks the env returned.

The reference is a naive buffer that keeps every full ``[k, ...]`` observation the fake env returned, indexed
by time. Episodes of random lengths (hypothesis) run in several lockstep streams, with game overs (the env
resets and pads the stack) and life losses (terminated for learning, but the game and its stack go on).
These tests need no ale-py, so they are not marked ``atari``; the real-game check is in ``test_atari.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dqnlab.data.memory import BufferTooLargeError
from dqnlab.data.replay import ReplayBuffer

# Per-step events of one stream; "step" repeated so that episodes are several steps long on average.
EVENTS = ("step", "step", "step", "step", "step", "life", "term", "trunc")
FRAME = (2,)  # each frame is [id, -id]: ids are unique and never 0, so zero padding is recognisable


def frame(env: int, t: int) -> np.ndarray:
    fid = 1 + env * 10_000 + t
    return np.array([fid, -fid], dtype=np.int32)


def pad(f: np.ndarray, k: int, padding: str) -> list[np.ndarray]:
    older = np.zeros_like(f) if padding == "zero" else f
    return [older] * (k - 1) + [f]


@dataclass
class Rollout:
    """Everything a NEXT_STEP vector env returned, time-major: ``obs[t]`` came back from step ``t``."""

    obs: np.ndarray  # [T + 1, N, k, *FRAME]
    terminated: np.ndarray  # [T + 1, N] (row 0: reset, all False)
    truncated: np.ndarray
    game_over: np.ndarray  # the env resets this stream at its next step


def simulate(events: list[list[str]], k: int, padding: str) -> Rollout:
    """A fake Atari-like vector env: per stream, ``events[n][t - 1]`` says how step ``t`` ends."""
    n_envs, steps = len(events), len(events[0])
    obs = np.zeros((steps + 1, n_envs, k, *FRAME), dtype=np.int32)
    term = np.zeros((steps + 1, n_envs), dtype=bool)
    trunc = np.zeros_like(term)
    over = np.zeros_like(term)
    for n in range(n_envs):
        stack = pad(frame(n, 0), k, padding)
        obs[0, n] = stack
        pending_reset = False
        for t in range(1, steps + 1):
            f = frame(n, t)
            if pending_reset:  # NEXT_STEP autoreset: the action is ignored, a new game starts padded
                stack, pending_reset = pad(f, k, padding), False
            else:
                stack = [*stack[1:], f]
                ev = events[n][t - 1]
                term[t, n] = ev in ("life", "term")
                trunc[t, n] = ev == "trunc"
                over[t, n] = pending_reset = ev in ("term", "trunc")
            obs[t, n] = stack
    return Rollout(obs, term, trunc, over)


def feed(buf: ReplayBuffer, ro: Rollout, pass_resets: bool = True) -> None:
    n = ro.obs.shape[1]
    buf.start(ro.obs[0])
    for t in range(1, ro.obs.shape[0]):
        buf.add(
            actions=np.arange(n) + 10 * t,  # action of the transition leaving obs[t - 1]
            rewards=np.full(n, float(t)),
            terminated=ro.terminated[t],
            truncated=ro.truncated[t],
            next_obs=ro.obs[t],
            resets=ro.game_over[t] if pass_resets else None,
        )


def eligible_times(buf: ReplayBuffer, steps: int) -> range:
    """Times ``t`` whose transition ``obs[t] -> obs[t + 1]`` and whole stack history are still stored."""
    oldest = max(0, steps - buf.slots + 1)  # oldest time still in the ring
    if steps + 1 > buf.slots:  # wrapped: the first k - 1 kept slots lack their stack history
        oldest += buf.frame_stack - 1
    return range(oldest, steps)


def expected_valid(ro: Rollout, t: int, n: int) -> bool:
    """Transition ``t`` is learned from unless step ``t`` ended an episode or a life (the next one is invalid)."""
    return not (ro.terminated[t, n] or ro.truncated[t, n])


def time_of(slot: int, steps: int, slots: int) -> int:
    return steps - ((steps - slot) % slots)


def check_against_reference(buf: ReplayBuffer, ro: Rollout) -> int:
    """Every stored valid transition rebuilds exactly; sampling draws exactly those. Returns how many."""
    steps, n_envs = ro.obs.shape[0] - 1, ro.obs.shape[1]
    pairs = [(t, n) for t in eligible_times(buf, steps) for n in range(n_envs) if expected_valid(ro, t, n)]
    if pairs:
        slots = torch.tensor([t % buf.slots for t, _ in pairs])
        envs = torch.tensor([n for _, n in pairs])
        obs, next_obs = buf._gather_stacks(slots, envs)
        want_obs = np.stack([ro.obs[t, n] for t, n in pairs])
        want_next = np.stack([ro.obs[t + 1, n] for t, n in pairs])
        np.testing.assert_array_equal(obs.numpy(), want_obs)
        np.testing.assert_array_equal(next_obs.numpy(), want_next)

    if not pairs:
        with pytest.raises(RuntimeError):
            buf.sample(8)
        return 0
    batch = buf.sample(40 * len(pairs))  # enough draws to see every valid transition
    drawn = set()
    for i, idx in enumerate(batch.indices.tolist()):
        slot, n = divmod(idx, n_envs)
        t = time_of(slot, steps, buf.slots)
        assert (t, n) in pairs, f"sampled transition t={t} env={n} is invalid or lacks its stack history"
        np.testing.assert_array_equal(batch.obs[i].numpy(), ro.obs[t, n])
        np.testing.assert_array_equal(batch.next_obs[i].numpy(), ro.obs[t + 1, n])
        assert batch.actions[i].item() == n + 10 * (t + 1)
        assert batch.terminated[i].item() == ro.terminated[t + 1, n]
        assert batch.truncated[i].item() == ro.truncated[t + 1, n]
        drawn.add((t, n))
    assert drawn == set(pairs)
    return len(pairs)


@st.composite
def rollouts(draw: st.DrawFn) -> tuple[int, int, str, list[list[str]]]:
    k = draw(st.integers(2, 4))
    slots = draw(st.integers(k + 1, 14))
    n_envs = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 45))
    padding = draw(st.sampled_from(["zero", "reset"]))
    events = draw(
        st.lists(st.lists(st.sampled_from(EVENTS), min_size=steps, max_size=steps), min_size=n_envs, max_size=n_envs)
    )
    return k, slots, padding, events


@settings(max_examples=150, deadline=None)
@given(rollouts())
def test_rebuilt_stacks_match_a_naive_full_stack_buffer(case: tuple[int, int, str, list[list[str]]]) -> None:
    k, slots, padding, events = case
    ro = simulate(events, k, padding)
    n_envs = len(events)
    buf = ReplayBuffer(slots * n_envs, (k, *FRAME), torch.int32, num_envs=n_envs, frame_stack=k, stack_padding=padding)
    feed(buf, ro)
    check_against_reference(buf, ro)


@pytest.mark.parametrize("padding", ["zero", "reset"])
def test_wrapped_ring_with_life_losses_and_game_overs(padding: str) -> None:
    # A fixed long case so the properties above are exercised on a many-times wrapped ring, whatever hypothesis
    # happens to draw: three streams, all four kinds of step, 12 slots per stream, 200 steps.
    rng = np.random.default_rng(0)
    events = [list(rng.choice(EVENTS, size=200)) for _ in range(3)]
    ro = simulate(events, 4, padding)
    assert ro.game_over.any() and (ro.terminated & ~ro.game_over).any()
    buf = ReplayBuffer(36, (4, *FRAME), torch.int32, num_envs=3, frame_stack=4, stack_padding=padding)
    feed(buf, ro)
    assert check_against_reference(buf, ro) > 10


def test_treating_a_life_loss_as_a_reset_would_corrupt_the_stacks() -> None:
    # The control for the tests above: without `resets`, the buffer pads the stack after every terminated step,
    # but the env did not, so the stacks it rebuilds after a life loss differ from what the agent saw.
    events = [["step", "step", "life", "step", "step", "step", "term", "step", "step"]]
    ro = simulate(events, 4, "zero")
    buf = ReplayBuffer(20, (4, *FRAME), torch.int32, num_envs=1, frame_stack=4, stack_padding="zero")
    feed(buf, ro, pass_resets=False)
    with pytest.raises(AssertionError):
        check_against_reference(buf, ro)
    fixed = ReplayBuffer(20, (4, *FRAME), torch.int32, num_envs=1, frame_stack=4, stack_padding="zero")
    feed(fixed, ro)
    check_against_reference(fixed, ro)


def test_state_dict_keeps_the_pending_reset_flags() -> None:
    ro = simulate([["step", "life", "step", "term"]], 2, "zero")
    a = ReplayBuffer(12, (2, *FRAME), torch.int32, num_envs=1, frame_stack=2, stack_padding="zero")
    feed(a, ro)
    b = ReplayBuffer(12, (2, *FRAME), torch.int32, num_envs=1, frame_stack=2, stack_padding="zero")
    b.load_state_dict(a.state_dict())
    nxt = np.array([[frame(0, 0) * 0, frame(0, 99)]])
    for buf in (a, b):  # the step after a game over: the reset obs must start a new stack in both
        buf.add(np.zeros(1), np.zeros(1), np.zeros(1, bool), np.zeros(1, bool), nxt, resets=np.zeros(1, bool))
    assert a.first[a.pos].item() and b.first[b.pos].item()


# ------------------------------------------------------------------ memory
ATARI_FRAME = (84, 84)
GB = 1e9


@pytest.mark.parametrize("num_envs", [1, 8])
def test_a_million_atari_transitions_fit_in_7_5_gb(num_envs: int) -> None:
    capacity = 1_000_000
    need = ReplayBuffer.nbytes_for(capacity // num_envs, num_envs, ATARI_FRAME, torch.uint8)
    assert need <= 7.5 * GB


def test_nbytes_for_matches_a_real_atari_allocation() -> None:
    buf = ReplayBuffer(64, (4, *ATARI_FRAME), torch.uint8, num_envs=2, frame_stack=4, stack_padding="zero")
    assert buf.obs.shape == (32, 2, *ATARI_FRAME)  # one frame per slot, not a stack
    assert buf.nbytes == ReplayBuffer.nbytes_for(32, 2, ATARI_FRAME, torch.uint8)


def test_an_absurd_capacity_is_refused_before_allocating() -> None:
    with pytest.raises(BufferTooLargeError, match=r"buffer\.capacity"):
        ReplayBuffer(10**13, (4, *ATARI_FRAME), torch.uint8, frame_stack=4, stack_padding="zero")
