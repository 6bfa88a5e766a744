"""The server's log lines: one line each on stderr, and rate-limited, so a hostile client cannot fill the disk."""

from __future__ import annotations

import logging
import sys
import threading
import time

__all__ = ["QuietLogs"]


class QuietLogs(logging.Filter):
    """Lets through at most one record a second per message (its logger and format string); the next one let
    through says how many were dropped. Keeps a hostile client from filling the disk with log lines."""

    def __init__(self, every_s: float = 1.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every_s) < self.every_s:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return False
            if len(self._last) > 1000:  # format strings are few; this only bounds the memory
                self._last.clear()
            self._last[key] = now
            dropped = self._dropped.pop(key, 0)
        if dropped:
            record.msg = f"{record.getMessage()} (and {dropped} more like it in the last seconds)"
            record.args = None
        return True


def _setup_logging() -> None:
    """Our log lines on stderr, one line each, rate-limited; uvicorn's and asyncio's rate-limited too."""
    quiet = QuietLogs()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("videopanda serve: %(levelname)s: %(message)s"))
    handler.addFilter(quiet)
    ours = logging.getLogger("videopanda.serve")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    for name in ("uvicorn.error", "asyncio"):
        logging.getLogger(name).addFilter(quiet)

