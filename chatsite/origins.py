"""Websockets only from this site's own pages.

Channels' AllowedHostsOriginValidator compares the Origin's host with ALLOWED_HOSTS and
ignores scheme and port, so a page served by anything else on the same host (another
port) could open a user's chat socket with their cookies. Here the Origin must be the
very address the socket was opened on (scheme, host and port, as the browser's
same-origin rule has it) or one of CSRF_TRUSTED_ORIGINS (what a site behind a TLS proxy
lists, as Django's CSRF check needs it too), and the host must be in ALLOWED_HOSTS.
"""

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url):
    """(scheme, host, port) of an origin URL, or None if it is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def is_same_origin(scope):
    headers = {name: value.decode("latin1") for name, value in scope.get("headers", [])}
    origin = _origin(headers.get(b"origin", ""))
    host = headers.get(b"host")
    if host is None and scope.get("server"):
        host = "%s:%s" % tuple(scope["server"])
    if origin is None or not host:
        return False
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    own = _origin(f"{scheme}://{host}")
    trusted = {_origin(url) for url in settings.CSRF_TRUSTED_ORIGINS}
    if origin != own and origin not in trusted:
        return False
    domain, _ = split_domain_port(host)
    return validate_host(domain, settings.ALLOWED_HOSTS)


class SameOriginValidator:
    """ASGI middleware: a websocket whose Origin is not this site's own is refused at the handshake."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not is_same_origin(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
