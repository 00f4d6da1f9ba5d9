"""The persistent answer cache of API teachers (SQLite, WAL mode).

One row per answered request, keyed on a hash of provider, model, decoding parameters and
messages (not the endpoint: a local server restarted on another port still hits the cache;
keep separate cache files for different servers that serve different weights under one name).
Each answer is committed in its own transaction as soon as it arrives, so a process killed at
any moment (even SIGKILL) loses at most the requests that were still in flight; a restart reads
the cache and never asks (or pays) twice for a cached answer. Only successful answers are
stored: failures are never cached.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from ..io import sha256_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(provider: str, model: str, params: dict, messages: list[dict]) -> str:
    """The cache key of one request: a hash of everything that decides the answer."""
    return sha256_json({"provider": provider, "model": model, "params": params, "messages": messages})


class AnswerCache:
    """``get_many(keys)``, ``put(key, result)``; ``result`` is a JSON-able dict."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable across process kills; WAL keeps it consistent
        self.db.execute(SCHEMA)

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        """Cached results for those of ``keys`` that are in the cache."""
        out: dict[str, dict] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, result in self.db.execute(f"SELECT key, result FROM answers WHERE key IN ({marks})", chunk):
                out[key] = json.loads(result)
        return out

    def put(self, key: str, provider: str, model: str, result: dict) -> float:
        """Store one successful answer (its own committed transaction); returns its timestamp."""
        now = time.time()
        self.db.execute(  # autocommit: one statement, one committed transaction
            "INSERT OR REPLACE INTO answers (key, provider, model, result, created) VALUES (?, ?, ?, ?, ?)",
            (key, provider, model, json.dumps(result, ensure_ascii=False), now),
        )
        return now

    def created(self) -> dict[str, float]:
        """When each key was stored (tests use this to prove nothing was asked after it was cached)."""
        return dict(self.db.execute("SELECT key, created FROM answers"))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.db.close()
