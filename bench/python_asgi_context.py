#!/usr/bin/env python3
"""CPython probe: what the ASGI request context costs per request, in-process.

A trivial ASGI app called N times on one event loop, with and without the probe's entry
point (`hooks/web.py` `call_asgi`, the wrapper every patched server or framework runs):
- GET, no sink reached: the request set and reset, nothing built;
- GET, one event: as above, plus the request's wire dict built once (what the first event
  of a request pays);
- POST, small url-encoded form the app reads: the receive tap copying the body.
CPU time of the calling thread (`thread_time`, robust to other processes on a shared
machine), rounds interleaved with/without, median of the rounds, ns per request.

    .venv/bin/python bench/python_asgi_context.py [--requests 20000] [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rasp" / "python"))

from rampart_probe import context
from rampart_probe.hooks import web

HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) bench"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-language", b"en-US,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"cookie", b"session=0123456789abcdef0123456789abcdef"),
    (b"referer", b"http://127.0.0.1:8000/"),
]
FORM = b"name=alice&comment=hello+world&n=42"


def scope(method: str) -> dict:
    hdrs = list(HEADERS)
    if method == "POST":
        hdrs += [
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(FORM)).encode()),
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/items/42",
        "raw_path": b"/items/42",
        "query_string": b"q=search&page=2",
        "root_path": "",
        "headers": hdrs,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def receive():
    return {"type": "http.request", "body": FORM, "more_body": False}


async def send(msg):
    pass


def make_app(event: bool):
    async def app(scope, receive, send):
        if scope["method"] == "POST":
            await receive()
        if event:
            req = context.current.get()
            if req is not None:
                req.to_dict()

    return app


async def loop(n: int, app, sc: dict, probe: bool) -> float:
    call = web.call_asgi
    t0 = time.thread_time_ns()
    if probe:
        for _ in range(n):
            await call(app, sc, receive, send)
    else:
        for _ in range(n):
            await app(sc, receive, send)
    return (time.thread_time_ns() - t0) / n


class _Probe:
    enabled = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    web._probe = _Probe()
    cases = {
        "GET, no sink": (make_app(False), scope("GET")),
        "GET, one event (wire dict built)": (make_app(True), scope("GET")),
        "POST form read by the app": (make_app(False), scope("POST")),
    }
    out = {}
    for name, (app, sc) in cases.items():
        without, with_ = [], []
        for _ in range(args.rounds):  # interleaved A/B
            without.append(asyncio.run(loop(args.requests, app, sc, False)))
            with_.append(asyncio.run(loop(args.requests, app, sc, True)))
        a, b = statistics.median(without), statistics.median(with_)
        out[name] = {"without_ns": round(a), "with_ns": round(b), "overhead_ns": round(b - a)}
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"cases": out, "loadavg": load}))
        return
    print(f"ASGI request context, ns per request (median of {args.rounds}, load {load:.1f})")
    for name, r in out.items():
        print(f"  {name:34} {r['without_ns']:>7} -> {r['with_ns']:>7}  (+{r['overhead_ns']})")


if __name__ == "__main__":
    main()
