"""What the wheel ships: the product packages, and no part of the test harness.

Building a wheel takes seconds and an isolated build environment, so this asks setuptools the
question the build asks it: which packages `[tool.setuptools.packages.find]` in pyproject.toml
selects from the repository root. With `packages.find` in pyproject.toml setuptools discovers
namespace packages too (`namespaces` defaults to true there), so a directory of modules without
an `__init__.py` would be picked up as well: the check below uses the same discovery.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from setuptools import find_namespace_packages

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("cellstate", "cellstore", "schedulers", "agents", "omega")


def shipped_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    assert find.get("namespaces", True), "the check below assumes namespace discovery"
    return find_namespace_packages(
        where=str(ROOT / find.get("where", ["."])[0]),
        include=find.get("include", ["*"]),
        exclude=find.get("exclude", ()),
    )


def test_wheel_ships_the_product_and_no_harness_module() -> None:
    packages = shipped_packages()
    assert not [p for p in packages if p == "harness" or p.startswith("harness.")], packages
    assert not [p for p in packages if p == "tests" or p.startswith("tests.")], packages
    assert set(PRODUCT) <= {p.split(".")[0] for p in packages}, packages


def test_no_product_module_imports_the_harness() -> None:
    """The harness is not installed: a product module importing it would fail in a wheel
    install. (`bench` starts local clusters with it and runs from a checkout, like the tests.)"""
    offenders = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                if any(n == "harness" or n.startswith("harness.") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
