"""``cognitude`` commands: serve, migrate, mock-upstream.

``serve`` on the embedded default starts Valkey and PostgreSQL as child processes (from the
main thread: PR_SET_PDEATHSIG fires when the spawning *thread* exits), points the app at
them through ``COGNITUDE_REDIS_URL`` / ``COGNITUDE_POSTGRES_DSN`` (so uvicorn's factory, in
any number of workers, reads the same config), creates a development organization and key,
and prints a request that works.

``serve --with-mock`` binds the mock upstream's port here, before anything else starts, and
hands the listening socket to the mock's process: a port already taken fails the start
naming it, instead of the proxy quietly forwarding to whatever owns the port.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from cognitude import config as config_mod
from cognitude import db
from cognitude.config import Config, ConfigError
from cognitude.identity.apikeys import create_org, new_key, store_key

log = logging.getLogger("cognitude")

DEV_ORG = "dev"
DEV_KEY_FILE = "dev_api_key"


def _fail(msg: str) -> int:
    print(f"cognitude: {msg}", file=sys.stderr)
    return 2


async def _migrate(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await db.migrate(conn)
    finally:
        await conn.close()


async def ensure_dev_key(dsn: str, data_dir: Path) -> str:
    """The development org's key: created once, kept (mode 0600) in the data dir."""
    path = data_dir / DEV_KEY_FILE
    key = path.read_text().strip() if path.exists() else new_key()
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn)
        await create_org(conn, "Development", DEV_ORG)
        await store_key(conn, DEV_ORG, key, "dev")
    finally:
        await conn.close()
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    return key


async def preflight(cfg: Config) -> None:
    """Check at start what would otherwise fail inside uvicorn's lifespan with a traceback:
    secrets, providers, prices, Postgres (and migrations), Redis. Raises ConfigError naming the key.
    Says once what the missing optional secrets cost (not per worker, as the lifespan would)."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from cognitude.ledger.pricing import catalog_of
    from cognitude.providers.upstream import Providers
    from cognitude.routing.rules import operator_policy

    secrets = config_mod.read_secrets(cfg)
    Providers(cfg, secrets)
    catalog_of(cfg)
    operator_policy(cfg)
    for warning in config_mod.startup_warnings(cfg, secrets):
        log.warning("%s: %s", cfg.source, warning)
    try:
        conn = await asyncpg.connect(cfg.postgres.dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ConfigError(f"{cfg.source}: postgres.dsn: cannot connect to Postgres: "
                          f"{type(exc).__name__}: {exc}") from None
    try:
        if cfg.postgres.auto_migrate:
            await db.migrate(conn)
        if secrets.encryption_key is None:
            await _refuse_unreadable_credentials(cfg, conn)
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(cfg.redis.url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        if not cfg.redis.fail_open:
            raise ConfigError(f"{cfg.source}: redis.url: cannot reach Redis: {exc}") from None
        log.warning("redis unreachable at start (%s); serving without limits and cache "
                    "until it is back (redis.fail_open = true)", exc)
    finally:
        await client.aclose()


async def _refuse_unreadable_credentials(cfg: Config, conn: asyncpg.Connection) -> None:
    """Without the encryption key, credentials organizations already stored cannot be
    decrypted: their traffic would fail (DESIGN §14: never a silent switch to the shared
    key). A lost or forgotten key is a reason not to start, not a warning to scroll past."""
    try:
        orgs = await conn.fetchval("SELECT count(DISTINCT org_id) FROM provider_credentials")
    except asyncpg.UndefinedTableError:
        return  # not migrated yet (auto_migrate = false): nothing can be stored
    if orgs:
        name = cfg.auth.encryption_key_env or "(auth.encryption_key_env is empty)"
        raise ConfigError(
            f"{cfg.source}: auth.encryption_key_env: {name} is not set, but Postgres holds "
            f"provider credentials of {orgs} organization(s) that would become unusable; set "
            f"{name} to the key they were stored with")


def _banner(cfg: Config, key: str) -> str:
    host = cfg.server.host if cfg.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    base = f"http://{host}:{cfg.server.port}"
    model = next((m for p in cfg.providers for m in p.models), "gpt-4o-mini")
    msgs = 'messages=[{"role": "user", "content": "Hi"}]'
    return f"""
Cognitude is starting on {base}
  development organization: {DEV_ORG}
  development API key:      {key}

Try it:
  curl -s {base}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{base}/v1", api_key="{key}"); \\
print(c.chat.completions.create(model="{model}", {msgs}).choices[0].message.content)'
"""


def _bind_mock(cfg: Config) -> socket.socket | None:
    """The listening socket for a provider named ``mock``, on its loopback port.

    Bound and listening here, so a port someone else holds fails now, by name, and nobody
    can take it between this check and the mock's start (the socket is handed over)."""
    prov = next((p for p in cfg.providers if p.name == "mock"), None)
    if prov is None:
        return None
    url = urlsplit(prov.base_url)
    if url.hostname not in ("127.0.0.1", "localhost"):
        raise ConfigError(f"{cfg.source}: providers.mock.base_url: must be a loopback URL")
    port = url.port or 80
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Lets a restart bind while connections of the previous run sit in TIME_WAIT; a socket
    # that is still listening on the port makes listen() fail all the same.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"{cfg.source}: providers.mock.base_url: cannot listen on 127.0.0.1:{port} for "
            f"the mock upstream ({exc.strerror}); is another `make run` (or another server) "
            f"using port {port}? Stop it, or change the port in base_url") from None
    return sock


def _start_mock(cfg: Config, sock: socket.socket) -> subprocess.Popen[bytes]:
    """Start the bundled mock upstream on ``sock`` (from ``_bind_mock``) and wait until it
    answers, so the first request after the banner works."""
    from cognitude.embedded import _child_preexec  # shared PDEATHSIG setup

    port = sock.getsockname()[1]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cognitude.cli", "mock-upstream", "--fd", str(sock.fileno())],
            pass_fds=(sock.fileno(),), preexec_fn=_child_preexec,
        )
    finally:
        # The child holds its own copy. Ours must go: if the child died, a socket still
        # listening here would accept connections that nobody ever answers.
        sock.close()
    # The kernel accepts connections on a listening socket before the mock runs, so only an
    # HTTP answer says it is up.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"{cfg.source}: providers.mock.base_url: the mock upstream "
                              f"on port {port} exited with {proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        try:
            conn.request("GET", "/_mock/stats")
            conn.getresponse().read()
            return proc
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
        finally:
            conn.close()
    proc.kill()
    raise ConfigError(f"{cfg.source}: providers.mock.base_url: mock upstream on port {port} "
                      "did not start")


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _exit_cleanly_on_signals() -> None:
    """uvicorn shuts down gracefully on SIGTERM/SIGINT, then restores the previous handler
    and re-raises the signal. With the default handlers the process would die right there
    (SIGTERM) or print a KeyboardInterrupt traceback (Ctrl-C), skipping the clean stop of the
    embedded servers. With these it leaves through ``finally`` with exit status 0."""
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.config:
        config_mod.export_env({"CONFIG": args.config})
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    logging.basicConfig(level=cfg.server.log_level.upper() if cfg.server.log_level != "trace"
                        else "DEBUG", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    services = None
    mock = None
    mock_sock = None
    try:
        if args.with_mock:
            mock_sock = _bind_mock(cfg)
        if cfg.embedded_redis or cfg.embedded_postgres:
            from cognitude.embedded import EmbeddedServices

            data_dir = Path(cfg.data_dir)
            data_dir.mkdir(parents=True, exist_ok=True)
            services = EmbeddedServices(
                data_dir, redis=cfg.embedded_redis, postgres=cfg.embedded_postgres
            )
            services.start()
            overrides = {}
            if services.redis_url:
                overrides["REDIS_URL"] = services.redis_url
            if services.postgres_dsn:
                overrides["POSTGRES_DSN"] = services.postgres_dsn
            config_mod.export_env(overrides)
            # Only next to an embedded Postgres: the key then protects data in the same
            # directory, a development setup. Elsewhere the operator provides it.
            config_mod.ensure_dev_encryption_key(cfg, data_dir / "encryption_key")
            cfg = config_mod.load(args.config)
            if services.postgres_dsn:
                key = asyncio.run(ensure_dev_key(services.postgres_dsn, data_dir))
                print(_banner(cfg, key), flush=True)
        asyncio.run(preflight(cfg))
        _exit_cleanly_on_signals()
        if mock_sock is not None:
            mock, mock_sock = _start_mock(cfg, mock_sock), None
        import uvicorn

        uvicorn.run(
            "cognitude.app:create_app",
            factory=True,
            host=cfg.server.host,
            port=cfg.server.port,
            workers=cfg.server.workers,
            loop="uvloop",
            http="httptools",
            log_level=cfg.server.log_level,
            access_log=cfg.server.access_log,
            # Our own headers say who answered; uvicorn's would cost bytes on every reply.
            server_header=False,
            date_header=False,
            # A loopback sidecar: X-Forwarded-* rewriting is a per-request middleware we
            # have no use for (nothing here reads the client address).
            proxy_headers=False,
        )
    except ConfigError as exc:
        return _fail(str(exc))
    finally:
        if mock_sock is not None:
            mock_sock.close()
        if mock is not None:
            mock.terminate()
            mock.wait(5)
        if services is not None:
            services.stop()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    services = None
    dsn = cfg.postgres.dsn
    if cfg.embedded_postgres:
        from cognitude.embedded import EmbeddedServices

        services = EmbeddedServices(Path(cfg.data_dir), redis=False, postgres=True)
        services.start()
        dsn = services.postgres_dsn or ""
    try:
        applied = asyncio.run(_migrate(dsn))
    except (OSError, asyncpg.PostgresError) as exc:
        return _fail(f"{cfg.source}: postgres.dsn: migration failed: {type(exc).__name__}: {exc}")
    finally:
        if services is not None:
            services.stop()
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return 0


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    from cognitude.mock_upstream import serve

    _exit_cleanly_on_signals()
    # --fd: a listening socket inherited from `serve --with-mock`, which bound the port.
    serve(host="127.0.0.1", port=args.port, latency_ms=args.latency_ms, fd=args.fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cognitude", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the proxy")
    p.add_argument("--config", help="config file (default: $COGNITUDE_CONFIG or ./config.toml)")
    p.add_argument("--with-mock", action="store_true",
                   help="also start the bundled mock upstream for [providers.mock]")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("migrate", help="apply SQL migrations")
    p.add_argument("--config")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("mock-upstream", help="run the bundled fake OpenAI server")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--fd", type=int, default=None,
                   help="serve on this inherited listening socket instead of binding --port")
    p.set_defaults(func=cmd_mock_upstream)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
