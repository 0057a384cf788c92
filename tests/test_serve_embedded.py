"""`cognitude serve --with-mock` on the embedded default: what `make run` does on a fresh clone.

The proxy starts its own Valkey, PostgreSQL and mock upstream, prints a key and a curl that
work, keeps a development encryption key next to its data, leaves no process behind on
SIGTERM or SIGKILL, and reuses its data on the next start.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, free_port


def _config(tmp: Path, port: int, mock_port: int) -> Path:
    shipped = (REPO / "config.toml").read_text()
    text = (shipped.replace("port = 8000", f"port = {port}")
            .replace("127.0.0.1:9100", f"127.0.0.1:{mock_port}"))
    assert text != shipped
    cfg = tmp / "config.toml"
    cfg.write_text(text)
    return cfg


def _descendants(pid: int) -> set[int]:
    """All live processes below ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(tmp: Path, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cognitude.cli", "serve", "--config", str(cfg), "--with-mock"],
            cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("COGNITUDE_")},
        )


def _wait_banner(proc: subprocess.Popen[bytes], log: Path, url: str) -> str:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        text = log.read_text(errors="replace")
        m = re.search(r"development API key:\s+(cog-\S+)", text)
        if m:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    return text
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise AssertionError("serve did not become ready:\n" + log.read_text())


def _printed_curl(text: str) -> list[str]:
    """The curl command from the banner, turned into argv."""
    block = text[text.index("curl -s"):].split("\n\n")[0]
    import shlex

    return shlex.split(block.replace("\\\n", " "))


def _wait_gone(pids: set[int], seconds: float = 15) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = {p for p in pids if _alive(p)}
        if not alive:
            return set()
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


def test_serve_embedded_end_to_end(tmp_path: Path) -> None:
    port, mock_port = free_port(), free_port()
    cfg = _config(tmp_path, port, mock_port)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"

    # 1st start: fresh data dir; the printed curl works; SIGTERM leaves nothing behind.
    proc = _start(tmp_path, cfg, log)
    try:
        text = _wait_banner(proc, log, url)
        key = re.search(r"development API key:\s+(cog-\S+)", text).group(1)  # type: ignore[union-attr]
        argv = _printed_curl(text)
        assert argv[0] == "curl" and url + "/v1/chat/completions" in argv
        # Run exactly what was printed, with httpx standing in for curl's transport.
        headers = dict(h.split(": ", 1) for h in (argv[i + 1] for i, a in enumerate(argv)
                                                  if a == "-H"))
        data = argv[argv.index("-d") + 1]
        r = httpx.post(url + "/v1/chat/completions", headers=headers, content=data, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "mock reply to: Hello!"
        # Next to the embedded Postgres a development encryption key is made (and kept with
        # the data it protects), so an org can store its own provider key at once.
        dev_key = tmp_path / ".cognitude" / "encryption_key"
        assert dev_key.stat().st_mode & 0o777 == 0o600
        r = httpx.post(url + "/providers/config", headers={"X-API-Key": key}, timeout=10,
                       json={"provider": "mock", "api_key": "sk-own-1234567"})
        assert r.status_code == 201, r.text
        assert "is not set" not in log.read_text()  # nothing to warn about in `make run`
        children = _descendants(proc.pid)
        assert len(children) >= 3  # valkey, postgres (+ its backends), mock upstream
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert _wait_gone(children) == set()
    finally:
        if proc.poll() is None:
            proc.kill()

    # 2nd start: same data dir → same key, same database; SIGKILL leaves nothing behind.
    log2 = tmp_path / "serve2.log"
    proc = _start(tmp_path, cfg, log2)
    try:
        text = _wait_banner(proc, log2, url)
        assert f"development API key:      {key}" in text
        r = httpx.post(url + "/v1/chat/completions", headers={"X-API-Key": key},
                       json={"model": "gpt-4o-mini",
                             "messages": [{"role": "user", "content": "Hello!"}]}, timeout=10)
        assert r.status_code == 200
        # The cache survived the restart: the embedded Valkey kept its data.
        assert r.headers["x-cognitude-cache"] == "HIT"
        children = _descendants(proc.pid)
        proc.kill()
        proc.wait(10)
        assert _wait_gone(children) == set()
    finally:
        if proc.poll() is None:
            proc.kill()
