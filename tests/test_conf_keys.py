"""A misspelled ``group.key=`` is refused before Hydra starts; no key a composed config holds ever is."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from omegaconf import DictConfig

from dqnlab.conf_keys import chosen_options, group_keys, key_of_another_option, unknown_group_key
from dqnlab.errors import EXIT_CONFIG_ERROR
from dqnlab.run.checks import GROUPS
from tests.conftest import CONF_DIR, PYTHON, ROOT, compose_cfg

ENVS = sorted(p.stem for p in (Path(CONF_DIR) / "env").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def _second_level_keys(cfg: DictConfig) -> list[str]:
    return [f"{g}.{k}" for g in GROUPS if isinstance(cfg.get(g), DictConfig) for k in cfg[g]]


@pytest.mark.parametrize("overrides", [[f"env={e}"] for e in ENVS] + [[f"experiment={x}"] for x in EXPERIMENTS])
def test_every_key_of_a_composed_config_is_accepted(tmp_path, overrides):
    # The check must be a superset of what Hydra accepts: a false "not a dqnlab setting" would block a real run.
    keys = _second_level_keys(compose_cfg(overrides, tmp_path))
    assert len(keys) > 40
    assert [k for k in keys if unknown_group_key(k, CONF_DIR, GROUPS)] == []


OPTIONS = [
    (group, p.stem)
    for group in GROUPS
    if group not in ("experiment", "debug", "hparams", "hparams_search")
    for p in sorted((Path(CONF_DIR) / group).glob("*.yaml"))
]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_key_of_a_chosen_option_is_accepted_for_it(tmp_path, group, option):
    # `env=breakout env.wrappers=...` is refused for breakout alone: no key the composed option has may be.
    cfg = compose_cfg([f"{group}={option}"], tmp_path)
    keys = [f"{group}.{k}" for k in cfg[group]] if isinstance(cfg.get(group), DictConfig) else []
    assert [k for k in keys if key_of_another_option(k, {group: option}, CONF_DIR)] == []


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_key_of_an_experiments_options_is_accepted(tmp_path, experiment):
    # experiment=atari100k picks env=atari (its `override /env`): env.wrappers is refused there, its own keys never.
    chosen = chosen_options({"experiment": experiment}, CONF_DIR)
    assert chosen["experiment"] == experiment
    keys = _second_level_keys(compose_cfg([f"experiment={experiment}"], tmp_path))
    assert [k for k in keys if key_of_another_option(k, chosen, CONF_DIR)] == []
    assert chosen_options({"experiment": experiment, "env": "gym"}, CONF_DIR)["env"] == "gym"  # the command line's


def test_keys_come_from_group_files_and_global_files(tmp_path):
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer" / "sgd.yaml").write_text("_target_: torch.optim.SGD\nlr: 0.1\n")
    (tmp_path / "experiment").mkdir()  # a global group: its top-level keys are the groups
    (tmp_path / "experiment" / "x.yaml").write_text("optimizer:\n  nesterov: true\nseed: 1\n")
    (tmp_path / "env").mkdir()  # a group file that declares itself global
    (tmp_path / "env" / "y.yaml").write_text("# @package _global_\noptimizer:\n  dampening: 0.5\n")
    assert group_keys(str(tmp_path), ("optimizer", "env", "experiment"))["optimizer"] == {
        "_target_",
        "lr",
        "nesterov",
        "dampening",
    }
    groups = ("optimizer", "env", "experiment")
    assert unknown_group_key("optimizer.nesterov", str(tmp_path), groups) is None
    assert "did you mean optimizer.lr?" in unknown_group_key("optimizer.lrr", str(tmp_path), groups)
    no_match = unknown_group_key("optimizer.zzz", str(tmp_path), groups)
    assert "the optimizer keys in conf/ are dampening, lr, nesterov" in no_match
    assert unknown_group_key("seed.x", str(tmp_path), groups) is None  # not a group: other checks cover it
    assert unknown_group_key("env.anything", str(tmp_path), groups) is None  # no file gives env a key: no opinion


NESTED_TYPOS = [
    # (command-line arguments, the did-you-mean it must name): each used to get Hydra's five-line hint, exit 1
    (["optimizer.lrr=1e-3"], "did you mean optimizer.lr?"),
    (["network.hiden_sizes=[64,64]"], "did you mean network.hidden_sizes?"),
    (["env=minatar", "env.gam=breakout"], "did you mean env.game?"),
    (["-m", "collector.train_frq=1,4"], "did you mean collector.train_freq?"),
    # A key of another option of the group: Hydra's hint `+env.wrappers` would only move the error to the factory.
    (["env=breakout", "env.wrappers=[]"], "env.wrappers is not a setting of env=breakout (conf/env/breakout.yaml)"),
    (["env=breakout", "env.max_episode_frame=100"], "did you mean env.max_episode_frames?"),
    (["experiment=atari100k", "env.wrappers=[]"], "env.wrappers is not a setting of env=atari (conf/env/atari.yaml)"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "hint"), NESTED_TYPOS, ids=[" ".join(a) for a, _ in NESTED_TYPOS])
def test_cli_refuses_a_misspelled_group_key_with_a_close_match(tmp_path, args, hint):
    proc = subprocess.run(
        [PYTHON, "train.py", *args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # the defaults, no smoke
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and hint in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_cli_leaves_a_users_own_config_dir_to_hydra(tmp_path):
    # With --config-dir the user's files may give a group keys dqnlab's conf/ does not: Hydra decides.
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer" / "sgd.yaml").write_text("_target_: torch.optim.SGD\n_partial_: true\nnesterov: false\n")
    proc = subprocess.run(
        [PYTHON, "train.py", "--config-dir", str(tmp_path), "optimizer=sgd", "optimizer.nesterov=true", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nesterov: true" in proc.stdout
