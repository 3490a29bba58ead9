"""The benchmark suites run end to end at tiny sizes; their speed targets live in docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import ROOT


def _benchmark(argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``python scripts/benchmark.py <argv>``, in this process (a suite's own runs still start their processes)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # its `bench` package, as `python scripts/...` finds it
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        script.main(argv)
    finally:
        torch.set_num_threads(threads)  # the suites time one thread; the next test in this worker runs as before
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "suite",
    [
        "cartpole-cpu",
        "replay-memory",
        "cartpole-solve",
        "atari-gpu",
        "atari-cpu",
        "peers",
        "zoo",
        "update-floor",
        "zoo-split",
    ],
)
def test_suite_runs_and_prints_one_json_line(suite, tmp_path, capsys, monkeypatch):
    argv = [suite, "--quick", *(["--out", str(tmp_path)] if suite == "zoo" else [])]
    result = _benchmark(argv, capsys, monkeypatch)
    assert result["suite"] == suite
    if suite == "replay-memory":
        assert result["bytes"] <= 7.5e9 and result["allocation_matches"]
    if suite == "atari-gpu":  # on the CPU only the eager row runs; the GPU rows need a GPU
        (row,) = result["results"]
        assert row["updates"] == 50 and row["env_steps"] == 200 and not row["captured"]
    if suite == "peers":
        assert result["results"]["sb3"]["env_steps_per_s"] > 0
        assert result["results"]["dqnlab"][0]["updates"] == 50 and result["ratio"] > 0
    if suite == "zoo":  # one tiny MountainCar run of each framework, scored the same way
        mc = result["results"]["mountaincar"]
        assert mc["env_steps"] == 600 and mc["dqnlab"][0]["gradient_steps"] > 0
        assert mc["sb3"][0]["eval/episodes"] == mc["dqnlab"][0]["eval/episodes"] == 2
        assert mc["sb3_iqm"][1] <= mc["sb3_iqm"][0] <= mc["sb3_iqm"][2] and mc["wall_ratio"] > 0
        # Every run is kept under --out; a second invocation reads them back instead of training again.
        assert sorted(p.name for p in (tmp_path / "mountaincar").iterdir()) == ["dqnlab_seed0.json", "sb3_seed0.json"]
        assert _benchmark(argv, capsys, monkeypatch)["results"] == result["results"]
    if suite == "update-floor":  # Acrobot's preset by default: 6 inputs, 256-256, 3 actions, batch 128
        assert result["sizes"] == [6, 256, 256, 3] and result["batch"] == 128
        rows = {(r["what"], r["dtype"], r["threads"]): r for r in result["results"]}
        assert len(rows) == 6 and all(r["us"] > 0 for r in rows.values())
        # FLOPs of the products: 2 forwards and the weight gradients of 67,840 MACs a row, input gradients of
        # the 256-256 and 256-3 layers, 2 FLOPs a MAC, 128 rows.
        fp32 = rows[("matmuls", "float32", 1)]
        assert fp32["gflops"] * fp32["us"] * 1e3 == pytest.approx(2 * 128 * (3 * 67_840 + 66_304))
    if suite == "zoo-split":  # one tiny MountainCar run of each framework, its time split by part
        dq, sb3 = result["results"]["mountaincar"]["dqnlab"], result["results"]["mountaincar"]["sb3"]
        assert dq["gradient_steps"] > 0 and sb3["gradient_steps"] > 0
        # The parts nest: a gradient step's products and its clipping/Adam are inside the update, and the
        # update and the env stepping are inside the run.
        assert 0 < dq["grads"] < dq["grads"] + dq["clip_adam"] < dq["update"] < dq["wall"]
        assert 0 < dq["env"] < dq["wall"] - dq["update"]
        assert 0 < sb3["draw"] < sb3["update"] < sb3["wall"]
        assert sb3["env"] == pytest.approx(sb3["wall"] - sb3["update"])
    if suite == "atari-cpu":  # both updates timed on the same batch, and a short whole run
        assert result["update_ms"]["dqnlab"] > 0 and result["update_ms"]["bare_fp32"] > 0 and result["ratio"] > 0
        assert result["compute"] in ("fp32 NCHW", "fp32 channels-last", "bf16 NCHW", "bf16 channels-last")
        assert result["run"]["updates"] == 100 and result["run"]["env_steps_per_s"] > 0
    if suite == "cartpole-cpu":
        assert result["results"]["dqnlab"]["updates"] == result["results"]["bare"]["updates"] > 0
