"""Imports point one way: clients -> streaming -> engine -> models.

The check reads every module's import statements (no execution), so a wrong-way import fails here even
when it sits inside a function that no other test calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["models", "engine", "streaming", "clients"]  # each may import only itself and the ones before it
MODELS_THIRD_PARTY = {"torch", "numpy", "scipy", "tqdm"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def layer_files(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def test_layers_exist() -> None:
    for layer in LAYERS:
        assert (ROOT / layer / "__init__.py").is_file(), layer


@pytest.mark.parametrize("index,layer", list(enumerate(LAYERS)))
def test_no_wrong_way_imports(index: int, layer: str) -> None:
    forbidden = set(LAYERS[index + 1 :])
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & forbidden) for path in layer_files(layer)
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{layer}/ must not import {sorted(forbidden)}: {offenders}"


def test_models_import_only_the_numeric_stack() -> None:
    import sys

    allowed = MODELS_THIRD_PARTY | {"models"} | set(sys.stdlib_module_names)
    offenders = {}
    for path in layer_files("models"):
        extra = imported_modules(path) - allowed
        if extra:
            offenders[str(path.relative_to(ROOT))] = sorted(extra)
    assert not offenders, f"models/ may import only stdlib + {sorted(MODELS_THIRD_PARTY)}: {offenders}"


def test_checker_detects_a_wrong_way_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from streaming.server import x\n    import clients.cli\n")
    assert {"streaming", "clients"} <= imported_modules(bad)


def test_the_recognizer_package_is_io_free() -> None:
    """``import engine.recognizer`` (and its backends' factory) loads no event loop, media or network stack."""
    import subprocess
    import sys

    code = ("import sys, engine.recognizer, engine.recognizer.factory, engine.recognizer.base\n"
            "print(','.join(m for m in ('asyncio', 'av', 'aiortc', 'websockets', 'sounddevice') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == "", f"engine.recognizer imported {out.stdout.strip()}"


def session_fixtures(path: Path) -> set[str]:
    """Names of the functions ``path`` decorates with ``@pytest.fixture(scope="session")``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and any(
                    k.arg == "scope" and isinstance(k.value, ast.Constant) and k.value.value == "session"
                    for k in deco.keywords
                ):
                    names.add(node.name)
    return names


def test_session_fixtures_of_the_plugins_are_not_imported_into_test_modules() -> None:
    """tests/conftest.py registers the fixture modules (``pytest_plugins``) once for the run; a session fixture
    imported into a test module would be that module's own (pytest registers it there), so the engine of
    ``live_runtime`` would load, and stay loaded, once per importing module."""
    from tests.conftest import pytest_plugins

    shared = {m: session_fixtures((ROOT / Path(*m.split("."))).with_suffix(".py")) for m in pytest_plugins}
    assert "live_runtime" in shared["tests.streaming_fixtures"]
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in shared:
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name in shared[node.module]]
    assert not offenders, offenders
