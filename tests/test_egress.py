"""The upstream session's resolver: non-public addresses of untrusted hosts never connect."""

from __future__ import annotations

import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from cognitude.providers.egress import EgressRefused, GuardedResolver


class Fixed(AbstractResolver):
    """Answers every name with the given addresses (stands in for DNS)."""

    def __init__(self, *addrs: str) -> None:
        self.addrs = addrs
        self.closed = False

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": a, "port": port, "family": family, "proto": 0,
                 "flags": 0} for a in self.addrs]

    async def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("addr", [
    "127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "::1", "fe80::1%eth0", "fd00::1", "::ffff:127.0.0.1", "224.0.0.1",
])
async def test_non_public_addresses_are_refused(addr):
    r = GuardedResolver([], allow_private=False, inner=Fixed(addr))
    with pytest.raises(EgressRefused):
        await r.resolve("tenant.example", 443)


async def test_only_the_public_addresses_of_a_mixed_answer_are_kept():
    r = GuardedResolver([], allow_private=False, inner=Fixed("10.0.0.5", "93.184.216.34"))
    got = await r.resolve("tenant.example", 443)
    assert [x["host"] for x in got] == ["93.184.216.34"]


async def test_configured_hosts_and_the_operator_switch_are_trusted():
    trusted = GuardedResolver([("LLM.internal", 80)], allow_private=False,
                              inner=Fixed("10.0.0.5"))
    assert [x["host"] for x in await trusted.resolve("llm.internal.", 80)] == ["10.0.0.5"]
    with pytest.raises(EgressRefused):
        await trusted.resolve("other.internal", 80)
    with pytest.raises(EgressRefused):  # the configured host's other services stay closed
        await trusted.resolve("llm.internal", 5432)
    lan = GuardedResolver([], allow_private=True, inner=Fixed("10.0.0.5"))
    assert [x["host"] for x in await lan.resolve("tenant.example", 80)] == ["10.0.0.5"]


async def test_close_closes_the_inner_resolver():
    inner = Fixed("93.184.216.34")
    await GuardedResolver([], allow_private=False, inner=inner).close()
    assert inner.closed
