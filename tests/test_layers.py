"""The package's layers, read from the source: no upward import, no cycle, no needless lazy import.

Layers, low to high (docs/design.md, "Layers"): a module imports its own layer and lower ones.
A function-level import of one of tagtune's own modules is allowed only where that module
(through its module-level imports) loads a heavy library (torch, diffusers, ...), and in cli/
also one `tagtune --help` must not pay for (duckdb, pydantic, numpy, Pillow); every other
project import sits at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
LAYERS = (
    ("core",),
    ("recipe", "models"),
    ("ingest", "captions", "tags", "prepare", "generate"),
    ("train", "merge"),
    ("card", "demo", "report", "synthetic"),
    ("cli",),
    ("__init__",),  # `import tagtune`: the public API, resolved lazily
)
RANK = {pkg: rank for rank, names in enumerate(LAYERS) for pkg in names}
HEAVY = {"torch", "diffusers", "transformers", "accelerate", "deepspeed", "bitsandbytes", "peft"}
HEAVY |= {"matplotlib", "tensorboard", "scipy", "pyarrow", "safetensors"}
START_UP = HEAVY | {"duckdb", "pydantic", "numpy", "PIL"}  # what `tagtune --help` must not load


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _read_imports(path: Path) -> list[tuple[str, bool, int]]:
    """(module, at module level?, line) for every import in the file: `from a import b` gives
    `a` and, where b is a module, `a.b` (names that are not modules are dropped later)."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(name, id(node) in top, node.lineno) for name in names]
    return found


def _graph() -> dict[str, list[tuple[str, bool, int]]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {
        name: [
            imp
            for imp in _read_imports(path)
            if imp[0] in files or imp[0].split(".")[0] in START_UP
        ]
        for name, path in files.items()
    }


def _layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 else RANK["__init__"]


def _loads_heavy(module: str, graph, seen: set[str], heavy=HEAVY) -> bool:
    if module.split(".")[0] in heavy:
        return True
    seen.add(module)
    imports = graph.get(module, [])
    return any(
        _loads_heavy(m, graph, seen, heavy) for m, top, _ in imports if top and m not in seen
    )


def _heavy_for(module: str) -> set[str]:
    """A command module (cli/) imports what its verb runs inside the verb: start-up stays fast."""
    return START_UP if module.startswith("tagtune.cli.") else HEAVY


def test_every_package_has_a_layer():
    packages = {
        p.relative_to(SRC / "tagtune").parts[0].removesuffix(".py") for p in SRC.rglob("*.py")
    }
    assert packages <= set(RANK), f"give these a layer in LAYERS: {sorted(packages - set(RANK))}"


def test_no_import_against_the_layer_order():
    graph = _graph()
    upward = [
        f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})"
        for src, imports in graph.items()
        for dst, _, _ in imports
        if dst.startswith("tagtune") and _layer(dst) > _layer(src)
    ]
    assert not upward, "\n".join(upward)


def test_own_modules_are_imported_at_module_level_unless_they_load_a_heavy_library():
    graph = _graph()
    statements: dict[tuple[str, int], list[str]] = {}
    for src, imports in graph.items():
        for dst, top, line in imports:
            if not top and dst.startswith("tagtune"):
                statements.setdefault((src, line), []).append(dst)
    lazy = [
        f"{src}, line {line}, imports {targets[-1]} inside a function"
        for (src, line), targets in sorted(statements.items())
        if not any(_loads_heavy(dst, graph, set(), _heavy_for(src)) for dst in targets)
    ]
    assert not lazy, "\n".join(lazy)


def test_no_cycle_among_module_level_imports():
    graph = {
        src: sorted({d for d, top, _ in imports if top and d.startswith("tagtune") and d != src})
        for src, imports in _graph().items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
