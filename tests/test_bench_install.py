"""Benches run from an installed package, where tests/ does not exist: no bench module imports
``tests`` or registers an engine from it, and every bench module imports with ``tests``
unimportable."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = sorted((ROOT / "bench").glob("*.py"))


def test_no_bench_module_uses_tests() -> None:
    """AST scan (like test_layering): imports of ``tests`` and ``name=tests.x:Cls`` engine strings."""
    bad = []
    for f in BENCH:
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                bad += [f"{f.name}:{node.lineno} imports {a.name}" for a in node.names
                        if a.name.split(".")[0] == "tests"]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tests":
                bad.append(f"{f.name}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.search(r"(^|=)tests\.\w+:", node.value):
                bad.append(f"{f.name}:{node.lineno} names {node.value}")
    assert not bad, bad


BLOCK_TESTS = """
import importlib, importlib.abc, sys
class NoTests(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tests" or name.startswith("tests."):
            raise ImportError("tests/ is not installed")
sys.meta_path.insert(0, NoTests())
for m in sys.argv[1:]:
    importlib.import_module(m)
from engines import registry
assert registry.get("test-steps").__module__ == "bench.fake_engines"
print("ok")
"""


def test_every_bench_module_imports_without_tests(tmp_path: Path) -> None:
    from bench.harness import studio_env

    mods = [f"bench.{f.stem}" for f in BENCH if f.stem != "__init__"]
    env = studio_env()
    r = subprocess.run([sys.executable, "-c", BLOCK_TESTS, *mods], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_queue_bench_runs_without_tests(tmp_path: Path) -> None:
    """``studio bench queue`` end to end, with a ``tests`` package that refuses to import first
    on the path of the bench and of the Studio it launches."""
    shadow = tmp_path / "shadow" / "tests"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('tests/ is not installed')\n")
    env = dict(os.environ, PYTHONPATH=str(shadow.parent))
    env.pop("STUDIO_EXTRA_ENGINES", None)
    r = subprocess.run([sys.executable, "-m", "studio", "bench", "queue", "--n", "3", "--json"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n"] == 3 and out["submit_to_done_p50_ms"] > 0
