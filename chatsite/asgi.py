"""ASGI entry point: HTTP to Django (static files included), websockets to Channels.

Served by daphne (`make run`). Around the routing:
- every request makes sure this process's writer heartbeat runs (conversations/delivery/heartbeat.py):
  the first one starts it (without waiting for it), its first beat recovers the replies that
  dead writers left `streaming`, then it renews this process's own and ends orphans every
  CHAT_HEARTBEAT_SECONDS (daphne has no lifespan events, hence the per-request check, which
  costs nothing after the first);
- websockets must come from this site's own origin (origins.py); the socket's user is resolved
  after the handshake, never before it (conversations/chat/routing.py);
- once daphne runs, the default model (and those marked "load at start") starts loading in
  the background (`modelhub.api.preload`, MODELHUB_PRELOAD), so the first reply does not
  wait for the load; the database query runs in a thread of its own, never on the event
  loop, and a database that is away or not migrated yet only means models load on first use;
- what daphne's HTTP parser refuses (oversized headers, broken HTTP) gets a JSON error, not a
  dropped connection (http_edge.py);
- on SIGTERM daphne stops its Twisted reactor; before it does, every reply this process
  is writing is stopped and saved with its text (within CHAT_SHUTDOWN_SECONDS).
"""

import asyncio
import logging
import os
import sys
import threading

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.db import DatabaseError, connection  # noqa: E402

from chatsite import http_edge  # noqa: E402
from chatsite.origins import SameOriginValidator  # noqa: E402
from conversations.chat import replies  # noqa: E402
from conversations.chat.routing import SocketAuthMiddlewareStack, websocket_urlpatterns  # noqa: E402
from conversations.delivery.durable import first_line  # noqa: E402
from conversations.delivery.heartbeat import Heartbeat  # noqa: E402
from modelhub import api  # noqa: E402

log = logging.getLogger(__name__)


class KeepHeartbeat:
    """Make sure the writer heartbeat runs on the event loop that serves this request."""

    def __init__(self, app, heartbeat):
        self.app = app
        self.heartbeat = heartbeat

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            await self.heartbeat.ensure()
        return await self.app(scope, receive, send)


def _save_replies_before_shutdown():
    """Under daphne, SIGTERM shuts its Twisted reactor down; it waits for what this returns."""
    from twisted.internet import defer

    return defer.Deferred.fromFuture(asyncio.ensure_future(replies.shut_down(settings.CHAT_SHUTDOWN_SECONDS)))


def _preload_models():
    """The server runs: start loading the models its first replies should not wait for, off the event loop."""
    if settings.MODELHUB_WORKERS:  # model worker processes write the replies (and preload): none loads here
        return
    threading.Thread(target=_preload, name="modelhub-preload", daemon=True).start()


def _preload():
    """`api.preload()` in its own thread; a database that fails (away, not migrated yet) is logged, not raised."""
    try:
        names = api.preload()
    except DatabaseError as exc:
        log.warning(
            "no model is loaded at start, each loads on its first use: the database failed (%s)", first_line(exc)
        )
        return
    finally:
        connection.close()  # this thread's own connection: nothing else would close it
    if names:
        log.info("loading at start: %s", ", ".join(names))


if "daphne.server" in sys.modules:  # daphne's reactor is installed (and runs when daphne serves)
    from twisted.internet import reactor

    http_edge.install()

    reactor.addSystemEventTrigger("before", "shutdown", _save_replies_before_shutdown)
    reactor.callWhenRunning(_preload_models)  # only when it serves: not in a command or a test that imports this


heartbeat = Heartbeat(on_recovered=replies.after_recovery)

application = KeepHeartbeat(
    ProtocolTypeRouter(
        {
            "http": ASGIStaticFilesHandler(django_asgi_app),
            "websocket": SameOriginValidator(SocketAuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    ),
    heartbeat,
)
