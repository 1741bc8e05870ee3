#!/usr/bin/env bash
# One entry point for newcomers: sets up the virtual environment on first use,
# then runs the demo or the tests.
#   bash run.sh demo [--image PHOTO --landmarks PTS --out DIR]
#   bash run.sh test [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"

VENV="${DEEPEXP3D_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
export DEEPEXP3D_DATA="${DEEPEXP3D_DATA:-$(cd .. && pwd)/shared/data}"

if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.deepexp3d-installed" ] || [ pyproject.toml -nt "$VENV/.deepexp3d-installed" ]; then
  echo "setting up $VENV (first run only)..."
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  touch "$VENV/.deepexp3d-installed"
fi

command="${1:-}"
shift || true
case "$command" in
  demo)
    exec "$VENV/bin/deepexp3d" demo "$@"
    ;;
  test)
    # A fresh cache per run, shared by the test workers (conversion happens once per worker).
    DEEPEXP3D_TEST_CACHE="$(mktemp -d)"
    export DEEPEXP3D_TEST_CACHE
    status=0
    "$VENV/bin/python" -m pytest -n 2 --doctest-modules tests morphable fitting regressor classifier deepexp3d "$@" || status=$?
    rm -rf "$DEEPEXP3D_TEST_CACHE"
    if [ "$status" -eq 5 ]; then
      echo "pytest collected no tests: treating this as a failure" >&2
      exit 1
    fi
    if [ "$status" -ne 0 ]; then
      exit "$status"
    fi
    echo "building the documentation (mkdocs build --strict)..."
    site="$(mktemp -d)"
    NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --quiet -d "$site"
    rm -rf "$site"
    echo "documentation built"
    ;;
  *)
    echo "usage: bash run.sh demo [options] | bash run.sh test [pytest arguments]" >&2
    exit 2
    ;;
esac
