#!/usr/bin/env bash
# redis-py (unmodified, pinned) through respipe: proves real Python clients work unchanged.
#
#   tests/clients/python/run.sh [pytest args...]     e.g. -k pubsub, -x
#
# Creates (or reuses) the venv target/pyvenv, installs the pinned packages, builds the proxy
# (cargo build --locked; binary target/debug/respipe) and runs the suite, which starts its own
# redis-server and respipe on free 127.0.0.1 ports. Exits non-zero on any failure.
# Environment:
#   RESPIPE_BIN=path          test this proxy binary instead (no build)
#   RESPIPE_PYTEST_DIRECT=1   no proxy: run every test against redis-server itself (no build)
#   PYTHON=python3.11         the interpreter for the venv (default: python3)
set -euo pipefail
cd "$(dirname "$0")/../../.."

REDIS_PY=8.1.0
PYTEST=9.2.0
PYTEST_TIMEOUT=2.4.0
venv=target/pyvenv
python=${PYTHON:-python3}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "run.sh: redis-server is not installed; install it with 'apt-get install redis-server'" \
       "(scripts/test installs it too)" >&2
  exit 2
fi
if ! command -v "$python" >/dev/null 2>&1; then
  echo "run.sh: $python not found (set PYTHON=...)" >&2
  exit 2
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  rm -rf "$venv"
  mkdir -p target
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 ships venv/ensurepip separately.
    rm -rf "$venv"
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      echo "== installing python${pyver}-venv"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${pyver}-venv" >/dev/null
      "$python" -m venv "$venv"
    else
      echo "run.sh: '$python -m venv' failed; install the venv module (Debian: apt-get install python3-venv)" >&2
      exit 2
    fi
  fi
fi

if ! "$venv/bin/python" - "$REDIS_PY" "$PYTEST" "$PYTEST_TIMEOUT" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
want = dict(zip(["redis", "pytest", "pytest-timeout"], sys.argv[1:]))
sys.exit(any(version(name) != v for name, v in want.items()))
PY
then
  echo "== pip install redis==$REDIS_PY pytest==$PYTEST pytest-timeout==$PYTEST_TIMEOUT"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "redis==$REDIS_PY" "pytest==$PYTEST" "pytest-timeout==$PYTEST_TIMEOUT"
fi

direct=${RESPIPE_PYTEST_DIRECT:-}
if [ -z "${RESPIPE_BIN:-}" ] && { [ -z "$direct" ] || [ "$direct" = 0 ]; }; then
  echo "== cargo build --locked"
  cargo build --locked -q
fi

echo "== pytest tests/clients/python"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -q tests/clients/python "$@"
