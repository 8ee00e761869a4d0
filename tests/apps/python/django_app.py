"""Django test app for the CPython probe: one module (settings, views, URLs, WSGI and ASGI
apps), served by gunicorn (WSGI) or uvicorn (ASGI: sync views run in asgiref's thread).
Sinks from request input (query or form): /cmd (os.system through
sinks.py) and /orm (a raw SQL query through Django's own sqlite3 connection, the input
concatenated on purpose). Blocked calls take the app's error path: 403 "blocked: ...".

Run: DJANGO_DB=/path/db.sqlite3 gunicorn -w 1 -b 127.0.0.1:PORT \\
         tests.apps.python.django_app:application  (from the repo root)
     DJANGO_DB=... uvicorn --port PORT tests.apps.python.django_app:asgi_application
"""

import os
import threading

import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

from tests.apps.python import sinks

settings.configure(
    DEBUG=False,
    SECRET_KEY="rampart-test-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DJANGO_DB", "/tmp/rampart-django-test.sqlite3"),
        }
    },
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402  (needs settings)
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection  # noqa: E402


def _guard(fn):
    def view(request):
        try:
            return HttpResponse(fn(request))
        except PermissionError as e:
            return HttpResponse(f"blocked: {e}", status=403)

    return view


def health(request):
    return HttpResponse("ok")


def cmd(request):
    return sinks.run_command(request.GET.get("c", "") or request.POST.get("c", ""))


def thread_cmd(request):
    """/cmd that answers with the thread it ran on (under ASGI: a sync_to_async worker)."""
    sinks.run_command(request.GET.get("c", ""))
    return threading.current_thread().name


async def async_cmd(request):
    """An async view: under ASGI it runs on the event loop, in the request's task."""
    try:
        return HttpResponse(sinks.run_command(request.GET.get("c", "")))
    except PermissionError as e:
        return HttpResponse(f"blocked: {e}", status=403)


def orm(request):
    name = request.POST.get("name") or request.GET.get("name", "")
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS people (name text)")
        cur.execute("SELECT name FROM people WHERE name = '" + name + "'")
        return repr(cur.fetchall())


urlpatterns = [
    path("health", health),
    path("cmd", _guard(cmd)),
    path("orm", _guard(orm)),
    path("thread_cmd", _guard(thread_cmd)),
    path("async_cmd", async_cmd),
]

application = get_wsgi_application()
asgi_application = get_asgi_application()
