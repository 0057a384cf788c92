"""Upstream providers: model → deployments resolution and the pooled aiohttp client.

A model listed under several providers has several deployments, in the order the providers
appear in the config file; the plan tries them in that order.

aiohttp rather than httpx on this path: measured here, c=1 p50 133 µs vs 540 µs and
16.4k vs 0.9k req/s at c=32 (DESIGN §9; ``bench/`` reproduces it). Every transport failure
is translated to our exception tree in one place, ``map_upstream_errors``.

Bounds: redirects are never followed (a 3xx is an upstream error: following one would let a
tenant's ``base_url`` bounce the proxy to an internal address, and aiohttp skips the egress
resolver for literal IPs); a body is read up to ``upstream.max_response_bytes`` (the whole
exchange is cut at ``upstream.total_timeout_s`` by ``providers.deadlines``). What a request
and its answer look like on the wire is the adapter's (``providers.openai``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import orjson

from cognitude.config import Config, ConfigError, Secrets
from cognitude.errors import ModelNotFound, UpstreamError, UpstreamTimeout
from cognitude.providers.adapter import Adapter
from cognitude.providers.anthropic import ANTHROPIC
from cognitude.providers.egress import GuardedResolver
from cognitude.providers.openai import OPENAI

# kind → adapter (uvicorn picks its HTTP protocol class the same way).
ADAPTERS: dict[str, Adapter] = {"openai": OPENAI, "anthropic": ANTHROPIC}

# An error body is only ever shown in part (500 bytes), or passed through as a 4xx: a
# megabyte is plenty, and bounds what a misbehaving upstream can make us hold.
MAX_ERROR_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    base_url: str  # without trailing slash, e.g. "https://api.openai.com/v1"
    headers: dict[str, str]  # auth + content type, built once
    name_header: bytes  # for X-Cognitude-Provider
    secret: bytes  # the provider key, only to scrub it from upstream error bodies
    shared: bool  # orgs without their own credential may use the config-level key
    stream_usage: bool  # ask for usage on every chat stream (stream_options.include_usage)
    adapter: Adapter  # the wire format of its kind (ADAPTERS)


class Providers:
    """The providers from config, and each model's deployments (providers, in file order)."""

    __slots__ = ("by_model", "all", "aliases")

    def __init__(self, cfg: Config, secrets_: Secrets) -> None:
        self.all: list[Provider] = []
        self.by_model: dict[str, tuple[Provider, ...]] = {}
        self.aliases = dict(cfg.routing.aliases)
        for p in cfg.providers:
            adapter = ADAPTERS.get(p.kind)
            if adapter is None:
                raise ConfigError(f"{cfg.source}: providers.{p.name}.kind: {p.kind!r} is not "
                                  f"supported (known: {', '.join(ADAPTERS)})")
            key = secrets_.provider_keys.get(p.name, "")
            prov = Provider(p.name, p.base_url.rstrip("/"), adapter.headers(key), p.name.encode(),
                            key.encode(), p.shared_key, p.stream_usage, adapter)
            self.all.append(prov)
            for m in p.models:
                self.by_model[m] = (*self.by_model.get(m, ()), prov)

    def headers_for(self, provider: str, key: str) -> dict[str, str]:
        """The request headers for an org's own ``key`` to ``provider`` (as its adapter
        builds them), for the key cache to build once per lookup."""
        prov = next((p for p in self.all if p.name == provider), None)
        return (prov.adapter if prov is not None else ADAPTERS["openai"]).headers(key)

    def resolve(self, model: str) -> tuple[Provider, ...]:
        """The model's deployments, in order (an alias's: its model's)."""
        provs = self.by_model.get(model) or self.by_model.get(self.aliases.get(model, ""))
        if provs is None:
            raise ModelNotFound(
                f"The model `{model}` does not exist or is not served by this proxy.",
                param="model",
            )
        return provs

    @staticmethod
    def reachable(prov: Provider, own: Iterable[str]) -> bool:
        """Whether an org that stored keys for the providers in ``own`` can use ``prov``."""
        return prov.shared or prov.name in own

    def _served(self, own: frozenset[str]) -> dict[str, list[str]]:
        """Model (and alias) → the providers behind it that the org can reach."""
        out: dict[str, list[str]] = {}
        for m, provs in self.by_model.items():
            names = [p.name for p in provs if self.reachable(p, own)]
            if names:
                out[m] = names
        for alias, m in self.aliases.items():
            if m in out:
                out[alias] = out[m]
        return out

    def model_list(self, own: Iterable[str], virtual: Iterable[str] = ()) -> bytes:
        """``GET /v1/models`` for an org: the models it can reach, each with the providers
        behind it (``owned_by`` is the first, as a single-provider client expects), and the
        ``virtual`` ones the proxy itself answers for (``smart-*``)."""
        served = self._served(frozenset(own))
        served.update((name, ["cognitude"]) for name in virtual)
        return orjson.dumps({"object": "list",
                             "data": [_model_object(m, names) for m, names in served.items()]})

    def model(self, model_id: str, own: Iterable[str], virtual: Iterable[str] = ()) -> bytes:
        """``GET /v1/models/{id}``; 404 ``model_not_found`` for a model the org cannot reach
        (exactly as for one that does not exist: it does not, for this org)."""
        names = ["cognitude"] if model_id in virtual else self._served(frozenset(own)).get(
            model_id)
        if names is None:
            raise ModelNotFound(f"The model `{model_id}` does not exist or is not served by "
                                "this proxy.", param="model")
        return orjson.dumps(_model_object(model_id, names))


def _model_object(model: str, providers: list[str]) -> dict[str, object]:
    return {"id": model, "object": "model", "created": 0, "owned_by": providers[0],
            "providers": providers}


def create_session(cfg: Config) -> aiohttp.ClientSession:
    """The one upstream session, created and closed by the lifespan."""
    up = cfg.upstream
    # Provider hosts the operator named are trusted as configured; any other host and port
    # (an org's own base_url) may only be reached at public addresses, checked at connect
    # time (egress).
    trusted = [(u.hostname, u.port or (443 if u.scheme == "https" else 80))
               for u in (urlsplit(p.base_url) for p in cfg.providers) if u.hostname]
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(trusted, cfg.alerts.allow_private_targets),
        limit=up.pool_size,
        ttl_dns_cache=300,  # providers' DNS rarely changes; resolving per connection costs ms
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Per request: sock_read bounds the silence between two chunks on a stream, and the
        # whole body on non-stream requests (where it is read in one go). The whole exchange
        # (upstream.total_timeout_s) is bounded by cognitude.deadlines instead of total=:
        # aiohttp's total timer costs ~20,000 instructions per request.
        timeout=aiohttp.ClientTimeout(
            total=None, connect=up.connect_timeout_s, sock_read=up.read_timeout_s
        ),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        # One session serves every organization: a cookie a provider sets (Cloudflare's
        # __cf_bm on api.openai.com, say) must not ride along on other tenants' requests.
        cookie_jar=aiohttp.DummyCookieJar(),
        json_serialize=lambda o: orjson.dumps(o).decode(),
    )


class map_upstream_errors:  # noqa: N801 - used like the function it replaced
    """``with map_upstream_errors(provider):`` translates aiohttp/asyncio failures into
    UpstreamError / UpstreamTimeout. A class rather than a ``contextlib.contextmanager``
    generator: entering and leaving one of those costs ~2,500 instructions, on every miss."""

    __slots__ = ("provider",)

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if tp is None:
            return
        provider = self.provider
        if issubclass(tp, (TimeoutError, aiohttp.ServerTimeoutError)):
            raise UpstreamTimeout(f"Upstream provider `{provider}` timed out.") from None
        if issubclass(tp, aiohttp.ClientPayloadError):
            raise UpstreamError(
                f"Upstream provider `{provider}` closed the connection mid-response."
            ) from None
        if issubclass(tp, (aiohttp.ClientError, OSError)):
            raise UpstreamError(
                f"Upstream provider `{provider}` is unreachable ({tp.__name__})."
            ) from None


async def read_capped(resp: aiohttp.ClientResponse, cap: int, provider: str) -> bytes:
    """The response body, or 502 as soon as it is known to exceed ``cap`` bytes."""
    length = resp.content_length
    if length is not None and length > cap:
        raise _too_large(provider, cap)
    if length is not None and "Content-Encoding" not in resp.headers:
        return await resp.read()  # exactly that many bytes: the common case, one call
    # Chunked, or compressed (the decoded size is unknown until read: a small gzip body
    # can inflate to gigabytes), so count what comes out.
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > cap:
            raise _too_large(provider, cap)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(provider: str, cap: int) -> UpstreamError:
    return UpstreamError(f"Upstream provider `{provider}` sent a response larger than {cap} "
                         "bytes (upstream.max_response_bytes).", code="upstream_too_large",
                         retryable=False)
