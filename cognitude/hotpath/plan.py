"""The plan stage: which models the request may go to, through which deployments, with
which key, in which order.

A ``RoutePlan`` is an ordered list of ``Attempt``s for dispatch to run until one answers:
the model's own deployments (the providers listing it, in config-file order), then the
deployments of its ``[routing] fallbacks``, in order. An alias is planned as its model.
Dispatch spends at most ``upstream.max_attempts`` calls on the list, passing over cooled-down
deployments while another remains, and calling a deployment again (after a backoff) when
the list is shorter than the budget.

Every refusal happens here, before the gate counts the request: an unknown model (404), a
model whose every deployment needs the org's own key (403), an org whose stored key for
every deployment does not decrypt (503, never a silent switch to the operator's shared key
at that provider), a model whose providers cannot serve the endpoint (400). A deployment
the org cannot use is left out of the plan; embeddings fall back to the same model only
(vectors of two models do not mix).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from cognitude.errors import CredentialUnreadable, InvalidRequest, PermissionDenied, ProxyError
from cognitude.identity.keycache import KeyInfo
from cognitude.providers.adapter import Adapter
from cognitude.providers.upstream import Provider, Providers
from cognitude.routing.router import NoModel, Router, needs_of
from cognitude.routing.rules import SMART_MODELS, Policy, effective


class Attempt(NamedTuple):
    """One deployment to call: where it goes and with what."""

    provider: str
    model: str  # what the provider is asked for
    url: str
    headers: dict[str, str]  # the key of whoever pays: the org's own, or the shared one
    secret: bytes  # that key, to scrub from upstream error bodies
    stream_usage: bool  # ask this provider for usage on chat streams
    adapter: Adapter
    deployment: str  # "<provider>/<model>": what cooldowns are kept for
    shared: bool  # goes out with the operator's shared key
    max_output: int  # the model's output limit (for kinds that require max_tokens)
    route: str | None  # X-Cognitude-Route / usage_log.route when this attempt answers
    says: tuple[tuple[bytes, bytes], ...]  # X-Cognitude-Model, -Provider (and -Route)


class RoutePlan(NamedTuple):
    model: str  # as requested
    attempts: tuple[Attempt, ...]  # in order; dispatch runs them until one answers
    route: str | None  # the route of the first attempt (an alias, smart-cost:simple)
    complexity: str | None = None  # the class a smart plan was chosen for
    baseline: str | None = None  # the model baseline_cost_micros is priced at

class Planner:
    """Plans for one endpoint; plans that use only the operator's shared keys are the same
    for every org, so they are built once per model."""

    __slots__ = ("_providers", "_endpoint", "_fallbacks", "_max_output", "_shared", "_router",
                 "_policy", "_baseline", "_smart_baseline")

    def __init__(self, providers: Providers, endpoint: str,
                 fallbacks: dict[str, tuple[str, ...]], max_output: dict[str, int],
                 router: Router, policy: Policy, baseline: str) -> None:
        self._providers = providers
        self._endpoint = endpoint
        self._fallbacks = fallbacks if endpoint == "chat" else {}
        self._max_output = max_output
        self._shared: dict[str, RoutePlan] = {}
        self._router = router
        self._policy = policy  # the operator's [routing] policy
        self._baseline = baseline or None
        # A smart request's baseline: routing.baseline_model, else what smart-quality would
        # send a complex prompt to (the premium model it saves against).
        self._smart_baseline = self._baseline or router.premium(policy)

    def plan(self, info: KeyInfo, model: str, doc: dict[str, Any]) -> RoutePlan:
        if model in SMART_MODELS and self._endpoint == "chat":
            return self._smart(info, model, doc)
        if not info.credentials and not info.unreadable and info.routing is None:
            plan = self._shared.get(model)
            if plan is None:
                plan = self._shared[model] = self._build(info, model)
            return plan
        return self._build(info, model)

    def _smart(self, info: KeyInfo, model: str, doc: dict[str, Any]) -> RoutePlan:
        policy = effective(info.routing, self._policy)
        try:
            decision = self._router.decide(doc, model, info.credentials or (), policy)
        except NoModel:
            raise InvalidRequest(
                f"No model your organization can reach has what this request needs "
                f"({', '.join(sorted(needs_of(doc).capabilities)) or 'a context this long'}) for "
                f"`{model}`.", param="model") from None
        attempts: list[Attempt] = []
        refusal: ProxyError | None = None
        for target in decision.models:
            for prov in self._providers.by_model.get(target, ()):
                if prov.name in policy.exclude_providers:
                    continue
                attempt = self._attempt(info, prov, target, decision.route)
                if isinstance(attempt, Attempt):
                    attempts.append(attempt)
                else:
                    refusal = refusal or attempt
        if not attempts:
            raise refusal or InvalidRequest(f"No deployment for `{model}`.", param="model")
        return RoutePlan(model, tuple(attempts), decision.route, decision.cls,
                         self._smart_baseline)

    def _build(self, info: KeyInfo, model: str) -> RoutePlan:
        target = self._providers.aliases.get(model, model)
        route = f"alias:{model}" if target != model else None
        refusal: ProxyError | None = None
        attempts: list[Attempt] = []
        excluded = effective(info.routing, self._policy).exclude_providers
        for prov in self._providers.resolve(model):  # 404 model_not_found
            if prov.name in excluded:
                refusal = refusal or PermissionDenied(
                    f"Provider `{prov.name}` is excluded by the routing policy.",
                    code="provider_excluded")
                continue
            attempt = self._attempt(info, prov, target, route)
            if isinstance(attempt, Attempt):
                attempts.append(attempt)
            else:
                refusal = refusal or attempt
        if not attempts:
            raise refusal or InvalidRequest("no deployment")  # resolve() found at least one
        for other in self._fallbacks.get(target, ()):
            label = f"fallback:{model}->{other}"
            for prov in self._providers.by_model.get(other, ()):
                if prov.name in excluded:
                    continue
                attempt = self._attempt(info, prov, other, label)
                if isinstance(attempt, Attempt):
                    attempts.append(attempt)
        return RoutePlan(model, tuple(attempts), route, None, self._baseline)

    def _attempt(self, info: KeyInfo, prov: Provider, model: str,
                 route: str | None) -> Attempt | ProxyError:
        """The attempt at ``prov`` for this org, or the error that rules it out."""
        path = prov.adapter.path(self._endpoint)
        if path is None:
            return InvalidRequest(f"The model `{model}` is served by provider `{prov.name}` "
                                  f"({prov.adapter.kind}), which has no {self._endpoint} "
                                  "endpoint.", param="model")
        cred = info.credentials.get(prov.name) if info.credentials else None
        if cred is not None:
            return self._make(prov, model, (cred.base_url or prov.base_url) + path,
                              cred.headers, cred.secret, False, route)
        if info.unreadable and prov.name in info.unreadable:
            return CredentialUnreadable(
                f"Your organization's stored key for provider `{prov.name}` cannot be "
                "decrypted on this server; store it again with POST /providers/config.")
        if not prov.shared:
            return PermissionDenied(
                f"Provider `{prov.name}` needs your organization's own key: store it "
                "with POST /providers/config.", code="provider_key_required")
        return self._make(prov, model, prov.base_url + path, prov.headers, prov.secret, True,
                          route)

    def _make(self, prov: Provider, model: str, url: str, headers: dict[str, str],
              secret: bytes, shared: bool, route: str | None) -> Attempt:
        says: tuple[tuple[bytes, bytes], ...] = (
            (b"x-cognitude-model", model.encode()), (b"x-cognitude-provider", prov.name_header))
        if route is not None:
            says += ((b"x-cognitude-route", route.encode()),)
        return Attempt(prov.name, model, url, headers, secret, prov.stream_usage, prov.adapter,
                       f"{prov.name}/{model}", shared, self._max_output.get(model, 0), route,
                       says)


