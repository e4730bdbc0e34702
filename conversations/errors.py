"""What a user is told when something is refused: one exception type, one error-frame shape.

`ChatError(code, message)` becomes `{"type": "error", "code", "message"}` on a socket (and an API
error in OpenAI's shape: openai_api/calls.py); `SessionEnded` and `AccessRevoked` also close the
socket (4401, 4403). Raised from any layer of the app: the turn, the limits, the consumer.
"""


class ChatError(Exception):
    """A user-facing refusal: becomes one error frame {"type": "error", "code", "message"}."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def frame(self):
        return {"type": "error", "code": self.code, "message": self.message}


class SessionEnded(ChatError):
    """The socket's login session is over (logged out, account disabled, password changed)."""

    close_code = 4401

    def __init__(self, code="session_ended", message="You have been logged out. Log in again to go on."):
        super().__init__(code, message)


class AccessRevoked(SessionEnded):
    """The account is still logged in but may no longer chat (its role was removed)."""

    close_code = 4403

    def __init__(self):
        super().__init__("access_revoked", "Your account may no longer chat here: its role was changed. Ask an admin.")
