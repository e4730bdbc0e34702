"""Quotas: tokens per day and replies per minute, per user and per group, counted from stored usage;
and the limit of replies at once, which limits.py checks against what is in flight.

    limits       the site's defaults (CHAT_TOKENS_PER_DAY, CHAT_REPLIES_PER_MINUTE, CHAT_MAX_REPLIES_PER_USER),
                 overridden by the most generous quota of the user's groups, overridden by the user's own
                 (`Quota`); 0: none
    counted      every reply of the user's conversations (`Message`, its prompt + completion tokens)
                 and every API call that kept nothing (`UnkeptCallUsage`): rows in the database, so the
                 counts hold in every process
    checked      by `check` (through cap.admit, with the reply cap), in the transaction that saves the
                 turn (turns.py) or records the unkept call (openai_api/calls.py), with the user's row
                 locked: two turns at once, in two processes, cannot both take the last place
    refused      `QuotaExceeded` (a ChatError: one error frame, or a 429 from the API with
                 Retry-After), saying when the count resets; nothing is saved

The day runs from midnight in TIME_ZONE; the minute is any 60 seconds. A reply is counted when it is
asked for, its tokens when it ends (a reply being written counts for the minute, not yet the day).
"""

import math
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from conversations.errors import ChatError
from conversations.models import Message
from conversations.models.usage import Quota, UnkeptCallUsage

MINUTE = timedelta(seconds=60)
DEFAULTS = {
    "tokens_per_day": "CHAT_TOKENS_PER_DAY",
    "replies_per_minute": "CHAT_REPLIES_PER_MINUTE",
    "replies_at_once": "CHAT_MAX_REPLIES_PER_USER",
}
DIMENSIONS = {  # usage by: (the field naming it on a reply, on an unkept call); a user in two groups counts in both
    "user": ("conversation__owner__username", "user__username"),
    "group": ("conversation__owner__groups__name", "user__groups__name"),
    "model": ("model_name", "model_name"),
}


def _tokens():
    """A row's tokens: prompt + completion (a reply being written has neither yet)."""
    return Coalesce("prompt_tokens", Value(0)) + Coalesce("completion_tokens", Value(0))


class QuotaExceeded(ChatError):
    """Over a quota: the error frame's code is `quota_exceeded`; `retry_after` in seconds (None: never)."""

    def __init__(self, message, retry_after):
        super().__init__("quota_exceeded", message)
        self.retry_after = retry_after


@dataclass
class Limits:
    tokens_per_day: int  # 0: no limit
    replies_per_minute: int
    replies_at_once: int  # checked by limits.py against what is in flight

    @property
    def any(self):
        """Whether a limit counted from stored usage applies (replies at once are counted in flight)."""
        return bool(self.tokens_per_day or self.replies_per_minute)


@dataclass
class Standing:
    """Where a user stands now: limits, what counts against them, and when each count resets."""

    limits: Limits
    tokens_today: int
    recent: list  # when each reply of the last minute was asked for, oldest first
    day_resets_at: object

    @property
    def replies_last_minute(self):
        return len(self.recent)


def limits_for(user):
    """The user's limits: one query for their own quota and their groups'."""
    quotas = list(Quota.objects.filter(Q(user=user) | Q(group__user=user)).distinct())
    own = next((quota for quota in quotas if quota.user_id == user.pk), None)
    groups = [quota for quota in quotas if quota.group_id is not None]
    return Limits(*(_limit(name, own, groups) for name in DEFAULTS))


def _limit(name, own, groups):
    if own is not None and getattr(own, name) is not None:
        return getattr(own, name)
    set_by_groups = [getattr(quota, name) for quota in groups if getattr(quota, name) is not None]
    if set_by_groups:
        return 0 if 0 in set_by_groups else max(set_by_groups)
    return getattr(settings, DEFAULTS[name])


def day_start(now):
    return timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)


def replies_of(user):
    return Message.objects.filter(conversation__owner=user, role=Message.Role.ASSISTANT)


def tokens_since(user, since):
    kept = replies_of(user).filter(created_at__gte=since).aggregate(total=Sum(_tokens()))["total"] or 0
    unkept = UnkeptCallUsage.objects.filter(user=user, started_at__gte=since).aggregate(total=Sum(_tokens()))["total"]
    return kept + (unkept or 0)


def asked_since(user, since):
    kept = replies_of(user).filter(created_at__gte=since).values_list("created_at", flat=True)
    unkept = UnkeptCallUsage.objects.filter(user=user, started_at__gte=since).values_list("started_at", flat=True)
    return sorted([*kept, *unkept])


def standing(user, limits=None, now=None):
    now = now or timezone.now()
    limits = limits or limits_for(user)
    start = day_start(now)
    return Standing(limits, tokens_since(user, start), asked_since(user, now - MINUTE), start + timedelta(days=1))


def check(user, replies=1, limits=None):
    """Refuse `replies` more replies if they would pass one of the user's quotas (QuotaExceeded).

    Called by limits.admit, in the transaction that saves them, with the user's row locked."""
    limits = limits or limits_for(user)
    if not limits.any:
        return
    now = timezone.now()
    where = standing(user, limits, now)
    if limits.tokens_per_day and where.tokens_today >= limits.tokens_per_day:
        wait = where.day_resets_at - now
        raise QuotaExceeded(
            f"You have used {where.tokens_today:,} of your {limits.tokens_per_day:,} tokens for today. The count "
            f"resets at midnight ({where.day_resets_at:%H:%M} {where.day_resets_at.tzname()}), in {human(wait)}.",
            math.ceil(wait.total_seconds()),
        )
    allowed = limits.replies_per_minute
    if allowed and replies > allowed:
        raise QuotaExceeded(f"You may ask for at most {allowed} replies a minute, and this asks for {replies}.", None)
    if allowed and where.replies_last_minute + replies > allowed:
        frees_at = where.recent[where.replies_last_minute + replies - allowed - 1] + MINUTE
        wait = max(frees_at - now, timedelta(seconds=1))
        raise QuotaExceeded(
            f"You asked for {where.replies_last_minute} replies in the last minute (at most {allowed} a minute). "
            f"Try again in {human(wait)}.",
            math.ceil(wait.total_seconds()),
        )


def human(duration):
    seconds = max(math.ceil(duration.total_seconds()), 1)
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


# --- usage over time (the account page, the admin's usage page) ---------------------------------------


def daily_tokens(messages, unkept, since):
    """{date: tokens} from these replies and unkept calls since `since` (days in TIME_ZONE)."""
    days = {}
    for rows, field in ((messages, "created_at"), (unkept, "started_at")):
        for row in (
            rows.filter(**{f"{field}__gte": since})
            .annotate(day=TruncDate(field))
            .values("day")
            .annotate(total=Sum(_tokens()))
            .order_by()
        ):
            days[row["day"]] = days.get(row["day"], 0) + (row["total"] or 0)
    return days


def usage_rows(messages, unkept, since, by):
    """[{name, replies, tokens}] since `since`, most tokens first; `by`: one of DIMENSIONS."""
    on_replies, on_unkept = DIMENSIONS[by]
    rows = {}
    for queryset, time_field, field in ((messages, "created_at", on_replies), (unkept, "started_at", on_unkept)):
        for row in (
            queryset.filter(**{f"{time_field}__gte": since})
            .values(field)
            .annotate(replies=Count("pk"), total=Sum(_tokens()))
            .order_by()
        ):
            name = row[field] or "(none)"
            seen = rows.setdefault(name, {"name": name, "replies": 0, "tokens": 0})
            seen["replies"] += row["replies"]
            seen["tokens"] += row["total"] or 0
    return sorted(rows.values(), key=lambda row: (-row["tokens"], row["name"]))
