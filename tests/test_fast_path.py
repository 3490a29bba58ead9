"""The GPU fast path: device-side replay counters, the closure-only optimizer, async env stepping and CUDA graphs.

Everything but the capture itself runs on the CPU here; the tests marked ``cuda`` record real CUDA graphs and
run where a GPU is present (the benchmark machine), and are skipped elsewhere.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dqnlab.data.replay import ReplayBuffer
from dqnlab.envs.pipe import EnvPipe
from dqnlab.envs.vector import make_vector_env
from dqnlab.learn.fast.graphs import ClosureOnlyOptimizer, GraphedSampler, GraphedUpdate
from dqnlab.learn.module import DQNModule
from dqnlab.train import build, run
from tests.conftest import compose_cfg
from tests.test_replay import counting_buffer, fill, obs_for
from tests.test_workflow import RESUMABLE, _metric_rows, _same

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---------------------------------------------------------------------------------------------- replay counters
@pytest.mark.parametrize("num_envs", [1, 3])
def test_device_bounds_follow_the_host_counters_through_wrap_around(num_envs):
    buf = counting_buffer(12 * num_envs, num_envs=num_envs)
    buf.start(obs_for(0, num_envs))
    for t in range(40):
        done = np.full(num_envs, (t + 1) % 5 == 0)
        buf.add(np.zeros(num_envs, int), np.zeros(num_envs), done, np.zeros(num_envs, bool), obs_for(t + 1, num_envs))
        start, size = buf._sampleable()
        assert buf.bounds.tolist() == [start % buf.capacity, size, buf.pos]


def test_draw_reads_only_the_device_counters_and_hits_every_valid_transition_uniformly():
    buf = counting_buffer(30)
    fill(buf, 50, 1, done_every=4)  # wrapped; every 5th step is an autoreset step and never valid
    valid = {int(i) for i in buf._valid_ring[torch.arange(buf._ring_tail, buf._ring_head) % buf.capacity]}
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([buf.draw(512, g).indices for _ in range(100)])
    counts = torch.bincount(idx, minlength=buf.capacity).float()
    assert set(torch.nonzero(counts).flatten().tolist()) == valid
    expected = idx.numel() / len(valid)
    assert (counts[sorted(valid)] - expected).abs().max() < 5 * expected**0.5  # within 5 sigma of uniform


def test_bounds_survive_a_state_dict_round_trip():
    a = counting_buffer(20)
    fill(a, 33, 1, done_every=6)
    b = counting_buffer(20)
    b.load_state_dict(a.state_dict())
    assert b.bounds.tolist() == a.bounds.tolist()


# ------------------------------------------------------------------------------ the optimizer Lightning steps
def test_closure_only_optimizer_runs_the_closure_and_shares_the_wrapped_state():
    net = nn.Linear(3, 2)
    inner = torch.optim.Adam(net.parameters(), lr=0.1)
    wrapped = ClosureOnlyOptimizer(inner)
    assert wrapped.param_groups is inner.param_groups and wrapped.state is inner.state

    def update():
        inner.zero_grad()
        net(torch.ones(1, 3)).sum().backward()
        inner.step()
        return "ran"

    before = net.weight.detach().clone()
    assert wrapped.step(update) == "ran"
    assert not torch.equal(net.weight, before)
    assert wrapped.state_dict()["state"][0]["step"] == 1  # Adam's step count, through the wrapper
    with pytest.raises(RuntimeError, match="closure"):
        wrapped.step()
    sched = torch.optim.lr_scheduler.LinearLR(wrapped, start_factor=1.0, end_factor=0.5, total_iters=2)
    wrapped.step(update)
    sched.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.075)


# ---------------------------------------------------------------------------------------------- async env stepping
def test_env_pipe_overlaps_a_step_and_returns_what_step_returns():
    a, b = make_vector_env("CartPole-v1", num_envs=2), make_vector_env("CartPole-v1", num_envs=2)
    a.reset(seed=3)
    b.reset(seed=3)
    pipe = EnvPipe(b, background=True)
    assert not pipe.native
    for t in range(30):
        actions = np.array([t % 2, (t // 2) % 2])
        pipe.send(actions)
        want = a.step(actions)
        got = pipe.recv()
        for w, g in zip(want[:4], got[:4], strict=True):
            np.testing.assert_array_equal(w, g)
    pipe.close()
    a.close()
    b.close()


def test_async_envs_keep_the_counters_and_the_random_prefill_of_a_synchronous_run(make_cfg):
    def fit(async_envs: bool):
        overrides = [f"collector.async_envs={str(async_envs).lower()}", "env.num_envs=1", "~checkpoint", "logger=[]"]
        cfg = make_cfg("debug=smoke", *overrides)
        parts = build(cfg)
        try:
            parts.trainer.fit(parts.module)
        finally:
            parts.close()
        return parts

    sync, asyn = fit(False), fit(True)
    assert asyn.collector._async and not sync.collector._async
    assert asyn.collector._pipe.background_steps == 400 and sync.collector._pipe.background_steps == 0
    assert asyn.collector.env_steps == sync.collector.env_steps == 400
    assert asyn.trainer.global_step == sync.trainer.global_step > 0
    assert asyn.collector._in_flight is None  # nothing left in flight at the end
    prefill = asyn.collector.learning_starts  # random actions: the same draws in both orders
    for name in ("obs", "actions", "rewards", "terminated", "truncated"):
        assert torch.equal(getattr(asyn.buffer, name)[:prefill], getattr(sync.buffer, name)[:prefill]), name


def test_a_checkpoint_receives_the_step_in_flight_first(make_cfg):
    parts = build(make_cfg("debug=smoke", "collector.async_envs=true", "env.num_envs=1", "~checkpoint", "logger=[]"))
    try:
        c = parts.collector
        c._async = True
        c._reset()
        c.step(parts.module, random=True)  # stores one vector step and sends the next
        assert c._in_flight is not None and c.env_steps == 1
        state = c.state_dict()
        assert c._in_flight is None and state["env_steps"] == c.env_steps == 2
        assert len(parts.buffer) == 2
    finally:
        parts.close()


def test_a_resume_with_async_envs_ends_exactly_like_the_uninterrupted_run(tmp_path):
    """Checkpoints receive the step in flight first, so async stepping keeps resumes exact."""
    overrides = [*RESUMABLE, "collector.async_envs=true"]
    uninterrupted = run(compose_cfg(overrides, tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "env_steps_300.ckpt"
    resumed = run(compose_cfg([*overrides, f"ckpt_path={ckpt}"], tmp_path / "b"))
    assert _same(resumed) == _same(uninterrupted)
    after = [r for r in _metric_rows(tmp_path / "a" / "metrics.csv") if int(r["step"]) > 300]
    assert _metric_rows(tmp_path / "b" / "metrics.csv") == after


# ---------------------------------------------------------------------------------------------- the update runner
def test_the_update_runner_is_the_same_update_as_before_on_the_cpu(make_cfg):
    """Without capture, the closure path gives exactly the update a hand-written step gives."""
    cfg = make_cfg("debug=smoke")
    parts = build(cfg)
    parts.env.close()
    module = parts.module
    twin = copy.deepcopy(module)
    module.configure_optimizers()
    assert module._runner is not None and not module._runner.capture
    buf = counting_buffer(50)
    fill(buf, 40, 1, done_every=7)
    opt = torch.optim.Adam(twin.q_net.parameters(), lr=cfg.optimizer.lr)
    for _ in range(5):
        batch = buf.sample(8)
        # CartPole's shapes: 4 numbers per observation, 2 actions
        batch = batch._replace(
            obs=batch.obs.repeat(1, 2), next_obs=batch.next_obs.repeat(1, 2), actions=batch.actions % 2
        )
        (errors,) = module._runner(batch)
        loss, _, want = twin.td_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.testing.assert_close(errors, want)
    for p, q in zip(module.q_net.parameters(), twin.q_net.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_cuda_graph_true_without_a_gpu_names_the_fix(make_cfg):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    parts = build(make_cfg("debug=smoke", "algo.cuda_graph=true"))
    try:
        with pytest.raises(Exception, match=r"algo\.cuda_graph=auto"):
            parts.trainer.fit(parts.module)
    finally:
        parts.close()


# ---------------------------------------------------------------------------------------------- CUDA graphs (GPU only)
def _gpu_module(cuda_graph: bool, seed: int = 0) -> DQNModule:
    from dqnlab.learn.networks import MLP

    torch.manual_seed(seed)
    net = MLP((4,), num_actions=3, hidden_sizes=(32, 32))
    adam = torch.optim.Adam
    module = DQNModule(
        net,
        lambda params, **kw: adam(params, lr=1e-3, fused=True, **kw),
        batch_size=16,
        double=True,
        loss="huber",
        max_grad_norm=5.0,
        cuda_graph=cuda_graph,
    ).cuda()
    module.configure_optimizers()
    return module


def _gpu_buffer() -> ReplayBuffer:
    buf = ReplayBuffer(64, (4,), torch.float32, num_envs=2, device="cuda", seed=0)
    rng = np.random.default_rng(0)
    buf.start(rng.normal(size=(2, 4)).astype(np.float32))
    for _ in range(50):
        buf.add(
            rng.integers(3, size=2),
            rng.normal(size=2).astype(np.float32),
            rng.random(2) < 0.1,
            np.zeros(2, bool),
            rng.normal(size=(2, 4)).astype(np.float32),
        )
    return buf


@cuda
def test_a_recorded_update_gives_the_eager_updates():
    buf = _gpu_buffer()
    batches = [buf.sample(16) for _ in range(12)]
    eager, graphed = _gpu_module(False), _gpu_module(True)
    assert not eager._runner.capture and graphed._runner.capture
    for batch in batches:
        (e_err,) = eager._runner(batch)
        (g_err,) = graphed._runner(batch)
        torch.testing.assert_close(g_err, e_err, rtol=1e-4, atol=1e-5)
    assert graphed._runner.captured
    for p, q in zip(graphed.q_net.parameters(), eager.q_net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(graphed._metric_sums, eager._metric_sums, rtol=1e-4, atol=1e-5)
    assert int(graphed._step_t) == int(eager._step_t) == len(batches)


@cuda
def test_a_recorded_draw_follows_the_buffer_as_it_fills():
    buf = _gpu_buffer()
    sampler = GraphedSampler(buf, 256, capture=True, warmup=1)
    sampler()
    first = sampler()
    assert sampler.graph is not None
    rng = np.random.default_rng(1)
    for _ in range(40):  # wraps the 32-slot ring: the recorded draw must follow the moving window
        buf.add(
            np.zeros(2, int),
            np.zeros(2, np.float32),
            np.zeros(2, bool),
            np.zeros(2, bool),
            rng.normal(size=(2, 4)).astype(np.float32),
        )
    batch = sampler()
    assert batch is first  # the same tensors, refilled
    valid = set(buf._valid_ring[torch.arange(buf._ring_tail, buf._ring_head) % buf.capacity].tolist())
    assert set(batch.indices.tolist()) <= valid
    torch.testing.assert_close(batch.next_obs, buf.obs.view(buf.capacity, 4)[(batch.indices + 2) % buf.capacity])


@cuda
def test_graphed_update_is_replayed_in_a_real_atari_fit(make_cfg):
    cfg = make_cfg("experiment=atari_fast", "debug=smoke", "trainer=gpu", "algo.cuda_graph=true", "env.num_envs=4")
    summary = run(cfg)
    assert summary["gradient_steps"] > 3
    parts = build(make_cfg("experiment=atari_fast", "debug=smoke", "trainer=gpu", "env.num_envs=4", "~checkpoint"))
    try:
        parts.trainer.fit(parts.module)
        assert parts.module._runner.captured and parts.collector._async
    finally:
        parts.close()


def test_graphed_update_without_capture_calls_the_body_every_time():
    calls = []
    runner = GraphedUpdate(lambda batch: (calls.append(batch) or torch.zeros(1),), capture=False)
    for i in range(5):
        runner(i)  # type: ignore[arg-type]
    assert calls == list(range(5)) and not runner.captured


# ---------------------------------------------------------------------------------- the recorded update's check
def test_mismatch_is_none_within_tolerance_and_names_what_differs():
    from dqnlab.learn.fast.graphs import mismatch

    a = [torch.ones(3), torch.zeros(2, 2)]
    assert mismatch(a, [torch.ones(3) + 1e-7, torch.zeros(2, 2)]) is None
    assert "tensor 1 of shape (2, 2) differs by up to 0.5" in mismatch(a, [torch.ones(3), torch.full((2, 2), 0.5)])
    assert "shape" in mismatch(a, [torch.ones(3), torch.zeros(4)])
    assert mismatch([torch.tensor([float("nan")])], [torch.tensor([1.0])]) is not None


def _sgd_runner(capture: bool):
    """A real update (linear layer, SGD) as GraphedUpdate runs it, with its state for the check."""
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def body(batch):
        opt.zero_grad()
        loss = net(batch[0]).pow(2).mean()
        loss.backward()
        opt.step()
        return (loss.detach(),)

    return net, GraphedUpdate(body, capture=capture, state=lambda: [p.data for p in net.parameters()])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only torch cannot record: that is the failure tested")
def test_an_update_that_cannot_be_recorded_warns_once_and_runs_eagerly(caplog):
    batches = [(torch.randn(8, 4, generator=torch.Generator().manual_seed(i)),) for i in range(6)]
    eager_net, eager = _sgd_runner(capture=False)
    net, runner = _sgd_runner(capture=True)  # asks for a CUDA graph where there is none: a real capture error
    for batch in batches:
        assert torch.equal(runner(batch)[0], eager(batch)[0])  # every update runs, once, as the eager one does
    for p, q in zip(net.parameters(), eager_net.parameters(), strict=True):
        assert torch.equal(p, q)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "algo.cuda_graph=false" in warnings[0] and "runs eagerly" in warnings[0]
    assert runner.path == "eager" and runner.fallback_reason


def test_the_summary_records_which_update_ran(make_cfg):
    summary = run(make_cfg("debug=smoke"))
    assert summary["update_path"] == ("cuda_graph" if torch.cuda.is_available() else "eager")


@cuda
def test_the_first_recorded_update_matches_the_eager_one_and_is_kept(caplog):
    net, runner = _sgd_runner(capture=True)
    net.cuda()
    for i in range(6):
        runner((torch.randn(8, 4, device="cuda", generator=torch.Generator("cuda").manual_seed(i)),))
    assert runner.path == "cuda_graph" and not [r for r in caplog.records if r.levelname == "WARNING"]


@cuda
def test_a_recorded_update_that_differs_from_the_eager_one_falls_back(caplog):
    calls = {"n": 0}
    weight = torch.zeros(1, device="cuda")

    def body(batch):  # reads a Python number: a replay keeps the recorded one, an eager call does not
        calls["n"] += 1
        weight.add_(calls["n"])
        return (weight.clone(),)

    runner = GraphedUpdate(body, capture=True, state=lambda: [weight])
    for _ in range(6):
        runner((torch.zeros(1, device="cuda"),))
    assert runner.path == "eager" and "did not match the eager update" in runner.fallback_reason
    assert any("algo.cuda_graph=false" in r.getMessage() for r in caplog.records)
