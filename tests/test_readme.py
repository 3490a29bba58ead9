"""Every command of README.md and docs/, run as written with only a smoke overlay appended.

A command is a line of a fenced block that starts with ``python``, ``.venv/bin/python``, ``make`` or
``VAR=value python`` (lines ending in ``\\`` continue, and so do lines inside an open quote: ``python -c "...``).
Each runs in a shell, in a temporary copy of the repository (``train.py``, ``scripts/``, ``docs/``, ``conf/``,
``tests/``, ``Makefile``, ``pyproject.toml`` and the venv), with the test's venv first on ``PATH`` (as after
``source .venv/bin/activate``), and fails if it exits non-zero or prints a traceback. The overlay only shortens the run:

- ``python train.py ...``: ``debug=smoke`` appended, the smoke value re-appended for any key of
  ``conf/debug/smoke.yaml`` the command sets itself (``env_steps=50000``), and 2 trials for an Optuna search;
- ``scripts/benchmark.py``: ``--quick``; ``make <target> ARGS="..."``: the same overlay inside ``ARGS``;
- an agent file ``scripts/evaluate.py`` plays (``agent.safetensors``) is exported from such a run first;
- a run dir or checkpoint the command reads (``outputs/run1/checkpoints/last.ckpt``,
  ``outputs/<date>/<time>``, ``multirun/<date>/<time>``, ``runs/<name>``, ``<checkpoint>``) is put at that path in
  the copy first: a ``debug=smoke`` run (a ``-m seed=0,1`` sweep for ``multirun/`` and ``runs/``), made once per
  test worker and copied (with the command's ``VAR=value`` prefix, and the env an ``evaluate.py ... env.id=``
  command names); placeholders become ``2026-12-01/12-00-00``.

A command that cannot run here carries ``# not in CI: <reason>`` in the docs and is skipped with that reason;
``trainer=gpu`` lines run where torch sees a GPU.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Every doc with commands to type; docs/extending.md's run in tests/test_extending_docs.py (with the files they
# write), and docs/architecture.md's block is a diagram of the package, not commands.
DOCS = [
    "README.md",
    "docs/workflow.md",
    "docs/configuration.md",
    "docs/atari.md",
    "docs/results.md",
    "docs/robustness.md",
    "docs/benchmarks.md",
]
ELSEWHERE = {"docs/extending.md": "tests/test_extending_docs.py", "docs/architecture.md": "a diagram, not commands"}
MARKER = re.compile(r"\bnot in CI:\s*(?P<reason>.+?)\s*$")
COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:python|\.venv/bin/python|make)(?:\s|$)")
PLACEHOLDERS = {
    "<run dir>": "outputs/2026-12-01/12-00-00",
    "<checkpoint>": "outputs/2026-12-01/12-00-00/checkpoints/last.ckpt",
    "<date>": "2026-12-01",
    "<time>": "12-00-00",
    "<dir>": "outputs/2026-12-01/12-00-00",
}
# A path a command reads: a run dir under outputs/ (up to checkpoints/, wandb/, videos/) or a sweep dir.
RUN_REF = re.compile(
    r"(?<![\w./-])(?P<dir>(?:outputs|multirun|runs)/[^\s'\"]+?)(?=/checkpoints/|/wandb/|/videos/|[\s'\"]|$)"
)
SMOKE_RUN = ["debug=smoke"]
SMOKE_SWEEP = ["-m", "seed=0,1", "debug=smoke"]
TIMEOUT_S = 300


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str  # the command as written, comment removed
    comment: str

    @property
    def id(self) -> str:
        short = re.sub(r"^(?:\.venv/bin/)?python ", "", self.text)
        return f"{Path(self.doc).stem}:{self.line}:{short}"


def _split_comment(line: str) -> tuple[str, str]:
    """Split a shell line at its first ``#`` outside quotes that starts a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def _open_quote(text: str) -> bool:
    """Whether ``text`` ends inside a quoted string (its command goes on over the next lines)."""
    try:
        shlex.split(text, comments=True)
    except ValueError as err:  # also "No escaped character": a trailing backslash, handled as a continuation
        return "quotation" in str(err)
    return False


def extract_commands(doc: str) -> list[Command]:
    """Every command line of the fenced blocks of ``doc`` (relative to the repository root)."""
    commands = []
    in_block = False
    pending: tuple[int, str] | None = None
    quoted = False  # the pending line left a quote open (``python -c "`` over several lines): keep its newlines
    for number, raw in enumerate((ROOT / doc).read_text().splitlines(), start=1):
        if raw.lstrip().startswith("```"):
            in_block, pending = not in_block, None
            continue
        if not in_block:
            continue
        if pending is not None:  # a continuation of the line above
            start, text = pending
            text = text + "\n" + raw if quoted else text + " " + raw.strip()
        else:
            start, text = number, raw.strip()
        quoted = COMMAND.match(text) is not None and _open_quote(text)
        if quoted:
            pending = (start, text)
            continue
        code, _ = _split_comment(text)
        if code.endswith("\\"):
            pending = (start, text[: text.rindex("\\")].rstrip())
            continue
        pending = None
        code, comment = _split_comment(text)
        if COMMAND.match(code):
            commands.append(Command(doc, start, code, comment))
    return commands


def _all_commands() -> list[Command]:
    seen: set[str] = set()
    out = []
    for doc in DOCS:
        for cmd in extract_commands(doc):
            if cmd.text not in seen:  # the same command in two places runs once
                seen.add(cmd.text)
                out.append(cmd)
    return out


def _smoke_keys() -> dict[str, str]:
    """Flattened ``key -> value`` of conf/debug/smoke.yaml (what the overlay must win over)."""

    def flat(node: dict, prefix: str = "") -> dict[str, str]:
        out = {}
        for key, value in node.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    return flat(yaml.safe_load((ROOT / "conf" / "debug" / "smoke.yaml").read_text()) or {})


def train_overlay(args: list[str]) -> list[str]:
    """What to append to the overrides of one train.py command so it ends in seconds."""
    smoke = _smoke_keys()
    overlay = [] if "debug=smoke" in args else ["debug=smoke"]
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if "=" in arg and key in smoke:
            overlay.append(f"{key}={smoke[key]}")  # a later override wins over the command's own
    if any(a.startswith("hparams_search=") for a in args):
        # Two trials; the search space's batches (up to 512 transitions) need more than smoke's 100-step prefill.
        overlay += ["hydra.sweeper.n_trials=2", "collector.learning_starts=600", "env_steps=800"]
    return overlay


def with_overlay(text: str) -> str:
    """The command with its smoke overlay appended (inside ``ARGS="..."`` for make)."""
    words = shlex.split(text)
    if words[0] == "make":
        target = next((w for w in words[1:] if "=" not in w), "")
        args = next((w.split("=", 1)[1] for w in words if w.startswith("ARGS=")), "")
        if target == "bench":
            args = f"{args} --quick"
        elif target == "train":
            args = " ".join([args, *train_overlay(shlex.split(args))])
        rest = [w for w in words[1:] if not w.startswith("ARGS=")]
        return shlex.join(["make", *rest]) + (f" ARGS={shlex.quote(args.strip())}" if args.strip() else "")
    script = next((w for w in words if w.endswith(".py")), "")
    tail = []
    if script == "train.py":
        tail = train_overlay(words[words.index(script) + 1 :])
    elif script.endswith("benchmark.py"):
        tail = ["--quick"]
    return " ".join([text, *map(shlex.quote, tail)])


def substitute(text: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    return text


def prerequisites(text: str) -> list[str]:
    """Run dirs and sweep dirs the command reads, to be made first (a bare ``hydra.run.dir=`` or
    ``hydra.sweep.dir=`` is written, not read).
    """
    written = re.search(r"hydra\.(?:run|sweep)\.dir=(\S+)", text)
    resumes = "ckpt_path=" in text
    refs = []
    for match in RUN_REF.finditer(text):
        ref = match.group("dir").replace("*", "12-00-00")
        if written and ref == written.group(1) and not resumes:
            continue
        if ref not in refs:
            refs.append(ref)
    return refs


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as after activating .venv
    env.setdefault("WANDB_MODE", "offline")  # as CI sets it
    env.setdefault("WANDB_SILENT", "true")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _repo_copy(tmp_path: Path) -> Path:
    """A copy of what the commands touch: scripts are copied (they locate the repo from their own path)."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy2(ROOT / "train.py", copy / "train.py")
    shutil.copytree(ROOT / "scripts", copy / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("conf", "Makefile", "pyproject.toml", "tests"):  # tests/envs: the docs' example envs
        (copy / name).symlink_to(ROOT / name)
    # docs/: what results.py reads (docs/results/) and benchmark.py --append writes: a copy, never the real one.
    shutil.copytree(ROOT / "docs", copy / "docs")
    (copy / ".venv").symlink_to(Path(sys.prefix))
    return copy


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    output = proc.stdout + proc.stderr
    # "leaked": nanobind's report of ale-py's C++ vector env still alive at exit (an Atari run must free it).
    assert proc.returncode == 0 and "Traceback" not in output and "leaked" not in output, (
        f"{what}\nexit status {proc.returncode}\n--- output (last 4000 chars) ---\n{output[-4000:]}"
    )


@pytest.fixture(scope="session")
def made_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Smoke run dirs made once per worker (``run``, ``multirun``) and copied to where a command reads them."""
    return {"root": tmp_path_factory.mktemp("made_runs")}


def agent_files(text: str) -> list[str]:
    """Agent files ``scripts/evaluate.py`` plays in the command (``agent.safetensors``), to be exported first."""
    words = shlex.split(text)
    if not any(w.endswith("scripts/evaluate.py") for w in words):
        return []
    return [w for w in words if w.endswith(".safetensors")]


def _make_agent_file(path: str, cwd: Path, made: dict[str, Path]) -> None:
    if (cwd / path).exists():
        return
    _make_prerequisite("outputs/agent_source", cwd, made)  # the smoke run, exported as the docs export theirs
    command = shlex.join(["python", "scripts/export.py", "outputs/agent_source", path])
    _check(_run(command, cwd), f"making the agent file the command plays: {command}")


def run_source(command: str) -> tuple[str, list[str]]:
    """What the run a command reads must have been trained with: the command's ``VAR=value`` prefix
    (``PYTHONPATH=tests/envs``) and, for ``scripts/evaluate.py ... env.id=<module:Id>``, that env.
    """
    words = shlex.split(command)
    first = next(i for i, w in enumerate(words) if not re.match(r"^[A-Z_][A-Z0-9_]*=", w))
    prefix = " ".join(words[:first])
    plays = any(w.endswith("scripts/evaluate.py") for w in words)
    env_id = next((w for w in words if w.startswith("env.id=")), None) if plays else None
    return prefix, ["env=gym", env_id] if env_id else []


def _make_prerequisite(ref: str, cwd: Path, made: dict[str, Path], source: tuple[str, list[str]] = ("", [])) -> None:
    if (cwd / ref).exists():
        return
    prefix, env_args = source
    kind = "multirun" if ref.startswith(("multirun/", "runs/")) else "run"  # runs/<name>: a sweep dir in the docs
    key = " ".join([kind, prefix, *env_args])
    if key not in made:
        target = made["root"] / f"{kind}{len(made)}"
        if kind == "multirun":
            args = [*SMOKE_SWEEP, *env_args, f"hydra.sweep.dir={target}"]
        else:
            args = [*SMOKE_RUN, *env_args, f"hydra.run.dir={target}"]
        command = " ".join(filter(None, [prefix, shlex.join(["python", "train.py", *args])]))
        _check(_run(command, cwd), f"making the run dir the command reads: {command}")
        made[key] = target
    shutil.copytree(made[key], cwd / ref)


COMMANDS = _all_commands()


def test_the_docs_have_commands():
    docs = {c.doc for c in COMMANDS}
    assert docs == set(DOCS), f"no command blocks found in {set(DOCS) - docs}"
    # A new doc with commands is run here or says where it is run.
    with_commands = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if extract_commands(f"docs/{p.name}")}
    assert with_commands <= set(DOCS) | set(ELSEWHERE), f"commands not run by any test: {with_commands - set(DOCS)}"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_documented_command_runs(cmd: Command, tmp_path: Path, made_runs: dict[str, Path]):
    marker = MARKER.search(cmd.comment)
    if marker:
        pytest.skip(f"{cmd.doc}:{cmd.line}: {marker.group('reason')}")
    if "trainer=gpu" in cmd.text:
        import torch

        if not torch.cuda.is_available():
            pytest.skip(f"{cmd.doc}:{cmd.line}: trainer=gpu needs a GPU (mark it `# not in CI: needs a GPU`)")
    cwd = _repo_copy(tmp_path)
    command = with_overlay(substitute(cmd.text))
    if command.startswith("make "):
        dry = _run(command.replace("make ", "make -n ", 1), cwd)
        if dry.returncode != 0 or "pip" in dry.stdout:
            pytest.skip(f"`{command}` would install first: no .venv/.dqnlab-installed newer than pyproject.toml")
    for ref in prerequisites(command):
        _make_prerequisite(ref, cwd, made_runs, run_source(command))
    for path in agent_files(command):
        _make_agent_file(path, cwd, made_runs)
    _check(_run(command, cwd), f"{cmd.doc}:{cmd.line}: `{cmd.text}`\nran as: {command}")
