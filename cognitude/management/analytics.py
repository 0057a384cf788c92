"""``GET /analytics/usage``: the caller's organization's usage report, org-scoped by its key
(the report itself: ``cognitude.analytics.usage_report``).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime, timedelta

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cognitude.analytics.usage_report import (
    DEFAULT_DAYS,
    GROUPS,
    MAX_RANGE_DAYS,
    usage_report,
)
from cognitude.db import DB_ERRORS
from cognitude.errors import InvalidRequest, ServiceUnavailable
from cognitude.management.guards import require_key

log = logging.getLogger("cognitude.analytics")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# Reports span whole UTC days [start, end + 1 day) and default to DEFAULT_DAYS before end:
# dates at the calendar's edges would overflow that arithmetic (a 500, found by the fuzz).
_EARLIEST, _LATEST = date(1970, 1, 1), date(9999, 12, 30)


def _date_param(request: Request, name: str, default: date) -> date:
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        # fromisoformat alone would also take "20240101" and week dates.
        if not _DATE_RE.fullmatch(raw):
            raise ValueError(raw)
        day = date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date as YYYY-MM-DD, got {raw!r}.",
                             param=name) from None
    if not _EARLIEST <= day <= _LATEST:
        raise InvalidRequest(f"'{name}' must be between {_EARLIEST} and {_LATEST}, got {raw}.",
                             param=name)
    return day


def parse_params(request: Request, today: date | None = None) -> tuple[date, date, str]:
    """``start``, ``end``, ``group_by`` from the query string, validated."""
    today = today or datetime.now(UTC).date()
    end = _date_param(request, "end", today)
    start = _date_param(request, "start", end - timedelta(days=DEFAULT_DAYS - 1))
    if end < start:
        raise InvalidRequest("'end' must not be before 'start'.", param="end")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise InvalidRequest(f"The date range may span at most {MAX_RANGE_DAYS} days.",
                             param="start")
    group_by = request.query_params.get("group_by") or "day"
    if group_by not in GROUPS:
        raise InvalidRequest(f"'group_by' must be one of {', '.join(GROUPS)}; got {group_by!r}.",
                             param="group_by")
    return start, end, group_by


async def analytics_usage(request: Request) -> Response:
    """``GET /analytics/usage?start=YYYY-MM-DD&end=YYYY-MM-DD&group_by=day|model|provider``,
    authenticated with the proxy's own API keys; org-scoped by the key."""
    st = request.app.state.cognitude
    info = await require_key(request)
    start, end, group_by = parse_params(request)
    if st.pg is None:
        raise ServiceUnavailable("Analytics needs Postgres, which is not configured.")
    try:
        report = await usage_report(st.pg, info.org_id, start=start, end=end,
                                    group_by=group_by, refresh=st.analytics.due(info.org_id))
    except DB_ERRORS as exc:
        log.warning("analytics query failed: %s: %s", type(exc).__name__, exc)
        raise ServiceUnavailable("Analytics are unavailable right now; retry shortly.") \
            from None
    return Response(orjson.dumps(report), media_type="application/json")
