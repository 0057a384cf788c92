"""Python calls per request under cProfile: which functions a change added to a scenario.

    .venv/bin/python bench/calls.py --compare REV [--scenario miss] [--requests 200]

``instructions.py`` says how much a request costs, in a unit noise cannot move, but only
by shared object: the interpreter is 85 % of it, whichever Python function runs. This
script says *which* functions run: the proxy is started under ``python -m cProfile``,
sent ``--requests`` requests of one scenario (the same bodies as ``overhead.py``), stopped,
and its call counts per function (deterministic, unlike cProfile's times) are divided by
the request count. With ``--compare REV`` a ``git worktree`` of REV is measured the same way
and the functions whose calls per request differ are listed, largest first.
"""

from __future__ import annotations

import argparse
import http.client
import os
import pstats
import stat
import sys
from pathlib import Path

import benchlib
import instructions
import overhead

_WRAPPER = """#!/bin/sh
# Runs the proxy (argv: python -m cognitude.cli ...) under cProfile, writing {out}.
py="$1"; shift; shift
exec "$py" -m cProfile -o {out} -m "$@"
"""


def _profile(tmp: Path, code: Path | None, label: str, scenario: str, n: int
             ) -> dict[str, float]:
    work = tmp / label
    work.mkdir()
    out = work / "proxy.prof"
    wrapper = work / "cprofile.sh"
    wrapper.write_text(_WRAPPER.format(out=out))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    with overhead.running(work, [scenario], proxy_prefix=[str(wrapper)], code=code,
                          start_timeout=60, extra_config=instructions.CONFIG) as env:
        body_of, limited = overhead.scenario_load(scenario, 1, n)
        key = env.limited_key if limited else env.key
        conn = http.client.HTTPConnection("127.0.0.1", env.proxy_port, timeout=30)
        for i in range(n):
            conn.request("POST", "/v1/chat/completions", body=body_of(i), headers={
                "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            conn.getresponse().read()
        conn.close()
    stats = pstats.Stats(str(out))
    calls: dict[str, float] = {}
    for (file, line, name), (_, ncalls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        where = file.split("/site-packages/")[-1].split("/cognitude/")[-1]
        calls[f"{where}:{line}({name})"] = ncalls / n
    return calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", metavar="REV", required=True)
    p.add_argument("--scenario", default="miss", choices=overhead.SCENARIOS)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--most", type=int, default=40)
    args = p.parse_args()
    with benchlib.workdir("cognitude-calls-") as tmp:
        with instructions.worktree(args.compare, tmp) as path:
            before = _profile(tmp, path, "before", args.scenario, args.requests)
        after = _profile(tmp, None, "after", args.scenario, args.requests)
    keys = set(before) | set(after)
    diff = sorted(((after.get(k, 0) - before.get(k, 0), k) for k in keys),
                  key=lambda d: -abs(d[0]))
    print(f"calls per {args.scenario} request: {sum(before.values()):.0f} at "
          f"{args.compare}, {sum(after.values()):.0f} now")
    for delta, k in diff[:args.most]:
        if abs(delta) >= 0.5:
            print(f"{delta:+8.1f}  {before.get(k, 0):7.1f} -> {after.get(k, 0):7.1f}  {k}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    sys.exit(main())
