#!/usr/bin/env bash
# The whole test suite, from a fresh clone: creates/updates .venv, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
# The package with the test tools and every tracker the tests read, byte-compiled (see env.sh).
PREFALIGN_EXTRAS=dev PREFALIGN_COMPILE=1 source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# The report test opens the HTML report in headless Chromium (Debian's package). In CI, where we are root on a Debian
# machine, install it when missing; elsewhere that test skips and says why.
if [ "${CI:-}" = "true" ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "prefalign: installing chromium for the report test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
        echo "prefalign: could not install chromium; the report test will skip" >&2
fi
# Lint and format first: a lint error fails the run before the (slower) tests start.
ruff check src tests benchmarks
ruff format --check src tests benchmarks
exec python -m pytest -q "$@"
