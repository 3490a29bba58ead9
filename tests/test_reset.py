"""Periodic resets (reset=last_layers): what one reset changes, when resets fall, and that a resume keeps them."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from dqnlab.learn.networks import build_network
from dqnlab.learn.reset import PeriodicReset, reset_seed, shrink_perturb
from dqnlab.run.report import TIMING_KEYS
from dqnlab.train import build, run
from tests.conftest import PYTHON, ROOT, compose_cfg

# CartPole's MLP: net.0, net.2, net.4 (the output layer). Learning starts at env step 100, one update per 2 env steps.
RESET = ["debug=smoke", "seed=3", "reset=last_layers", "reset.layers=[net.4]"]


def _reset_callback(parts) -> PeriodicReset:
    (callback,) = [c for c in parts.trainer.callbacks if isinstance(c, PeriodicReset)]
    return callback


def _fresh(cfg, parts, seed: int) -> dict[str, torch.Tensor]:
    """The network the config builds from seed ``seed``, built here without the callback."""
    torch.manual_seed(seed)
    space = parts.env.single_observation_space
    net = build_network(instantiate(cfg.network), space.shape, int(parts.env.single_action_space.n))
    return {k: v.detach() for k, v in net.named_parameters()}


@pytest.mark.parametrize(("shrink", "perturb"), [(1.0, 0.0), (0.5, 0.5)])
def test_a_reset_gives_the_named_layers_the_configs_fresh_init_and_zeroes_their_optimizer_state(
    make_cfg, shrink, perturb
):
    cfg = make_cfg(*RESET, "env_steps=400", "reset.every=100000", f"reset.shrink={shrink}", f"reset.perturb={perturb}")
    parts = build(cfg)
    try:
        parts.trainer.fit(parts.module)  # no reset falls in it: Adam's moments are now non-zero
        module, callback = parts.module, _reset_callback(parts)
        optimizer = parts.trainer.optimizers[0]
        before = {k: v.detach().clone() for k, v in module.q_net.named_parameters()}
        moments = {k: optimizer.state[p]["exp_avg"].clone() for k, p in module.q_net.named_parameters()}
        assert all(m.abs().sum() > 0 for m in moments.values())
        rng = torch.get_rng_state()

        assert callback.reset(module, optimizer, index=3) == (2 if shrink == 1.0 else 6)
        assert torch.equal(torch.get_rng_state(), rng)  # the run's own random stream is untouched

        fresh = _fresh(cfg, parts, reset_seed(3, 3))  # seed=3, the third reset
        targets = dict(module.target_net.named_parameters())
        for name, param in module.q_net.named_parameters():
            state = optimizer.state[param]
            if name.startswith("net.4."):
                torch.testing.assert_close(param.detach(), fresh[name], rtol=0, atol=0)
            else:
                want = shrink_perturb(before[name].clone(), fresh[name], shrink, perturb)
                torch.testing.assert_close(param.detach(), want, rtol=0, atol=0)
            changed = name.startswith("net.4.") or shrink != 1.0
            assert bool(state["exp_avg"].abs().sum() == 0) == changed
            assert bool(state["exp_avg_sq"].abs().sum() == 0) == changed
            assert bool(state["step"] == 0) == changed
            if changed:  # the target forgets with the online net
                torch.testing.assert_close(targets[name].detach(), param.detach(), rtol=0, atol=0)
    finally:
        parts.close()


def test_resets_fall_every_interval_up_to_the_last_step_allowed():
    callback = PeriodicReset(every=3, layers=["head"], until=7)
    assert [s for s in range(12) if callback.due(s)] == [3, 6]
    assert [s for s in range(10) if PeriodicReset(every=4).due(s)] == [4, 8]


def test_a_run_with_resets_logs_each_and_resumes_exactly(tmp_path, caplog):
    overrides = [
        *RESET,
        "env_steps=600",
        "checkpoint.every=100",
        "reset.every=20",
        "reset.shrink=0.8",
        "reset.perturb=0.2",
    ]
    caplog.set_level("INFO", logger="dqnlab")
    uninterrupted = run(compose_cfg(overrides, tmp_path / "a"))
    lines = [r.getMessage() for r in caplog.records if r.name == "dqnlab.learn.reset"]
    steps = int(uninterrupted["gradient_steps"])
    assert len(lines) == steps // 20 >= 6 and lines[0].startswith("reset 1 at gradient step 20:")
    header = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resets: ")]
    assert header == [
        "resets: net.4 re-initialized (and its optimizer state) every 20 gradient steps; the other parameters "
        "x0.8 + 0.2 x a fresh init (shrink and perturb)"
    ]
    # Resumed from env step 300 (gradient step 50: two resets before it, the others after), it ends the same.
    ckpt = tmp_path / "a" / "checkpoints" / "env_steps_300.ckpt"
    resumed = run(compose_cfg([*overrides, f"ckpt_path={ckpt}"], tmp_path / "b"))
    same = {k: v for k, v in resumed.items() if k not in TIMING_KEYS}
    assert same == {k: v for k, v in uninterrupted.items() if k not in TIMING_KEYS}

    def rows(path: Path) -> list[dict[str, str]]:
        with path.open(newline="") as f:
            return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in csv.DictReader(f)]

    after = [r for r in rows(tmp_path / "a" / "metrics.csv") if int(r["step"]) > 300]
    assert rows(tmp_path / "b" / "metrics.csv") == after


def test_a_reset_of_a_layer_the_network_lacks_is_one_error_line_naming_its_layers():
    proc = subprocess.run(
        [PYTHON, "train.py", "debug=smoke", "reset=last_layers"],  # head: the conv nets' layers, not an MLP's
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert errors[0].startswith("error: reset.layers=['head']: head names no parameter of this network (MLP)")
    assert errors[0].endswith("its layers are net.0, net.2, net.4: e.g. reset.layers=[net.4]")


def test_the_atari_preset_resets_its_fully_connected_layers(make_cfg):
    pytest.importorskip("ale_py")
    cfg = make_cfg("experiment=atari100k", "debug=smoke", "reset=last_layers", "reset.every=1000000")
    parts = build(cfg)
    try:
        module, callback = parts.module, _reset_callback(parts)
        conv = {k: v.detach().clone() for k, v in module.q_net.named_parameters() if k.startswith("features.")}
        assert callback.reset(module, None, index=1) == sum(
            1 for k, _ in module.q_net.named_parameters() if k.startswith("head.")
        )
        fresh = _fresh(cfg, parts, reset_seed(cfg.seed, 1))
        for name, param in module.q_net.named_parameters():
            want = fresh[name] if name.startswith("head.") else conv[name]
            torch.testing.assert_close(param.detach(), want, rtol=0, atol=0)  # xavier init, as network.init says
    finally:
        parts.close()
