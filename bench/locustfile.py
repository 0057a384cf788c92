"""Locust scenarios for the proxy (issue 4): cache hit, cache miss, rate-limited, streaming.

    locust -f bench/locustfile.py --headless -u 10 -r 10 -t 15s \\
        --host http://127.0.0.1:8000 HitUser

``bench/locust_run.py`` starts everything and runs these for you, straight at the mock
upstream and through the proxy; run this file by hand only against servers you started.
Pick a scenario by naming its user class (``HitUser``, ``MissUser``, ``RateLimitedUser``,
``StreamUser``); with none named, locust runs all four, equally weighted.

Environment (all optional):

* ``COGNITUDE_BENCH_HOST``: base URL when ``--host`` is not given (default
  ``http://127.0.0.1:8000``). Only loopback addresses are accepted unless
  ``COGNITUDE_BENCH_ALLOW_REMOTE=1``: a load test aimed at a real provider costs money.
* ``COGNITUDE_BENCH_TARGET``: ``proxy`` (checks the proxy's answers: ``X-Cognitude-Cache``,
  429s) or ``direct`` (the mock upstream: any 200 is right, no auth sent). Default: ``proxy``
  when ``COGNITUDE_BENCH_KEY`` is set, else ``direct``.
* ``COGNITUDE_BENCH_KEY``: API key for hit/miss/stream; ``COGNITUDE_BENCH_LIMITED_KEY``: a key
  whose org is already over its limit (``RateLimitedUser`` expects 429 from it).
* ``COGNITUDE_BENCH_MODEL`` (default ``gpt-4o-mini``), ``COGNITUDE_BENCH_PROMPT``: the hit
  prompt (must be the body the cache was warmed with).
* ``COGNITUDE_BENCH_RATE``: requests/s per user (``constant_throughput``); 0 or unset = as
  fast as each user can go (closed loop, the server's saturation point).
* ``COGNITUDE_BENCH_MAX_REQUESTS``: stop every user after this many requests in total
  (default 1,000,000), a count bound on top of locust's ``-t`` time bound.

Why ``FastHttpUser``: geventhttpclient costs a fraction of ``requests``' CPU per call, and
locust shares the 2-core box with the proxy, the mock, Valkey and Postgres.
Locust records response times bucketed to whole milliseconds below 100 ms, so its
percentiles cannot show sub-millisecond differences; its mean is exact (see
``bench/overhead.py`` for the precise open-loop numbers).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from typing import Any
from urllib.parse import urlsplit

import gevent
import orjson
from locust import FastHttpUser, constant, constant_throughput, task
from locust.exception import StopUser

PATH = "/v1/chat/completions"
MODEL = os.environ.get("COGNITUDE_BENCH_MODEL", "gpt-4o-mini")
PROMPT = os.environ.get(
    "COGNITUDE_BENCH_PROMPT",
    "Explain in two sentences what a response cache does for an LLM application.",
)
KEY = os.environ.get("COGNITUDE_BENCH_KEY", "")
LIMITED_KEY = os.environ.get("COGNITUDE_BENCH_LIMITED_KEY", "")
TARGET = os.environ.get("COGNITUDE_BENCH_TARGET", "proxy" if KEY else "direct")
RATE = float(os.environ.get("COGNITUDE_BENCH_RATE", "0") or 0)
MAX_REQUESTS = int(os.environ.get("COGNITUDE_BENCH_MAX_REQUESTS", "1000000"))
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

if TARGET not in ("proxy", "direct"):
    raise ValueError(f"COGNITUDE_BENCH_TARGET must be proxy or direct, not {TARGET!r}")

# A per-process run id in every unique prompt: a second run against the same proxy (same
# Valkey) must not find the first run's "misses" in the cache.
_RUN = os.urandom(4).hex()
_seq = itertools.count()
_sent = itertools.count(1)  # gevent: one OS thread, so a plain counter is exact


def chat_body(content: str, stream: bool = False) -> bytes:
    # Same document as bench/overhead.py's chat_body, so the cache it warms is the one hit here.
    doc: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are a concise assistant."},
                     {"role": "user", "content": content}],
        "temperature": 0,
    }
    if stream:
        doc["stream"] = True
    return orjson.dumps(doc)


HIT_BODY = chat_body(PROMPT)


def _headers(key: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if TARGET == "proxy" and key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _allowed(url: str) -> bool:
    if os.environ.get("COGNITUDE_BENCH_ALLOW_REMOTE") == "1":
        return True
    return urlsplit(url).hostname in LOOPBACK_HOSTS


class _Base(FastHttpUser):
    abstract = True
    host = os.environ.get("COGNITUDE_BENCH_HOST", "http://127.0.0.1:8000")
    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)
    # Seconds; a request slower than this is a failure, not a silent stall.
    network_timeout = 10.0
    connection_timeout = 5.0
    scenario = ""
    key = KEY

    def on_start(self) -> None:
        # Checked before the first request: nothing is sent to a non-loopback host.
        if not _allowed(self.host or ""):
            logging.error("refusing to load %r: only loopback, unless "
                          "COGNITUDE_BENCH_ALLOW_REMOTE=1", self.host)
            raise StopUser()
        if RATE > 0:
            # Random phase: users spawned at whole-second offsets with a period that divides
            # a second would otherwise all fire in the same instant, every period, and the
            # run would measure bursts of --users concurrent requests instead of a steady rate.
            gevent.sleep(random.uniform(0, 1 / RATE))

    def _post(self, body: bytes, expect_status: int, expect_cache: str | None,
              stream: bool = False) -> None:
        if next(_sent) > MAX_REQUESTS:
            raise StopUser()
        # stream=False: locust reads the whole body before it stops the clock, so a stream's
        # time runs to its last byte ([DONE]), like a client that reads the whole answer.
        with self.client.post(PATH, data=body, headers=_headers(self.key), name=self.scenario,
                              catch_response=True) as resp:
            if resp.status_code != expect_status:
                resp.failure(f"status {resp.status_code}, expected {expect_status}")
                return
            if TARGET == "proxy" and expect_cache is not None:
                got = resp.headers.get("x-cognitude-cache")
                if got != expect_cache:
                    resp.failure(f"X-Cognitude-Cache {got}, expected {expect_cache}")
                    return
            if stream and not (resp.content or b"").rstrip().endswith(b"data: [DONE]"):
                resp.failure("stream did not end with [DONE]")
                return
            # A 429 is this scenario's correct answer: count it as a success.
            resp.success()


class HitUser(_Base):
    """The same body every time; the runner caches it first (proxy: gate → stored bytes)."""

    scenario = "hit"

    @task
    def hit(self) -> None:
        self._post(HIT_BODY, 200, "HIT")


class MissUser(_Base):
    """A unique prompt per request (proxy: gate → upstream → response, then write-back)."""

    scenario = "miss"

    @task
    def miss(self) -> None:
        self._post(chat_body(f"{PROMPT} (locust miss {_RUN} #{next(_seq)})"), 200, "MISS")


class RateLimitedUser(_Base):
    """A key whose org is over its limit: the proxy must answer 429 (the mock: 200)."""

    scenario = "ratelimited"
    key = LIMITED_KEY

    @task
    def limited(self) -> None:
        self._post(HIT_BODY, 429 if TARGET == "proxy" else 200, None)


class StreamUser(_Base):
    """A unique prompt with ``"stream": true``, read to the last byte."""

    scenario = "stream"

    @task
    def stream(self) -> None:
        self._post(chat_body(f"{PROMPT} (locust stream {_RUN} #{next(_seq)})", stream=True),
                   200, "MISS", stream=True)
