"""Whether a user may start more replies now: `admit`, the one check every turn and API call passes.

    busy     a conversation writes one reply at a time (two for a comparison, started together)
    at once  at most so many of a user's replies written at the same time: the user's limit of
             replies at once (quotas.py: the site's CHAT_MAX_REPLIES_PER_USER, a group's, the
             user's own), or, for a call made with an API key that has one, the key's
             (`ApiKey.replies_at_once`: higher for a batch job, say). Either way every reply of
             the user in flight counts: a key's limit lets its calls use more places, it does not
             give the user's chats places of their own.
    quotas   tokens per day and replies per minute (quotas.py)

What is in flight is read from the database, in the transaction that adds to it: the user's
`streaming` replies, and the API calls made with a key that keeps nothing, each of which holds a
running `UnkeptCallUsage` row while it is answered (models/usage.py). Both rows name their writer
process and are ended by the heartbeat when it is gone, so a place is held exactly as long as some
process answers it: a client that leaves, a cancelled view or a killed process frees it.

A refusal at the limit of replies at once is `TooManyReplies` (429 with Retry-After from the API,
which first waits briefly for a place: openai_api/calls.py).
"""

from django.contrib.auth import get_user_model
from django.db.models import IntegerField, Value

from conversations.access import quotas
from conversations.errors import ChatError
from conversations.models import Message, UnkeptCallUsage

BUSY = "A reply is still being written; stop it or wait for it to finish."


def lock_user(user):
    """Lock the user's row until the transaction ends: `admit` and what it admits happen one caller at a time."""
    list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))


class TooManyReplies(ChatError):
    """At the limit of replies at once: one of them must end first (`retry_after`: when to look again)."""

    retry_after = 1

    def __init__(self, message):
        super().__init__("too_many_replies", message)


def admit(user, replies=1, conversation_id=None, key=None):
    """Refuse (ChatError) `replies` more replies of `user` (in `conversation_id`, if given; for an API call
    made with `key`, if given) that would find the conversation busy or pass the limit of replies at once or
    a quota. Call it in the transaction that saves them, with the user's row locked (`lock_user`, or the
    conversation's query locking its owner too)."""
    writing = in_flight(user)
    if conversation_id is not None and conversation_id in writing:
        raise ChatError("busy", BUSY)
    limits = quotas.limits_for(user)
    own = key is not None and key.replies_at_once is not None
    check(len(writing), replies, key.replies_at_once if own else limits.replies_at_once, key if own else None)
    quotas.check(user, replies, limits)


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


def check(writing, replies, limit, key=None):
    """Refuse `replies` more replies when the user's `writing` replies in flight (`in_flight`) would pass
    `limit` (0: none), the user's or `key`'s."""
    if limit and writing + replies > limit:
        whose = f"calls with the key {key.name!r}: at most {limit} at once" if key else f"at most {limit} at once"
        raise TooManyReplies(
            f"{writing} of your replies are being written ({whose}): wait for one to finish, or stop it."
        )
