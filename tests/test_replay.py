from __future__ import annotations

import numpy as np
import pytest
import torch

from dqnlab.data.dataset import Batch, ReplayDataset
from dqnlab.data.memory import BufferTooLargeError
from dqnlab.data.replay import ReplayBuffer
from dqnlab.envs.vector import make_vector_env


def counting_buffer(capacity: int, num_envs: int = 1, **kw) -> ReplayBuffer:
    return ReplayBuffer(capacity, (2,), torch.float32, num_envs=num_envs, **kw)


def obs_for(step: int, num_envs: int) -> np.ndarray:
    """Observation i of env e is (step, e): lets tests recover which step a sample came from."""
    return np.stack([np.array([step, e], dtype=np.float32) for e in range(num_envs)])


def fill(buf: ReplayBuffer, steps: int, num_envs: int, done_every: int = 0) -> None:
    buf.start(obs_for(0, num_envs))
    for t in range(steps):
        done = np.full(num_envs, done_every > 0 and (t + 1) % done_every == 0)
        buf.add(
            np.full(num_envs, t % 3),
            np.full(num_envs, float(t)),
            done,
            np.zeros(num_envs, bool),
            obs_for(t + 1, num_envs),
        )


def test_sample_shapes_and_types():
    buf = counting_buffer(100, num_envs=2)
    fill(buf, 30, 2)
    b = buf.sample(16)
    assert isinstance(b, Batch)
    assert b.obs.shape == (16, 2) and b.next_obs.shape == (16, 2)
    assert b.actions.dtype == torch.int64 and b.actions.shape == (16,)
    assert b.rewards.dtype == torch.float32
    assert b.terminated.dtype == torch.bool and b.truncated.dtype == torch.bool
    assert torch.all(b.weights == 1)


def test_uint8_observations_stay_uint8():
    buf = ReplayBuffer(64, (3, 5), torch.uint8)
    buf.start(np.full((1, 3, 5), 255, np.uint8))
    buf.add([0], [1.0], [False], [False], np.full((1, 3, 5), 7, np.uint8))
    b = buf.sample(4)
    assert buf.obs.dtype == torch.uint8 and b.obs.dtype == torch.uint8
    assert torch.all(b.obs == 255) and torch.all(b.next_obs == 7)


def test_next_obs_is_the_following_observation_of_the_same_env():
    buf = counting_buffer(1000, num_envs=3)
    fill(buf, 200, 3)
    b = buf.sample(512)
    assert torch.all(b.next_obs[:, 0] == b.obs[:, 0] + 1)  # one step later
    assert torch.all(b.next_obs[:, 1] == b.obs[:, 1])  # same env stream
    assert torch.all(b.rewards == b.obs[:, 0])  # reward of step t stored with obs t


def test_wrap_around_keeps_only_the_newest_transitions():
    buf = counting_buffer(50)  # 50 slots for one env
    fill(buf, 173, 1)
    assert len(buf) == 49
    b = buf.sample(4096)
    steps = b.obs[:, 0]
    # Oldest surviving obs: 173 - 49 = 124; newest sampleable one is 172 (173 has no next obs yet).
    assert steps.min().item() == 124 and steps.max().item() == 172
    assert torch.all(b.next_obs[:, 0] == steps + 1)
    assert set(steps.long().tolist()) == set(range(124, 173))  # uniform over all of them


def test_autoreset_transition_is_never_sampled_and_flags_are_kept():
    buf = counting_buffer(1000, num_envs=2)
    fill(buf, 300, 2, done_every=5)  # steps 4, 9, ... end episodes; steps 5, 10, ... are autoreset steps
    b = buf.sample(4096)
    assert torch.all(b.weights == 1)
    assert len(buf) == 2 * (300 - 59)  # per env: 300 steps minus the 59 autoreset steps (t = 5, 10, ..., 295)
    t = b.obs[:, 0].long()
    assert torch.all((t % 5 != 0) | (t == 0))  # obs 5, 10, ... are final obs whose next step is an autoreset
    assert torch.all(b.terminated == (t % 5 == 4))


def test_never_samples_across_a_real_cartpole_autoreset():
    env = make_vector_env("CartPole-v1", num_envs=4)
    buf = ReplayBuffer(10_000, (4,), torch.float32, num_envs=4, seed=1)
    obs, _ = env.reset(seed=0)
    buf.start(obs)
    rng = np.random.default_rng(0)
    real = set()  # (obs bytes, next obs bytes) of every real transition
    last_done = np.zeros(4, bool)
    for _ in range(2_000):
        a = rng.integers(2, size=4)
        nxt, r, te, tr, _ = env.step(a)
        for i in np.flatnonzero(~last_done):
            real.add((obs[i].tobytes(), nxt[i].tobytes()))
        buf.add(a, r, te, tr, nxt)
        obs, last_done = nxt, te | tr
    env.close()
    b = buf.sample(2_000)
    pairs = {(o.numpy().tobytes(), n.numpy().tobytes()) for o, n in zip(b.obs, b.next_obs)}
    assert pairs <= real
    assert b.terminated.any()  # episode ends are sampled, with their terminal flag


def test_truncation_is_stored_apart_from_termination():
    buf = counting_buffer(100)
    buf.start(obs_for(0, 1))
    buf.add([0], [1.0], [False], [True], obs_for(1, 1))  # time limit
    buf.add([0], [0.0], [False], [False], obs_for(2, 1))  # autoreset step
    buf.add([1], [1.0], [True], [False], obs_for(3, 1))  # real termination
    buf.add([0], [0.0], [False], [False], obs_for(4, 1))
    b = buf.sample(256)
    t = b.obs[:, 0].long()
    assert set(t.tolist()) == {0, 2}
    assert torch.all(b.truncated == (t == 0)) and torch.all(b.terminated == (t == 2))


def test_dataset_yields_batches_forever():
    buf = counting_buffer(100)
    fill(buf, 20, 1)
    it = iter(ReplayDataset(buf, 8))
    batches = [next(it) for _ in range(5)]
    assert all(b.obs.shape == (8, 2) for b in batches)


def test_sampling_is_seeded_and_state_dict_round_trips():
    a, b = counting_buffer(100, seed=3), counting_buffer(100, seed=3)
    fill(a, 60, 1)
    fill(b, 60, 1)
    assert torch.equal(a.sample(32).obs, b.sample(32).obs)
    c = counting_buffer(100, seed=99)
    c.load_state_dict(a.state_dict())
    assert torch.equal(a.sample(32).obs, c.sample(32).obs)
    assert c.pos == a.pos and len(c) == len(a)


def test_sampling_before_any_transition_is_an_error():
    buf = counting_buffer(10)
    buf.start(obs_for(0, 1))
    with pytest.raises(RuntimeError, match="no complete transition"):
        buf.sample(2)


def test_buffer_that_cannot_fit_is_refused_before_allocating():
    with pytest.raises(BufferTooLargeError, match=r"buffer\.capacity"):
        ReplayBuffer(10**13, (84, 84), torch.uint8)


def test_nbytes_matches_the_allocation():
    buf = ReplayBuffer(1000, (4, 8, 8), torch.uint8, num_envs=4, frame_stack=4)
    assert buf.nbytes == ReplayBuffer.nbytes_for(250, 4, (8, 8), torch.uint8)
