"""A minimal FastCGI client (responder role), enough to drive php-fpm from the tests and the
benchmark without a web server in front. One connection per request (no keep-alive), as
nginx does by default with `fastcgi_keep_conn off`."""

from __future__ import annotations

import socket
import struct
from urllib.parse import urlencode

_HEADER = struct.Struct(">BBHHBB")  # version, type, request id, content length, padding, reserved
BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 3, 4, 5, 6, 7
RESPONDER = 1


def _record(rtype: int, content: bytes, rid: int = 1) -> bytes:
    out = b""
    for off in range(0, max(len(content), 1), 0xFFFF):
        chunk = content[off : off + 0xFFFF]
        out += _HEADER.pack(1, rtype, rid, len(chunk), 0, 0) + chunk
    return out


def _pair_len(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def _params(params: dict[str, str]) -> bytes:
    body = b""
    for k, v in params.items():
        kb, vb = k.encode(), v.encode()
        body += _pair_len(len(kb)) + _pair_len(len(vb)) + kb + vb
    return body


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, stderr: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stderr = stderr

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def request(
    address: tuple[str, int] | str,
    script: str,
    query: dict[str, str] | str = "",
    method: str = "GET",
    uri: str = "",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    """One request to a FastCGI server at `address` ((host, port) or a Unix socket path)."""
    qs = query if isinstance(query, str) else urlencode(query)
    path = uri or "/" + script.rsplit("/", 1)[-1]
    params = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": method,
        "SCRIPT_FILENAME": script,
        "SCRIPT_NAME": path,
        "REQUEST_URI": path + ("?" + qs if qs else ""),
        "QUERY_STRING": qs,
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_NAME": "localhost",
        "HTTP_HOST": "localhost",
        "CONTENT_LENGTH": str(len(body)),
    }
    if body:
        params["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
    for name, value in (headers or {}).items():
        params["HTTP_" + name.upper().replace("-", "_")] = value
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(
            _record(BEGIN_REQUEST, struct.pack(">HB5x", RESPONDER, 0))
            + _record(PARAMS, _params(params))
            + _record(PARAMS, b"")
            + (_record(STDIN, body) if body else b"")
            + _record(STDIN, b"")
        )
        buf = b""
        out, err = b"", b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            buf += data
            while len(buf) >= 8:
                _v, rtype, _rid, clen, plen, _r = _HEADER.unpack_from(buf)
                if len(buf) < 8 + clen + plen:
                    break
                content = buf[8 : 8 + clen]
                buf = buf[8 + clen + plen :]
                if rtype == STDOUT:
                    out += content
                elif rtype == STDERR:
                    err += content
                elif rtype == END_REQUEST:
                    return _parse(out, err)
    return _parse(out, err)


def _parse(out: bytes, err: bytes) -> Response:
    head, _, body = out.partition(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.decode(errors="replace").split("\r\n"):
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    status = int(headers.get("status", "200").split()[0])
    return Response(status, headers, body, err)
