"""The mock's mutable state: request counters, the injected-failure queue, run-time delays."""

from __future__ import annotations

import copy
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

FAIL_MODES = frozenset(
    {
        "429",
        "500",
        "400",
        "timeout",
        "drop",
        "redirect",
        "not_json",
        "no_usage",
        "trickle",
        "stall_stream",
        "huge",
        "529",
        "stream_error",
    }
)
# Where "redirect" points by default: the cloud metadata address, the classic SSRF target a
# proxy must never follow a redirect to.
DEFAULT_REDIRECT = "http://169.254.169.254/latest/meta-data/"
DEFAULT_HUGE_BYTES = 1 << 20
MAX_HUGE_BYTES = 1 << 28  # 256 MiB: big enough for any size cap, small enough not to OOM CI
CONFIG_KEYS = ("latency_ms", "chunk_delay_ms", "redirect_location", "huge_bytes")


class MockState:
    """Counters, injected failures and run-time config. Mutated from the server's event loop
    and from test threads (MockUpstream), hence the lock; every critical section is tiny."""

    def __init__(
        self, latency_ms: float, require_key: str | None, require_anthropic_version: bool = True
    ) -> None:
        self.lock = threading.Lock()
        self.latency_s = latency_ms / 1000.0
        self.chunk_delay_s = 0.0
        self.require_key = require_key
        self.require_anthropic_version = require_anthropic_version
        self.redirect_location = DEFAULT_REDIRECT
        self.huge_bytes = DEFAULT_HUGE_BYTES
        self.failures: deque[str] = deque()
        self.seq = 0  # never reset, so response ids stay unique across resets
        self.server: uvicorn.Server | None = None  # set by serve()/MockUpstream for shutdown
        self._zero()

    def _zero(self) -> None:
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.by_model: dict[str, int] = {}
        self.last_request: dict[str, Any] | None = None

    def record(self, path: str, headers: dict[str, str], body: Any) -> int:
        """Count one API request; returns its sequence number (for response ids)."""
        model = body.get("model") if isinstance(body, dict) else None
        with self.lock:
            self.seq += 1
            self.requests += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1
            if isinstance(model, str):
                self.by_model[model] = self.by_model.get(model, 0) + 1
            self.last_request = {"path": path, "headers": headers, "body": body}
            return self.seq

    def next_failure(self) -> str | None:
        with self.lock:
            return self.failures.popleft() if self.failures else None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(
                {
                    "requests": self.requests,
                    "by_path": self.by_path,
                    "by_model": self.by_model,
                    "last_request": self.last_request,
                    "pending_failures": list(self.failures),
                }
            )

    def reset(self) -> None:
        with self.lock:
            self._zero()
            self.failures.clear()

    def fail(self, mode: str, count: int = 1) -> None:
        mode = str(mode)
        if mode not in FAIL_MODES or not isinstance(count, int) or count < 0:
            raise ValueError(f"bad failure injection: mode={mode!r} count={count!r}")
        with self.lock:
            self.failures.extend([mode] * count)

    def configure(
        self,
        *,
        latency_ms: float | None = None,
        chunk_delay_ms: float | None = None,
        redirect_location: str | None = None,
        huge_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Change what is given (None = keep); returns the whole config."""
        for v in (latency_ms, chunk_delay_ms):
            if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or v < 0):
                raise ValueError(f"delays must be numbers >= 0, got {v!r}")
        if redirect_location is not None and (
            not isinstance(redirect_location, str)
            or not redirect_location
            or not redirect_location.isascii()
            or not redirect_location.isprintable()  # no CR/LF: it becomes a header
        ):
            raise ValueError(
                f"redirect_location must be a printable ASCII URL, got {redirect_location!r}"
            )
        if huge_bytes is not None and (
            not isinstance(huge_bytes, int)
            or isinstance(huge_bytes, bool)
            or not 0 <= huge_bytes <= MAX_HUGE_BYTES
        ):
            raise ValueError(
                f"huge_bytes must be an integer in 0..{MAX_HUGE_BYTES}, got {huge_bytes!r}"
            )
        with self.lock:
            if latency_ms is not None:
                self.latency_s = latency_ms / 1000.0
            if chunk_delay_ms is not None:
                self.chunk_delay_s = chunk_delay_ms / 1000.0
            if redirect_location is not None:
                self.redirect_location = redirect_location
            if huge_bytes is not None:
                self.huge_bytes = huge_bytes
            return {
                "latency_ms": self.latency_s * 1000.0,
                "chunk_delay_ms": self.chunk_delay_s * 1000.0,
                "redirect_location": self.redirect_location,
                "huge_bytes": self.huge_bytes,
            }

    def stopping(self) -> bool:
        return self.server is not None and self.server.should_exit
