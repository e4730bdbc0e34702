"""Whether a user may start more replies now: `admit`, the one check every turn and API call passes.

    busy     a conversation writes one reply at a time (two for a comparison, started together)
    cap      at most CHAT_MAX_REPLIES_PER_USER replies of a user written at once
    quotas   tokens per day and replies per minute (quotas.py)

What is in flight is read from the database, in the transaction that adds to it: the user's
`streaming` replies, and the API calls made with a key that keeps nothing, each of which holds a
running `UnkeptCallUsage` row while it is answered (models/usage.py). Both rows name their writer
process and are ended by the heartbeat when it is gone, so a place is held exactly as long as some
process answers it: a client that leaves, a cancelled view or a killed process frees it.
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import IntegerField, Value

from conversations.access import quotas
from conversations.errors import ChatError
from conversations.models import Message, UnkeptCallUsage

BUSY = "A reply is still being written; stop it or wait for it to finish."


def lock_user(user):
    """Lock the user's row until the transaction ends: `admit` and what it admits happen one caller at a time."""
    list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))


def admit(user, replies=1, conversation_id=None):
    """Refuse (ChatError) `replies` more replies of `user` (in `conversation_id`, if given) that would find the
    conversation busy or pass the cap or a quota. Call it in the transaction that saves them, with the user's
    row locked (`lock_user`, or the conversation's query locking its owner too)."""
    writing = in_flight(user)
    if conversation_id is not None and conversation_id in writing:
        raise ChatError("busy", BUSY)
    check(user, len(writing), replies)
    quotas.check(user, replies)


def in_flight(user):
    """The user's replies being written now: the conversation of each (None for an API call without a
    row of its own), in one query."""
    replies = Message.objects.streaming_of(user).order_by().values_list("conversation_id")
    calls = (
        UnkeptCallUsage.objects.running()
        .filter(user=user)
        .annotate(none=Value(None, output_field=IntegerField()))
        .order_by()
        .values_list("none")
    )
    return [conversation_id for (conversation_id,) in replies.union(calls, all=True)]


def check(user, writing, replies):
    """Refuse `replies` more replies when the user's `writing` replies in flight (`in_flight`) reach the cap."""
    limit = settings.CHAT_MAX_REPLIES_PER_USER
    if writing + replies > limit:
        raise ChatError(
            "too_many_replies",
            f"{writing} of your replies are being written "
            f"(at most {limit} at once): wait for one to finish, or stop it.",
        )
