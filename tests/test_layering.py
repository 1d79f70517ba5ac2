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
