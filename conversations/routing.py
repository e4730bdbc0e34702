from django.urls import path, re_path

from conversations.consumers import ChatConsumer, RefusingConsumer

websocket_urlpatterns = [
    path("ws/conversations/<int:pk>/", ChatConsumer.as_asgi()),
    re_path(r"", RefusingConsumer.as_asgi()),  # any other path: a refused handshake, not a server error
]
