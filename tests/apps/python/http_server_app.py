#!/usr/bin/env python3
"""Plain http.server test app (stdlib only, any CPython 3.8-3.13): sinks.py's routes on a
ThreadingHTTPServer. Prints "ready PORT" once listening.

Usage: http_server_app.py [--sdk]   --sdk: start the probe itself (rampart_probe.start(),
socket from RAMPART_SOCKET, probe package dir from RAMPART_PROBE_DIR)
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sinks


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/health":
            return self._reply(200, "ok")
        route = sinks.ROUTES.get(url.path)
        if route is None:
            return self._reply(404, "no route")
        fn, names = route
        try:
            return self._reply(200, fn(*[q.get(n, "") for n in names]))
        except PermissionError as e:
            return self._reply(403, f"blocked: {e}")
        except Exception as e:
            return self._reply(500, f"error: {type(e).__name__}: {e}")


class Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True


def main():
    if "--sdk" in sys.argv:
        sys.path.insert(0, os.environ["RAMPART_PROBE_DIR"])
        import rampart_probe

        rampart_probe.start()
    srv = Server(("127.0.0.1", 0), Handler)
    print(f"ready {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
