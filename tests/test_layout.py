"""The layout's import rules (docs/architecture.md), read from the source with ``ast``.

Every ``import`` in ``minituner/`` and ``app/`` counts: module level, inside functions
(lazy imports) and under ``TYPE_CHECKING`` alike, since each is a dependency a reader
has to follow. The rules:

* no circle between modules;
* each package imports only the packages its row of ``MAY_IMPORT`` lists (the layers of
  docs/architecture.md, bottom to top);
* a few arrows that the package table alone would let through are named and refused:
  the run store never reaches the training loop, an NF4 backend never imports the codec
  or another backend, the NF4 format and the LoRA target table stay torch-only /
  torch-free;
* ``minituner`` never imports ``app`` or Streamlit; ``app`` imports ``minituner``, never
  the other way round;
* no module in ``minituner/`` or ``app/`` is over 400 lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400

# package -> the packages it may import (besides itself). A "package" is the first part
# below minituner (minituner.nf4.backends.cpu_c -> "nf4"); io, paths, schema and methods
# are single modules at the bottom.
BOTTOM = {"io", "paths", "schema", "methods"}
MAY_IMPORT: dict[str, set[str]] = {
    "io": set(),
    "paths": set(),
    "methods": set(),
    "schema": {"io", "paths"},
    "minigpt": BOTTOM,
    "nf4": BOTTOM,
    "lora": BOTTOM | {"nf4"},
    "memory": BOTTOM | {"nf4", "lora", "minigpt"},
    "analysis": BOTTOM,
    # finetune.events carries store.records' typed figures; the store keeps its results
    "finetune": BOTTOM | {"minigpt", "nf4", "lora", "memory", "analysis", "store"},
    "store": BOTTOM | {"minigpt", "nf4", "lora", "analysis", "finetune"},
    "experiments": BOTTOM | {"minigpt", "nf4", "lora", "memory", "analysis", "finetune", "store"},
    "scale": BOTTOM | {"minigpt", "nf4", "lora", "memory"},
    # the optional transformers/PEFT extra: MiniGPT as a transformers model, run export
    "hf": BOTTOM | {"minigpt", "nf4", "lora", "finetune", "store"},
    "cli": BOTTOM
    | {"minigpt", "nf4", "lora", "memory", "analysis", "finetune", "store", "experiments", "hf"},
    "__init__": {"minigpt", "nf4", "lora", "finetune", "store"},  # the public API, lazily
    "__main__": {"cli"},
}

# (importer prefix, imported prefix, why): refused even where the package table allows
# it, directly or through any chain of imports.
FORBIDDEN_REACH = [
    ("minituner.store", "minituner.finetune.loop", "the run store never needs the loop"),
    ("minituner.store", "minituner.finetune.worker", "the run store never needs the loop"),
    ("minituner.finetune.result", "minituner.finetune.loop", "results sit below the loop"),
    ("minituner.nf4.backends", "minituner.nf4.codec", "backends take plain tensors"),
    ("minituner.nf4.backends", "minituner.nf4.linear", "backends take plain tensors"),
    ("minituner.nf4.format", "minituner.nf4.codec", "the format is the lowest NF4 layer"),
    ("minituner.analysis", "minituner.store", "analysis works on tensors and numbers"),
]
# modules whose direct imports may not include these third-party packages
NO_THIRD_PARTY = {
    "minituner.lora.targets": {"torch"},  # the target table is data: config and shapes read it
    "minituner.methods": {"torch"},
    "minituner.paths": {"torch"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(top: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / top).rglob("*.py"))}


MODULES = _sources("minituner")
APP = _sources("app")


def _resolve(importer: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path) -> set[str]:
    """The modules ``name`` imports: a ``from pkg import sub`` that names a module counts
    as that module; third-party imports are kept by their top-level name."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, path, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in MODULES or sub in APP else target)
    return out


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}
APP_GRAPH = {name: imports_of(name, path) for name, path in APP.items()}


def _internal(targets: set[str]) -> set[str]:
    """Imports of minituner modules, each mapped to the module that defines it."""
    out = set()
    for t in targets:
        while t and t not in MODULES:
            t = t.rpartition(".")[0]
        if t.startswith("minituner"):
            out.add(t)
    return out


EDGES = {name: _internal(deps) - {name} for name, deps in GRAPH.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in EDGES.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in EDGES[v]:
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

    for v in EDGES:
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package():
    # guards the test itself: a broken walk would find no edge and pass everything
    assert {"minituner.lora.layer", "minituner.nf4.codec", "minituner.store.runs"} <= set(MODULES)
    assert "minituner.nf4.codec" in _reach("minituner.nf4.linear")
    assert sum(len(v) for v in EDGES.values()) > 50


def test_no_import_circle():
    assert _cycles() == []


def test_packages_import_only_lower_layers():
    unknown = {_package(m) for m in MODULES} - set(MAY_IMPORT)
    assert not unknown, f"packages missing from MAY_IMPORT (docs/architecture.md): {unknown}"
    wrong = [
        f"{m} -> {d}"
        for m, deps in EDGES.items()
        for d in sorted(deps)
        if _package(d) != _package(m) and _package(d) not in MAY_IMPORT[_package(m)]
    ]
    assert wrong == []


@pytest.mark.parametrize(("src", "dst", "why"), FORBIDDEN_REACH)
def test_forbidden_arrows(src, dst, why):
    bad = [
        m
        for m in MODULES
        if (m == src or m.startswith(src + "."))
        and any(r == dst or r.startswith(dst + ".") for r in _reach(m))
    ]
    assert bad == [], f"{bad} reach {dst}: {why}"


def test_nf4_backends_import_no_other_backend():
    backends = [m for m in MODULES if m.startswith("minituner.nf4.backends.")]
    assert backends, "no NF4 backend modules found"
    for m in backends:
        others = {d for d in EDGES[m] if d.startswith("minituner.nf4.") and d != m}
        assert others <= {"minituner.nf4.backends"}, f"{m} imports {others}"


def test_nf4_format_imports_only_torch():
    deps = GRAPH["minituner.nf4.format"]
    assert _internal(deps) - {"minituner.nf4.format"} == set()
    third_party = {d.split(".")[0] for d in deps} - set(sys.stdlib_module_names)
    assert third_party == {"torch"}


@pytest.mark.parametrize("module", sorted(NO_THIRD_PARTY))
def test_torch_free_modules(module):
    top = {d.split(".")[0] for d in GRAPH[module]} | {
        d.split(".")[0] for r in _reach(module) for d in GRAPH[r]
    }
    assert not (top & NO_THIRD_PARTY[module])


def test_library_never_imports_the_app_or_streamlit():
    for m, deps in GRAPH.items():
        assert not any(d == "app" or d.startswith(("app.", "streamlit")) for d in deps), m


def test_app_imports_name_real_library_modules():
    assert APP_GRAPH, "no app modules found"
    stale = [
        f"{m} -> {d}"
        for m, deps in APP_GRAPH.items()
        for d in deps
        if d.startswith("minituner.") and not _internal({d})
    ]
    assert stale == []


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*MODULES.values(), *APP.values()]
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_pickle_loading_anywhere():
    for p in MODULES.values():
        src = p.read_text()
        assert "torch.load(" not in src and "import pickle" not in src, p
