"""``GET /metrics``: Prometheus text exposition of the proxy's own counters.

Counters live where they are counted (the accountant, the usage writer, the key cache, the
cold cache) as plain ints; this module only renders them, so the hot path pays a dict
increment per request and nothing else. Unauthenticated, like most sidecar metrics
endpoints: it exposes counts, never keys, prompts or org names.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cognitude.state import AppState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _line(out: list[str], name: str, kind: str, help_: str,
          samples: list[tuple[str, float]]) -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{labels} {value:g}")


def render(st: AppState) -> str:
    out: list[str] = []
    reqs = sorted(st.accountant.requests.items())
    _line(out, "cognitude_requests_total", "counter",
          "Proxied requests by endpoint, HTTP status and cache status.",
          [(f'{{endpoint="{e}",status="{s}",cache="{c}"}}', n) for (e, s, c), n in reqs])
    w = st.accountant.writer
    _line(out, "cognitude_usage_queue_depth", "gauge", "Usage records waiting in memory.",
          [("", w.queue_depth)])
    for name, help_, value in (
        ("rows_written", "Usage rows written to Postgres.", w.rows_written),
        ("flush_errors", "Failed usage COPY attempts.", w.flush_errors),
        ("rows_spilled", "Usage rows written to local spill files.", w.rows_spilled),
        ("rows_replayed", "Spilled usage rows loaded into Postgres.", w.rows_replayed),
        ("rows_dropped", "Usage rows lost past the spill disk bound.", w.rows_dropped),
    ):
        _line(out, f"cognitude_usage_{name}_total", "counter", help_, [("", value)])
    for name, help_, value in (
        ("lookups", "API-key lookups in Postgres (concurrent requests for a key share one).",
         st.keys.lookups),
        ("lookup_errors", "API-key lookups that failed.", st.keys.lookup_errors),
        ("refreshes", "API-key lookups started ahead of their cache entry's expiry.",
         st.keys.refreshes),
    ):
        _line(out, f"cognitude_key_{name}_total", "counter", help_, [("", value)])
    _upstream(out, st)
    if st.cold is not None:
        for name, help_, value in (
            ("entries_written", "Cache entries written to the cold tier.",
             st.cold.entries_written),
            ("entries_dropped", "Cache entries not written to the cold tier.",
             st.cold.entries_dropped),
            ("reads", "Cold-tier reads after a Redis miss.", st.cold.reads),
            ("read_errors", "Cold-tier reads that failed or timed out.", st.cold.read_errors),
        ):
            _line(out, f"cognitude_cold_cache_{name}_total", "counter", help_, [("", value)])
    return "\n".join(out) + "\n"


def _upstream(out: list[str], st: AppState) -> None:
    """Attempts, fallbacks and cooldowns (counted by the hot routes' dispatchers)."""
    counts = st.upstream_counts
    for name, help_ in (
        ("calls", "Upstream calls, retries and fallbacks included."),
        ("retries", "Upstream calls after a request's first (retries and fallbacks)."),
        ("fallbacks", "Requests answered by a fallback model."),
        ("skipped", "Cooled-down deployments passed over by a request."),
    ):
        _line(out, f"cognitude_upstream_{name}_total", "counter", help_,
              [("", counts.get(name, 0))])
    cd = st.cooldowns
    _line(out, "cognitude_cooldowns_started_total", "counter",
          "Deployment cooldowns this process started.", [("", cd.started)])
    _line(out, "cognitude_cooldowns_received_total", "counter",
          "Deployment cooldowns announced by other replicas.", [("", cd.applied)])
    _line(out, "cognitude_deployment_cooled_down", "gauge",
          "1 for each deployment currently cooled down.",
          [(f'{{deployment="{d}"}}', 1) for d in cd.cooled_now()])


async def metrics(request: Request) -> Response:
    return Response(render(request.app.state.cognitude), media_type=CONTENT_TYPE)
