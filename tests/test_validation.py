"""Bad input fails fast, with one message that names the key and the fix (docs/robustness.md).

The CLI cases run the real ``python train.py`` in a subprocess (about 5 s each, mostly imports) and check the
exit status, the message and that no traceback is printed. The rules themselves are covered in-process on
composed configs, which costs milliseconds per case.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import DictConfig, open_dict

from dqnlab.data.memory import BufferTooLargeError, available_memory_bytes
from dqnlab.errors import (
    EXIT_CONFIG_ERROR,
    ConfigError,
    MissingExtraError,
    find_user_error,
    format_error,
)
from dqnlab.run.checks import TOP_LEVEL_KEYS, check_writable_dir
from dqnlab.run.ckpt_file import LIGHTNING_CKPT_KEYS, check_checkpoint
from dqnlab.validate import KNOBS, validate_config
from tests.conftest import CONF_DIR, PYTHON, ROOT, compose_cfg

try:
    import ale_py  # noqa: F401

    HAS_ALE = True
except ImportError:
    HAS_ALE = False
needs_ale = pytest.mark.skipif(not HAS_ALE, reason="needs the atari extra (ale-py)")

# What the CLI cases substitute into their overrides.
A_FILE = "{tmp}/a_file"  # a regular file the test creates: nothing can be created below it


def _atari_capacity_beyond_memory() -> int:
    """A capacity whose 84x84 frames need about twice the free host memory (but tiny non-frame storage)."""
    free = available_memory_bytes(torch.device("cpu")) or 2**40
    return int(2 * free / (84 * 84))


class Case(NamedTuple):
    overrides: list[str]
    status: int  # expected exit status; 1 is Hydra's own for composition errors
    expect: list[str]  # substrings of stderr: the offending key(s) and the fix


CLI_CASES: dict[str, Case] = {
    # A misspelled group key is refused before Hydra starts (dqnlab.conf_keys), not with Hydra's `+key=` hint.
    "misspelled_override": Case(
        ["collector.learnin_starts=3"], 2, ["collector.learnin_starts", "did you mean collector.learning_starts"]
    ),
    # A misspelled group option: dqnlab's one line with the close match, before Hydra composes anything.
    "unknown_group_option": Case(
        ["network=nature_cnnn"], 2, ["network has no option", "did you mean network=nature_cnn"]
    ),
    # A misspelled key Hydra lets through (`+key=`, or a typo in an experiment file): the target does not take it.
    "misspelled_appended_key": Case(
        ["+collector.learnin_starts=3"], 2, ["collector.learnin_starts", "did you mean collector.learning_starts"]
    ),
    "out_of_range": Case(
        [
            "optimizer.lr=-1",
            "algo.gamma=1.5",
            "collector.epsilon_end=2",
            "collector.exploration_fraction=-0.1",
            "algo.n_step=0",
        ],
        2,
        [
            "optimizer.lr=-1",
            "> 0",
            "algo.gamma=1.5",
            "[0, 1]",
            "collector.epsilon_end=2",
            "collector.exploration_fraction=-0.1",
            "algo.n_step=0",
            "e.g. optimizer.lr=1e-3",
        ],
    ),
    "non_positive_intervals": Case(
        [
            "target.interval=0",
            "collector.train_freq=0",
            "collector.gradient_steps=0",
            "collector.log_every=0",
            "eval.every=-1",
        ],
        2,
        [
            "target.interval=0",
            "collector.train_freq=0",
            "collector.gradient_steps=0",
            "collector.log_every=0",
            "eval.every=-1",
            ">= 1",
        ],
    ),
    "inconsistent_sizes": Case(
        ["algo.batch_size=64", "buffer.capacity=32", "collector.learning_starts=8", "env_steps=8"],
        2,
        [
            "algo.batch_size=64 is larger than buffer.capacity=32",
            "raise collector.learning_starts to at least 64",
            "env_steps=8",
            "raise env_steps",
        ],
    ),
    "unknown_env_id": Case(["env=gym", "env.id=CartPol-v1"], 2, ["env.id='CartPol-v1'", "CartPole-v1"]),
    "continuous_actions": Case(["env=gym", "env.id=Pendulum-v1"], 2, ["env.id=Pendulum-v1", "Discrete"]),
    "cnn_on_vectors": Case(["network=nature_cnn"], 2, ["network=nature_cnn", "use network=mlp"]),
    "huge_buffer": Case(
        ["buffer.capacity=100_000_000_000"], 2, ["buffer.capacity=100_000_000_000", "GiB", "lower buffer.capacity"]
    ),
    "unwritable_output_dir": Case([f"hydra.run.dir={A_FILE}/run"], 2, ["hydra.run.dir=", "a directory you can write"]),
    "missing_checkpoint": Case(["ckpt_path=/nonexistent.ckpt"], 2, ["ckpt_path=/nonexistent.ckpt", "does not exist"]),
}
ATARI_CASES: dict[str, Case] = {
    "unknown_ale_game": Case(["env=atari", "env.game=breakoutt"], 2, ["env.game='breakoutt'", "breakout"]),
    "mlp_on_images": Case(["env=breakout", "network=mlp"], 2, ["network=mlp", "use network=nature_cnn"]),
    "atari_buffer_beyond_memory": Case(
        ["env=breakout", "network=nature_cnn", f"buffer.capacity={_atari_capacity_beyond_memory()}"],
        2,
        ["buffer.capacity=", "GiB", "lower buffer.capacity to at most"],
    ),
}
ALL_CASES = [pytest.param(n, c, id=n) for n, c in CLI_CASES.items()] + [
    pytest.param(n, c, id=n, marks=needs_ale) for n, c in ATARI_CASES.items()
]


def _run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=180, env=full_env)


def _train(overrides: list[str], tmp_path: Path, **kw: dict[str, str]) -> subprocess.CompletedProcess:
    (tmp_path / "a_file").write_text("not a directory\n")
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        overrides.append(f"hydra.run.dir={tmp_path / 'run'}")
    return _run_cli([PYTHON, "train.py", "debug=smoke", *overrides], **kw)


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.mark.slow
@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_cli_rejects_bad_input_cleanly(tmp_path, name, case):
    proc = _train(case.overrides, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == case.status, out
    for text in case.expect:
        assert text in proc.stderr, f"{text!r} not in:\n{proc.stderr}"
    assert "Traceback" not in out
    if case.status == EXIT_CONFIG_ERROR:
        # One message, even when it lists several problems.
        assert len(re.findall(r"^error: ", proc.stderr, flags=re.MULTILINE)) == 1, proc.stderr


@pytest.mark.parametrize("override", ["collector.learning_starts=-1", "optimizer.lrr=1e-3", "network=nature_cnnn"])
def test_a_config_error_comes_before_torch_is_imported(tmp_path, override):
    """Range, key and option errors need neither torch nor Lightning: the line comes in well under a second."""
    proc = _run_cli([PYTHON, "-X", "importtime", "train.py", override, f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == EXIT_CONFIG_ERROR and f"error: {override}" in proc.stderr, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "hydra" in imported and not imported & {"torch", "pytorch_lightning", "gymnasium"}


@pytest.mark.slow
def test_cli_missing_atari_extra_says_what_to_install(tmp_path):
    # As if ale-py were not installed: a None entry in sys.modules makes `import ale_py` fail.
    code = (
        "import runpy, sys; sys.modules['ale_py'] = None; "
        f"sys.argv = ['train.py', 'env=breakout', 'debug=smoke', 'hydra.run.dir={tmp_path / 'run'}']; "
        "runpy.run_path('train.py', run_name='__main__')"
    )
    proc = _run_cli([PYTHON, "-c", code])
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr
    assert "pip install 'dqnlab[atari]'" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_cli_full_error_shows_the_traceback(tmp_path):
    proc = _train(["algo.gamma=2"], tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "ConfigError: algo.gamma=2" in proc.stderr


@pytest.mark.slow
def test_cli_multirun_reports_every_bad_job_and_fails(tmp_path):
    # Each job validates itself; the sweep goes on (a sweeper must see failed trials, not a dead process).
    proc = _run_cli(
        [PYTHON, "train.py", "-m", "debug=smoke", "algo.gamma=2,3", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    )
    assert proc.returncode != 0
    assert "error: algo.gamma=2 is out of range" in proc.stderr
    assert "error: algo.gamma=3 is out of range" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------- the rules
def test_shipped_configs_pass():
    # Every option of every group, in one Hydra context (composing is the slow part); experiments at full size.
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for group in ("env", "network", "optimizer", "algo", "buffer", "collector", "target", "eval", "experiment"):
            for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
                overrides = [f"{group}={option}", "trainer=cpu"]
                if (group, option) == ("env", "gym"):
                    overrides.append("env.id=MountainCar-v0")
                if (group, option) == ("env", "atari"):
                    overrides.append("env.game=pong")
                validate_config(compose(config_name="train", overrides=[*overrides, "debug=smoke"]))
                if group == "experiment":
                    validate_config(compose(config_name="train", overrides=overrides))


def _bad_values(knob) -> list[object]:
    bad: list[object] = ["abc"]
    if knob.low is not None:
        bad.append(knob.low if knob.low_open else knob.low - 1)
    if knob.high is not None:
        bad.append(knob.high + 1)
    if knob.kind is int:
        bad.append(2.5)
    return bad


KNOB_CASES = [(k, v) for k in KNOBS for v in _bad_values(k)]


@pytest.fixture(scope="module")
def smoke_cfg() -> DictConfig:
    # augment=drq: its knobs exist (the image check needs the env, which validate_config does not build); reset too
    overrides = ["debug=smoke", "augment=drq", "reset=last_layers"]
    return compose_cfg(overrides, ROOT / "outputs" / "unused")  # validate_config never writes


@pytest.mark.parametrize(("knob", "value"), KNOB_CASES, ids=[f"{k.key}={v}" for k, v in KNOB_CASES])
def test_every_knob_rejects_out_of_range_values(smoke_cfg, knob, value):
    cfg = copy.deepcopy(smoke_cfg)
    with open_dict(cfg):
        group, _, name = knob.key.rpartition(".")
        (cfg[group] if group else cfg)[name] = value
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg)
    message = str(exc.value)
    assert f"{knob.key}={value!r}" in message or f"{knob.key}={value}" in message
    assert f"{knob.key}={knob.example}" in message  # the fix: a value that works


def test_float_for_a_count_suggests_the_integer(make_cfg):
    with pytest.raises(ConfigError, match=r"buffer\.capacity=1_000_000"):
        validate_config(make_cfg("debug=smoke", "buffer.capacity=1e6"))


def test_required_value_left_out(make_cfg):
    with pytest.raises(ConfigError, match=r"env\.id is required .*add env\.id="):
        validate_config(make_cfg("env=gym"))


def test_typo_in_a_merged_yaml_node_is_caught(make_cfg):
    cfg = make_cfg("debug=smoke")
    with open_dict(cfg):
        cfg.algo.gama = 0.9  # what a typo in an experiment file produces: Hydra merges it silently
    with pytest.raises(ConfigError, match=r"algo\.gama is not a setting of .*did you mean algo\.gamma\?"):
        validate_config(cfg)


TOP_LEVEL_TYPOS = [
    # (override, the did-you-mean it must name): each used to train the default experiment and exit 0
    ("+optimzer.lr=1e-3", "did you mean optimizer.lr?"),
    ("+sed=3", "did you mean seed?"),
    ("+colector.train_freq=4", "did you mean collector.train_freq?"),
    ("+envs=pong", "did you mean env?"),
    # ... and without `+`, where Hydra's own hint would have led to the line above
    ("optimzer.lr=1e-3", "did you mean optimizer.lr?"),
    ("envs=pong", "did you mean env?"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("override", "hint"), TOP_LEVEL_TYPOS, ids=[o for o, _ in TOP_LEVEL_TYPOS])
def test_cli_refuses_an_unknown_top_level_key_with_a_close_match(tmp_path, override, hint):
    proc = _run_cli([PYTHON, "train.py", override, f"hydra.run.dir={tmp_path / 'run'}"])  # the defaults, no smoke
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and hint in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_the_top_level_keys_are_those_of_conf(tmp_path):
    import yaml

    train = yaml.safe_load((Path(CONF_DIR) / "train.yaml").read_text())
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    assert set(TOP_LEVEL_KEYS) == (set(train) - {"defaults"}) | groups


def test_unknown_choice(make_cfg):
    with pytest.raises(ConfigError, match=r"algo\.loss='l1' is not known: use one of mse, huber"):
        validate_config(make_cfg("debug=smoke", "algo.loss=l1"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_gpu_trainer_without_a_gpu(make_cfg):
    with pytest.raises(ConfigError, match=r"trainer\.accelerator=gpu .*use trainer=cpu"):
        validate_config(make_cfg("debug=smoke", "trainer=gpu"))


def test_all_problems_in_one_message(make_cfg):
    with pytest.raises(ConfigError) as exc:
        validate_config(make_cfg("debug=smoke", "algo.gamma=2", "target.tau=0"))
    message = format_error(exc.value)
    assert message.splitlines()[0] == "error: 2 problems with the config:"
    assert "algo.gamma=2" in message and "target.tau=0" in message


def _lightning_ckpt(**overrides: object) -> dict:
    ckpt: dict = {k: 0 for k in LIGHTNING_CKPT_KEYS}
    ckpt.update(state_dict={"q_net.net.0.weight": torch.zeros(2, 2)}, optimizer_states=[])
    ckpt.update(overrides)
    return ckpt


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (None, "does not exist"),
        ("dir", "is not a file"),
        (b"not a checkpoint", "is not a torch checkpoint"),
        ([1, 2], "holds a list"),
        ({"state_dict": {}}, "is not a Lightning training checkpoint"),
        (_lightning_ckpt(state_dict={"layer.weight": torch.zeros(1)}), "not of a dqnlab DQN"),
        (_lightning_ckpt(), None),
    ],
    ids=["missing", "directory", "garbage", "not_a_dict", "not_lightning", "not_dqnlab", "valid"],
)
def test_checkpoint_path(tmp_path, content, expect):
    path = tmp_path / "run.ckpt"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    problems = check_checkpoint(str(path))
    if expect is None:
        assert problems == []
    else:
        assert len(problems) == 1 and f"ckpt_path={path}" in problems[0] and expect in problems[0]


def test_lightning_checkpoint_aliases_pass_through():
    assert check_checkpoint("last") == []


def test_unwritable_directory(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"paths\.output_dir=.*a directory you can write"):
        check_writable_dir(tmp_path / "file" / "run", "paths.output_dir")
    check_writable_dir(tmp_path / "new" / "run", "paths.output_dir")
    assert (tmp_path / "new" / "run").is_dir()


# ---------------------------------------------------------------------------------------------- the errors
def test_existing_errors_are_config_errors():
    from dqnlab.envs.vector import EnvConfigError
    from dqnlab.learn.networks import NetworkConfigError

    assert issubclass(EnvConfigError, ConfigError) and issubclass(NetworkConfigError, ConfigError)
    assert issubclass(BufferTooLargeError, ConfigError) and issubclass(BufferTooLargeError, MemoryError)
    assert issubclass(MissingExtraError, ConfigError) and issubclass(MissingExtraError, ImportError)


def test_config_error_found_behind_hydra_instantiate():
    cause = ConfigError("buffer.capacity=1 is too small")
    try:
        raise InstantiationException("Error in call to target 'dqnlab.data.replay.ReplayBuffer'") from cause
    except InstantiationException as wrapped:
        assert find_user_error(wrapped) is cause
    # An error raised while handling a config error is a different failure: not hidden behind the first.
    try:
        try:
            raise ConfigError("first")
        except ConfigError:
            raise RuntimeError("cleanup failed") from None
    except RuntimeError as other:
        assert find_user_error(other) is None


def test_an_unexpected_error_leaves_its_traceback_in_train_log(tmp_path):
    import logging

    from dqnlab.errors import exit_on_config_error

    handler = logging.FileHandler(tmp_path / "train.log")  # what Hydra's job logging attaches to the root logger
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(RuntimeError, match="a bug"), exit_on_config_error():
            raise RuntimeError("a bug")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    log = (tmp_path / "train.log").read_text()
    assert "the run failed" in log and "Traceback (most recent call last)" in log and "RuntimeError: a bug" in log
