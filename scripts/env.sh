# Sourced by scripts/demo.sh and scripts/test.sh: create or update the project's virtual environment, then activate it.
# Re-installs only when pyproject.toml changed since the last install (stamp files record its hash).
#
# The caller says what it needs before sourcing:
#   PREFALIGN_EXTRAS   extras to install beside the package, e.g. "dev" (test.sh); empty: the package alone (demo.sh)
#   PREFALIGN_COMPILE  1: byte-compile everything installed (test.sh: pytest starts many processes, each importing torch
#                      and transformers); 0: leave it to the first import (demo.sh: the demo is one process, which
#                      compiles only the modules it imports, a small share of the thousands pip would compile)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PREFALIGN_VENV:-$ROOT/.venv}"
EXTRAS="${PREFALIGN_EXTRAS:-}"
COMPILE="${PREFALIGN_COMPILE:-1}"

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

WANT="$(sha256sum < "$ROOT/pyproject.toml" | cut -d" " -f1)"
stamp_is_current() { [ -f "$VENV/.prefalign-stamp$1" ] && [ "$(cat "$VENV/.prefalign-stamp$1")" = "$WANT" ]; }

if ! stamp_is_current "" || { [ -n "$EXTRAS" ] && ! stamp_is_current "-$EXTRAS"; }; then
    echo "prefalign: installing dependencies into $VENV" >&2
    NO_COMPILE=""  # a word, not an array: an empty array under `set -u` fails in the bash 3.2 of macOS
    [ "$COMPILE" = 1 ] || NO_COMPILE="--no-compile"
    "$VENV/bin/python" -m pip install -q $NO_COMPILE --upgrade pip
    # torch first, pinned: a CPU build here; the package's range `torch>=2.13` is then already satisfied, whereas an
    # unpinned torch would make pip fetch a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install -q $NO_COMPILE "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q $NO_COMPILE -e "$ROOT${EXTRAS:+[$EXTRAS]}"
    echo "$WANT" > "$VENV/.prefalign-stamp"
    [ -z "$EXTRAS" ] || echo "$WANT" > "$VENV/.prefalign-stamp-$EXTRAS"
    [ "$COMPILE" = 1 ] || touch "$VENV/.prefalign-uncompiled"
fi
if [ "$COMPILE" = 1 ] && [ -f "$VENV/.prefalign-uncompiled" ]; then
    # An install for the demo left modules uncompiled; compile them once (files already compiled are skipped).
    echo "prefalign: byte-compiling $VENV" >&2
    SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # || true: a package's stray Python 2 file (there are some) is no reason to stop.
    "$VENV/bin/python" -m compileall -q -j 0 "$SITE" >/dev/null || true
    rm -f "$VENV/.prefalign-uncompiled"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
