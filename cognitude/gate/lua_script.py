"""A Lua script file run by SHA: ``SCRIPT LOAD`` once, ``EVALSHA`` per call, one reload on
``NOSCRIPT`` (a restarted or flushed Redis forgets scripts).

redis-py's ``Script`` objects are not used: inside pipelines they add a ``SCRIPT EXISTS``
round trip each time (DESIGN §6).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

# lua/ sits beside the package (cognitude/gate/lua_script.py → the checkout root).
LUA_DIR = Path(__file__).resolve().parents[2] / "lua"


def strip_shebang(source: str) -> str:
    """The script without its ``#!lua`` line, for Redis < 7.0 (which cannot parse it).

    The newline stays so that error line numbers still match the file.
    """
    first, sep, rest = source.partition("\n")
    return sep + rest if first.startswith("#!") else source


class LuaScript:
    __slots__ = ("_redis", "_source", "sha")

    def __init__(self, redis: Any, path: Path, source: str | None = None) -> None:
        self._redis = redis
        self._source = path.read_text(encoding="utf-8") if source is None else source
        # The SHA is known without a round trip, so run() works even if load() never ran:
        # the first call then takes the NOSCRIPT path once.
        self.sha = hashlib.sha1(self._source.encode()).hexdigest()

    async def load(self) -> None:
        """``SCRIPT LOAD`` the script (at start, and after ``NOSCRIPT``)."""
        try:
            self.sha = await self._redis.script_load(self._source)
        except ResponseError as exc:
            # Redis 6.2 compiles the shebang line as Lua and fails on its '#'; without the
            # line the script runs there as a legacy script (writes allowed, no OOM pre-check).
            if "near '#'" not in str(exc):
                raise
            self.sha = await self._redis.script_load(strip_shebang(self._source))

    async def run(self, keys: tuple[str, ...], argv: tuple[Any, ...]) -> Any:
        """One ``EVALSHA`` (two, plus a ``SCRIPT LOAD``, right after Redis lost its scripts)."""
        try:
            return await self._redis.evalsha(self.sha, len(keys), *keys, *argv)
        except NoScriptError:
            await self.load()
            return await self._redis.evalsha(self.sha, len(keys), *keys, *argv)
