"""The import rules of DESIGN.md's layer table, read from the source (every import, including those inside
functions; `if TYPE_CHECKING:` blocks excepted, since they never run).

- No import cycles between sposd modules. `from pkg import submodule` counts as an import of the submodule only.
- The pure layers import only the layers below them (LOWER below), and `sposd.ops` / `sposd.text` import no
  third-party package but torch (ops) or none at all (text).
- `import sposd.ops, sposd.algos` loads none of the heavy stack (checked in a fresh interpreter).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SPOSD = Path(__file__).resolve().parents[1] / "sposd"

# What each pure layer (a sub-package or a top-level module of sposd) may import of the others.
LOWER = {
    "text": set(),
    "types": set(),
    "errors": set(),
    "ops": set(),
    "algos": {"ops", "text", "types"},
    "rewards": {"text"},
    "rollout": {"types"},
    "sync": {"models"},
    "data": {"errors", "ops", "rewards", "text", "types"},
}
THIRD_PARTY = {"ops": {"torch"}, "text": set()}
HEAVY = ("hydra", "omegaconf", "deepspeed", "vllm", "transformers", "peft")


def _modules() -> dict[str, Path]:
    out = {}
    for f in SPOSD.rglob("*.py"):
        parts = f.relative_to(SPOSD.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(mod: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(sposd modules, third-party top-level names) that `mod` imports anywhere outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}  # fmt: skip
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            names += subs if len(subs) == len(node.names) else [base, *subs]
    ours, theirs = set(), set()
    for name in names:
        if name.split(".")[0] != "sposd":
            theirs.add(name.split(".")[0])
            continue
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name != mod:
            ours.add(name)
    return ours, theirs


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "sposd"


def test_no_import_cycles(graph):
    deps = {m: ours for m, (ours, _) in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in deps.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(deps):
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("layer", sorted(LOWER))
def test_pure_layers_import_only_the_layers_below(graph, layer):
    used = {_layer(d) for m, (ours, _) in graph.items() if _layer(m) == layer for d in ours} - {layer}
    assert used <= LOWER[layer], f"sposd.{layer} imports {sorted(used - LOWER[layer])}, outside {sorted(LOWER[layer])}"


@pytest.mark.parametrize("layer", sorted(THIRD_PARTY))
def test_the_leaf_layers_need_no_third_party_package_but_torch(graph, layer):
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    used = {t for m, (_, theirs) in graph.items() if _layer(m) == layer for t in theirs} - stdlib
    assert used <= THIRD_PARTY[layer], f"sposd.{layer} imports {sorted(used)}"


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    # sabotage-style check of the reader itself: a lazy import is an edge, a TYPE_CHECKING one is not
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sposd.loop import train\n"
                    "def f():\n    from sposd.learner import passes\n    import vllm\n")  # fmt: skip
    modules = {"sposd.ops.m": path, "sposd.learner": path, "sposd.learner.passes": path, "sposd.loop.train": path}
    assert _imports("sposd.ops.m", path, modules) == ({"sposd.learner.passes"}, {"typing", "vllm"})


def test_ops_and_algos_import_without_the_heavy_stack():
    code = f"import sys, sposd.ops, sposd.algos; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
