#!/usr/bin/env bash
# Install omega-cell into ./.venv from its own pyproject, then run what was asked:
#   ./setup.sh test   -> ruff, ruff format --check, mypy, lint-imports, then the whole test
#                        suite (what CI runs)
#   ./setup.sh demo   -> a local cell doing real work
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
case "${1:-test}" in
  test)
    # Cheap checks first (seconds together), each failing the run: lint, format, types, the
    # import layering (pyproject.toml's [tool.importlinter]), then the suite.
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy
    .venv/bin/lint-imports
    exec .venv/bin/python -m pytest -n 2 -q ;;
  demo) exec .venv/bin/omega up --data-dir omega-data \
          --submit examples/web-service.yaml --submit examples/batch-squares.yaml ;;
  *) echo "usage: ./setup.sh test|demo" >&2; exit 2 ;;
esac
