"""A bare ASGI app (no framework) for the CPython probe's tests: sinks.py's routes, run by
uvicorn; input from the query or a url-encoded POST body. Blocked calls answer 403, like
the other apps.

Run: uvicorn --port PORT tests.apps.python.asgi_app:app  (from the repo root)
"""

from urllib.parse import parse_qs

from tests.apps.python import sinks


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = parse_qs(scope["query_string"].decode(), keep_blank_values=True)
    if scope["method"] == "POST":  # a form body, read by the app as ASGI apps do
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        query.update(parse_qs(body.decode(), keep_blank_values=True))
    status, text = 404, "no route"
    if scope["path"] == "/health":
        status, text = 200, "ok"
    elif scope["path"] in sinks.ROUTES:
        fn, names = sinks.ROUTES[scope["path"]]
        try:
            status, text = 200, fn(*[query.get(n, [""])[0] for n in names])
        except PermissionError as e:
            status, text = 403, f"blocked: {e}"
        except Exception as e:
            status, text = 500, f"error: {type(e).__name__}: {e}"
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
