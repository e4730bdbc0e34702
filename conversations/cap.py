"""The per-user reply cap: at most CHAT_MAX_REPLIES_PER_USER replies of a user written at once.

Replies with a row are counted from their `streaming` rows (turns.py checks in the turn's
transaction). An API call made with a key that keeps nothing (conversations/openai_api/) has no
row, so while it runs it holds a place in a counter that every process sees: the cache (Redis
when deployed; this process's memory in the embedded default, which is one process). A process
that dies mid-call leaves its places taken until UNKEPT_TTL_SECONDS after the user's last such
call started or ended.
"""

from django.conf import settings
from django.core.cache import cache

from conversations.frames import ChatError

UNKEPT_TTL_SECONDS = 600


def _key(user):
    return f"unkept-calls:{user.pk}"


def unkept_calls(user):
    """How many of this user's API calls without a row are being answered now, in every process."""
    return max(int(cache.get(_key(user)) or 0), 0)


def check(user, writing, replies):
    """Refuse `replies` more replies when the user's `writing` stored replies and unkept calls reach the cap."""
    _refuse_past_cap(writing + unkept_calls(user), replies)


def _refuse_past_cap(writing, replies):
    limit = settings.CHAT_MAX_REPLIES_PER_USER
    if writing + replies > limit:
        raise ChatError("too_many_replies", f"{writing} of your replies are being written in other conversations "
                                            f"(at most {limit} at once): wait for one to finish, or stop it.")


def take_unkept_place(user, writing):
    """Take one unkept call's place (give it back with `give_back_unkept_place`); ChatError
    ("too_many_replies") if the user's `writing` stored replies and unkept calls fill the cap. The
    place is taken first and then checked, so that two calls at once cannot both pass."""
    key = _key(user)
    cache.add(key, 0, UNKEPT_TTL_SECONDS)
    try:
        held = cache.incr(key)
    except ValueError:  # it expired between the two calls
        cache.set(key, held := 1, UNKEPT_TTL_SECONDS)
    cache.touch(key, UNKEPT_TTL_SECONDS)
    try:
        _refuse_past_cap(writing + held - 1, 1)
    except ChatError:
        give_back_unkept_place(user)
        raise


def give_back_unkept_place(user):
    try:
        cache.decr(_key(user))
    except ValueError:  # expired meanwhile: nothing left to give back
        pass
