"""Where outbound requests may go: public addresses only, unless the operator said otherwise.

An org may point its provider traffic at its own ``base_url`` (``POST /providers/config``).
That URL is checked when it is written (``management.providers.check_base_url``), but a
host name can be re-pointed at any time afterwards (DNS rebinding): resolved to a public
address for the check, to ``127.0.0.1`` or ``169.254.169.254`` for the requests that follow.
So the check is repeated where it cannot be dodged, on the addresses the upstream session
actually connects to: :class:`GuardedResolver` is the aiohttp session's resolver and drops
every non-public address of a host (and port) that the operator did not name in
``config.toml``.

It costs nothing per request: aiohttp resolves only when it opens a connection (and caches
the answer, already filtered, for ``ttl_dns_cache``). The host and port of each provider the
operator configured are trusted as they are (a self-hosted model server, the bundled mock on
loopback): the same host on another port is not, so a configured private host does not
open its other services to the orgs. And
``alerts.allow_private_targets = true`` lifts the rule for everyone, as it does at write time.
A literal IP in a ``base_url`` never reaches a resolver; it was checked at write time and
cannot change.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable

from aiohttp import DefaultResolver
from aiohttp.abc import AbstractResolver, ResolveResult

log = logging.getLogger("cognitude.egress")


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast: not loopback, private, link-local, CGNAT, multicast..."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback, whatever the v6 flags say
    return ip.is_global and not ip.is_multicast


def address_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")


class EgressRefused(OSError):
    """A host resolved to non-public addresses only (aiohttp reports it as a connect error)."""


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, keeping only public addresses of untrusted hosts.

    ``trusted``: (host, port) of the providers in ``config.toml``."""

    def __init__(self, trusted: Iterable[tuple[str, int]], allow_private: bool,
                 inner: AbstractResolver | None = None) -> None:
        self._trusted = frozenset((host.lower().rstrip("."), port) for host, port in trusted)
        self._allow_private = allow_private
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._allow_private or (host.lower().rstrip("."), port) in self._trusted:
            return found
        public = [r for r in found if is_public(address_of(r["host"]))]
        if not public:
            # By host only: the addresses would tell a probing tenant about the network.
            log.warning("refused to connect to %s: it resolves to non-public addresses only",
                        host)
            raise EgressRefused(f"{host} resolves to non-public addresses only")
        return public

    async def close(self) -> None:
        await self._inner.close()
