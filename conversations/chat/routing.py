"""The websocket routes, and the authentication around them.

`SocketAuthMiddlewareStack` is Channels' AuthMiddlewareStack (cookies, the session, a lazy
`scope["user"]`) without its trip to the database before the handshake: the consumer resolves
the user once it has accepted the socket (consumers.ChatConsumer.connect), so a handshake never
waits behind other database work (daphne gives it 5 s) and a database that is away is a close
code the page understands, never an HTTP 500.
"""

from channels.auth import AuthMiddleware
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.urls import path, re_path

from conversations.chat.consumers import ChatConsumer, RefusingConsumer

websocket_urlpatterns = [
    path("ws/conversations/<int:pk>/", ChatConsumer.as_asgi()),
    re_path(r"", RefusingConsumer.as_asgi()),  # any other path: a refused handshake, not a server error
]


class _UserAfterAccept(AuthMiddleware):
    async def resolve_scope(self, scope):
        """Nothing before the handshake: the consumer sets scope["user"] after accepting."""


def SocketAuthMiddlewareStack(inner):
    return CookieMiddleware(SessionMiddleware(_UserAfterAccept(inner)))
