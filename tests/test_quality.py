"""Lint and type checks run as tests, so CI's one test command enforces them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_clean():
    if shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists():
        pytest.fail("ruff is not installed: install the test extras")
    ruff = (
        str(Path(sys.executable).parent / "ruff")
        if (Path(sys.executable).parent / "ruff").exists()
        else "ruff"
    )
    result = run(ruff, "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean():
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_init_in_twisted_plugin_folders():
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


# What each part of the package may import (docs/ARCHITECTURE.md, "Layers").  The root
# package itself (``__version__``) is open to all.
LAYERS = {
    "core": {"core"},
    "render": {"core", "render"},
    "rules": {"core", "rules", "render", "fastwrite"},
    "doors": {"core", "rules", "render", "doors", "fastwrite"},
    "fastwrite": {"fastwrite"},
    "client": {"client", "core", "rules.limits"},
    # Networked history shares the one-node store's limits (page sizes, answer budgets).
    "backplane": {"core", "backplane", "history.seam", "history.store"},
    "history": {"core", "history"},
    "tap": {
        "core",
        "rules",
        "render",
        "doors",
        "fastwrite",
        "backplane",
        "history",
        "metrics",
        "tap",
        "workers.supervisor",
    },
    # --metrics reads the core's, the rules' and the backplane's counters.
    "metrics": {"core", "rules", "backplane", "metrics"},
    # The supervisor knows nothing of the chat; a worker builds its node with tap.
    "workers": {"tap", "workers"},
    # The browser client's files: read by doors.web as package data, importing nothing.
    "web": set(),
}


def _imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("twisted_chat.")}


def test_layers_import_only_downwards():
    package = ROOT / "twisted_chat"
    wrong = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts == ("__init__",):
            continue
        layer = parts[0]
        allowed = LAYERS[layer]
        for name in _imports(path):
            target = name.removeprefix("twisted_chat.")
            if not any(target == ok or target.startswith(ok + ".") for ok in allowed):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists packages by name: one left out installs without it (the
    backplane once did), which only an installed, not editable, copy shows."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "twisted_chat").rglob("__init__.py")
    }
    assert found <= set(setuptools["packages"]), sorted(found - set(setuptools["packages"]))
