"""The package's structure, checked: imports point down the layers only, no import cycles, and imports
inside functions only for optional or heavy dependencies (each with a comment saying why).

Layers, bottom to top (README, "Layout"): foundation (errors, io, runinfo, schema, tracking) < data < kd < models <
evaluation < training < assemble < experiment < judge < tools (bench, shipped, the public-name modules, __main__). A module may
import its own package and any package below it.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS: List[List[str]] = [
    ["errors"], ["io"], ["runinfo"], ["schema"], ["tracking"],
    ["data"], ["kd"], ["models"], ["evaluation"], ["training"], ["assemble"], ["experiment"], ["judge"],
    ["bench", "shipped", "objective", "losses", "evaluate", "__main__"],
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
# Imported inside functions on purpose: optional, or heavy and needed by few commands.
LOCAL_OK = ("peft", "wandb", "matplotlib", "huggingface_hub", "torch.distributed.fsdp",
            "torch.distributed.device_mesh", "torch.distributed.checkpoint", "trl", "liger_kernel",
            "vllm",
            "datasets")   # TRL's dependency, there only with the [bench] extra (bench.e2e's TRL side)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "adakd").rglob("*.py"))}


def resolve(mod: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(mod: str, path: Path, known: Set[str]) -> List[Tuple[str, int, bool, str]]:
    """(imported adakd module or external module, line, at module level?, source line) of each import."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(mod, path, node)
            # `from pkg import sub` imports the submodule pkg.sub where one exists
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            out.append((name, node.lineno, id(node) in top, lines[node.lineno - 1]))
    return out


def unit_of(mod: str) -> Optional[str]:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "adakd" else None


def test_every_package_has_a_layer():
    units = {unit_of(m) for m in modules() if unit_of(m)}
    assert units - set(RANK) == set(), "a new top-level module or package needs a place in LAYERS"


def test_imports_point_down_only():
    known = set(modules())
    bad = []
    for mod, path in modules().items():
        own = unit_of(mod)
        if own is None:
            continue
        for name, line, _, _ in imports_of(mod, path, known):
            other = unit_of(name)
            if other is None or other == own:
                continue
            if RANK[other] >= RANK[own]:
                bad.append(f"{path.relative_to(SRC)}:{line}: {own} (layer {RANK[own]}) imports {name} "
                           f"(layer {RANK[other]})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    known = set(modules())
    graph = {m: sorted({n for n, *_ in imports_of(m, p, known) if n in known and n != m}) for m, p in
             modules().items()}
    state: Dict[str, int] = {}
    stack: List[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            # importing a package runs its __init__, which is not a cycle with the package's own modules
            if n == m.rsplit(".", 1)[0] and modules()[n].name == "__init__.py":
                continue
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_function_local_imports_only_for_optional_dependencies():
    known = set(modules())
    bad = []
    for mod, path in modules().items():
        for name, line, at_top, source in imports_of(mod, path, known):
            if at_top:
                continue
            if not name.startswith(LOCAL_OK) or "#" not in source:
                bad.append(f"{path.relative_to(SRC)}:{line}: {source.strip()}")
    assert not bad, ("imports inside functions (move them to the top of the file, or, for an optional or heavy "
                     "dependency, list it in LOCAL_OK and say why in a comment):\n" + "\n".join(bad))


@pytest.mark.parametrize("root", ["src/adakd"])
def test_no_module_over_500_lines(root):
    long = [f"{p.relative_to(SRC)}: {n}" for p in (SRC / "adakd").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500]
    assert not long, "modules over 500 lines (split them by concern):\n" + "\n".join(long)
