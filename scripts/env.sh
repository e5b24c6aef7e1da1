# Sourced by scripts/demo.sh and scripts/test.sh: create or update the project's virtual environment, then activate it.
# Re-installs only when pyproject.toml changed since the last install (a stamp file records its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PREFALIGN_VENV:-$ROOT/.venv}"

pick_python() {
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "prefalign: needs Python >= 3.11 on PATH" >&2; return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(pick_python)"
    echo "prefalign: creating virtual environment in $VENV" >&2
    "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.prefalign-stamp"
WANT="$(sha256sum < "$ROOT/pyproject.toml" | cut -d" " -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "prefalign: installing dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first, pinned: a CPU build here; the package's range `torch>=2.13` is then already satisfied, whereas an
    # unpinned torch would make pip fetch a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
    echo "$WANT" > "$STAMP"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
