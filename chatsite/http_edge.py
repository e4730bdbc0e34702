"""What daphne's HTTP parser (Twisted's HTTPChannel) answers before a request reaches Django.

Twisted refuses a request whose header line passes 16 KiB by dropping the connection with no
answer at all, one whose headers together pass 16 KiB, or that is not valid HTTP, with a bare
`400 Bad Request` and no body. A client then sees a reset or an empty error, where an API client
expects one it can read (`Authorization: Bearer <a pasted file>` is the usual cause). `install()`
answers them with `431 Request Header Fields Too Large` (the headers' size) or `400` (the rest),
each with a JSON body in OpenAI's error shape, then closes the connection as Twisted did. The
limits themselves stay Twisted's.
"""

import json


def _response(status, reason, code, message):
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


TOO_LARGE = _response(
    431,
    "Request Header Fields Too Large",
    "request_headers_too_large",
    "The request's headers are too large: at most 16384 bytes in all.",
)
BAD_REQUEST = _response(400, "Bad Request", "invalid_http", "The request is not valid HTTP/1.1.")


def _answer(channel, response):
    channel.transport.write(response)
    channel.loseConnection()


def install():
    """Answer what Twisted refuses as above (daphne's processes only: chatsite/asgi.py calls this)."""
    from twisted.web import http

    receive_line = http.HTTPChannel.lineReceived

    def line_received(channel, line):
        if channel._receivedHeaderSize + len(line) > channel.totalHeadersSize:
            return _answer(channel, TOO_LARGE)
        return receive_line(channel, line)

    http.HTTPChannel.lineReceived = line_received  # headers over totalHeadersSize, before Twisted's bare 400
    http.HTTPChannel.lineLengthExceeded = lambda channel, line: _answer(channel, TOO_LARGE)  # it said nothing
    http.HTTPChannel._respondToBadRequestAndDisconnect = lambda channel: _answer(channel, BAD_REQUEST)
