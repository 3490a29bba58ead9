"""Safe to share: agent files and checkpoints are read without running code from them.

Real files throughout: a real smoke run, its real checkpoint exported by the real ``scripts/export.py``, played by
the real ``scripts/evaluate.py``; the hostile files are real pickles whose ``__reduce__`` calls ``os.system`` and
real safetensors files whose config names ``os.system``, and each test checks that the marker file the payload
would create does not exist afterwards.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from safetensors import safe_open
from safetensors.torch import save_file

from dqnlab.errors import EXIT_CONFIG_ERROR
from dqnlab.run.ckpt_file import LIGHTNING_CKPT_KEYS, check_checkpoint, peek_checkpoint
from dqnlab.run.resume import collect_rng_states, set_rng_states
from dqnlab.share.agent_file import FORMAT, AgentFileError, read_agent_file
from dqnlab.share.playback import evaluate_agent, load_agent
from dqnlab.train import run
from tests.conftest import PYTHON, ROOT, compose_cfg


def _script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [PYTHON, *name.split(), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def _refused_in_one_line(proc: subprocess.CompletedProcess, marker: Path) -> str:
    assert proc.returncode == EXIT_CONFIG_ERROR, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not marker.exists(), "the payload ran"
    return errors[0]


class _RunsShell:
    """Unpickling this runs a shell command: what a hostile checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished smoke run (its files are only read)."""
    out = tmp_path_factory.mktemp("shared")
    run(compose_cfg(["debug=smoke", "seed=1"], out))
    return out


@pytest.fixture(scope="module")
def agent_file(trained: Path) -> Path:
    proc = _script("scripts/export.py", str(trained))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    path = Path(line["agent_file"])
    assert path == trained / "agent.safetensors" and line["bytes"] == path.stat().st_size
    return path


def _agent_metadata(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


# ---------------------------------------------------------------------------------------------- agent files
def test_exported_agent_plays_with_the_same_return_as_its_checkpoint(trained, agent_file):
    metadata, weights = _agent_metadata(agent_file)
    assert metadata["format"] == FORMAT and metadata["env_steps"] == str(
        peek_checkpoint(trained / "checkpoints" / "last.ckpt")["env_steps"]
    )
    config = json.loads(metadata["config"])
    assert config["env"]["_target_"] == "dqnlab.envs.vector.make_vector_env"
    assert set(config) == {"env", "network", "algo", "eval", "seed"}  # no buffer, optimizer, logger
    assert agent_file.stat().st_size < 100_000 and all(k.startswith("net.") for k in weights)
    assert agent_file.read_bytes()[8:9] == b"{"  # a JSON header, then raw tensor bytes: no pickle, no zip

    proc = _script("scripts/evaluate.py", str(agent_file), "episodes=6", "seed=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_file = json.loads(proc.stdout.strip().splitlines()[-1])
    from_ckpt = evaluate_agent(load_agent(trained / "checkpoints" / "last.ckpt"), episodes=6, seed=5)
    assert from_file["returns"] == from_ckpt["returns"] and from_file["env_steps"] == from_ckpt["env_steps"]


def _craft(path: Path, config: dict, weights: dict[str, torch.Tensor] | None = None) -> Path:
    weights = weights if weights is not None else {"net.0.weight": torch.zeros(2, 4)}
    save_file(weights, str(path), metadata={"format": FORMAT, "env_steps": "1", "config": json.dumps(config)})
    return path


def _good_config(agent_file: Path) -> dict:
    return json.loads(_agent_metadata(agent_file)[0]["config"])


def test_agent_file_naming_os_system_is_refused_and_nothing_runs(agent_file, tmp_path):
    marker = tmp_path / "marker"
    config = {**_good_config(agent_file), "env": {"_target_": "os.system", "_args_": [f"touch {marker}"]}}
    line = _refused_in_one_line(
        _script("scripts/evaluate.py", str(_craft(tmp_path / "evil.safetensors", config))), marker
    )
    assert "env._target_='os.system'" in line and "dqnlab.envs.vector.make_vector_env" in line


@pytest.mark.parametrize(
    "where",
    [
        ("network", None),  # the network itself
        ("network", "hidden_sizes"),  # nested: instantiate() builds nested nodes too
        ("env", "kwargs"),
    ],
    ids=["network", "nested_in_network", "nested_in_env"],
)
def test_any_target_outside_dqnlab_factories_is_refused(agent_file, tmp_path, where):
    marker = tmp_path / "marker"
    # The payload is live: Hydra's own target blocklist lets os.makedirs through, and instantiating it runs it.
    instantiate({"_target_": "os.makedirs", "_args_": [str(tmp_path / "live")]})
    assert (tmp_path / "live").exists()
    payload = {"_target_": "os.makedirs", "_args_": [str(marker)]}  # Hydra itself would run this one
    config = _good_config(agent_file)
    group, key = where
    if key is None:
        config[group] = payload
    else:
        config[group][key] = payload
    with pytest.raises(AgentFileError, match=r"os\.makedirs.*refused without running anything"):
        load_agent(_craft(tmp_path / "evil.safetensors", config))
    assert not marker.exists()


def test_a_pickle_that_runs_code_is_refused_by_evaluate(tmp_path):
    """The issue's checkpoint: ``torch.save`` of an object whose ``__reduce__`` is ``os.system``."""
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _RunsShell(f"touch {marker}")}, evil)
    line = _refused_in_one_line(_script("scripts/evaluate.py", str(evil)), marker)
    assert "posix.system" in line and "could run code" in line
    # The same pickle named as an agent file (the "weights entry is a pickle" case).
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(evil.read_bytes())
    with pytest.raises(AgentFileError):
        load_agent(disguised)
    assert not marker.exists()


def test_a_pickle_that_runs_code_is_refused_by_train_validation(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _RunsShell(f"touch {marker}")}, evil)
    proc = _script("train.py", "debug=smoke", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'run'}")
    line = _refused_in_one_line(proc, marker)
    assert line.startswith(f"error: ckpt_path={evil} holds a Python object (posix.system)")
    # The old, non-zip torch format goes through the same restricted unpickler.
    torch.save({"state_dict": _RunsShell(f"touch {marker}")}, evil, _use_new_zipfile_serialization=False)
    assert "posix.system" in check_checkpoint(str(evil))[0]
    assert not marker.exists()


def test_malformed_agent_files_get_one_clear_error_line(agent_file, tmp_path):
    data = agent_file.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    line = _refused_in_one_line(_script("scripts/evaluate.py", str(truncated)), tmp_path / "none")
    assert "is not a dqnlab agent file, or is truncated or corrupt" in line

    header_cut = tmp_path / "header_cut.safetensors"
    header_cut.write_bytes(data[:40])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(data[:9] + random.Random(3).randbytes(len(data) - 9))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    wrong_shape = _craft(tmp_path / "shape.safetensors", _good_config(agent_file), {"net.0.weight": torch.zeros(3)})
    bad_json = tmp_path / "json.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad_json), metadata={"format": FORMAT, "config": "{not json"})
    cases = {
        header_cut: "truncated or corrupt",
        garbage: "truncated or corrupt",
        foreign: "not a dqnlab agent file",
        wrong_shape: "weights do not fit",
        bad_json: "config or env_steps is not valid",
    }
    for path, expect in cases.items():
        with pytest.raises(AgentFileError, match=expect) as info:
            load_agent(path)
        assert "\n" not in str(info.value)
    with pytest.raises(AgentFileError):
        read_agent_file(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_load_with_weights_only(trained):
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)  # no allowlist
    assert isinstance(ckpt["callbacks"]["ResumeState"]["env"], bytes)  # the env state: read only on a resume
    assert check_checkpoint(str(trained / "checkpoints" / "last.ckpt")) == []


def test_older_checkpoints_with_numpy_arrays_still_pass_the_check(tmp_path):
    old = {k: 0 for k in LIGHTNING_CKPT_KEYS}
    old.update(state_dict={"q_net.net.0.weight": torch.zeros(2, 2)}, optimizer_states=[])
    old["callbacks"] = {"EnvStepper": {"obs": np.zeros((4, 4), np.float32), "last_done": np.ones(4, bool)}}
    old["callbacks"]["ResumeState"] = {"rng": {"numpy": np.random.get_state()}}
    torch.save(old, tmp_path / "old.ckpt")
    assert check_checkpoint(str(tmp_path / "old.ckpt")) == []


def test_rng_states_are_plain_data_and_restore_exactly():
    states = collect_rng_states()
    assert isinstance(states["numpy"]["key"], torch.Tensor)
    expected = (random.random(), np.random.random(), torch.rand(1).item())
    set_rng_states(states)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected
    legacy = {**states, "numpy": np.random.get_state()}  # what older checkpoints hold
    expected = np.random.random()
    set_rng_states(legacy)
    assert np.random.random() == expected


def test_the_video_env_is_closed_when_the_episodes_stop_on_an_error(tmp_path, monkeypatch):
    """``evaluate.py ... video=true`` on an env that crashes mid-episode: the error passes, the video env is closed."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "envs"))
    import closing

    run(compose_cfg(["env=gym", "env.id=closing:Closing-v0", "debug=smoke", "logger=[]", "progress_bar=false"],
                    tmp_path))  # fmt: skip
    agent = load_agent(tmp_path / "checkpoints" / "last.ckpt", env_id="closing:Closing-v0")
    agent.cfg.env.kwargs = {"crash_after": 5}
    closing.CLOSED.clear()
    with pytest.raises(RuntimeError, match="crashed on its step 5"):
        evaluate_agent(agent, episodes=2, video=True, video_dir=tmp_path / "videos")
    assert "rgb_array" in closing.CLOSED and not (tmp_path / "videos").exists()
