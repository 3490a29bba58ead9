"""Bring your own env: gymnasium wrappers on every copy, Discrete and Dict observations encoded, an env that breaks
the gymnasium API refused at start, and a video of an env that cannot render refused in one line.

The envs are real modules under ``tests/envs/`` (``broken_envs.py``, ``dict_corridor.py``, ``corridor.py``) and a
wrapper of your own (``my_wrappers.py``), imported as ``module:EnvId`` with ``tests/envs`` on the path, as a
researcher's would be; FrozenLake is gymnasium's own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from dqnlab.envs.encoding import Flatten, OneHot, describe_observations, encode_observations, unsupported_part
from dqnlab.envs.vector import EnvConfigError, make_vector_env, play_arguments
from dqnlab.envs.video import make_render_env
from dqnlab.errors import EXIT_CONFIG_ERROR, ConfigError
from dqnlab.share.agent_file import FORMAT, AgentFileError, agent_config, write_agent_file
from dqnlab.share.playback import evaluate_agent, load_agent, read_checkpoint
from dqnlab.train import build, run
from dqnlab.validate import validate_config
from tests.conftest import PYTHON, ROOT, compose_cfg

ENVS = ROOT / "tests" / "envs"
QUICK = ["debug=smoke", "env_steps=600", "progress_bar=false", "logger=[]"]
TIME_LIMIT_20 = "{_target_:gymnasium.wrappers.TimeLimit,max_episode_steps:20}"


@pytest.fixture(autouse=True)
def _own_modules_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tests/envs`` on the path, as ``PYTHONPATH=tests/envs`` puts it for a researcher's own modules."""
    monkeypatch.syspath_prepend(str(ENVS))


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environ.update(PYTHONPATH=str(ENVS), **env)
    return subprocess.run([PYTHON, *args], cwd=ROOT, capture_output=True, text=True, timeout=180, env=environ)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == EXIT_CONFIG_ERROR and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    return errors[0]


def _run_logging(out: Path, *overrides: str) -> tuple[dict, list[str]]:
    """A run in this process, and the lines it logged (its header among them)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("dqnlab.train")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        summary = run(compose_cfg([*QUICK, *overrides], out))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return summary, lines


@pytest.fixture(scope="module")
def frozenlake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """FrozenLake (Discrete(16) observations) trained with a library wrapper: its run dir and logged lines."""
    out = tmp_path_factory.mktemp("frozenlake")
    overrides = ["env=gym", "env.id=FrozenLake-v1", "+env.kwargs.is_slippery=false", f"env.wrappers=[{TIME_LIMIT_20}]"]
    summary, lines = _run_logging(out, *overrides)
    assert summary["env_steps"] == 600 and summary["eval/length_mean"] <= 20  # the evaluation env has the wrapper
    return out, lines


@pytest.fixture(scope="module")
def dict_corridor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    """A Dict-observation env of your own, trained: its run dir, summary and logged lines."""
    out = tmp_path_factory.mktemp("dict_corridor")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ENVS))
        summary, lines = _run_logging(out, "env=gym", "env.id=dict_corridor:DictCorridor-v0")
    return out, summary, lines


class _Spaced(gym.Env):
    """An env that is only its spaces: what the encoders read."""

    def __init__(self, space: gym.spaces.Space) -> None:
        self.observation_space, self.action_space = space, gym.spaces.Discrete(2)


def test_encodings_of_hand_built_spaces() -> None:
    one = OneHot(_Spaced(gym.spaces.Discrete(4, start=1)))
    assert one.observation_space == gym.spaces.Box(0.0, 1.0, (4,), np.float32)
    np.testing.assert_array_equal(one.observation(3), [0, 0, 1, 0])
    multi = OneHot(_Spaced(gym.spaces.MultiDiscrete([3, 2])))
    np.testing.assert_array_equal(multi.observation(np.array([2, 0])), [0, 0, 1, 1, 0])
    assert multi.observation(np.array([2, 0])).dtype == np.float32
    space = gym.spaces.Dict({"cell": gym.spaces.Discrete(3), "x": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)})
    flat = Flatten(_Spaced(space))
    np.testing.assert_array_equal(flat.observation({"cell": 1, "x": np.array([0.5, -0.5])}), [0, 1, 0, 0.5, -0.5])
    assert flat.observation_space.dtype == np.float32 and flat.observation_space.shape == (5,)
    tupled = encode_observations(_Spaced(gym.spaces.Tuple([gym.spaces.Discrete(2), gym.spaces.MultiBinary(3)])))
    assert tupled.observation_space.shape == (5,)
    assert describe_observations(tupled) == "observations: Tuple(Discrete(2), MultiBinary(3)) flattened (Discrete " \
        "parts one-hot) to 5 floats"  # fmt: skip
    box = _Spaced(gym.spaces.Box(0.0, 1.0, (3,)))
    assert encode_observations(box) is box and describe_observations(box) is None  # Box envs are left alone
    text = gym.spaces.Text(5)
    assert unsupported_part(text) is text and unsupported_part(gym.spaces.Dict({"t": text})) is text
    assert encode_observations(_Spaced(text)).observation_space is text  # left for check_spaces to refuse


def test_frozenlake_trains_one_hot_encoded_and_plays(frozenlake: tuple[Path, list[str]]) -> None:
    out, lines = frozenlake
    assert "observations: Discrete(16) one-hot encoded to 16 floats" in lines
    agent = load_agent(out / "checkpoints" / "last.ckpt")
    assert agent.network(torch.zeros(1, 16)).shape == (1, 4)  # 16 floats in, one Q-value per action out
    result = evaluate_agent(agent, episodes=3)
    assert result["episodes"] == 3 and result["length_mean"] <= 20  # the playback env has the wrapper too


def test_a_dict_observation_env_of_your_own_trains(dict_corridor: tuple[Path, dict, list[str]]) -> None:
    out, summary, lines = dict_corridor
    said = "observations: Dict('cell': Discrete(8), 'goal': Box(0.0, 1.0, (1,), float32)) flattened (Discrete parts "
    assert f"{said}one-hot) to 9 floats" in lines
    assert summary["env_steps"] == 600 and summary["eval/episodes"] == 2
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_wrappers_wrap_training_evaluation_video_and_playback_copies_in_order(make_cfg) -> None:
    wrappers = "env.wrappers=[{_target_:gymnasium.wrappers.TimeLimit,max_episode_steps:3},{_target_:my_wrappers.StepCost,cost:0.5}]"  # noqa: E501
    cfg = make_cfg("debug=smoke", "env=gym", "env.id=corridor:Corridor-v0", "env.num_envs=2", wrappers)
    parts = build(cfg)
    render = make_render_env(cfg.env)
    try:
        for copy in (parts.env.envs[0], parts.env.envs[1], parts.evaluator.env.envs[0], render.envs[0]):
            assert type(copy).__name__ == "StepCost" and copy.cost == 0.5  # the last entry is outermost
            assert isinstance(copy.env, gym.wrappers.TimeLimit) and copy.env._max_episode_steps == 3
        assert render.render_mode == "rgb_array"
    finally:
        render.close()
        parts.close()
    # vectorization=async pickles the wrappers to its worker processes.
    env = make_vector_env("corridor:Corridor-v0", num_envs=2, vectorization="async", wrappers=cfg.env.wrappers)
    try:
        env.reset(seed=0)
        rewards = [env.step(np.array([0, 0]))[1] for _ in range(3)]
        np.testing.assert_allclose(rewards, -0.51)  # the corridor's -0.01 and the wrapper's 0.5 per step
        assert env.step(np.array([0, 0]))[1].tolist() == [0.0, 0.0]  # TimeLimit ended step 3: an autoreset step
    finally:
        env.close()


def test_bad_wrapper_entries_are_named(make_cfg) -> None:
    def refused(wrappers: str) -> str:
        cfg = make_cfg("debug=smoke", "env=gym", "env.id=CartPole-v1", f"env.wrappers={wrappers}")
        with pytest.raises(ConfigError) as info:
            validate_config(cfg)
            build(cfg).close()
        assert len(str(info.value).splitlines()) == 1
        return str(info.value)

    typo = refused("[{_target_:gymnasium.wrappers.TimeLimt,max_episode_steps:3}]")
    assert typo.startswith("env.wrappers[0]._target_='gymnasium.wrappers.TimeLimt' cannot be imported")
    assert typo.endswith("did you mean gymnasium.wrappers.TimeLimit?")
    not_one = refused(
        "[{_target_:gymnasium.wrappers.TimeLimit,max_episode_steps:9},{_target_:gymnasium.spaces.Discrete}]"
    )
    assert not_one.startswith("env.wrappers[1]._target_='gymnasium.spaces.Discrete' is not a gymnasium wrapper")
    assert refused("[{_target_:collections.OrderedDict}]").startswith("env.wrappers[0]._target_='collections.Ordered")
    bad_value = refused("[{_target_:gymnasium.wrappers.TimeLimit,max_episode_steps:-1}]")
    assert bad_value.startswith("env.wrappers[0]: gymnasium.wrappers.TimeLimit(env, max_episode_steps=-1) failed")
    assert "did you mean env.wrappers[0].max_episode_steps?" in refused(
        "[{_target_:gymnasium.wrappers.TimeLimit,max_episod_steps:3}]"
    )
    assert refused("[{max_episode_steps:3}]").startswith("env.wrappers[0]={'max_episode_steps': 3} has no _target_")


def test_a_mistyped_wrapper_is_one_error_line_on_the_command_line(tmp_path: Path) -> None:
    proc = _cli("train.py", "env=gym", "env.id=CartPole-v1", "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}",
                "env.wrappers=[{_target_:gymnasium.wrappers.TimeLimt,max_episode_steps:3}]")  # fmt: skip
    line = _one_error_line(proc)
    assert "env.wrappers[0]" in line and "did you mean gymnasium.wrappers.TimeLimit?" in line
    assert not (tmp_path / "run").exists()


BROKEN = {
    "OutsideSpace-v0": "check 'observation in observation_space': the observation of reset() array [2.] lies outside",
    "WrongDtype-v0": "has dtype float64, but observation_space says float32",
    "WrongShape-v0": "has shape (2,), but observation_space says (1,)",
    "FourTuple-v0": "check 'step returns (obs, reward, terminated, truncated, info)': step() returned 4 values",
    "NoInfoReset-v0": "check 'reset returns (obs, info)'",
    "IntTerminated-v0": "check 'terminated is a bool': step() returned terminated as int 0, not a bool",
}


def test_an_env_of_your_own_is_checked_under_a_preset_that_skips_the_check(tmp_path: Path) -> None:
    # env=cartpole sets check_api: false (gymnasium's own CartPole); a module:EnvId of yours is checked anyway.
    with pytest.raises(EnvConfigError, match=r"env\.id=broken_envs:FourTuple-v0 breaks the gymnasium API"):
        run(compose_cfg([*QUICK, "env=cartpole", "env.id=broken_envs:FourTuple-v0"], tmp_path / "run"))


@pytest.mark.parametrize(("env_id", "says"), BROKEN.items(), ids=list(BROKEN))
def test_an_env_that_breaks_the_api_is_refused_at_start(env_id: str, says: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(EnvConfigError) as info:
        run(compose_cfg([*QUICK, "env=gym", f"env.id=broken_envs:{env_id}"], out))
    message = str(info.value)
    assert message.startswith(f"env.id=broken_envs:{env_id} breaks the gymnasium API") and says in message
    assert message.endswith("or skip this check: env.check_api=false") and len(message.splitlines()) == 1
    assert not out.exists()  # a run that cannot start leaves no run dir


def test_the_api_check_sees_the_env_through_its_wrappers(tmp_path: Path) -> None:
    """A wrapper of yours that makes the env keep the API (a float64 observation cast to its space's float32) lets
    it train; a wrapper that does not gets the env's own broken rule named."""
    dtype = ["env=gym", "env.id=broken_envs:WrongDtype-v0"]
    summary = run(compose_cfg([*QUICK, *dtype, "env.wrappers=[{_target_:my_wrappers.Float32}]"], tmp_path / "a"))
    assert summary["env_steps"] == 600
    with pytest.raises(EnvConfigError, match=r"^env\.id=broken_envs:WrongDtype-v0 breaks .* float64, but obs"):
        run(compose_cfg([*QUICK, *dtype, "env.wrappers=[{_target_:my_wrappers.StepCost}]"], tmp_path / "b"))
    # The message's other way out holds for an env of yours too: env.check_api=false skips the check.
    assert run(compose_cfg([*QUICK, *dtype, "env.check_api=false"], tmp_path / "c"))["env_steps"] == 600
    with pytest.raises(EnvConfigError, match=r"env\.check_api='yes' is not known: use true, false or auto"):
        run(compose_cfg([*QUICK, *dtype, "env.check_api=yes"], tmp_path / "d"))


def test_a_broken_env_is_one_error_line_and_no_run_dir_on_the_command_line(tmp_path: Path) -> None:
    proc = _cli("train.py", "env=gym", "env.id=broken_envs:FourTuple-v0", "debug=smoke",
                f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert "breaks the gymnasium API, check 'step returns" in _one_error_line(proc)
    assert not (tmp_path / "run").exists()


def test_unsupported_observations_and_encoding_off_say_what_to_do(make_cfg) -> None:
    def refused(*overrides: str) -> str:
        with pytest.raises(EnvConfigError) as info:
            build(make_cfg("debug=smoke", "env=gym", *overrides)).close()
        return str(info.value)

    text = refused("env.id=dict_corridor:TextCorridor-v0")
    assert "has observations of type Text(8, 8, charset=.AG) which dqnlab cannot encode" in text
    assert "ObservationWrapper of yours in env.wrappers" in text
    off = refused("env.id=FrozenLake-v1", "env.encode_observations=none")
    assert "Discrete(16) and env.encode_observations=none" in off and "drop the override" in off
    with pytest.raises(ConfigError, match=r"env.encode_observations='onehot' is not known: use auto"):
        validate_config(make_cfg("debug=smoke", "env=gym", "env.id=FrozenLake-v1", "env.encode_observations=onehot"))


def test_videos_of_an_env_that_cannot_render_are_refused_in_one_line(dict_corridor, make_cfg, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(
        EnvConfigError, match=r"cannot be filmed: its env declares render_modes \[\].*eval\.video=false"
    ):
        run(compose_cfg([*QUICK, "env=gym", "env.id=dict_corridor:DictCorridor-v0", "eval.video=true"], out))
    assert not out.exists()  # refused before training, not at the first evaluation
    ckpt = dict_corridor[0] / "checkpoints" / "last.ckpt"
    proc = _cli("scripts/evaluate.py", str(ckpt), "video=true", "env.id=dict_corridor:DictCorridor-v0")
    line = _one_error_line(proc)
    assert "env.id=dict_corridor:DictCorridor-v0 cannot be filmed" in line and "set video=false" in line


def test_a_file_naming_a_wrapper_module_plays_only_when_the_command_line_allows_it(frozenlake, tmp_path) -> None:
    cfg, weights, env_steps = read_checkpoint(frozenlake[0] / "checkpoints" / "last.ckpt")
    config = OmegaConf.to_container(cfg, resolve=True)
    config["env"]["wrappers"].append({"_target_": "my_wrappers.StepCost", "cost": 0.5})
    agent = write_agent_file(tmp_path / "agent.safetensors", weights, agent_config(config), env_steps)
    marker = tmp_path / "imported"  # my_wrappers touches it when imported
    line = _one_error_line(_cli("scripts/evaluate.py", str(agent), "episodes=2", MY_WRAPPERS_IMPORTED=str(marker)))
    assert "env.wrappers[1]._target_='my_wrappers.StepCost' names module 'my_wrappers'" in line
    assert "add allow_module=my_wrappers" in line and not marker.exists()
    played = _cli("scripts/evaluate.py", str(agent), "episodes=2", "allow_module=my_wrappers",
                  MY_WRAPPERS_IMPORTED=str(marker))  # fmt: skip
    assert played.returncode == 0, played.stderr[-3000:]
    result = json.loads(played.stdout.splitlines()[-1])
    assert marker.exists() and result["return_mean"] <= 1.0 - 0.5 * result["length_mean"] + 1e-6  # it paid the cost
    assert play_arguments(OmegaConf.create(config["env"])) == ("allow_module=my_wrappers",)  # the printed command


@pytest.mark.parametrize(
    ("wrapper", "says"),
    [
        ({"_target_": "os.system", "_args_": ["touch MARKER"]}, "names module 'os', which dqnlab imports only when"),
        ({"_target_": "gymnasium.wrappers.RecordVideo", "video_folder": "MARKER"}, "is not a wrapper a file may name"),
        ({"_target_": "gymnasium.spaces.utils.flatten"}, "is not a wrapper a file may name"),
        ({"_target_": "gymnasium.wrappers.TimeLimit", "x": {"_target_": "os.system"}}, "is not allowed"),
    ],
    ids=["os_system", "record_video", "gymnasium_function", "nested"],
)
def test_a_file_cannot_make_playback_build_other_wrappers(frozenlake, tmp_path, wrapper, says) -> None:
    cfg, weights, _ = read_checkpoint(frozenlake[0] / "checkpoints" / "last.ckpt")
    config = agent_config(OmegaConf.to_container(cfg, resolve=True))
    marker = tmp_path / "marker"
    config["env"]["wrappers"] = [json.loads(json.dumps(wrapper).replace("MARKER", str(marker)))]
    path = tmp_path / "evil.safetensors"
    tensors = {k: v.clone().contiguous() for k, v in weights.items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "env_steps": "1", "config": json.dumps(config)})
    with pytest.raises(AgentFileError, match=says):
        load_agent(path, allow_modules=("my_wrappers",))
    assert not marker.exists()
