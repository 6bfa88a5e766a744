"""The package's import graph, parsed (not imported): no cycles, and dependencies point one way.

cli / serve / eval / bench -> engine -> fast -> modeling, processing, video -> transforms, configuration; runtime
(device, dtype, decoding checks) is a leaf that any layer above the model may use.
Imports inside functions count too: a lazy import that goes upward is still an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "videopanda"
# what each lower layer may import from the package (besides itself)
ALLOWED = {
    # the loaded model ready to answer: what cli / serve / eval / bench use; nothing below imports it
    "videopanda.engine": ("videopanda.engine", "videopanda.fast", "videopanda.modeling", "videopanda.processing",
                          "videopanda.video", "videopanda.runtime", "videopanda.weights", "videopanda.configuration",
                          "videopanda.transforms"),
    "videopanda.runtime": (),
    # the inference forms (fused STAB, Triton kernels, LLM fusions) are built from the plain model, never the reverse
    "videopanda.fast": ("videopanda.fast", "videopanda.modeling", "videopanda.configuration", "videopanda.transforms"),
    "videopanda.modeling": ("videopanda.modeling", "videopanda.configuration", "videopanda.transforms",
                            "videopanda.weights"),
    "videopanda.transforms": (),
    "videopanda.configuration": (),
    "videopanda.video": (),
    "videopanda.weights": ("videopanda.configuration",),
    "videopanda.video_processing": ("videopanda.transforms", "videopanda.video"),
    "videopanda.processing": ("videopanda.configuration", "videopanda.transforms", "videopanda.video",
                              "videopanda.video_processing", "videopanda.weights"),
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Package modules that `name` imports anywhere in its file (a `from X import y` of a submodule names it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_lower_layers_never_import_upward():
    wrong = []
    for name, targets in graph().items():
        layer = next((k for k in ALLOWED if name == k or name.startswith(k + ".")), None)
        if layer is None:
            continue
        allowed = (layer, *ALLOWED[layer])
        wrong += [(name, t) for t in targets if not any(t == a or t.startswith(a + ".") for a in allowed)]
    assert wrong == []


def test_the_model_package_holds_no_fast_path():
    """modeling/ is the trainable, reference-exact model: no Triton and nothing of videopanda.fast, even lazily."""
    wrong = []
    for path in (PACKAGE / "modeling").rglob("*.py"):
        package = ["videopanda", "modeling"]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
                target = ".".join(p for p in (base, node.module) if p)
                names = [target, *(f"{target}.{a.name}" for a in node.names)]
            else:
                continue
            wrong += [(path.name, n) for n in names if n.split(".")[0] == "triton" or
                      n == "videopanda.fast" or n.startswith("videopanda.fast.")]
    assert wrong == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The graph reader itself: a made-up cycle is found, and the real graph holds the edges we know of."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    edges = graph()
    assert "videopanda.modeling.stab" in edges["videopanda.modeling.videopanda"]
    assert "videopanda.modeling.stab" in edges["videopanda.fast.stab"]
    assert "videopanda.flags" in edges["videopanda.cli"]
    for user in ("videopanda.cli", "videopanda.serve.worker", "videopanda.eval.videoqa", "videopanda.bench"):
        assert "videopanda.engine" in edges[user], user  # every user answers through the Engine
    assert "videopanda.fast" in edges["videopanda.engine"]
