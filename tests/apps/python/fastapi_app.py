"""FastAPI test app for the CPython probe, run by uvicorn: a sync route (Starlette runs it in
its anyio thread pool), an async route, a form POST read by the app itself, a streaming
response that reaches a sink while it streams, and a websocket that reaches a sink (its
scope carries no HTTP request). Blocked calls answer 403, like the other apps.

Run: uvicorn --port PORT tests.apps.python.fastapi_app:app  (from the repo root)
"""

import threading
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from tests.apps.python import sinks

app = FastAPI()


def _run(c: str):
    try:
        sinks.run_command(c)
    except PermissionError as e:
        return JSONResponse({"blocked": str(e)}, status_code=403)
    return {"thread": threading.current_thread().name}


@app.get("/health", response_class=PlainTextResponse)
async def health() -> str:
    return "ok"


@app.get("/sync_cmd")
def sync_cmd(c: str = ""):
    return _run(c)


@app.get("/async_cmd")
async def async_cmd(c: str = ""):
    return _run(c)


@app.post("/form_cmd")
async def form_cmd(request: Request):
    # the body parsed by hand: Starlette's request.form() needs python-multipart
    form = parse_qs((await request.body()).decode(), keep_blank_values=True)
    return _run(form.get("c", [""])[0])


@app.get("/stream")
async def stream(c: str = ""):
    async def chunks():
        yield "start\n"
        yield f"{_run(c)}\n"
        yield "end\n"

    return StreamingResponse(chunks(), media_type="text/plain")


@app.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    c = await websocket.receive_text()
    await websocket.send_text(repr(_run(c)))
    await websocket.close()
