"""Action masks (an env's ``info["action_mask"]``): exploration, acting and the TD target among the valid actions.

The end-to-end tests train on ``tests/envs/masked.py`` (``Masked-v0``), a real gymnasium env whose invalid action is
the tempting one, made the greedy one outright by a +100 bias on its Q-value; Taxi is gymnasium's own masked env.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from dqnlab.data.action_masks import action_masks, random_valid_actions
from dqnlab.data.replay import ReplayBuffer
from dqnlab.errors import ConfigError
from dqnlab.learn.fast.mlp_update import mlp_td_grads
from dqnlab.learn.rl_math import categorical_td_target, masked_argmax, masked_max, td_target
from dqnlab.run.report import TIMING_KEYS
from dqnlab.train import build, run

ENVS = Path(__file__).resolve().parent / "envs"
MASKED = ["env=gym", "env.id=masked:Masked-v0", "logger=[]", "progress_bar=false", "eval.episodes=2"]
SHORT = [*MASKED, "env_steps=1500", "collector.learning_starts=500", "buffer.capacity=2000"]
TIMING = TIMING_KEYS  # what a resume may change in summary.json


@pytest.fixture
def masked_env(monkeypatch: pytest.MonkeyPatch):
    """``tests/envs/masked.py`` importable (as ``env.id=masked:Masked-v0`` needs), its counters at zero."""
    monkeypatch.syspath_prepend(str(ENVS))
    import masked

    masked.STATS.update(steps=0, invalid=0)
    return masked


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as ``run`` sets (``torch_threads: 1``) and ``build`` alone does not: faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tempt(module: torch.nn.Module, action: int, bias: float = 100.0) -> None:
    """Make ``action`` the greedy one of both networks everywhere: +``bias`` on its output."""
    with torch.no_grad():
        for net in (module.q_net, module.target_net):
            net.net[-1].bias[action] += bias


# ---------------------------------------------------------------------------------------------- the math
def test_masked_max_and_argmax_ignore_invalid_actions():
    q = torch.tensor([[1.0, 9.0, 2.0], [5.0, 4.0, 3.0], [0.0, 7.0, 1.0]])
    mask = torch.tensor([[True, False, True], [False, True, True], [False, False, False]])
    assert masked_argmax(q, mask).tolist() == [2, 1, 1]  # a row without a valid action: over all of them
    assert masked_max(q, mask).tolist() == [2.0, 4.0, 7.0]
    assert torch.equal(masked_max(q, torch.ones_like(mask)), q.max(dim=1).values)


def test_td_target_maximises_over_the_valid_actions_of_the_next_state():
    rewards = torch.tensor([1.0, 0.0, 2.0, 0.5])
    terminated = torch.tensor([False, False, True, False])
    next_q = torch.tensor([[1.0, 50.0, 3.0], [4.0, 2.0, 60.0], [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]])
    # Action 1 (row 0) and 2 (row 1) are invalid next: their large values must not be bootstrapped. Row 2 ends
    # the episode and has no valid action at all; row 3 allows everything.
    mask = torch.tensor([[True, False, True], [True, True, False], [False, False, False], [True, True, True]])
    got = td_target(rewards, terminated, next_q, 0.5, next_mask=mask)
    assert got.tolist() == [1.0 + 0.5 * 3.0, 0.5 * 4.0, 2.0, 0.5 + 0.5 * 2.0]
    assert td_target(rewards, terminated, next_q, 0.5).tolist() == [26.0, 30.0, 2.0, 1.5]  # unmasked, for contrast
    # Double DQN: the online net picks among the valid actions, the target net rates its pick.
    online = torch.tensor([[0.0, 99.0, 1.0], [2.0, 1.0, 99.0], [0.0, 0.0, 0.0], [3.0, 2.0, 1.0]])
    got = td_target(rewards, terminated, next_q, 0.5, next_q_online=online, next_mask=mask)
    assert got.tolist() == [1.0 + 0.5 * 3.0, 0.5 * 4.0, 2.0, 0.5 + 0.5 * 0.0]
    assert torch.isfinite(got).all()


def test_categorical_target_takes_the_best_valid_action():
    support = torch.linspace(-1.0, 1.0, 3)
    # Action 0 puts all mass on +1, action 1 on -1: the unmasked a* is 0; masked to action 1 only, it is 1.
    logits = torch.tensor([[[-30.0, -30.0, 30.0], [30.0, -30.0, -30.0]]])
    args = (torch.zeros(1), torch.zeros(1, dtype=torch.bool), logits, torch.ones(1), support)
    assert categorical_td_target(*args).argmax().item() == 2
    assert categorical_td_target(*args, next_mask=torch.tensor([[False, True]])).argmax().item() == 0


def test_random_valid_actions_draw_uniformly_among_the_valid_ones():
    rng = np.random.default_rng(0)
    masks = np.array([[True, False, True, False], [False, False, False, True], [False] * 4] * 3000)
    actions = random_valid_actions(rng, masks)
    assert masks[np.arange(3000 * 3)[::3], actions[::3]].all() and (actions[1::3] == 3).all()
    counts = np.bincount(actions[::3], minlength=4)
    assert counts[1] == counts[3] == 0 and abs(counts[0] - counts[2]) < 200  # ~1500 each
    assert set(np.unique(actions[2::3])) == {0, 1, 2, 3}  # no valid action: any


def test_vector_info_rows_without_a_mask_allow_every_action():
    info = {"action_mask": np.array([[1, 0, 1], [0, 0, 0]], dtype=np.int8), "_action_mask": np.array([True, False])}
    assert action_masks(info, 2, 3).tolist() == [[True, False, True], [True, True, True]]
    assert action_masks({}, 2, 3).all()
    lists = np.array([[0, 1, 1], None], dtype=object)  # gymnasium batches a list per copy as objects
    assert action_masks({"action_mask": lists}, 2, 3).tolist() == [[False, True, True], [True, True, True]]
    with pytest.raises(ConfigError, match="shaped \\[4\\] per env, but its action space has 3"):
        action_masks({"action_mask": np.ones((2, 4))}, 2, 3)


# ---------------------------------------------------------------------------------------------- the replay
def _masked_buffer(n_step: int = 1, **kw) -> ReplayBuffer:
    return ReplayBuffer(64, (1,), torch.float32, num_envs=2, n_step=n_step, mask_size=3, **kw)


def _fill(buf: ReplayBuffer, steps: int) -> None:
    """Observation t of env e is t; action 2 is valid where t is even; env 1 ends an episode every 5 steps."""
    mask = lambda t: np.array([[True, True, t % 2 == 0]] * 2)  # noqa: E731
    buf.start(np.zeros((2, 1), np.float32))
    buf.write_masks(mask(0))
    for t in range(steps):
        done = np.array([False, (t + 1) % 5 == 0])
        buf.add(np.full(2, t % 3), np.ones(2), done, np.zeros(2, bool), np.full((2, 1), t + 1, np.float32))
        buf.write_masks(mask(t + 1))


@pytest.mark.parametrize("n_step", [1, 3])
def test_a_batch_carries_the_mask_of_its_next_observation(n_step):
    buf = _masked_buffer(n_step)
    _fill(buf, 40)
    batch = buf.sample(256)
    assert batch.next_mask.shape == (256, 3) and batch.next_mask.dtype == torch.bool
    assert torch.equal(batch.next_mask[:, 2], batch.next_obs[:, 0] % 2 == 0)
    assert batch.next_mask[:, :2].all()
    assert buf.nbytes == ReplayBuffer.nbytes_for(32, 2, (1,), torch.float32, mask_size=3)
    assert buf.nbytes - ReplayBuffer.nbytes_for(32, 2, (1,), torch.float32) == 32 * 2 * 3


def test_masks_travel_with_the_buffer_state_and_an_old_state_allows_everything():
    buf = _masked_buffer()
    _fill(buf, 40)
    state = buf.state_dict()
    again = _masked_buffer()
    again.load_state_dict(copy.deepcopy(state))
    assert torch.equal(again.masks, buf.masks)
    assert torch.equal(buf.sample(64).next_mask, again.sample(64).next_mask)
    older = _masked_buffer()
    older.load_state_dict({k: v for k, v in state.items() if k != "masks"})  # saved before masks existed
    assert older.masks.all()
    plain = ReplayBuffer(64, (1,), torch.float32, num_envs=2)
    plain.load_state_dict(copy.deepcopy(state))  # masking off on resume: the saved masks are left out
    assert plain.masks is None and plain.sample(8).next_mask is None


# ---------------------------------------------------------------------------------------------- the update
@pytest.mark.parametrize("double", [False, True])
def test_hand_written_update_applies_the_mask_exactly_as_autograd(double, masked_env, make_cfg):
    parts = build(make_cfg(*SHORT, "env_steps=700", f"algo.double={str(double).lower()}"))
    try:
        parts.trainer.fit(parts.module)
        module, buf = parts.module, parts.buffer
        assert module.gradients == "hand-written" and module.action_masked
        _tempt(module, masked_env.JACKPOT)
        batch = buf.sample(256)
        closed = ~batch.next_mask[:, masked_env.JACKPOT] & ~batch.terminated
        assert closed.sum() > 30  # enough next states where the tempting action is invalid
        module.q_net.zero_grad(set_to_none=True)  # the last update's gradients are still there
        want = module.td_loss(batch)
        want.loss.backward()
        got = mlp_td_grads(
            *module._mlp, batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated,
            batch.discounts, None, module.loss_kind, double, batch.next_mask,
        )  # fmt: skip
        torch.testing.assert_close(got.loss, want.loss.detach())
        torch.testing.assert_close(got.errors, want.errors)
        for p, grad in zip(module.q_net.parameters(), got.grads, strict=True):
            torch.testing.assert_close(grad, p.grad)
        # The target bootstraps from the best valid action: never the invalid one, whose Q is 100 higher.
        with torch.no_grad():
            q = module.q_net(batch.obs).gather(1, batch.actions[:, None]).squeeze(1)
            next_q = module.target_net(batch.next_obs)
            online = module.q_net(batch.next_obs) if double else None
        target = td_target(batch.rewards, batch.terminated, next_q, batch.discounts, online, batch.next_mask)
        torch.testing.assert_close(want.errors, (q - target).abs())
        unmasked = td_target(batch.rewards, batch.terminated, next_q, batch.discounts, online)
        assert ((unmasked - target)[closed] > 50).all() and torch.equal(unmasked[~closed], target[~closed])
    finally:
        parts.close()


# ---------------------------------------------------------------------------------------------- end to end
def test_training_never_takes_an_invalid_action_even_when_it_is_the_greedy_one(masked_env, make_cfg):
    parts = build(make_cfg(*SHORT, "collector.exploration_fraction=0.3"))
    _tempt(parts.module, masked_env.JACKPOT)
    masked_env.STATS.update(steps=0, invalid=0)  # building may step a probe copy at random (the env API check)
    try:
        parts.trainer.fit(parts.module)
    finally:
        parts.close()
    assert masked_env.STATS["steps"] > 1300  # of training (less the autoreset steps) and evaluation
    assert masked_env.STATS["invalid"] == 0
    # Every stored observation's mask is the one the env gave with it: the jackpot flag of the observation (also
    # the first observation of an episode, which came with the autoreset step's info).
    filled = parts.buffer.obs_written  # one env: one slot per observation
    obs, masks = parts.buffer.obs[:filled, 0], parts.buffer.masks[:filled, 0]
    assert torch.equal(masks[:, masked_env.JACKPOT], obs[:, 0] == 1.0) and masks[:, :2].all()
    assert parts.buffer.first.sum() > 100


def test_the_knob_turns_masking_off_and_the_tempting_action_is_taken(masked_env, make_cfg):
    pl.seed_everything(0, verbose=False)  # as run() seeds: the count must not depend on the tests run before it
    parts = build(make_cfg(*SHORT, "collector.action_mask=false"))
    _tempt(parts.module, masked_env.JACKPOT)
    masked_env.STATS.update(steps=0, invalid=0)
    try:
        parts.trainer.fit(parts.module)
    finally:
        parts.close()
    assert parts.buffer.masks is None and not parts.module.action_masked and not parts.collector.masked
    # Random actions, then the greedy one (the jackpot) whenever it is closed, until training unlearns it: more
    # invalid actions than a uniformly random policy takes (a third of them the jackpot, closed half the time).
    assert masked_env.STATS["invalid"] > masked_env.STATS["steps"] / 6


def test_the_header_and_summary_say_masks_are_used(masked_env, make_cfg, caplog):
    caplog.set_level("INFO")
    summary = run(make_cfg(*SHORT))
    assert summary["action_mask"] is True
    assert "action masks from the env's info" in caplog.text
    assert summary["eval/return_mean"] > 3.0  # 10 steps of 0.1 or 1.0 (jackpot open half the time): ~5.5 at best


def test_a_resume_continues_with_the_saved_masks_exactly(masked_env, make_cfg, tmp_path):
    base = [*SHORT, "checkpoint.every=500", "collector.exploration_steps=800", "seed=3"]
    first = tmp_path / "first"
    uninterrupted = run(make_cfg(*base, "logger=[csv]", f"paths.output_dir={first}"))
    second = tmp_path / "second"
    ckpt = first / "checkpoints" / "env_steps_1000.ckpt"
    collector = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]["EnvStepper"]
    assert collector["action_mask"].dtype == torch.bool and "masks" in collector["buffer"]
    resumed = run(make_cfg(*base, "logger=[csv]", f"paths.output_dir={second}", f"ckpt_path={ckpt}"))
    assert {k: v for k, v in resumed.items() if k not in TIMING} == {
        k: v for k, v in uninterrupted.items() if k not in TIMING
    }

    def rows(path: Path) -> list[dict[str, str]]:
        with path.open(newline="") as f:
            return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in csv.DictReader(f)]

    after = [r for r in rows(first / "metrics.csv") if int(r["step"]) > 1000]
    assert rows(second / "metrics.csv") == after


def test_playing_a_saved_agent_keeps_to_the_valid_actions(masked_env, make_cfg, tmp_path):
    from dqnlab.share.playback import evaluate_agent, load_agent

    run(make_cfg(*SHORT, "logger=[csv]"))
    agent = load_agent(tmp_path / "checkpoints" / "last.ckpt", env_id="masked:Masked-v0")
    with torch.no_grad():
        agent.network.net[-1].bias[masked_env.JACKPOT] += 100.0  # greedy: the jackpot, open or not
    masked_env.STATS.update(steps=0, invalid=0)
    result = evaluate_agent(agent, episodes=4, epsilon=0.2, seed=1)
    assert result["episodes"] == 4 and masked_env.STATS["steps"] >= 40
    assert masked_env.STATS["invalid"] == 0


def test_taxi_trains_with_its_action_masks(make_cfg):
    taxi = ["env=gym", "env.id=Taxi-v4", "env.max_episode_steps=50", "logger=[]", "progress_bar=false"]
    summary = run(make_cfg(*taxi, "env_steps=2000", "collector.learning_starts=500", "eval.episodes=2"))
    assert summary["action_mask"] is True and summary["env_steps"] == 2000


def test_the_memory_check_counts_the_masks_a_masked_run_stores(masked_env, make_cfg, tmp_path, monkeypatch):
    """A byte per action per transition: a limit that holds the buffer without masks but not with them refuses
    the masked run before anything is allocated, and lets the same run without masking build."""
    from dqnlab.data.memory import MEMORY_LIMIT_ENV, RESERVATIONS_ENV, BufferTooLargeError

    capacity = 100_000
    plain = ReplayBuffer.nbytes_for(capacity, 1, (3,), torch.float32)  # Masked-v0: 3 floats, 3 actions
    with_masks = ReplayBuffer.nbytes_for(capacity, 1, (3,), torch.float32, mask_size=3)
    assert with_masks == plain + 3 * capacity
    monkeypatch.setenv(RESERVATIONS_ENV, str(tmp_path / "reservations"))  # no other job's buffer counts here
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(int((plain + with_masks) / 2 / 0.9)))  # buffer.memory_fraction 0.9
    overrides = [*MASKED, f"buffer.capacity={capacity}", "~checkpoint"]
    with pytest.raises(BufferTooLargeError, match=r"buffer\.capacity"):
        build(make_cfg(*overrides))
    build(make_cfg(*overrides, "collector.action_mask=false")).close()
