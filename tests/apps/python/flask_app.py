"""Flask test app for the CPython probe: every sink of sinks.py behind a route, query or
form parameters as input. Blocked calls take the app's error path: 403 "blocked: ...".

Run: gunicorn -w 1 -b 127.0.0.1:PORT tests.apps.python.flask_app:app  (from the repo root)
"""

from flask import Flask, request

from tests.apps.python import sinks

app = Flask(__name__)


@app.route("/health")
def health():
    return "ok"


def _handler(fn, names):
    def view():
        args = [request.values.get(n, "") for n in names]
        try:
            return fn(*args)
        except PermissionError as e:
            return f"blocked: {e}", 403
        except Exception as e:
            return f"error: {type(e).__name__}: {e}", 500

    return view


for path, (fn, names) in sinks.ROUTES.items():
    app.add_url_rule(path, path.strip("/"), _handler(fn, names), methods=["GET", "POST"])
