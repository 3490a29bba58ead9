"""Every option of every config group composes and instantiates into working parts."""

from __future__ import annotations

import subprocess

import pytest
import torch

from dqnlab.train import build
from tests.conftest import PYTHON, ROOT

GROUPS = [
    "env",
    "network",
    "optimizer",
    "algo",
    "buffer",
    "collector",
    "target",
    "reset",
    "eval",
    "logger",
    "trainer",
    "checkpoint",
    "experiment",
    "hparams_search",
    "debug",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in options(g)]


def is_image_env(name: str) -> bool:
    text = (ROOT / "conf" / "env" / f"{name}.yaml").read_text()
    return "atari" in text.lower()


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_builds(make_cfg, group, option):
    overrides = [f"{group}={option}", "debug=smoke"] if group != "debug" else [f"debug={option}"]
    if group == "env" and option == "gym":
        overrides.append("env.id=MountainCar-v0")
    if group == "env" and option == "atari":
        overrides.append("env.game=pong")
    if group == "reset":
        overrides.append("reset.layers=[net.4]")  # CartPole's MLP; tests/test_reset.py resets a conv net's head
    if group == "logger" and option == "wandb":
        pytest.importorskip("wandb")
    if group == "network" and option == "minatar_cnn":
        overrides.append("env=minatar")  # its grids; tests/test_minatar.py runs it with every family switch
    image = (group == "env" and is_image_env(option)) or (group == "network" and option == "nature_cnn")
    if group == "experiment":
        cfg = make_cfg(*overrides)
        image = cfg.network._target_.endswith("NatureCNN")
    if image:
        pytest.importorskip("ale_py")
        if group != "env" and group != "experiment":
            overrides.append("env=pong")
        if group != "network":
            overrides.append("network=nature_cnn")
    cfg = make_cfg(*overrides)
    if cfg.env._target_ == "dqnlab.envs.minatar.make_minatar_env":
        pytest.importorskip("minatar")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert group == "trainer"  # composes; cannot build without a GPU
        return
    parts = build(cfg)
    try:
        q = parts.module(torch.as_tensor(parts.env.reset(seed=0)[0]))
        assert q.shape == (parts.env.num_envs, parts.env.single_action_space.n)
        assert parts.trainer.max_steps >= 1
    finally:
        parts.close()


def test_lunarlander_without_box2d_names_the_extra(tmp_path):
    # Box2D is hidden in the child process only (a None entry in sys.modules makes `import Box2D` fail).
    code = (
        "import runpy, sys; sys.modules['Box2D'] = None; "
        f"sys.argv = ['train.py', 'env=lunarlander', 'debug=smoke', 'hydra.run.dir={tmp_path}']; "
        "runpy.run_path('train.py', run_name='__main__')"
    )
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["error: env.id=LunarLander-v3 needs Box2D: pip install 'dqnlab[box2d]'"]


def test_an_env_kwarg_the_env_does_not_take_is_one_error_line_naming_what_it_takes(tmp_path):
    from dqnlab.envs.vector import make_vector_env

    proc = subprocess.run(
        [PYTHON, "train.py", "env=gym", "env.id=CartPole-v1", "+env.kwargs.bogus=1", "debug=smoke",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: env.kwargs.bogus: CartPole-v1 (CartPoleEnv) takes no argument 'bogus'; it takes render_mode, "
        "sutton_barto_reward. Drop +env.kwargs.bogus or use one of those"
    ]
    env = make_vector_env("CartPole-v1", kwargs={"sutton_barto_reward": True, "render_mode": None})  # real ones pass
    env.close()


def test_unknown_gym_id_says_how_to_find_one():
    from dqnlab.envs.vector import EnvConfigError, make_vector_env

    with pytest.raises(EnvConfigError, match=r"pprint_registry\(\).*env=<name>.*mountaincar"):
        make_vector_env("NoSuchEnv-v0")
    with pytest.raises(EnvConfigError, match="Did you mean MountainCar-v0"):
        make_vector_env("MountainCar-v9")
