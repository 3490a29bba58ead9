"""eval.keep_best: the run ends with the network of its best periodic evaluation when that beats the final one."""

from __future__ import annotations

import torch

from dqnlab.train import build, run


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


def test_a_worse_final_network_is_replaced_by_the_best_evaluated_one(make_cfg):
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
        for k, v in module.q_net.state_dict().items():
            assert torch.equal(v, kept[k]), k
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
