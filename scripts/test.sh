#!/usr/bin/env bash
# Install what the tests need (Postgres and Redis from Debian packages when missing, a virtualenv
# with the package and its test extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1 || need_pkgs+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_pkgs[@]}" >/dev/null
fi

VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e ".[test]"
# The code checks (configured in pyproject.toml): lint, format, types.
"$VENV/bin/ruff" check agentserver
"$VENV/bin/ruff" format --check agentserver
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest -q "$@"
