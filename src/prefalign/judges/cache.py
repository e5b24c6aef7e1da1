"""An on-disk cache of LLM judge answers, so that a rerun never pays twice for the same judgment.

One SQLite table maps a request key to the answer text. The key is a SHA-256 of (provider, base URL, model, full
request body): any change to the template, the sampling settings or the text being judged is a different request. The
API key travels in a header and is never part of the body, so it never reaches the key or the file.

Only successful answers are stored (an unparseable one included: it was paid for, and parsing is deterministic);
failures are not, so a rerun retries them. Each answer is committed as it arrives, so a killed run keeps what it paid
for. One connection is shared by the judge's worker threads behind a lock.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..errors import PrefalignError


def request_key(provider: str, base_url: str, model: str, body: dict[str, Any]) -> str:
    """A stable hex digest of one request; dict key order does not matter."""
    canonical = json.dumps(
        [provider, base_url.rstrip("/"), model, body], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class JudgeCache:
    """Answer text by request key, in a SQLite file (created with its parent directories if missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: the judge's worker threads share this connection, serialised by self._lock.
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers in other processes do not block a running judge
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
            self._db.commit()
        except (OSError, sqlite3.Error) as error:
            raise PrefalignError(f"cannot open the judge cache {self.path}: {error}") from None
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, answer: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers (key, answer) VALUES (?, ?)", (key, answer))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
