"""The house rule, parsed from the code: a floor imports only from its own floor or the ones below, and nothing
imports in a circle (``docs/architecture.md``).

Floors, bottom up: the ground (errors, atomic files, the check vocabulary, legacy paths, the conf/ key reader);
the envs, the data (replay and collector) and the learner; the run; the cluster and sharing and results; and on
top ``dqnlab.train`` and ``dqnlab.validate``, which gather the rest. Every import counts, the lazy ones inside
functions and the type-only ones too: a circle through a lazy import is still a circle for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "dqnlab"
FLOORS: dict[str, int] = {
    "dqnlab": 0,  # the package itself (__version__)
    "dqnlab.errors": 0,
    "dqnlab.io": 0,
    "dqnlab.checks": 0,
    "dqnlab.legacy": 0,
    "dqnlab.conf_keys": 0,
    "dqnlab.startup": 0,
    "dqnlab.envs": 1,
    "dqnlab.data": 1,
    "dqnlab.learn": 1,
    "dqnlab.run": 2,
    "dqnlab.cluster": 3,
    "dqnlab.share": 3,
    "dqnlab.train": 4,
    "dqnlab.validate": 4,
}
MAX_LINES = 440  # "about 400" (at most 10% over): a module a newcomer can hold in their head


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path, prefix: str) -> set[str]:
    """The modules starting with ``prefix`` that ``path`` imports anywhere (top level, functions, TYPE_CHECKING)."""
    me = _module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from dqnlab.learn import checks`
    return {m for m in found if m == prefix or m.startswith(prefix + ".")}


def _graph(root: Path, prefix: str) -> dict[str, set[str]]:
    files = {_module_name(p, root): p for p in root.rglob("*.py") if prefix in _module_name(p, root).split(".")[0]}
    graph = {}
    for name, path in files.items():
        # keep only names that are modules (drop `from dqnlab.learn.module import DQNModule`'s class part)
        graph[name] = {m for m in _imports(path, root, prefix) if m in files and m != name}
    return graph


def _floor(module: str) -> int:
    for depth in range(module.count("."), -1, -1):
        key = ".".join(module.split(".")[: depth + 1])
        if key in FLOORS:
            return FLOORS[key]
    raise AssertionError(f"{module} is on no floor: add its folder to FLOORS here and to docs/architecture.md")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_every_module_sits_on_a_floor_and_imports_nothing_above_it() -> None:
    graph = _graph(SRC, "dqnlab")
    assert len(graph) > 30
    upward = [
        f"{me} (floor {_floor(me)}) imports {dep} (floor {_floor(dep)})"
        for me, deps in sorted(graph.items())
        for dep in sorted(deps)
        if _floor(dep) > _floor(me)
    ]
    assert not upward, "imports from a floor above:\n" + "\n".join(upward)


@pytest.mark.parametrize(("root", "prefix"), [(SRC, "dqnlab"), (ROOT / "scripts", "bench")])
def test_nothing_imports_in_a_circle(root: Path, prefix: str) -> None:
    graph = _graph(root, prefix)
    assert graph, f"no modules named {prefix}* under {root}"
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_checks_find_what_they_look_for() -> None:
    # The cycle finder and the floor rule themselves, on hand-made graphs.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert _floor("dqnlab.learn.fast.graphs") == 1 and _floor("dqnlab.share.stats") == 3


def test_no_module_is_too_long_to_hold_in_your_head() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*PACKAGE.rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_docs_name_files_that_exist() -> None:
    import re

    pattern = re.compile(r"\b((?:src/dqnlab/)?(?:envs|data|learn|run|cluster|share)/[\w/]+\.py)")
    for doc in ("docs/architecture.md", "README.md"):
        named = set(pattern.findall((ROOT / doc).read_text()))
        assert named, doc
        missing = [n for n in sorted(named) if not (PACKAGE / n.removeprefix("src/dqnlab/")).is_file()]
        assert not missing, f"{doc} names files that do not exist: {missing}"
