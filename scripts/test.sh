#!/usr/bin/env bash
# The whole test suite, from a fresh clone: creates/updates .venv, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
