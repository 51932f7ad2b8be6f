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
LAZY_FRAMEWORK_IMPORTS = {
    # `steer augment` runs the datasets integration (`datasets_steer.SteerAugmenter` in a
    # `Dataset.map`): it may import `datasets` and `datasets_steer`, but only inside a function, when
    # the command runs, so `import steer_plugins` and every other command stay framework-free.
    ("steer_plugins/apps/cli/augment.py", "datasets"),
    ("steer_plugins/apps/cli/augment.py", "datasets_steer"),
}
"""(file, framework) pairs allowed as an import inside a function body, never at module level."""
PUBLIC_SUBMODULES = {
    "steer_plugins.apps.card",
    "steer_plugins.apps.data_io",
    "steer_plugins.apps.dedup",
    "steer_plugins.apps.eval",
    "steer_plugins.testing",
}


def imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.lineno, node.module, alias.name


def function_import_lines(path: Path) -> set[int]:
    """Lines of the imports inside a function body (they run when it is called, not at import)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.lineno
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    }


def test_engine_imports_no_framework():
    bad = []
    for path in (ROOT / "steer_plugins").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        lazy = function_import_lines(path)
        for line, module, _ in imports(path):
            top = module.split(".")[0]
            if top in FRAMEWORKS and not ((rel, top) in LAZY_FRAMEWORK_IMPORTS and line in lazy):
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


def _resolved_imports(path: Path):
    """(line, absolute module, imported name) of every import in `path`, relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                yield node.lineno, module, alias.name


def test_core_imports_no_application():
    """The engine core knows nothing of the applications built on it (CLI, pipeline, finetune,
    sweep, eval): imports only point down."""
    bad = []
    for path in (ROOT / "steer_plugins" / "core").rglob("*.py"):
        for line, module, name in _resolved_imports(path):
            target = f"{module}.{name}" if name else module
            if module.startswith("steer_plugins.apps") or target.startswith("steer_plugins.apps"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "steer_plugins.core must not import steer_plugins.apps:\n" + "\n".join(bad)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for top in ("steer_plugins", "integrations"):
        for path in (ROOT / top).rglob("*.py"):
            for line, module, name in _resolved_imports(path):
                if name and name.startswith("_") and not name.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}.{name}")
    assert not bad, "import public names only:\n" + "\n".join(bad)
