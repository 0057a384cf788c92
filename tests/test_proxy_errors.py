"""Every error path answers in OpenAI JSON with the right status."""

from __future__ import annotations

import re
import socket

import httpx
import orjson
import pytest

from tests.conftest import assert_openai_error, chat, free_port


async def test_missing_and_invalid_keys(client, mock):
    r = await client.post("/v1/chat/completions", json=chat())
    assert_openai_error(r, 401, code="invalid_api_key")
    r = await client.post("/v1/chat/completions", json=chat(),
                          headers={"Authorization": "Bearer cog-not-a-real-key"})
    assert_openai_error(r, 401, code="invalid_api_key")
    r = await client.post("/v1/chat/completions", json=chat(), headers={"X-API-Key": "nope"})
    assert_openai_error(r, 401)
    assert mock.stats()["requests"] == 0


async def test_x_api_key_header_is_accepted(client, org_factory, mock):
    org = await org_factory()
    r = await client.post("/v1/chat/completions", json=chat("x-api-key"),
                          headers={"X-API-Key": org.key})
    assert r.status_code == 200


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"", None),
    (b"[1, 2]", None),
    (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), "model"),
    (orjson.dumps({"model": 5, "messages": [{"role": "user", "content": "x"}]}), "model"),
    (orjson.dumps({"model": "gpt-4o-mini"}), "messages"),
    (orjson.dumps({"model": "gpt-4o-mini", "messages": "hi"}), "messages"),
    (orjson.dumps({"model": "gpt-4o-mini", "messages": ["hi"]}), "messages[0]"),
    (orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                   "stream": "yes"}), "stream"),
])
async def test_bad_bodies_get_400(client, org_factory, mock, body, param):
    org = await org_factory()
    r = await client.post("/v1/chat/completions", content=body,
                          headers={**org.headers, "Content-Type": "application/json"})
    err = assert_openai_error(r, 400, "invalid_request_error")
    assert err["param"] == param
    assert mock.stats()["requests"] == 0


async def test_bad_cache_ttl_header(client, org_factory):
    org = await org_factory()
    for value in ("soon", "-1", "99999999999"):
        r = await client.post("/v1/chat/completions", json=chat(),
                              headers={**org.headers, "X-Cognitude-Cache-TTL": value})
        err = assert_openai_error(r, 400)
        assert err["param"] == "X-Cognitude-Cache-TTL"


async def test_unknown_model_is_404_model_not_found(client, org_factory, mock):
    org = await org_factory()
    r = await client.post("/v1/chat/completions", json=chat(model="gpt-17"),
                          headers=org.headers)
    err = assert_openai_error(r, 404, code="model_not_found")
    assert err["param"] == "model" and "gpt-17" in err["message"]


async def test_starlette_404_and_405_are_openai_json(client, org_factory):
    org = await org_factory()
    assert_openai_error(await client.get("/nope"), 404)
    assert_openai_error(await client.post("/v1/models", headers=org.headers), 405)
    r = await client.get("/v1/chat/completions", headers=org.headers)
    assert_openai_error(r, 405)
    assert r.headers["allow"] == "POST"


async def test_body_over_limit_is_413_by_content_length(client, org_factory, mock):
    org = await org_factory()
    big = orjson.dumps(chat("x" * 70_000))  # test proxy: max_body_bytes = 65536
    r = await client.post("/v1/chat/completions", content=big,
                          headers={**org.headers, "Content-Type": "application/json"})
    assert_openai_error(r, 413)
    assert mock.stats()["requests"] == 0


def _read_response(s: socket.socket, answer: bytes) -> bytes:
    """Read until the whole response is in: headers and body may come in separate packets."""
    while True:
        head, sep, body = answer.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"content-length: (\d+)", head.lower())
            if m and len(body) >= int(m[1]):
                return answer
        more = s.recv(65536)
        if not more:
            return answer
        answer += more


async def test_chunked_body_over_limit_is_413_before_fully_read(proxy, org_factory, mock):
    """No Content-Length: the proxy must stop reading once the cap is passed."""
    org = await org_factory()
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + org.key.encode()
            + b"\r\n\r\n")
        chunk = b"x" * 16384
        sent = 0
        answer = b""
        try:
            # Far more than the cap; the answer must arrive while we are still sending.
            for _ in range(64):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                s.settimeout(0.01)
                try:
                    answer += s.recv(65536)
                except TimeoutError:
                    pass
                s.settimeout(5)
                if answer:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(5)
        answer = _read_response(s, answer)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 64 * 16384
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert orjson.loads(body)["error"]["code"] == "request_too_large"


async def test_upstream_4xx_passes_through(client, org_factory, mock):
    org = await org_factory()
    mock.fail("400")
    r = await client.post("/v1/chat/completions", json=chat("u400"), headers=org.headers)
    assert_openai_error(r, 400, "invalid_request_error")
    mock.fail("429")
    r = await client.post("/v1/chat/completions", json=chat("u429"), headers=org.headers)
    assert_openai_error(r, 429)
    assert r.headers["retry-after"] == "1"


async def test_upstream_500_is_502(client, org_factory, mock):
    org = await org_factory()
    mock.fail("500")
    r = await client.post("/v1/chat/completions", json=chat("u500"), headers=org.headers)
    assert_openai_error(r, 502, "upstream_error")


async def test_upstream_timeout_is_504(client, org_factory, mock):
    org = await org_factory()
    mock.fail("timeout")  # test proxy: upstream.read_timeout_s = 2
    r = await client.post("/v1/chat/completions", json=chat("slow"), headers=org.headers)
    assert_openai_error(r, 504, "timeout")


async def test_upstream_drop_is_502(client, org_factory, mock):
    org = await org_factory()
    mock.fail("drop")
    r = await client.post("/v1/chat/completions", json=chat("drop"), headers=org.headers)
    assert_openai_error(r, 502, "upstream_error")


async def test_upstream_drop_mid_stream_ends_with_error_event(client, org_factory, mock):
    org = await org_factory()
    mock.fail("drop")
    r = await client.post("/v1/chat/completions", json=chat("drop me", stream=True),
                          headers=org.headers)
    assert r.status_code == 200  # headers were already sent when the upstream died
    events = [e for e in r.text.split("\n\n") if e]
    last = orjson.loads(events[-1].removeprefix("data: "))
    assert last["error"]["type"] == "upstream_error"
    assert "[DONE]" not in r.text
    # A truncated stream is never cached.
    r = await client.post("/v1/chat/completions", json=chat("drop me"), headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "MISS"


async def test_upstream_unreachable_is_502(proxy_factory, org_factory):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    p = proxy_factory(upstream_url=dead)
    org = await org_factory()
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=chat("nobody home"), headers=org.headers)
    err = assert_openai_error(r, 502, "upstream_error")
    assert "unreachable" in err["message"]


async def test_provider_key_never_echoed(proxy_factory, org_factory, mock_server):
    """An upstream 401 quoting the key we sent must not reach the client with it."""
    from cognitude.mock_upstream import MockUpstream

    with MockUpstream(require_key="something-else") as strict:
        p = proxy_factory(upstream_url=strict.url)
        org = await org_factory()
        async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
            r = await c.post("/v1/chat/completions", json=chat("k"), headers=org.headers)
    assert r.status_code == 401
    assert "sk-mock-provider-secret-123" not in r.text
    assert "sk-mock-provider-secret-123" not in p.log()


async def test_redis_down_fails_open(proxy_factory, org_factory, mock):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    p = proxy_factory(redis_url=dead)
    org = await org_factory()
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=chat("no redis"), headers=org.headers)
        assert r.status_code == 200
        assert r.headers["x-cognitude-cache"] == "BYPASS"
        ready = await c.get("/ready")
        err = assert_openai_error(ready, 503)
        assert "redis" in err["message"]


async def test_redis_down_fail_closed_refuses_to_start(proxy_factory):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(RuntimeError, match="redis.url: cannot reach Redis") as info:
        proxy_factory(redis_url=dead, env={"COGNITUDE_REDIS_FAIL_OPEN": "false"})
    assert "Traceback" not in str(info.value)


async def test_postgres_unreachable_refuses_to_start_clearly(proxy_factory):
    dead = f"postgresql://cognitude@127.0.0.1:{free_port()}/cognitude"  # nothing listens there
    with pytest.raises(RuntimeError, match="postgres.dsn: cannot connect to Postgres") as info:
        proxy_factory(pg_dsn=dead)
    assert "Traceback" not in str(info.value)


async def test_error_headers_are_not_duplicated(client, org_factory, mock):
    org = await org_factory()
    for mode, status in (("500", 502), ("400", 400)):
        mock.fail(mode)
        r = await client.post("/v1/chat/completions", json=chat(f"dup {mode}"),
                              headers=org.headers)
        assert r.status_code == status
        assert len(r.headers.get_list("x-request-id")) == 1
        assert r.headers["x-cognitude-model"] == "gpt-4o-mini"


def test_unhandled_exception_on_a_starlette_route_is_openai_json(caplog):
    """A bug in a management route answers 500 in the OpenAI envelope, never a trace."""
    import threading
    import time

    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    from cognitude.app import EXCEPTION_HANDLERS

    async def boom(request):
        raise RuntimeError("a bug with a secret sk-do-not-echo")

    app = Starlette(routes=[Route("/boom", boom)], exception_handlers=EXCEPTION_HANDLERS)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", loop="uvloop",
                                           http="httptools"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        r = httpx.get(f"http://127.0.0.1:{sock.getsockname()[1]}/boom", timeout=5)
    finally:
        server.should_exit = True
        t.join(10)
        sock.close()
    err = assert_openai_error(r, 500, "server_error", "internal_error")
    assert "sk-do-not-echo" not in r.text and "Traceback" not in r.text
    assert err["message"] == "Internal server error."
