"""eval.keep_best: the network of the best periodic evaluation, when it beats the final one, is kept in its own file
(``best.ckpt``); ``last.ckpt`` stays the exact final training state, and every command says which one it plays."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from dqnlab.errors import ConfigError
from dqnlab.train import build, run
from tests.conftest import ROOT, compose_cfg


def _set_policy(module, balance: bool) -> None:
    """Hand-set the MLP: push the cart toward the falling pole (``balance``), or always push left."""
    layers = [m for m in module.q_net.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
            layer.bias.zero_()
        if balance:  # Q(right) - Q(left) = theta + 0.5 * theta_dot, through two ReLU units and a pass-through
            w = torch.tensor([0.0, 0.0, 1.0, 0.5])
            layers[0].weight[0], layers[0].weight[1] = w, -w
            layers[1].weight[0, 0] = layers[1].weight[1, 1] = 1.0
            layers[2].weight[1, 0] = layers[2].weight[0, 1] = 1.0
        else:
            layers[2].bias[0] = 1.0


def test_a_worse_final_network_leaves_the_best_evaluated_one_kept_beside_it(make_cfg):
    parts = build(make_cfg("debug=smoke", "eval.keep_best=true", "eval.episodes=4", "~checkpoint", "logger=[]"))
    try:
        ev, module = parts.evaluator, parts.module
        _set_policy(module, balance=True)
        trainer = parts.trainer
        # One periodic evaluation of the balancing network, as on_train_batch_end runs it (global_step 0 < max).
        ev._next_eval = 0
        ev.on_train_batch_end(trainer, module)
        best = ev.best
        assert best is not None and best["return_mean"] > 30
        kept = {k: v.clone() for k, v in module.q_net.state_dict().items()}
        _set_policy(module, balance=False)  # the "final" network: falls over in ~10 steps
        ev.on_train_end(trainer, module)
        final = ev.final
        assert final["eval/last_return_mean"] < 15
        assert final["eval/best_return_mean"] == best["return_mean"]
        assert final["eval/return_mean"] > 30  # new episodes, played by the kept network
        # The kept network goes to best.ckpt; the online network stays the final one (last.ckpt is exact).
        for k, v in ev.kept["state"].items():
            assert torch.equal(v, kept[k]), k
        assert ev.kept["env_steps"] == best["env_steps"] and ev.kept["return_mean"] == best["return_mean"]
        final_layers = [m for m in module.q_net.modules() if isinstance(m, torch.nn.Linear)]
        assert final_layers[2].bias[0] == 1.0 and final_layers[0].weight.abs().sum() == 0  # the always-left net
        # A better final network stays: the balancing one again, against a worse kept one.
        ev.best = {**best, "return_mean": 5.0}
        _set_policy(module, balance=True)
        ev.on_train_end(trainer, module)
        assert ev.final["eval/return_mean"] == ev.final["eval/last_return_mean"] > 30
        # ... and is the best one: "best" is the kept network's score, never below the last one's.
        assert ev.final["eval/best_return_mean"] == ev.final["eval/last_return_mean"]
        assert ev.final["eval/best_env_steps"] == parts.collector.env_steps
    finally:
        parts.close()


def test_keep_best_reports_its_keys_in_the_summary(make_cfg):
    summary = run(make_cfg("debug=smoke", "eval.keep_best=true", "eval.every=100"))
    assert {"eval/last_return_mean", "eval/best_return_mean", "eval/best_env_steps"} <= summary.keys()
    assert summary["eval/best_env_steps"] in (100, 200, 300, 400)  # 400: the final network is kept
    assert summary["eval/best_return_mean"] >= summary["eval/last_return_mean"]
    if summary["eval/best_env_steps"] == 400:
        assert summary["eval/return_mean"] == summary["eval/last_return_mean"] == summary["eval/best_return_mean"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_kept_network_lives_in_best_ckpt_and_last_ckpt_is_the_final_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dqnlab.train")
    run_dir = tmp_path / "run"
    # CartPole seed 0 on the default config keeps the network of env step 4,000 (its evaluation beats the final).
    summary = run(compose_cfg(["env_steps=6000", "checkpoint.every=2000", "eval.keep_best=true", "eval.every=2000"],
                              run_dir))  # fmt: skip
    assert summary["eval/best_env_steps"] == 4000 and summary["env_steps"] == 6000
    ckpts = run_dir / "checkpoints"
    load = lambda name: torch.load(ckpts / name, map_location="cpu", weights_only=False)  # noqa: E731
    best, last, at_4000 = load("best.ckpt"), load("last.ckpt"), load("env_steps_4000.ckpt")
    q = [k for k in best["state_dict"] if k.startswith("q_net.")]
    assert all(torch.equal(best["state_dict"][k], at_4000["state_dict"][k]) for k in q)  # the kept one
    assert not all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in q)  # last: the final one
    assert last["callbacks"]["EnvStepper"]["env_steps"] == 6000 and "optimizer_states" in last
    assert best["dqnlab"]["kept"]["env_steps"] == 4000 and "optimizer_states" not in best
    # The printed commands play the kept network and train the final state further.
    assert f"scripts/evaluate.py {ckpts / 'best.ckpt'} episodes=20" in caplog.text
    assert f"train.py ckpt_path={ckpts / 'last.ckpt'} env_steps=12000" in caplog.text
    # evaluate.py and export.py say which network they play.
    capsys.readouterr()

    def json_line(script: str, *args: str) -> dict:
        assert _script(script).main(list(args)) == 0
        return json.loads(capsys.readouterr().out.splitlines()[-1])

    played = json_line("evaluate", str(ckpts / "best.ckpt"), "episodes=2")
    assert played["network"].startswith("the network eval.keep_best kept: env step 4000")
    played = json_line("evaluate", str(ckpts / "last.ckpt"), "episodes=2")
    assert "the final one; eval.keep_best kept that of env step 4000" in played["network"]
    exported = json_line("export", str(run_dir))
    assert exported["checkpoint"] == str(ckpts / "best.ckpt")
    assert exported["agent_file"] == str(run_dir / "agent.safetensors")
    # best.ckpt is for playing: resuming from it is refused, naming last.ckpt.
    with pytest.raises(ConfigError, match=r"resume from the last.ckpt beside it \(ckpt_path=.*last.ckpt\)"):
        run(compose_cfg([f"ckpt_path={ckpts / 'best.ckpt'}"], tmp_path / "again"))
