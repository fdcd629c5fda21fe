#!/usr/bin/env bash
# Install omega-cell into ./.venv from its own pyproject, then run what was asked:
#   ./setup.sh test   -> ruff, ruff format --check, mypy, lint-imports, then the whole test
#                        suite (what CI runs)
#   ./setup.sh demo   -> a local cell doing real work
#   ./setup.sh host   -> only the Debian packages the fault tests use (test does this first)
set -euo pipefail
cd "$(dirname "$0")"

# The fault tests build a cell across network namespaces (iproute2), cut and degrade links
# with nftables rules (this kernel has no netem), and skew a replica's clock (faketime). As
# root with apt-get (CI), install what is missing; elsewhere those tests say why and skip.
host_packages() {
  local need=()
  command -v faketime >/dev/null || need+=(faketime)
  command -v ip >/dev/null || need+=(iproute2)
  command -v nft >/dev/null || need+=(nftables)
  if ((${#need[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
}
if [ "${1:-test}" = host ]; then host_packages; exit 0; fi
if [ "${1:-test}" = test ]; then host_packages; fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
case "${1:-test}" in
  test)
    # The console's browser test drives Debian's chromium (Playwright's own browser download
    # is not reachable from every machine); install it where we may.
    if [ ! -x /usr/bin/chromium ]; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
      else
        echo "setup.sh: the browser test needs Debian's chromium: apt-get install chromium" >&2
      fi
    fi
    # Cheap checks first (seconds together), each failing the run: lint, format, types, the
    # import layering (pyproject.toml's [tool.importlinter]), then the suite.
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy
    .venv/bin/lint-imports
    # loadgroup: tests marked with one xdist_group share a worker (tests/test_console_browser.py
    # says why); the rest are dealt out one by one, as by the default.
    exec .venv/bin/python -m pytest -n 2 --dist loadgroup -q ;;
  demo) exec .venv/bin/omega up --data-dir omega-data \
          --submit examples/web-service.yaml --submit examples/batch-squares.yaml ;;
  *) echo "usage: ./setup.sh test|demo|host" >&2; exit 2 ;;
esac
