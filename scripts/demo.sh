#!/usr/bin/env bash
# The main job, from a fresh clone: creates/updates .venv, then runs `prefalign demo`. Extra arguments go to the demo.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec prefalign demo "$@"
