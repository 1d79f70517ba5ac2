"""Layering rules: engines import no studio/ui/storage; ui talks to services, never to
storage or engines; storage imports neither ui nor engines nor studio."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "engines": {"studio", "ui", "storage"},
    "ui": {"storage", "engines"},
    "storage": {"ui", "engines", "studio"},
    "studio": {"ui"},
}
# The server is the one composition point that mounts the UI on the API app.
ALLOWED = {("studio/server.py", "ui")}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_layers_respect_boundaries() -> None:
    violations = []
    for pkg, banned in FORBIDDEN.items():
        files = list((ROOT / pkg).rglob("*.py"))
        assert files, pkg
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            for mod in imports_of(f) & banned:
                if (rel, mod) not in ALLOWED:
                    violations.append(f"{rel} imports {mod}")
    assert not violations, "\n".join(violations)


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("import studio.jobs\nfrom storage.db import Database\n")
    assert imports_of(bad) == {"studio", "storage"}


def test_no_models_in_module_globals() -> None:
    """No module-level model objects in engines (models are loaded through ctx.model)."""
    bad = []
    for f in (ROOT / "engines").rglob("*.py"):
        tree = ast.parse(f.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                fn = node.value.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name in ("from_pretrained", "from_single_file", "load_state_dict", "load_file"):
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad


def engine_package_graph(root: Path) -> dict[str, set[str]]:
    """package -> engine packages it imports (engines/<pkg>/... or top-level engines/<mod>.py)."""
    graph: dict[str, set[str]] = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root).parts
        pkg = rel[0].removesuffix(".py")
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for m in mods:
                parts = m.split(".")
                if parts[0] == "engines" and len(parts) > 1 and parts[1] != pkg:
                    if (root / parts[1]).is_dir() or (root / f"{parts[1]}.py").is_file():
                        graph.setdefault(pkg, set()).add(parts[1])
        graph.setdefault(pkg, set())
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_engine_packages_do_not_import_each_other_in_a_cycle() -> None:
    """registry is the composition point (it names every engine), so it is left out."""
    graph = engine_package_graph(ROOT / "engines")
    graph.pop("registry", None)
    for deps in graph.values():
        deps.discard("registry")
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])
    assert "t2i" not in graph["adapters"], "adapters must not depend on t2i (t2i applies adapters)"


def test_cycle_checker_finds_a_cycle(tmp_path: Path) -> None:
    for pkg, other in (("a", "b"), ("b", "c"), ("c", "a")):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "m.py").write_text(f"from engines.{other}.m import x\n")
    (tmp_path / "d.py").write_text("import engines.a.m\n")
    graph = engine_package_graph(tmp_path)
    assert graph["d"] == {"a"}
    assert find_cycle(graph) is not None
    (tmp_path / "c" / "m.py").write_text("x = 1\n")
    assert find_cycle(engine_package_graph(tmp_path)) is None


def test_process_environment_is_set_in_one_place() -> None:
    """Environment edits are process-global: only the composition root (studio/wiring.py) makes them."""
    bad = []
    for pkg in ("studio", "engines", "ui", "storage"):
        for f in (ROOT / pkg).rglob("*.py"):
            rel = f.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(f.read_text())):
                target = None
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    owner = node.func.value
                    if node.func.attr in ("setdefault", "update", "pop", "__setitem__") and \
                            isinstance(owner, ast.Attribute) and owner.attr == "environ":
                        target = node.func.attr
                    if node.func.attr in ("putenv", "unsetenv"):
                        target = node.func.attr
                elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                    targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                    for t in targets:
                        if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Attribute) and \
                                t.value.attr == "environ":
                            target = "item"
                if target and rel != "studio/wiring.py":
                    bad.append(f"{rel}:{node.lineno} os.environ {target}")
    assert not bad, bad
