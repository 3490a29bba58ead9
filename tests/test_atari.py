"""Atari envs on real games (a few thousand emulator frames each): the protocol, both backends, and replay.

Tests that need ale-py are marked ``atari`` and skip cleanly without it (``pip install 'dqnlab[atari]'``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium.vector import VectorEnv, VectorWrapper
from omegaconf import DictConfig, OmegaConf

from dqnlab.data.collect import EnvStepper
from dqnlab.data.replay import ReplayBuffer
from dqnlab.envs.atari import make_atari_env
from dqnlab.envs.vector import EnvConfigError, match_frame_stacking
from dqnlab.errors import MissingExtraError

needs_ale = pytest.mark.atari
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture
def ale() -> Any:
    return pytest.importorskip("ale_py")


class Recorder(VectorWrapper):
    """Keeps a copy of everything the env returns, time-major (row 0 is the reset)."""

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self.obs: list[np.ndarray] = []
        self.steps: list[dict[str, np.ndarray]] = []

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.obs, self.steps = [obs.copy()], []
        return obs, info

    def step(self, actions: np.ndarray) -> tuple[Any, ...]:
        obs, reward, term, trunc, info = self.env.step(actions)
        self.obs.append(obs.copy())
        self.steps.append(
            {
                "reward": np.array(reward),
                "terminated": np.array(term),
                "truncated": np.array(trunc),
                "raw_reward": info["raw_reward"].copy(),
                "game_over": info["game_over"].copy(),
                "life_loss": info["life_loss"].copy(),
                "lives": np.array(info["lives"]),
                "frame": np.array(info["episode_frame_number"]),
            }
        )
        return obs, reward, term, trunc, info

    def column(self, key: str) -> np.ndarray:
        """``[T + 1, N]`` with row ``t`` from step ``t`` (row 0, the reset, all zeros)."""
        rows = [s[key] for s in self.steps]
        return np.concatenate([np.zeros_like(rows[0])[None], np.stack(rows)])


def random_play(env: VectorEnv, steps: int, seed: int = 0) -> Recorder:
    rec = Recorder(env)
    rec.reset(seed=seed)
    rng = np.random.default_rng(seed)
    n, num_actions = env.num_envs, int(env.single_action_space.n)
    for _ in range(steps):
        rec.step(rng.integers(num_actions, size=n))
    return rec


# ------------------------------------------------------------------ errors
def test_missing_ale_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ale_py", None)  # `import ale_py` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'dqnlab\[atari\]'"):
        make_atari_env("breakout")


@needs_ale
def test_unknown_game_lists_close_matches(ale: Any) -> None:
    with pytest.raises(EnvConfigError, match="breakout") as err:
        make_atari_env("breakuot")
    assert "env.game='breakuot'" in str(err.value)


@needs_ale
@pytest.mark.parametrize(
    ("name", "rom"),
    [
        ("asterix", "asterix"),
        ("SpaceInvaders", "space_invaders"),
        ("beamrider", "beam_rider"),
        ("ALE/MsPacman-v5", "ms_pacman"),
    ],
)
def test_game_names_resolve_to_rom_ids(ale: Any, name: str, rom: str) -> None:
    from dqnlab.envs.atari import resolve_game

    assert resolve_game(name) == rom


@needs_ale
def test_unknown_backend_and_impossible_noop_max_are_config_errors(ale: Any) -> None:
    with pytest.raises(EnvConfigError, match=r"env\.backend"):
        make_atari_env("pong", backend="envpool")
    with pytest.raises(EnvConfigError, match="noop_max"):
        make_atari_env("pong", noop_max=0)


# ------------------------------------------------------------------ what ale-py's vector env does
@needs_ale
def test_ale_vector_env_zero_pads_a_new_game_and_keeps_the_stack_across_a_life_loss(ale: Any) -> None:
    rec = random_play(make_atari_env("breakout", num_envs=2), 300)
    obs = np.stack(rec.obs)  # [T + 1, N, 4, 84, 84]
    over, life = rec.column("game_over"), rec.column("life_loss")
    assert over.any() and life.any()
    new_game = np.zeros_like(over)
    new_game[0] = True
    new_game[1:] = over[:-1]  # NEXT_STEP: the step after a game over returns the new game's first obs
    for t, n in zip(*np.nonzero(new_game)):
        assert not obs[t, n, :3].any() and obs[t, n, 3].any(), "older frames of a new game's stack are zeros"
    for t, n in zip(*np.nonzero(life[:-1])):
        # The step after a life loss is an ordinary step: the stack shifts by one frame, no padding.
        np.testing.assert_array_equal(obs[t + 1, n, :3], obs[t, n, 1:])
        assert rec.column("frame")[t + 1, n] > rec.column("frame")[t, n], "the game went on"


@needs_ale
def test_ale_episodic_life_restarts_the_whole_game(ale: Any) -> None:
    # Why make_atari_env does not use ale-py's own `episodic_life` (0.12): its autoreset after a lost life
    # starts a new game, so an agent would only ever play its first life. If this starts failing, ale-py
    # changed and AtariSignals could hand life losses back to it.
    from ale_py.vector_env import AtariVectorEnv

    env = AtariVectorEnv("breakout", 1, num_threads=1, episodic_life=True, reward_clipping=False)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    lives, after_done = [], False
    for _ in range(200):
        _, _, term, trunc, info = env.step(rng.integers(4, size=1))
        if after_done:
            lives.append(int(info["lives"][0]))
        after_done = bool(term[0] or trunc[0])
    env.close()
    assert lives and all(n == 5 for n in lives)


# ------------------------------------------------------------------ the protocol
@needs_ale
@pytest.mark.parametrize("backend", ["ale_vector", "gymnasium"])
def test_life_loss_is_terminal_for_learning_only(ale: Any, backend: str) -> None:
    train = random_play(make_atari_env("breakout", num_envs=2, backend=backend), 250)
    term, over, life = train.column("terminated"), train.column("game_over"), train.column("life_loss")
    trunc = train.column("truncated")
    assert life.any() and over.any()
    assert term[life].all() and not over[life].any()  # a lost life: terminal for learning, the game goes on
    np.testing.assert_array_equal(term & ~life, over & ~trunc)  # any other terminal is the real game over

    evaluation = random_play(make_atari_env("breakout", num_envs=2, backend=backend, for_eval=True), 250)
    assert evaluation.column("life_loss").any()
    np.testing.assert_array_equal(evaluation.column("terminated"), evaluation.column("game_over"))


@needs_ale
@pytest.mark.parametrize("backend", ["ale_vector", "gymnasium"])
def test_rewards_are_clipped_for_learning_and_raw_in_info(ale: Any, backend: str) -> None:
    # Space Invaders scores 5 to 30 points per invader: random play scores within a few hundred steps.
    train = random_play(make_atari_env("space_invaders", num_envs=2, backend=backend), 200)
    raw, learn = train.column("raw_reward"), train.column("reward")
    assert raw.max() > 1
    np.testing.assert_array_equal(learn, np.clip(raw, -1, 1))
    assert train.steps[0]["reward"].dtype == np.float32

    evaluation = random_play(make_atari_env("space_invaders", num_envs=2, backend=backend, for_eval=True), 200)
    np.testing.assert_array_equal(evaluation.column("reward"), evaluation.column("raw_reward"))


@needs_ale
@pytest.mark.parametrize("backend", ["ale_vector", "gymnasium"])
def test_episode_caps_count_agent_steps(ale: Any, backend: str) -> None:
    # Pong has no lives and random play loses a game in ~800 agent steps: only the caps end games here.
    train = random_play(make_atari_env("pong", backend=backend, max_episode_frames=120), 70)
    assert [t for t in range(1, 71) if train.column("truncated")[t, 0]] == [30, 61]  # 120 frames / 4, reset step
    evaluation = random_play(
        make_atari_env("pong", backend=backend, max_episode_frames=120, eval_max_episode_frames=80, for_eval=True), 25
    )
    assert [t for t in range(1, 26) if evaluation.column("truncated")[t, 0]] == [20]
    smoke = random_play(make_atari_env("pong", backend=backend, max_episode_steps=7, for_eval=True), 10)
    assert [t for t in range(1, 11) if smoke.column("truncated")[t, 0]] == [7]
    assert not train.column("terminated").any()
    np.testing.assert_array_equal(train.column("game_over"), train.column("truncated"))


@needs_ale
def test_default_cap_is_108k_frames(ale: Any) -> None:
    import inspect

    from dqnlab.envs.atari import _episode_cap_steps

    default = inspect.signature(make_atari_env).parameters["max_episode_frames"].default
    assert default == 108_000 and _episode_cap_steps(default, None, 4) == 27_000
    assert OmegaConf.load(CONF / "env" / "atari.yaml").max_episode_frames == 108_000


@needs_ale
def test_both_backends_play_the_same_game_step_for_step(ale: Any) -> None:
    # With one reset frame (FIRE) the start is deterministic; with sticky actions off so is ALE. The two
    # backends must then return identical frames, rewards, terminals and infos, across life losses, game
    # overs, truncations and autoresets.
    kw: dict[str, Any] = {"num_envs": 2, "noop_max": 1, "max_episode_steps": 180}
    runs = {b: random_play(make_atari_env("breakout", backend=b, **kw), 400) for b in ("ale_vector", "gymnasium")}
    a, g = runs["ale_vector"], runs["gymnasium"]
    assert a.obs[0].shape == (2, 4, 84, 84) and a.obs[0].dtype == np.uint8
    for rec in (a, g):
        env = rec.env
        assert env.single_observation_space == a.env.single_observation_space
        assert env.single_action_space == a.env.single_action_space
        assert env.metadata["frame_stack"] == 4 and env.metadata["stack_padding"] == "zero"
    obs_a, obs_g = np.stack(a.obs), np.stack(g.obs)
    # One known difference: on a truncation step ale-py 0.12's vector env returns a newest frame pooled with a
    # stale one (the paddle shows at two distant places). It only feeds the bootstrap of a truncated
    # transition; everything else must match exactly.
    cut = a.column("truncated")
    obs_a[cut, -1] = obs_g[cut, -1] = 0
    np.testing.assert_array_equal(obs_a, obs_g)
    for key in ("reward", "terminated", "truncated", "raw_reward", "game_over", "life_loss", "lives"):
        np.testing.assert_array_equal(a.column(key), g.column(key), err_msg=key)
    over = a.column("game_over")
    assert (over & a.column("truncated")).any() and (over & ~a.column("truncated")).any()
    assert a.column("life_loss").any()


# ------------------------------------------------------------------ replay on a real game
def _stepper(env: VectorEnv, buffer: ReplayBuffer) -> EnvStepper:
    return EnvStepper(env, buffer, total_env_steps=10**6, learning_starts=0, seed=0)


@needs_ale
def test_replay_rebuilds_the_stacks_the_agent_saw(ale: Any) -> None:
    # Breakout, 3 games through the real collector; 150 slots per game so the ring wraps (400 steps).
    rec = Recorder(make_atari_env("breakout", num_envs=3, max_episode_steps=150))
    buf = ReplayBuffer(450, (4, 84, 84), torch.uint8, num_envs=3, frame_stack=4, stack_padding="zero")
    stepper = _stepper(rec, buf)
    stepper._reset()
    for _ in range(400):
        stepper.step(None, random=True)
    obs = np.stack(rec.obs)  # [T + 1, N, 4, 84, 84]
    done = rec.column("terminated") | rec.column("truncated")
    steps, slots = obs.shape[0] - 1, buf.slots

    batch = buf.sample(2_000)
    seen_after_life_loss = 0
    for i, idx in enumerate(batch.indices.tolist()):
        slot, n = divmod(idx, 3)
        t = steps - ((steps - slot) % slots)  # time of the obs the transition leaves
        assert not done[t, n], "a transition across an autoreset (or out of a life-loss terminal) was sampled"
        np.testing.assert_array_equal(batch.obs[i].numpy(), obs[t, n])
        np.testing.assert_array_equal(batch.next_obs[i].numpy(), obs[t + 1, n])
        assert batch.terminated[i].item() == rec.column("terminated")[t + 1, n]
        # Stacks within 3 steps after a life loss reach back across it: the case the `resets` flags are for.
        seen_after_life_loss += bool(rec.column("life_loss")[max(t - 3, 0) : t, n].any())
    assert seen_after_life_loss > 50
    assert rec.column("game_over")[steps - slots + 4 :].any(), "the kept window holds a new game too"

    # Without the env's reset flags the same data rebuilds wrong stacks after life losses.
    naive = ReplayBuffer(450, (4, 84, 84), torch.uint8, num_envs=3, frame_stack=4, stack_padding="zero")
    naive.start(obs[0])
    for t in range(1, steps + 1):
        s = rec.steps[t - 1]
        naive.add(np.zeros(3), s["reward"], s["terminated"], s["truncated"], obs[t])
    b = naive.sample(2_000)
    mismatch = 0
    for i, idx in enumerate(b.indices.tolist()):
        slot, n = divmod(idx, 3)
        t = steps - ((steps - slot) % slots)
        mismatch += not np.array_equal(b.obs[i].numpy(), obs[t, n])
    assert mismatch > 0


@needs_ale
def test_collector_reports_full_game_raw_scores(ale: Any) -> None:
    rec = Recorder(make_atari_env("breakout", num_envs=2))
    buf = ReplayBuffer(1_000, (4, 84, 84), torch.uint8, num_envs=2, frame_stack=4, stack_padding="zero")
    stepper = _stepper(rec, buf)
    stepper._reset()
    for _ in range(400):
        stepper.step(None, random=True)
    raw, over = rec.column("raw_reward"), rec.column("game_over")
    life = rec.column("life_loss")
    want = []
    for n in range(2):
        ret, length, lives_lost, live = 0.0, 0, 0, True  # the step after a game over is the autoreset
        for t in range(1, raw.shape[0]):
            if live:
                ret, length, lives_lost = ret + raw[t, n], length + 1, lives_lost + life[t, n]
                if over[t, n]:
                    want.append((t, n, ret, length, lives_lost))
                    ret, length, lives_lost = 0.0, 0, 0
            live = not over[t, n]
    want.sort()
    assert len(want) >= 2 and stepper.episodes == len(want)
    assert all(w[4] == 4 for w in want), "each reported game is all 5 lives (4 lost before the game over)"
    assert stepper._new_returns == [w[2] for w in want]
    assert stepper._new_lengths == [w[3] for w in want]


# ------------------------------------------------------------------ config and end to end
@needs_ale
def test_buffer_frame_stack_follows_the_env(ale: Any) -> None:
    env = make_atari_env("pong", frame_stack=3)
    try:
        cfg = OmegaConf.create({"frame_stack": 1, "stack_padding": "reset"})
        match_frame_stacking(cfg, env)
        assert (cfg.frame_stack, cfg.stack_padding) == (3, "zero")
        with pytest.raises(EnvConfigError, match=r"buffer\.frame_stack=4"):
            match_frame_stacking(OmegaConf.create({"frame_stack": 4}), env)
    finally:
        env.close()


@needs_ale
@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (
            "atari_cleanrl",
            {
                "env_steps": 10_000_000,
                "optimizer.lr": 1e-4,
                "algo.loss": "mse",
                "algo.max_grad_norm": None,
                "target.interval": 250,
                "collector.learning_starts": 80_000,
                "collector.epsilon_end": 0.01,
                "buffer.capacity": 1_000_000,
                "eval.epsilon": 0.05,
            },
        ),
        (
            "atari_nature",
            {
                "env_steps": 50_000_000,
                "optimizer.lr": 2.5e-4,
                "algo.loss": "huber",
                "target.interval": 10_000,
                "collector.learning_starts": 50_000,
                "collector.epsilon_end": 0.1,
                "buffer.capacity": 1_000_000,
                "eval.epsilon": 0.05,
                "env.eval_max_episode_frames": 18_000,
            },
        ),
    ],
)
def test_presets_compose_and_validate(
    ale: Any, make_cfg: Callable[..., DictConfig], preset: str, expected: dict[str, Any]
) -> None:
    from dqnlab.validate import validate_config

    cfg = make_cfg(f"experiment={preset}", "env=pong")
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert cfg.env.game == "pong" and cfg.network._target_.endswith("NatureCNN")
    # Epsilon reaches its floor after 1M env steps in both (Nature: final exploration frame 1M).
    assert cfg.collector.exploration_fraction * cfg.env_steps == pytest.approx(1_000_000)
    validate_config(cfg)


@pytest.mark.parametrize("backend", ["ale_vector", "gymnasium"])
def test_send_then_recv_plays_the_same_game_as_step(ale: Any, backend: str) -> None:
    """The async path (collector.async_envs), native send/recv or a worker thread, gives what step gives."""
    from dqnlab.envs.pipe import EnvPipe

    kw: dict[str, Any] = {"num_envs": 3, "noop_max": 1, "max_episode_steps": 150, "backend": backend}
    a, b = make_atari_env("breakout", **kw), make_atari_env("breakout", **kw)
    a.reset(seed=7)
    b.reset(seed=7)
    pipe = EnvPipe(b, background=True)
    # ale-py's vector env steps in its own threads; the gymnasium backend's SyncVectorEnv on the worker thread
    assert pipe.native == (backend == "ale_vector")
    # A wrapper without send/recv of its own must get its step called: not native, whatever it wraps.
    assert not EnvPipe(VectorWrapper(b)).native
    rng = np.random.default_rng(0)
    for _ in range(300):  # past life losses, game overs and truncations
        actions = rng.integers(a.single_action_space.n, size=3)
        want = a.step(actions)
        pipe.send(actions)
        got = pipe.recv()
        for w, g in zip(want[:4], got[:4], strict=True):
            np.testing.assert_array_equal(w, g)
        for key in ("raw_reward", "game_over", "life_loss"):
            np.testing.assert_array_equal(want[4][key], got[4][key])
    a.close()
    b.close()
