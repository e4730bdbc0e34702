"""ASGI entry point: HTTP to Django (static files included), websockets to Channels.

Served by daphne (`make run`). Before the first request a process serves, replies
left `streaming` by a previous process are marked `interrupted`: their task died
with that process. (daphne has no lifespan events, hence the first-request hook.)
"""

import asyncio
import logging
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the apps loaded)
from channels.db import database_sync_to_async  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from conversations.models import Message  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402

log = logging.getLogger(__name__)


class RecoverOnStartup:
    """Run `Message.objects.mark_interrupted()` once, before the first request is served."""

    def __init__(self, app):
        self.app = app
        self.lock = None
        self.done = False

    async def __call__(self, scope, receive, send):
        if not self.done:
            self.lock = self.lock or asyncio.Lock()
            async with self.lock:
                if not self.done:
                    count = await database_sync_to_async(Message.objects.mark_interrupted)()
                    if count:
                        log.warning("marked %d unfinished replies from a previous run as interrupted", count)
                    self.done = True
        return await self.app(scope, receive, send)


application = RecoverOnStartup(
    ProtocolTypeRouter(
        {
            "http": ASGIStaticFilesHandler(django_asgi_app),
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )
)
