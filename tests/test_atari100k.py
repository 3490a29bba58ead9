"""experiment=atari100k (DrQ(eps) as Dopamine configures it): the env protocol, the epsilon schedule, DrQ's
augmentation on hand-built frames, and how the Nature CNN's update computes on a CPU (fp32 or bf16, measured)."""

from __future__ import annotations

import json
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from dqnlab.data.collect import EnvStepper
from dqnlab.data.dataset import Batch
from dqnlab.data.replay import ReplayBuffer
from dqnlab.learn.augment import DrQAugment, intensity_factors, random_shift
from dqnlab.learn.fast.cpu_compute import (
    EMULATED,
    KEPT,
    MIN_UPDATES_TO_MEASURE,
    Compute,
    bf16_instructions,
    candidates,
    choose,
    kept,
    pick,
)
from dqnlab.learn.module import DQNModule
from dqnlab.learn.networks import NatureCNN, scaled_input
from dqnlab.learn.target import TargetNetworkSync
from dqnlab.run.report import TIMING_KEYS, describe_update, update_summary
from dqnlab.train import build, run
from tests.conftest import PYTHON, ROOT, compose_cfg


@pytest.fixture
def ale() -> Any:
    return pytest.importorskip("ale_py")


# ------------------------------------------------------------------ augmentation
def _reference_shift(x: torch.Tensor, pad: int, dy: int, dx: int) -> torch.Tensor:
    """torch's own edge padding, then the crop at (dy, dx): what random_shift must equal."""
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate")
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def test_random_shift_is_edge_padding_then_a_crop() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 4, 12, 10), generator=gen, dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [4, 4], [8, 8], [1, 7], [8, 0]])
    out = random_shift(x, 4, shifts)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i, (dy, dx) in enumerate(shifts.tolist()):
        torch.testing.assert_close(out[i].float(), _reference_shift(x[i : i + 1], 4, dy, dx)[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], x[1])  # offset (pad, pad): no shift


def test_random_shift_moves_every_stacked_frame_of_an_image_together() -> None:
    frame = torch.zeros(1, 1, 9, 9, dtype=torch.uint8)
    frame[0, 0, 4, 4] = 255  # one bright pixel in the middle
    stack = frame.repeat(1, 4, 1, 1)
    out = random_shift(stack, 2, torch.tensor([[0, 4]]))  # 2 rows down, 2 columns left
    for c in range(4):
        assert out[0, c].nonzero().tolist() == [[6, 2]]


def test_intensity_factors_are_clipped_at_two_standard_deviations() -> None:
    normal = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0])
    torch.testing.assert_close(intensity_factors(normal, 0.05), torch.tensor([0.9, 0.95, 1.0, 1.05, 1.1]))


def test_drq_augment_draws_offsets_as_dopamine_and_scales_whole_images() -> None:
    aug = DrQAugment(pad=4, intensity_scale=0.05)
    assert aug.max_shift == 7  # jax.random.randint(maxval=8) is exclusive: offsets 0..7
    torch.manual_seed(0)
    x = torch.full((256, 2, 20, 20), 100, dtype=torch.uint8)
    out = aug(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    per_image = out.flatten(1)
    assert torch.equal(per_image.min(1).values, per_image.max(1).values)  # a flat image stays flat, scaled
    assert per_image[:, 0].min() >= 90 and per_image[:, 0].max() <= 110  # 100 * [0.9, 1.1]
    assert per_image[:, 0].std() > 1  # and the factors differ between images
    with pytest.raises(ValueError, match="max_shift"):
        DrQAugment(pad=2, max_shift=5)


def test_augment_leaves_its_input_alone_and_matches_the_step_by_step_answer() -> None:
    # It scales its own new tensor in place: never the batch it was given (a float batch without a shift is the
    # case where a cast would hand back the input itself).
    x = torch.randint(0, 256, (8, 4, 12, 12), dtype=torch.uint8)
    for pad, batch in ((4, x), (0, x), (0, x.float()), (2, x.float())):
        before = batch.clone()
        torch.manual_seed(3)
        out = DrQAugment(pad=pad, intensity_scale=0.05, max_shift=None if pad else 0)(batch)
        torch.manual_seed(3)
        expected = batch
        if pad:
            expected = random_shift(batch, pad, torch.randint(0, 2 * pad, (8, 2)))
        expected = expected.float() * intensity_factors(torch.randn(8), 0.05).view(8, 1, 1, 1)
        assert torch.equal(batch, before) and out.data_ptr() != batch.data_ptr() and torch.equal(out, expected)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_the_networks_input_is_obs_over_255_in_its_layout_written_once(channels_last: bool, dtype: Any) -> None:
    obs = torch.randint(0, 256, (4, 4, 84, 84), dtype=torch.uint8).to(dtype) * (1.03 if dtype.is_floating_point else 1)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    expected = (obs.float() / 255.0).contiguous(memory_format=layout)  # the step-by-step answer
    x = scaled_input(obs, 255.0, channels_last)
    assert torch.equal(x, expected) and x.stride() == expected.stride() and x.data_ptr() != obs.data_ptr()
    # An input gradient (a saliency map) still flows through the network.
    net = NatureCNN((4, 84, 84), 6)
    net.set_compute(bf16=False, channels_last=channels_last)
    leaf = obs.float().requires_grad_()
    net(leaf).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


# ------------------------------------------------------------------ the preset
def test_preset_is_dopamines_drq_eps(tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=atari100k", "env.game=breakout"], tmp_path)
    assert cfg.env_steps == 100_000 and cfg.protocol == "atari100k"
    assert (cfg.algo.n_step, cfg.algo.batch_size, cfg.algo.gamma, cfg.algo.loss) == (10, 32, 0.99, "huber")
    assert cfg.algo.double and cfg.network.dueling and cfg.network.dueling_shared
    assert (cfg.optimizer.lr, cfg.optimizer.eps) == (1e-4, 1.5e-4)
    assert (cfg.collector.train_freq, cfg.collector.gradient_steps, cfg.target.interval) == (1, 1, 1)
    assert cfg.buffer.capacity == 100_000 and cfg.augment.pad == 4 and cfg.augment.intensity_scale == 0.05
    assert (cfg.eval.episodes, cfg.eval.epsilon, cfg.eval.every) == (100, 0.001, 0)


@pytest.mark.atari
def test_preset_env_protocol(ale: Any, tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=atari100k", "env.game=breakout", "env.backend=gymnasium"], tmp_path)
    env = instantiate(cfg.env)()
    ale_iface = env.unwrapped.envs[0].unwrapped.ale if hasattr(env.unwrapped, "envs") else None
    if ale_iface is None:  # the env's wrappers hide the list of games one level deeper
        ale_iface = env.env.envs[0].unwrapped.ale
    assert ale_iface.getFloat("repeat_action_probability") == 0.0  # no sticky actions
    assert env.single_action_space.n == 4  # Breakout's minimal action set: NOOP, FIRE, RIGHT, LEFT
    assert env.single_observation_space.shape == (4, 84, 84)
    env.close()


@pytest.mark.atari
def test_preset_episode_cap_is_27k_agent_steps_and_breakout_waits_for_fire(ale: Any, tmp_path: Path) -> None:
    # Without FIRE at reset (Dopamine presses none) Breakout never serves: NOOPs run into the 108k-frame cap.
    cfg = compose_cfg(["experiment=atari100k", "env.game=breakout"], tmp_path)
    env = instantiate(cfg.env)()
    env.reset(seed=0)
    noop = np.zeros(1, dtype=np.int64)
    step = 0
    for step in range(1, 27_001):  # noqa: B007 (the step it stops at is the point)
        _, _, terminated, truncated, info = env.step(noop)
        if truncated[0] or terminated[0]:
            break
    assert step == 27_000 and truncated[0] and not terminated[0] and info["game_over"][0]
    env.close()


@pytest.mark.atari
def test_preset_epsilon_holds_through_the_prefill_then_ramps_over_5000_steps(ale: Any, tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=atari100k"], tmp_path)
    env = instantiate(cfg.env)()
    buffer = ReplayBuffer(capacity=16, obs_shape=(4, 84, 84), obs_dtype=torch.uint8, frame_stack=4)
    collector: EnvStepper = instantiate(cfg.collector, env=env, buffer=buffer, total_env_steps=cfg.env_steps)
    expected = {0: 1.0, 1_600: 1.0, 4_100: 0.505, 6_600: 0.01, 100_000: 0.01}
    for step, epsilon in expected.items():
        collector.env_steps = step
        assert collector.epsilon == pytest.approx(epsilon)
    env.close()


def test_protocol_departure_is_said(tmp_path: Path) -> None:
    module = DQNModule(NatureCNN((4, 84, 84), 6), partial(torch.optim.Adam, lr=1e-4))
    kept = compose_cfg(["experiment=atari100k"], tmp_path)
    short = compose_cfg(["experiment=atari100k", "env_steps=50000"], tmp_path)
    assert describe_update(kept, module)[1:] == ["protocol: atari100k"]
    assert "NOT kept (env_steps=50,000 instead of 100,000)" in describe_update(short, module)[1]
    assert update_summary(kept, module) == {
        "update_gradients": "autograd",
        "update_compute": "fp32 NCHW",
        "protocol": "atari100k",
        "protocol_kept": True,
    }
    assert update_summary(short, module)["protocol_kept"] is False


# ------------------------------------------------------------------ how the update computes
def test_precision_knobs_pick_the_candidates() -> None:
    assert candidates("fp32", False) == [(False, False)]
    assert candidates("fp32", "auto") == [(False, False), (False, True)]
    if bf16_instructions():
        assert candidates("auto", True) == [(False, True), (True, True)]
        assert candidates("bf16", False) == [(True, False)]
    else:
        assert candidates("auto", True) == [(False, True)]
        with pytest.raises(Exception, match=r"no bf16 instructions.*algo\.precision=fp32"):
            candidates("bf16", False)


def test_choose_measures_every_candidate_and_leaves_the_network_alone() -> None:
    torch.manual_seed(0)
    net = NatureCNN((4, 84, 84), 6, dueling=True, dueling_shared=True)
    before = [p.detach().clone() for p in net.parameters()]
    pairs = candidates("auto", "auto")
    compute = choose(net, (4, 84, 84), 8, pairs)
    assert (compute.bf16, compute.channels_last) in pairs
    assert len(compute.measured_ms) == len(pairs) and all(v > 0 for v in compute.measured_ms.values())
    assert not net.bf16 and not net.channels_last
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert choose(net, (4, 84, 84), 8, [(False, True)]) == Compute(False, True, {})  # one candidate: no timing


@pytest.mark.parametrize(("interval", "double", "next_passes"), [(1, True, 1), (2, True, 2), (2, False, 1)])
def test_the_measurement_times_the_passes_the_update_makes(interval: int, double: bool, next_passes: int) -> None:
    """The start-up measurement runs the update's own passes (learn/passes.py on a CPU): the online net over s with
    gradients, then one pass over s' without when the target is the online net or there is no double choice, two
    otherwise; the target callback's attach decides which, as in a run."""
    net = NatureCNN((4, 84, 84), 6, dueling=True, dueling_shared=True)
    grad_modes: list[bool] = []
    net.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))  # copies carry the hook
    module = DQNModule(net, partial(torch.optim.Adam, lr=1e-4), batch_size=2, double=double, precision="fp32")
    TargetNetworkSync(interval=interval).attach(module)
    compute = module.pick_compute(torch.device("cpu"), (4, 84, 84), updates=MIN_UPDATES_TO_MEASURE)
    updates = 2 * 11  # two float32 layouts, each 2 warm-up and 3 x 3 timed updates
    assert len(compute.measured_ms) == 2 and grad_modes.count(True) == updates
    assert grad_modes.count(False) == updates * next_passes
    assert grad_modes[: 1 + next_passes] == [True] + [False] * next_passes


def test_a_run_too_short_to_repay_measuring_takes_the_first_candidate_and_says_why() -> None:
    net = NatureCNN((4, 84, 84), 6)
    cpu = torch.device("cpu")
    short = pick(net, cpu, (4, 84, 84), 32, "auto", "auto", updates=MIN_UPDATES_TO_MEASURE - 1)
    assert short == Compute(False, False, {}, "not measured: 999 updates, fewer than the 1,000 that repay measuring")
    assert short.describe() == f"fp32 NCHW ({short.unmeasured})"
    if bf16_instructions():  # a forced precision is kept: its first layout
        assert pick(net, cpu, (4, 84, 84), 32, "bf16", "auto", updates=10)[:2] == (True, False)
    assert pick(net, cpu, (4, 84, 84), 32, "fp32", False, updates=10) == Compute(False, False, {})  # no choice
    assert len(pick(net, cpu, (4, 84, 84), 8, "fp32", "auto", updates=MIN_UPDATES_TO_MEASURE).measured_ms) == 2


def test_a_resume_keeps_its_compute_and_says_when_this_cpu_emulates_its_bf16() -> None:
    bf16_nchw, fp32_cl = {"bf16": True, "channels_last": False}, {"bf16": False, "channels_last": True}
    assert kept(bf16_nchw, native_bf16=True) == Compute(True, False, {}, KEPT)
    assert kept(fp32_cl, native_bf16=False) == Compute(False, True, {}, KEPT)  # float32 runs anywhere
    emulated = kept(bf16_nchw, native_bf16=False)
    assert emulated[:2] == (True, False)  # the run's numerics are kept, not switched to float32
    assert emulated.describe() == (
        "bf16 NCHW (the run's own, from its checkpoint: a resume computes as the run did; this CPU has no bf16 "
        "instructions, so torch emulates them, several times slower than float32 (a new run here would choose "
        "float32))"
    )


@pytest.mark.skipif(not bf16_instructions(), reason="this CPU has no bf16 instructions")
def test_bf16_q_values_stay_close_to_fp32_and_come_back_as_fp32() -> None:
    torch.manual_seed(0)
    net = NatureCNN((4, 84, 84), 6, dueling=True, dueling_shared=True, init="xavier_uniform")
    obs = torch.randint(0, 256, (16, 4, 84, 84), dtype=torch.uint8)
    fp32 = net(obs)
    net.set_compute(bf16=True, channels_last=True)
    bf16 = net(obs)
    assert bf16.dtype == torch.float32 and all(p.dtype == torch.float32 for p in net.parameters())
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.02 * fp32.abs().max().item())


def _pixel_batch(n: int, num_actions: int) -> Batch:
    g = torch.Generator().manual_seed(1)
    obs, next_obs = (torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8, generator=g) for _ in range(2))
    return Batch(
        obs, torch.randint(0, num_actions, (n,), generator=g), torch.randn(n, generator=g), next_obs,
        torch.rand(n, generator=g) < 0.3, torch.zeros(n, dtype=torch.bool), torch.ones(n),
        torch.arange(n), torch.full((n,), 0.99**10),
    )  # fmt: skip


@pytest.mark.parametrize("double", [True, False])
def test_one_pass_over_next_states_when_the_target_is_the_online_net(double: bool) -> None:
    """target.interval=1 with a hard copy: the online net's pass over s' stands in for the target's, and the
    loss, mean Q and TD errors are those of the separate passes (and of the joined s+s' pass)."""
    torch.manual_seed(0)
    net = NatureCNN((4, 84, 84), 6, dueling=True, dueling_shared=True)
    module = DQNModule(net, partial(torch.optim.Adam, lr=1e-4), loss="huber", double=double)
    batch = _pixel_batch(8, 6)
    results = []
    for one_pass, joined in ((False, True), (False, False), (True, True)):
        module.target_is_online, module._concat_double = one_pass, joined
        results.append(module.td_loss(batch))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    module.target_is_online = True  # a target that lags behind is not stood in for: attach decides
    TargetNetworkSync(interval=2).attach(module)
    assert module.target_is_online is False
    TargetNetworkSync(interval=1, tau=0.5).attach(module)
    assert module.target_is_online is False
    TargetNetworkSync(interval=1).attach(module)
    assert module.target_is_online is True
    noisy = DQNModule(NatureCNN((4, 84, 84), 6, noisy=True), partial(torch.optim.Adam, lr=1e-4))
    TargetNetworkSync(interval=1).attach(noisy)  # independent noise: the target's pass is not the online one's
    assert noisy.target_is_online is False


def test_dueling_shared_is_one_hidden_layer_and_xavier_zeroes_the_biases() -> None:
    net = NatureCNN((4, 84, 84), 6, dueling=True, dueling_shared=True, init="xavier_uniform")
    hidden = [m for m in net.head.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 512]
    assert len(hidden) == 1
    assert all(m.bias.abs().sum() == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))


def test_augment_on_a_vector_env_is_one_error_line(tmp_path: Path) -> None:
    cmd = [PYTHON, "train.py", "augment=drq", "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "augment" in errors[0] and "(4,)" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # refused once the env exists: no run dir left behind


@pytest.mark.atari
def test_a_target_copy_the_update_never_reads_waits_and_changes_nothing(ale: Any, tmp_path: Path) -> None:
    # Atari 100k's target is the online net of the last step: its copy (1.7M weights a step) waits for a
    # checkpoint or the end of training. A run that copies at every step ends the same, checkpoint included.
    overrides = ["experiment=atari100k", "env.game=pong", "debug=smoke", "target.interval=1", "progress_bar=false"]
    overrides += ["checkpoint.every=200", "checkpoint.keep=-1"]  # one written mid-run, one at the end
    deferred = run(compose_cfg(overrides, tmp_path / "deferred"))
    eager = run(compose_cfg([*overrides, "target._target_=tests.custom_algos.EagerSync"], tmp_path / "eager"))
    assert {k: v for k, v in deferred.items() if k not in TIMING_KEYS} == {
        k: v for k, v in eager.items() if k not in TIMING_KEYS
    }
    files = sorted(p.name for p in (tmp_path / "deferred" / "checkpoints").iterdir())
    assert files == ["env_steps_200.ckpt", "last.ckpt"]
    for file in files:
        saved = [
            torch.load(tmp_path / d / "checkpoints" / file, map_location="cpu", weights_only=False)
            for d in ("deferred", "eager")
        ]
        assert saved[0]["callbacks"]["TargetNetworkSync"] == saved[1]["callbacks"]["EagerSync"]  # the sync count
        assert saved[0]["state_dict"].keys() == saved[1]["state_dict"].keys()
        for name, value in saved[0]["state_dict"].items():
            assert torch.equal(value, saved[1]["state_dict"][name]), (file, name)
            if name.startswith("target_net."):  # the target written is the online net of that step
                assert torch.equal(value, saved[0]["state_dict"]["q_net." + name.removeprefix("target_net.")])
    parts = build(compose_cfg(overrides, tmp_path / "built"))
    try:
        assert TargetNetworkSync.deferred(parts.module)
    finally:
        parts.close()
    # Where the update reads target_net, every copy is made when due: the hand-written MLP update, a td_loss of yours.
    cartpole = build(compose_cfg(["debug=smoke", "target.interval=1", "target.tau=1.0"], tmp_path / "mlp"))
    try:
        assert cartpole.module.gradients == "hand-written" and not TargetNetworkSync.deferred(cartpole.module)
    finally:
        cartpole.close()
    own = build(compose_cfg([*overrides, "algo._target_=tests.custom_algos.ZeroLossDQN"], tmp_path / "own"))
    try:
        assert own.module.target_is_online and not TargetNetworkSync.deferred(own.module)
    finally:
        own.close()


@pytest.mark.atari
def test_the_benchmark_sweep_repeated_resumes_and_leaves_finished_runs_alone(ale: Any, tmp_path: Path) -> None:
    # docs/atari.md's command for the pre-registered subset, on two games at smoke size: one run dir per game and
    # seed, and the same command again (after a killed session, a reboot) continues each run where it stood.
    sweep = tmp_path / "atari100k"
    command = [PYTHON, "train.py", "-m", "experiment=atari100k", "env.game=pong,breakout", "seed=0", "ckpt_path=last",
               f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${env.game}_s${seed}", "debug=smoke",
               "progress_bar=false"]  # fmt: skip
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    # Both jobs ran in one process, and the first one's envs, trainer and replay memory were freed before the
    # second began: ale-py's C++ vector env reports itself leaked ("nanobind: leaked 1 instances!") when it is not.
    assert "leaked" not in first.stdout + first.stderr, (first.stdout + first.stderr)[-3000:]
    run_dir, other = sweep / "pong_s0", sweep / "breakout_s0"
    summary, other_summary = (run_dir / "summary.json").read_bytes(), (other / "summary.json").read_bytes()
    # The run says how its update computes, and its checkpoint keeps it (a resume computes the same way).
    log, said = (run_dir / "train.log").read_text(), json.loads(summary)
    (line,) = [x for x in log.splitlines() if "update: autograd" in x]  # the Nature CNN: autograd
    # 75 updates: too few to repay the start-up measurement, so float32 NCHW, unmeasured, and the header says why.
    assert "; fp32 NCHW (not measured: 75 updates, fewer than the 1,000" in line and "DrQAugment(pad=4" in line
    assert said["protocol"] == "atari100k" and said["protocol_kept"] is False and said["update_compute"] == "fp32 NCHW"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["dqn_compute"] == {"bf16": False, "channels_last": False}
    # As a run that chose bf16 channels-last at its start: a resume keeps that, unmeasured, and says so (the header
    # said what a new measurement chose while the checkpoint's choice ran).
    ckpt["dqn_compute"] = {"bf16": True, "channels_last": True}
    torch.save(ckpt, run_dir / "checkpoints" / "last.ckpt")
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]  # it was refused: buffer.frame_stack=1 (the run's: 4)
    assert "summary.json is left as it was" in again.stdout + again.stderr
    line, _ = [x for x in (again.stdout + again.stderr).splitlines() if "update: autograd" in x]  # pong's, breakout's
    # A CPU without bf16 instructions keeps the run's numerics and says torch emulates them (cpu_compute.EMULATED).
    emulated = "" if bf16_instructions() else EMULATED
    assert (
        f"; bf16 channels-last (the run's own, from its checkpoint: a resume computes as the run did{emulated})" in line
    )
    assert (run_dir / "summary.json").read_bytes() == summary
    assert (other / "summary.json").read_bytes() == other_summary and "leaked" not in again.stdout + again.stderr
