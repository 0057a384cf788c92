"""The plan stage: which model the request goes to, through which provider, with which key.

A ``RoutePlan`` is an ordered list of ``Attempt``s that dispatch runs in order. Today a plan
has one attempt (the model's single provider); aliases, ``smart-*`` routing, several
deployments of a model and fallbacks arrive as more attempts and a ``route`` label, without
another stage changing.

Every refusal happens here, before the gate counts the request: an unknown model (404), a
provider that needs the org's own key (403), an org whose stored key does not decrypt (503,
never a silent switch to the operator's shared key).
"""

from __future__ import annotations

from typing import NamedTuple

from cognitude.errors import CredentialUnreadable, PermissionDenied
from cognitude.identity.keycache import KeyInfo
from cognitude.providers.openai import OpenAIAdapter
from cognitude.providers.upstream import Provider, Providers


class Attempt(NamedTuple):
    """One upstream call: where it goes and with what."""

    provider: str
    provider_header: bytes  # X-Cognitude-Provider
    model: str
    url: str
    headers: dict[str, str]  # the key of whoever pays: the org's own, or the shared one
    secret: bytes  # that key, to scrub from upstream error bodies
    stream_usage: bool  # ask this provider for usage on chat streams
    adapter: OpenAIAdapter


class RoutePlan(NamedTuple):
    model: str  # as requested
    attempts: tuple[Attempt, ...]  # in order; dispatch runs them until one answers
    route: str | None  # X-Cognitude-Route (None: the model as requested)


class Planner:
    """Plans for one endpoint (``upstream_path``); plans with the operator's shared key are
    the same for every org, so they are built once per model."""

    __slots__ = ("_providers", "_path", "_shared")

    def __init__(self, providers: Providers, upstream_path: str) -> None:
        self._providers = providers
        self._path = upstream_path
        self._shared: dict[str, RoutePlan] = {}

    def plan(self, info: KeyInfo, model: str) -> RoutePlan:
        provider = self._providers.resolve(model)  # 404 model_not_found
        cred = info.credentials.get(provider.name) if info.credentials else None
        if cred is not None:
            attempt = self._attempt(provider, model, cred.base_url or provider.base_url,
                                    cred.headers, cred.secret)
            return RoutePlan(model, (attempt,), None)
        if info.unreadable and provider.name in info.unreadable:
            raise CredentialUnreadable(
                f"Your organization's stored key for provider `{provider.name}` cannot be "
                "decrypted on this server; store it again with POST /providers/config.")
        if not provider.shared:
            raise PermissionDenied(
                f"Provider `{provider.name}` needs your organization's own key: store it "
                "with POST /providers/config.", code="provider_key_required")
        plan = self._shared.get(model)
        if plan is None:
            attempt = self._attempt(provider, model, provider.base_url, provider.headers,
                                    provider.secret)
            plan = self._shared[model] = RoutePlan(model, (attempt,), None)
        return plan

    def _attempt(self, provider: Provider, model: str, base_url: str, headers: dict[str, str],
                 secret: bytes) -> Attempt:
        return Attempt(provider.name, provider.name_header, model, base_url + self._path,
                       headers, secret, provider.stream_usage, provider.adapter)
