"""The package's shape: no import cycle inside ``rlff_utils``, and the bottom layer imports nothing.

Imports are read from the source (module level and inside functions both count, since a function's
import runs whenever it is called); imports under ``if TYPE_CHECKING:`` never run and do not
count. Importing ``a.b.c`` runs ``a/b/__init__.py`` first, so it counts as an import of the
package ``a.b`` too (except from inside that package, which Python has already started).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlff_utils"


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return skip


def _targets(module: str, is_package: bool, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level:
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
    out = []
    for name in names:
        while name and name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name not in modules:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the packages above run first
            target = ".".join(parts[:i])
            if target in modules and target != module and not module.startswith(target + "."):
                out.append(target)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the project modules it imports (at run time)."""
    modules = _modules(root)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        graph[name] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip
                       for t in _targets(name, path.name == "__init__.py", node, modules)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles inside rlff_utils: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("bottom", ["rlff_utils.text", "rlff_utils.stats", "rlff_utils.sampling"])
def test_the_bottom_layer_imports_nothing_of_the_project(bottom):
    assert import_graph()[bottom] == set()


def test_the_critic_labels_import_only_the_text_helpers():
    assert import_graph()["rlff_utils.critic.labels"] <= {"rlff_utils.text"}


def test_engines_and_agents_never_import_a_stage():
    """Dependencies point down: the stage modules (one per notebook step) sit above the engines.
    ``data`` is left out: besides the data stage it holds the readers of its artefacts
    (``load_contexts``, ``load_eval_cases``, ``load_dialogues``), the run's data interface."""
    graph = import_graph()
    stages = {"rlff_utils.simulate", "rlff_utils.evaluate", "rlff_utils.grpo",
              "rlff_utils.validation", "rlff_utils.planted", "rlff_utils.pipeline"}
    below = [m for m in graph if m.startswith(("rlff_utils.critic", "rlff_utils.reward", "rlff_utils.backends"))
             or m in ("rlff_utils.rollout", "rlff_utils.rewards", "rlff_utils.agents", "rlff_utils.outcomes")]
    upward = {m: sorted(graph[m] & stages) for m in below if graph[m] & stages}
    assert not upward, f"modules below the stages import a stage: {upward}"


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "rlff_utils"
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def test_the_cycle_check_sees_function_local_and_package_imports(tmp_path):
    """A sabotage: a cycle hidden in a function, and one through a package's __init__, are both found;
    a type-only import is not a cycle."""
    local = _write(tmp_path / "a", {"__init__.py": "", "low.py": "def f():\n    from .high import g\n",
                                    "high.py": "from .low import f\n"})
    assert cycles(import_graph(local)) == [["rlff_utils.high", "rlff_utils.low"]]
    via_init = _write(tmp_path / "b", {"__init__.py": "", "pkg/__init__.py": "from .deep import x\n",
                                       "pkg/deep.py": "from ..top import y\n", "pkg/labels.py": "",
                                       "top.py": "from .pkg.labels import z\n"})
    assert cycles(import_graph(via_init)) == [["rlff_utils.pkg", "rlff_utils.pkg.deep", "rlff_utils.top"]]
    typed = _write(tmp_path / "c", {"__init__.py": "", "low.py": "from typing import TYPE_CHECKING\n"
                                    "if TYPE_CHECKING:\n    from .high import g\n", "high.py": "from .low import f\n"})
    assert cycles(import_graph(typed)) == []
