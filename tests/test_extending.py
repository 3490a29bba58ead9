"""A change to the algorithm is honored on every path: a DQNModule subclass that redefines an extension point
(the TD loss, the Q-values, the forward pass) runs through autograd, never the hand-written MLP update."""

from __future__ import annotations

import json
import logging
import subprocess
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from dqnlab.learn.module import EXTENSION_POINTS, DQNModule
from dqnlab.learn.networks import MLP
from dqnlab.run.ckpt_file import peek_checkpoint
from dqnlab.train import build, run
from tests.conftest import PYTHON, ROOT, compose_cfg
from tests.custom_algos import ZeroLossDQN


def _module(cls: type[DQNModule] = DQNModule, **kwargs: object) -> DQNModule:
    return cls(MLP((4,), 2, hidden_sizes=[16, 16]), partial(torch.optim.Adam, lr=1e-3), **kwargs)


def test_the_hand_written_update_steps_aside_for_a_subclass_or_the_knob() -> None:
    class OwnQValues(DQNModule):
        def q_values(self, out: torch.Tensor) -> torch.Tensor:
            return out * 2.0

    assert _module().gradients == "hand-written" and _module().overridden == []
    assert _module(ZeroLossDQN).gradients == "autograd" and _module(ZeroLossDQN).overridden == ["td_loss"]
    assert _module(OwnQValues).overridden == ["q_values"] and _module(OwnQValues).gradients == "autograd"
    assert _module(fast_update=False).gradients == "autograd"
    assert set(EXTENSION_POINTS) == {"td_loss", "q_values", "forward"}


@pytest.mark.slow
def test_a_zero_loss_subclass_leaves_the_network_as_it_was(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The default run (CartPole, where the hand-written MLP update is on) with a subclass whose TD loss is zero:
    autograd runs it, and after its updates the network is the one it started with, to the bit; the hand-written
    update would have changed it. The same command without the subclass learns CartPole:
    tests/test_training.py::test_default_config_learns_cartpole."""
    caplog.set_level(logging.INFO, logger="dqnlab.train")
    zero = ["progress_bar=false", "algo._target_=tests.custom_algos.ZeroLossDQN", "env_steps=4000"]
    cfg = compose_cfg(zero, tmp_path / "start")
    pl.seed_everything(cfg.seed, verbose=False)  # as run() seeds before it builds: the run's initial network
    parts = build(cfg)
    start = {k: v.clone() for k, v in parts.module.q_net.state_dict().items()}
    parts.close()
    summary = run(compose_cfg(zero, tmp_path / "zero"))
    assert "update: autograd: ZeroLossDQN redefines td_loss" in caplog.text
    assert summary["update_gradients"] == "autograd" and summary["gradient_steps"] >= 500
    saved = torch.load(tmp_path / "zero" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.equal(saved["state_dict"][f"q_net.{k}"], v) for k, v in start.items())


@pytest.mark.parametrize("async_envs", [False, True])
def test_an_exploration_policy_of_your_own_collects_on_every_path(make_cfg, async_envs: bool) -> None:
    """``collector._target_`` with a redefined ``act``: the prefill and the training steps, synchronous or
    overlapped, all take its actions (CartPole: pushing right only)."""
    cfg = make_cfg("debug=smoke", "collector._target_=tests.custom_algos.AlwaysRightStepper",
                   f"collector.async_envs={str(async_envs).lower()}", "logger=[]", "~checkpoint")  # fmt: skip
    parts = build(cfg)
    try:
        parts.trainer.fit(parts.module)
        filled = len(parts.buffer) // parts.collector.num_envs
        assert filled >= 90 and parts.buffer.actions[:filled].eq(1).all()
    finally:
        parts.close()


def test_a_run_with_an_exploration_of_your_own_resumes_where_it_stood(tmp_path: Path) -> None:
    """A subclass's collector state sits where every checkpoint keeps it: the resume starts at the run's env step
    and keeps its metrics rows (under the subclass's class name, the resume started at env step 0)."""
    mine = ["debug=smoke", "collector._target_=tests.custom_algos.AlwaysRightStepper", "progress_bar=false"]
    first = run(compose_cfg(mine, tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert peek_checkpoint(last)["env_steps"] == first["env_steps"] == 400
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    more = run(compose_cfg([*mine, "ckpt_path=last", "env_steps=800"], tmp_path))
    assert more["env_steps"] == 800 and more["segment_env_steps"] == 400
    assert (tmp_path / "metrics.csv").read_text().splitlines()[: len(rows)] == rows


@pytest.mark.slow
def test_your_own_env_module_trains_plays_and_exports(tmp_path: Path) -> None:
    import os
    import shlex

    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "envs")}  # tests/envs/corridor.py, a module of yours

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    proc = run("train.py", "env=gym", "env.id=corridor:Corridor-v0", "env_steps=2500", "progress_bar=false",
               f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in (proc.stdout + proc.stderr).splitlines() if "# play it" in x]
    words = shlex.split(line.split("#")[0].replace("next:", ""))
    assert words[-1] == "env.id=corridor:Corridor-v0"  # the printed command names the module to import
    played = run(*words[1:])  # as printed
    assert played.returncode == 0 and json.loads(played.stdout.splitlines()[-1])["episodes"] == 20, played.stderr
    # Without the override the file's module is not imported: one line says which module and how to allow it.
    # (Exporting and playing the agent file with it: docs/extending.md's "Your own env", run by
    # tests/test_extending_docs.py.)
    refused = run("scripts/evaluate.py", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "episodes=1")
    errors = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "names module 'corridor'" in errors[0]
    assert "add env.id=corridor:Corridor-v0" in errors[0]


def test_a_typo_in_a_key_of_your_subclass_is_named(tmp_path: Path) -> None:
    """``MunchausenDQN(*args, tau, alpha, l0, **kwargs)`` hands the rest to ``DQNModule``: its keys and the base's
    are known, so a misspelled one is one line with the close match, not a TypeError deep in Hydra."""
    from dqnlab.errors import ConfigError
    from dqnlab.validate import validate_config

    mine = ["algo._target_=examples.my_algos.MunchausenDQN", "+algo.tau=0.05", "algo.batch_size=64"]
    validate_config(compose_cfg(mine, tmp_path))
    with pytest.raises(ConfigError, match=r"algo\.tua is not a setting of examples\.my_algos\.MunchausenDQN: did you"):
        validate_config(compose_cfg([*mine, "+algo.tua=0.1"], tmp_path))
    with pytest.raises(ConfigError, match=r"algo\.batch_sise is not a setting .*did you mean algo\.batch_size\?"):
        validate_config(compose_cfg([*mine, "+algo.batch_sise=32"], tmp_path))
