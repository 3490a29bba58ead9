"""MinAtar (``env=minatar``): game names, the observation layout into the replay and the network, the paper's
preset, every DQN-family switch on ``network=minatar_cnn``, and the errors of a bad game or a missing extra.

Tests that play a game need the ``minatar`` package (``pip install 'dqnlab[minatar]'``) and skip without it.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from dqnlab.data.prioritized import PrioritizedReplayBuffer
from dqnlab.envs.minatar import GAMES, env_id, make_minatar_env, resolve_game
from dqnlab.envs.vector import EnvConfigError
from dqnlab.errors import ConfigError, MissingExtraError
from dqnlab.learn.networks import DuelingHead, MinAtarCNN, NetworkConfigError, noisy_layers
from dqnlab.train import build, run
from dqnlab.validate import validate_config
from tests.conftest import PYTHON, ROOT

CHANNELS = {"asterix": 4, "breakout": 4, "freeway": 7, "seaquest": 10, "space_invaders": 6}
TINY = ("debug=smoke", "logger=[]", "~checkpoint", "eval.episodes=1", "eval.every=0")  # one final evaluation


@pytest.fixture
def minatar() -> Any:
    return pytest.importorskip("minatar")


# ------------------------------------------------------------------ names and errors
@pytest.mark.parametrize(
    ("name", "game"),
    [("breakout", "breakout"), ("SpaceInvaders", "space_invaders"), ("space-invaders", "space_invaders"),
     ("MinAtar/Seaquest-v1", "seaquest"), ("Freeway", "freeway")],
)  # fmt: skip
def test_game_names_resolve(name: str, game: str) -> None:
    assert resolve_game(name) == game


def test_ids_are_v0_for_all_actions_and_v1_for_the_minimal_set() -> None:
    assert env_id("space_invaders") == "MinAtar/SpaceInvaders-v0"
    assert env_id("breakout", minimal_action_set=True) == "MinAtar/Breakout-v1"


def test_unknown_game_is_rejected_with_a_close_match(make_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(EnvConfigError, match=r"did you mean env.game=space_invaders\?.*asterix, breakout"):
        resolve_game("spaceinvader")
    with pytest.raises(ConfigError, match=r"env.game='pong'.*The games are asterix, breakout, freeway"):
        validate_config(make_cfg("env=minatar", "env.game=pong", "debug=smoke"))


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("minatar", "minatar.gym"):  # a None entry makes `import minatar.gym` raise ImportError
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match=r"pip install 'dqnlab\[minatar\]'"):
        make_minatar_env("breakout")


@pytest.mark.slow
def test_cli_without_the_extra_prints_one_line_naming_the_install_command(tmp_path: Any) -> None:
    # As if minatar were not installed: a None entry in sys.modules makes `import minatar` fail in the child only.
    code = (
        "import runpy, sys; sys.modules['minatar'] = None; "
        f"sys.argv = ['train.py', 'env=minatar', 'debug=smoke', 'hydra.run.dir={tmp_path / 'run'}']; "
        "runpy.run_path('train.py', run_name='__main__')"
    )
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: MinAtar envs need the minatar package (GPL-3.0): pip install 'dqnlab[minatar]'"
    ]


@pytest.mark.slow
def test_cli_bad_game_exits_2_with_a_close_match_and_no_run_dir(tmp_path: Any) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [PYTHON, "train.py", "env=minatar", "env.game=breakot", "debug=smoke", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: MinAtar has no game env.game='breakot': did you mean env.game=breakout? "
        "The games are asterix, breakout, freeway, seaquest, space_invaders."
    ]
    assert not run_dir.exists()  # rejected by the Hydra callback, before the run dir is made


# ------------------------------------------------------------------ the env
def test_env_defaults_are_the_papers(minatar: Any) -> None:
    env = make_minatar_env("asterix")  # a game that ramps (Breakout has no ramping to switch)
    try:
        game = env.envs[0].unwrapped.game  # minatar.Environment
        assert env.envs[0].spec.id == "MinAtar/Asterix-v0" and env.single_action_space.n == 6
        assert game.sticky_action_prob == 0.1 and game.env.ramping
        assert env.envs[0].spec.max_episode_steps is None  # no time limit, as the paper
    finally:
        env.close()
    env = make_minatar_env("asterix", minimal_action_set=True, sticky_action_prob=0.0, difficulty_ramping=False)
    try:
        game = env.envs[0].unwrapped.game
        assert env.single_action_space.n == len(game.minimal_action_set()) < 6
        assert game.sticky_action_prob == 0.0 and not game.env.ramping
    finally:
        env.close()


@pytest.mark.parametrize("game", GAMES)
def test_observations_are_the_games_state_channels_first_in_one_byte(minatar: Any, game: str) -> None:
    env = make_minatar_env(game, num_envs=2)
    with pytest.warns(DeprecationWarning, match="out of date"):  # v0 on purpose: the paper's 6 actions
        raw = gym.make(env_id(game), disable_env_checker=True)
    try:
        c = CHANNELS[game]
        assert env.single_observation_space.shape == (c, 10, 10)
        assert env.single_observation_space.dtype == np.uint8
        obs, _ = env.reset(seed=3)
        state, _ = raw.reset(seed=3)  # copy 0 of the vector env is seeded with 3 too
        assert state.dtype == np.bool_ and state.shape == (10, 10, c)  # what the package returns
        assert obs.dtype == np.uint8 and obs.shape == (2, c, 10, 10) and obs.max() == 1
        np.testing.assert_array_equal(obs[0], state.transpose(2, 0, 1))
        obs, *_ = env.step(np.zeros(2, dtype=np.int64))
        assert obs.dtype == np.uint8 and set(np.unique(obs)) <= {0, 1}
    finally:
        env.close()
        raw.close()


def test_episode_cap_truncates(minatar: Any) -> None:
    env = make_minatar_env("freeway", max_episode_steps=5, eval_max_episode_steps=7)
    evaluation = make_minatar_env("freeway", max_episode_steps=5, eval_max_episode_steps=7, for_eval=True)
    try:
        for e, cap in ((env, 5), (evaluation, 7)):
            e.reset(seed=0)
            truncated = [bool(e.step(np.zeros(1, dtype=np.int64))[3][0]) for _ in range(cap)]
            assert truncated == [False] * (cap - 1) + [True]  # Freeway never ends by itself this early
    finally:
        env.close()
        evaluation.close()


# ------------------------------------------------------------------ replay and network
def test_replay_holds_one_byte_per_cell_and_the_network_gets_float_channels_first(
    minatar: Any, make_cfg: Callable[..., DictConfig]
) -> None:
    parts = build(make_cfg("env=minatar", "env.game=seaquest", *TINY))
    try:
        buffer, net = parts.buffer, parts.module.q_net
        assert isinstance(net, MinAtarCNN) and net.features[0].in_channels == 10
        assert buffer.obs.dtype == torch.uint8 and tuple(buffer.obs.shape[2:]) == (10, 10, 10)
        assert buffer.obs[0, 0].numel() * buffer.obs.element_size() == 10 * 10 * 10  # one byte per cell
        seen: list[torch.Tensor] = []
        net.features[0].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
        # Acting and updates of the plain network take the hand-written conv (learn/fast/mlp_update.py): watch it too.
        stem = parts.module._mlp[0].stem if parts.module._mlp else None
        if stem is not None:
            forward = stem.forward
            stem.forward = lambda x: (seen.append(x), forward(x))[1]  # type: ignore[method-assign]
        parts.trainer.fit(parts.module)
        assert parts.trainer.global_step > 0 and seen
        assert all(x.dtype == torch.float32 and tuple(x.shape[1:]) == (10, 10, 10) for x in seen)
    finally:
        parts.close()


def test_minatar_cnn_is_the_papers_network() -> None:
    net = MinAtarCNN((4, 10, 10), num_actions=6)
    conv, fc, out = net.features[0], net.head[0], net.head[2]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (4, 16, (3, 3), (1, 1))
    assert (fc.in_features, fc.out_features, out.out_features) == (16 * 8 * 8, 128, 6)
    assert sum(p.numel() for p in net.parameters()) == (4 * 9 * 16 + 16) + (1024 * 128 + 128) + (128 * 6 + 6)
    assert net(torch.zeros(2, 4, 10, 10, dtype=torch.uint8)).shape == (2, 6)
    with pytest.raises(NetworkConfigError, match="env=minatar"):
        MinAtarCNN((4,), num_actions=2)


# ------------------------------------------------------------------ runs
@pytest.mark.parametrize("game", GAMES)
def test_smoke_run_per_game(minatar: Any, make_cfg: Callable[..., DictConfig], game: str) -> None:
    summary = run(make_cfg("env=minatar", f"env.game={game}", *TINY))
    assert summary["env_steps"] == 400 and summary["gradient_steps"] == 75
    assert math.isfinite(summary["eval/return_mean"])


SWITCHES = {
    "dueling": ("network.dueling=true",),
    "noisy": ("network.noisy=true",),
    "c51": ("algo=c51", "algo.loss=cross_entropy", "algo.v_min=-10", "algo.v_max=10"),  # the preset says huber
    "n_step": ("algo.n_step=5",),
    "double": ("algo.double=true",),
    "prioritized": ("buffer=prioritized",),
}


@pytest.mark.parametrize("switch", list(SWITCHES), ids=list(SWITCHES))
def test_family_switch_on_minatar_cnn(minatar: Any, make_cfg: Callable[..., DictConfig], switch: str) -> None:
    # On the paper's preset, so each run differs from plain DQN by the one switch (env=minatar's defaults already
    # set Double DQN and 3-step returns).
    cfg = make_cfg("experiment=minatar_paper", *TINY, "env_steps=200", *SWITCHES[switch])
    parts = build(cfg)
    try:
        net, module = parts.module.q_net, parts.module
        checks = {
            "dueling": isinstance(net.head, DuelingHead),
            "noisy": len(noisy_layers(net)) == 2 and module.noisy,  # the fully connected layers; conv stays plain
            "c51": module.num_atoms == 51,
            "n_step": parts.buffer.n_step == 5,
            "double": module.double,
            "prioritized": isinstance(parts.buffer, PrioritizedReplayBuffer),
        }
        assert checks[switch]
        parts.trainer.fit(parts.module)
        assert parts.trainer.global_step == 25  # (200 - 100 prefill) / train_freq 4
        assert parts.evaluator.final and math.isfinite(parts.evaluator.final["eval/return_mean"])
    finally:
        parts.close()


# ------------------------------------------------------------------ presets
def test_paper_preset_is_kenjyoung_dqn_py(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("experiment=minatar_paper")
    expected = {
        "env._target_": "dqnlab.envs.minatar.make_minatar_env",
        "env.minimal_action_set": False,
        "env.sticky_action_prob": 0.1,
        "network._target_": "dqnlab.learn.networks.MinAtarCNN",
        "optimizer._target_": "torch.optim.RMSprop",
        "optimizer.lr": 2.5e-4,
        "optimizer.alpha": 0.95,
        "optimizer.centered": True,
        "optimizer.eps": 0.01,
        "algo.loss": "huber",
        "algo.gamma": 0.99,
        "algo.double": False,
        "algo.n_step": 1,
        "algo.max_grad_norm": None,
        "algo.batch_size": 32,
        "buffer.capacity": 100_000,
        "collector.learning_starts": 5_000,
        "collector.train_freq": 1,
        "collector.gradient_steps": 1,
        "collector.epsilon_end": 0.1,
        "target.interval": 1_000,
        "target.tau": 1.0,
        "env_steps": 5_000_000,
    }
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    # Epsilon reaches 0.1 where dqn.py's does: 5,000 random steps + a 100k-step ramp, in env steps, so a
    # 1M-step reproduction run keeps it.
    assert cfg.collector.exploration_steps == 105_000
    validate_config(cfg)


def test_env_minatar_is_a_complete_run(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("env=minatar")
    assert cfg.env.game == "breakout" and cfg.network._target_ == "dqnlab.learn.networks.MinAtarCNN"
    assert cfg.collector.learning_starts >= cfg.algo.batch_size and cfg.buffer.capacity == 100_000
    validate_config(cfg)


@pytest.mark.slow
def test_a_minatar_run_exports_and_its_agent_file_plays(minatar: Any, tmp_path: Any) -> None:
    """The end-of-run summary points at evaluate.py and export.py: both must take a MinAtar run."""
    import json

    from tests.conftest import compose_cfg

    run(compose_cfg(["env=minatar", "env.game=breakout", "debug=smoke", "logger=[]", "eval.episodes=1"], tmp_path))
    exported = subprocess.run(
        [PYTHON, "scripts/export.py", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    agent = json.loads(exported.stdout.strip().splitlines()[-1])["agent_file"]
    played = subprocess.run(
        [PYTHON, "scripts/evaluate.py", agent, "episodes=1", "seed=3"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert played.returncode == 0, played.stderr[-2000:]
    assert len(json.loads(played.stdout.strip().splitlines()[-1])["returns"]) == 1


def test_the_long_image_run_hint_is_for_atari_frames_not_minatar_grids() -> None:
    from dqnlab.run.report import cpu_hint

    cfg = OmegaConf.create({"env_steps": 5_000_000})
    assert cpu_hint(cfg, (7, 10, 10), "cpu") is None
    assert "GPU" in (cpu_hint(cfg, (4, 84, 84), "cpu") or "")
    assert cpu_hint(cfg, (4, 84, 84), "cuda") is None
