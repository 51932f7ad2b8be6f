"""Import direction: the engine knows no framework; adapters use only the engine's public API."""

from __future__ import annotations

import ast
from pathlib import Path

import steer_plugins

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = {
    "langchain",
    "langchain_core",
    "dspy",
    "datasets",
    "ray",
    "langchain_steer",
    "dspy_steer",
    "datasets_steer",
    "ray_steer",
}
PUBLIC_SUBMODULES = {"steer_plugins.apps.data_io", "steer_plugins.apps.eval", "steer_plugins.testing"}


def imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.lineno, node.module, alias.name


def test_engine_imports_no_framework():
    bad = []
    for path in (ROOT / "steer_plugins").rglob("*.py"):
        for line, module, _ in imports(path):
            if module.split(".")[0] in FRAMEWORKS:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "the engine must stay framework-free:\n" + "\n".join(bad)


def test_integrations_use_only_public_engine_api():
    bad = []
    for path in (ROOT / "integrations").rglob("*.py"):
        for line, module, name in imports(path):
            if module == "steer_plugins":
                if name is not None and name not in steer_plugins.__all__:
                    bad.append(
                        f"{path.relative_to(ROOT)}:{line} imports steer_plugins.{name} (not in __all__)"
                    )
            elif module.startswith("steer_plugins.") and module not in PUBLIC_SUBMODULES:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports engine internals {module}")
    assert not bad, "adapters may use only the engine's public API:\n" + "\n".join(bad)


def test_integrations_touch_no_private_engine_attributes():
    bad = []
    for path in (ROOT / "integrations").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Attribute)
                and node.value.attr in {"engine", "_engine", "pool"}
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.value.attr}.{node.attr}")
    assert not bad, "\n".join(bad)
