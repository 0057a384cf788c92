"""The launcher's errors, and the server log excerpt that a failed start carries."""

from __future__ import annotations

import os
from pathlib import Path


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be found, started or reached."""


class _StartupFailed(EmbeddedServiceError):
    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- log tail ---\n{log_tail}")
        self.log_tail = log_tail


def _log_tail(path: Path, offset: int, limit: int = 4000) -> str:
    """The end of ``path`` from ``offset`` on (at most ``limit`` bytes), for error messages."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - limit))
            text = f.read().decode(errors="replace").strip()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return text or "(log is empty)"
