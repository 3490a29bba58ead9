"""docs/extending.md end to end: every command of each section, in order, as the page shows it, with shorter budgets.

The commands are read from the page with ``tests/test_readme.py``'s rules (a line of a fenced block starting with
``python`` or ``VAR=value python``). Each ``## `` section that has commands is one test: its commands run in order
in a shell, in a temporary copy of the repository (``train.py`` and ``scripts/`` copied, ``conf/`` and
``examples/`` linked, the venv's ``bin`` first on ``PATH``), so ``outputs/...`` lands in the test's tmp dir and
each command reads what the one before it wrote. A command fails the test if it exits non-zero or prints a
traceback. The only changes, visible in :func:`shortened`:

- ``env_steps=N`` becomes ``env_steps=N // 16`` (a resume's doubled budget stays doubled);
- ``train.py`` gets ``eval.episodes=2 progress_bar=false``, and a fresh run (no ``ckpt_path=``) also
  ``collector.learning_starts=200``, so its sixteenth of the budget still learns for 425 env steps;
- ``scripts/evaluate.py`` plays ``episodes=2``.

Besides the exit status, the page's claims are checked: each ``update:`` line it quotes in a ``text`` block is
printed by its section's runs, each resume command is the one the run before it printed (``next:``), each
``python``/``yaml`` block is quoted verbatim from ``examples/``, and a network of your own plays only when the
command line allows its module, as the page says. Last, ``munchausen_target`` is checked against values worked
out by hand.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from dqnlab.data.dataset import Batch
from dqnlab.learn.networks import MLP, build_network
from dqnlab.learn.rl_math import dqn_loss, td_target
from dqnlab.share.agent_file import AgentFileError
from dqnlab.share.playback import load_agent
from examples.my_algos import MunchausenDQN, munchausen_target
from examples.my_networks import LayerNormMLP
from tests.test_readme import MARKER, Command, extract_commands

ROOT = Path(__file__).resolve().parents[1]
DOC = "docs/extending.md"
EXAMPLES = ROOT / "examples"
# env_steps=N in the page runs N // 16 env steps here (10,000: 625, 200 of them the random prefill).
BUDGET_DIVISOR = 16
TIMEOUT_S = 300


def sections() -> dict[str, list[Command]]:
    """The page's commands grouped by their ``## `` section, in page order."""
    headings = [(n, line[3:].strip()) for n, line in enumerate(_lines(), start=1) if line.startswith("## ")]
    grouped: dict[str, list[Command]] = {}
    for cmd in extract_commands(DOC):
        heading = [title for n, title in headings if n < cmd.line][-1]
        grouped.setdefault(heading, []).append(cmd)
    return grouped


def _lines() -> list[str]:
    return (ROOT / DOC).read_text().splitlines()


def fenced_blocks(language: str) -> list[tuple[str, str]]:
    """``(section heading, block text)`` of every fenced block of ``language`` in the page."""
    blocks, heading, current = [], "", None
    for line in _lines():
        if current is None and line.startswith("## "):
            heading = line[3:].strip()
        if line.startswith("```"):
            if current is None and line[3:].strip() == language:
                current = []
            elif current is not None:
                blocks.append((heading, "\n".join(current)))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def shortened(text: str) -> str:
    """The command with the test's budgets (see the module docstring)."""
    words = shlex.split(text)
    script = next((w for w in words if w.endswith(".py")), "")
    out = []
    for word in words:
        if script == "train.py" and word.startswith("env_steps="):
            word = f"env_steps={int(word.split('=', 1)[1]) // BUDGET_DIVISOR}"
        elif script.endswith("evaluate.py") and word.startswith("episodes="):
            word = "episodes=2"
        out.append(word)
    if script == "train.py":
        out += ["eval.episodes=2", "progress_bar=false"]
        out += [] if any(w.startswith("ckpt_path=") for w in words) else ["collector.learning_starts=200"]
    elif script.endswith("evaluate.py") and not any(w.startswith("episodes=") for w in words):
        out.append("episodes=2")
    return shlex.join(out)


def _repo_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy2(ROOT / "train.py", copy / "train.py")
    shutil.copytree(ROOT / "scripts", copy / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("conf", "examples"):
        (copy / name).symlink_to(ROOT / name)
    return copy


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as after activating .venv
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("PYTHONPATH", None)  # only what the command itself sets
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def _printed_resumes(output: str, cwd: Path) -> dict[str, list[str]]:
    """The ``train.py ckpt_path=...`` commands a run printed, by their ``ckpt_path=``, paths relative to ``cwd``."""
    found = {}
    for line in output.splitlines():
        if "train.py ckpt_path=" in line:
            words = [w.replace(f"{cwd.resolve()}/", "") for w in shlex.split(line.split("#")[0])]
            found[next(w for w in words if w.startswith("ckpt_path="))] = words
    return found


SECTIONS = sections()


def test_the_page_has_the_three_examples() -> None:
    assert list(SECTIONS) == [
        "Your own env", "Wrappers and discrete observations", "Your own network", "Your own loss: Munchausen-DQN",
        "Your own exploration: Boltzmann",
    ]  # fmt: skip
    named = set(re.findall(r"\bexamples/[\w/]+\.(?:py|yaml)", (ROOT / DOC).read_text()))
    assert len(named) >= 5 and not [n for n in named if not (ROOT / n).is_file()], named


@pytest.mark.slow
@pytest.mark.parametrize("heading", list(SECTIONS), ids=lambda h: re.sub(r"\W+", "-", h.lower()).strip("-"))
def test_a_section_runs_as_written(heading: str, tmp_path: Path) -> None:
    cwd = _repo_copy(tmp_path)
    outputs: list[str] = []
    printed: dict[str, list[str]] = {}
    for cmd in SECTIONS[heading]:
        marker = MARKER.search(cmd.comment)
        if marker:
            continue
        command = shortened(cmd.text)
        proc = _run(command, cwd)
        output = proc.stdout + proc.stderr
        where = f"{DOC}:{cmd.line}: `{cmd.text}`\nran as: {command}"
        assert proc.returncode == 0 and "Traceback" not in output, f"{where}\nexit {proc.returncode}\n{output[-4000:]}"
        words = shlex.split(command)
        if "train.py" in words and any(w.startswith("ckpt_path=") for w in words):
            # The page's resume is the command the run before it printed, plus PYTHONPATH and a run dir's name.
            added = ("hydra.run.dir=", "eval.episodes=", "progress_bar=")
            mine = [w for w in words if not re.match(r"[A-Z_][A-Z0-9_]*=", w) and not w.startswith(added)]
            ckpt = next(w for w in mine if w.startswith("ckpt_path="))
            assert ckpt in printed, f"{where}: no run before it printed a command with {ckpt}"
            assert mine == printed[ckpt], f"{where}\nthe run printed: {shlex.join(printed[ckpt])}"
        if "scripts/evaluate.py" in words:
            assert json.loads(proc.stdout.splitlines()[-1])["episodes"] == 2, where
        printed.update(_printed_resumes(output, cwd))
        outputs.append(output)
    everything = "\n".join(outputs)
    for _, block in (b for b in fenced_blocks("text") if b[0] == heading):
        for quoted in (line.strip() for line in block.splitlines() if line.startswith("update:")):
            lines = [x.strip() for x in everything.splitlines()]
            assert any(x == quoted or x.endswith(f"- {quoted}") for x in lines), f"{DOC} quotes `{quoted}`"
    if heading == "Your own network":
        # The page says a file never makes dqnlab import your network's module: without allow_module, one line.
        run_dir = re.search(r"hydra\.run\.dir=(\S+)", SECTIONS[heading][0].text).group(1)
        with pytest.raises(AgentFileError, match="add allow_module=my_networks"):
            load_agent(cwd / run_dir / "checkpoints" / "last.ckpt", env_id="my_env:Catch-v0")


@pytest.mark.parametrize("language", ["python", "yaml"])
def test_the_page_quotes_the_examples_verbatim(language: str) -> None:
    files = [p for p in EXAMPLES.rglob(f"*.{'py' if language == 'python' else 'yaml'}")]
    texts = [p.read_text() for p in files]
    blocks = fenced_blocks(language)
    assert blocks, f"{DOC} has no {language} block"
    for _, block in blocks:
        assert any(block in text for text in texts), (
            f"{DOC} quotes a {language} block found in no examples/ file:\n{block}"
        )


def _batch(actions: list[int], rewards: list[float], terminated: list[bool], discounts: list[float]) -> Batch:
    n = len(actions)
    return Batch(
        obs=torch.zeros(n, 4),
        actions=torch.tensor(actions),
        rewards=torch.tensor(rewards),
        next_obs=torch.ones(n, 4),
        terminated=torch.tensor(terminated),
        truncated=torch.zeros(n, dtype=torch.bool),
        weights=torch.tensor([1.0, 0.5, 2.0][:n]),
        indices=torch.arange(n),
        discounts=torch.tensor(discounts),
    )


def test_munchausen_target_by_hand() -> None:
    # tau = 1 keeps the arithmetic short. The target network rates s as q = [0, ln 3]: pi(.|s) = [1/4, 3/4], so
    # tau * log pi(0|s) = ln(1/4) = -1.386, clipped to l0 = -1; tau * log pi(1|s) = ln(3/4) = -0.288 (no clip).
    # It rates s' as q = [1, 1]: pi(.|s') = [1/2, 1/2], soft value = sum pi * (q - log pi) = 1 + ln 2.
    batch = _batch(actions=[0, 1, 1], rewards=[1.0, 0.0, 0.5], terminated=[False, True, False],
                   discounts=[0.9, 0.9, 0.81])  # fmt: skip
    q_target = torch.tensor([[0.0, math.log(3.0)]]).expand(3, 2)
    next_q_target = torch.ones(3, 2)
    target = munchausen_target(batch.rewards, batch.terminated, batch.discounts, batch.actions, q_target,
                               next_q_target, tau=1.0, alpha=0.9, l0=-1.0)  # fmt: skip
    by_hand = [
        1.0 + 0.9 * -1.0 + 0.9 * (1 + math.log(2)),  # = 1.623832: bonus clipped at l0, bootstrapped
        0.0 + 0.9 * math.log(0.75) + 0.0,  # = -0.258914: terminated, so only the reward and the bonus
        0.5 + 0.9 * math.log(0.75) + 0.81 * (1 + math.log(2)),  # = 1.612535: a 2-step return, discount gamma**2
    ]
    assert target.tolist() == pytest.approx(by_hand, abs=1e-6)
    assert by_hand == pytest.approx([1.623832, -0.258914, 1.612535], abs=1e-6)
    # With action 1 invalid in s': pi(.|s') = [1, 0], soft value = 1 - log 1 = 1; the bonus is unchanged.
    only_0 = torch.tensor([[True, False]]).expand(3, 2)
    masked = munchausen_target(batch.rewards, batch.terminated, batch.discounts, batch.actions, q_target,
                               next_q_target, tau=1.0, alpha=0.9, l0=-1.0, next_mask=only_0)  # fmt: skip
    by_hand = [1.0 - 0.9 + 0.9 * 1.0, 0.9 * math.log(0.75), 0.5 + 0.9 * math.log(0.75) + 0.81 * 1.0]
    assert masked.tolist() == pytest.approx(by_hand, abs=1e-6)


def test_munchausen_target_without_the_bonus_and_at_low_temperature_is_dqns() -> None:
    # alpha = 0 drops the bonus; as tau -> 0 the softmax policy becomes the greedy one and the entropy term vanishes.
    batch = _batch(actions=[0, 1, 1], rewards=[1.0, 0.0, 0.5], terminated=[False, True, False],
                   discounts=[0.9, 0.9, 0.81])  # fmt: skip
    next_q = torch.tensor([[0.3, 1.2], [2.0, -1.0], [0.5, 0.1]])
    target = munchausen_target(batch.rewards, batch.terminated, batch.discounts, batch.actions, torch.zeros(3, 2),
                               next_q, tau=1e-3, alpha=0.0, l0=-1.0)  # fmt: skip
    expected = td_target(batch.rewards, batch.terminated, next_q, batch.discounts)
    assert torch.allclose(target, expected, atol=1e-5)


def test_munchausen_td_loss_uses_the_target_net_the_weights_and_autograd() -> None:
    torch.manual_seed(0)
    module = MunchausenDQN(MLP((4,), 2, hidden_sizes=[8]), partial(torch.optim.Adam, lr=1e-3), loss="huber")
    torch.nn.init.normal_(module.target_net.net[-1].weight)  # a target net unlike the online one
    assert module.overridden == ["td_loss"] and module.gradients == "autograd"
    assert (module.tau, module.alpha, module.l0) == (0.03, 0.9, -1.0)  # the paper's values by default
    batch = _batch(actions=[0, 1, 1], rewards=[1.0, 0.0, 0.5], terminated=[False, True, False],
                   discounts=[0.99, 0.99, 0.99**3])  # fmt: skip
    loss, q_mean, errors = module.td_loss(batch)
    q_taken = module.q_net(batch.obs).gather(1, batch.actions[:, None]).squeeze(1)
    with torch.no_grad():
        q_s, q_next = module.target_net(batch.obs), module.target_net(batch.next_obs)
        target = munchausen_target(batch.rewards, batch.terminated, batch.discounts, batch.actions, q_s, q_next,
                                   tau=0.03, alpha=0.9, l0=-1.0)  # fmt: skip
    assert loss.item() == pytest.approx(dqn_loss(q_taken, target, "huber", batch.weights).item(), rel=1e-6)
    assert q_mean.item() == pytest.approx(q_taken.mean().item(), rel=1e-6)
    assert torch.allclose(errors, (q_taken - target).abs().detach())
    loss.backward()
    assert all(p.grad is not None for p in module.q_net.parameters())
    assert all(p.grad is None for p in module.target_net.parameters())


@pytest.mark.parametrize("num_atoms", [1, 51])
def test_the_example_network_builds_as_dqnlab_builds_it(num_atoms: int) -> None:
    # build_network completes the partial with obs_shape and num_actions, and num_atoms only for C51.
    net = build_network(partial(LayerNormMLP, hidden_size=16), (50,), 3, num_atoms)
    out = net(torch.zeros(4, 50, dtype=torch.uint8))
    assert out.shape == ((4, 3) if num_atoms == 1 else (4, 3, 51))
