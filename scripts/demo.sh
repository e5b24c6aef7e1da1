#!/usr/bin/env bash
# The main job, from a fresh clone: creates/updates .venv, then runs `prefalign demo`. Extra arguments go to the demo.
set -euo pipefail
# The package alone, not byte-compiled up front (see env.sh).
PREFALIGN_EXTRAS="" PREFALIGN_COMPILE=0 source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec prefalign demo "$@"
