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
PRODUCT = ("cellstate", "cellstore", "schedulers", "agents", "cellsim", "omega")
# Developer tools and the test harness: they run from a checkout, on top of the product.
NOT_SHIPPED = ("harness", "bench", "tests")


def shipped_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    assert find.get("namespaces", True), "the check below assumes namespace discovery"
    return find_namespace_packages(
        where=str(ROOT / find.get("where", ["."])[0]),
        include=find.get("include", ["*"]),
        exclude=find.get("exclude", ()),
    )


def test_wheel_ships_the_product_and_no_harness_or_bench_module() -> None:
    packages = shipped_packages()
    assert not [p for p in packages if p.split(".")[0] in NOT_SHIPPED], packages
    assert set(PRODUCT) <= {p.split(".")[0] for p in packages}, packages


def test_wheel_ships_the_simulator_presets() -> None:
    """`omega bench conflicts --preset B` reads `cellsim/presets/*.toml` from the installed
    package: data files go into a wheel only when `package-data` names them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cellsim"]
    presets = {p.name for pattern in patterns for p in (ROOT / "cellsim").glob(pattern)}
    assert {"cluster_a.toml", "cluster_b.toml", "cluster_c.toml"} <= presets, presets


def test_wheel_ships_the_console_assets() -> None:
    """The web console is served from the installed package (no CDN): its page, script and
    style must be package data."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["omega.console"]
    assets = {p.name for pattern in patterns for p in (ROOT / "omega" / "console").glob(pattern)}
    assert {"index.html", "app.js", "app.css"} <= assets, assets
    # The one address it names is where a job's task serves, as a link a person follows
    # (`address` in app.js): navigation, not something the console loads.
    endpoint_link = 'href="http://${esc(endpoint.address)}/"'
    for name in ("index.html", "app.js", "app.css"):
        text = (ROOT / "omega" / "console" / "static" / name).read_text()
        text = text.replace(endpoint_link, "", 1 if name == "app.js" else 0)
        assert "http://" not in text and "https://" not in text, f"{name} loads from elsewhere"


def test_no_product_module_imports_the_harness_or_bench() -> None:
    """Neither is installed: a product module importing one would fail in a wheel install.
    (`bench` starts local clusters with the harness and runs from a checkout, like the tests.)
    `lint-imports` checks the whole layering; this keeps the wheel's promise in the suite."""
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
                if any(n.split(".")[0] in NOT_SHIPPED for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
