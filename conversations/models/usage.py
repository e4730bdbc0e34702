"""Quotas an admin set, and the usage of API calls that keep no conversation.

A `Quota` overrides the defaults (settings CHAT_TOKENS_PER_DAY, CHAT_REPLIES_PER_MINUTE,
CHAT_MAX_REPLIES_PER_USER) for one user or one group; an empty field leaves the limit to the next
level, 0 means no limit. An API key may carry its own limit of replies at once (`ApiKey.replies_at_once`). What counts
against them is stored usage (conversations/access/quotas.py): the replies of the user's conversations
(`Message`), and `UnkeptCallUsage`, one row per API call made with a key that keeps nothing (its
time, model and token counts; never its text).

While such a call is answered its row is *running* (`ended_at` empty) and holds a place under the
reply cap (conversations/access/limits.py), exactly as a `streaming` reply does: it names its writer process
and that process renews its heartbeat (conversations/delivery/heartbeat.py). A running row whose writer is gone
or silent is ended by whichever process notices (`end_orphans`), so a place is never held by a call
that no process answers.
"""

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone

import conversations.models.writers as writers

LIMIT_HELP = "Empty: the group's or the site's limit; 0: no limit."


class Quota(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="quota"
    )
    group = models.OneToOneField(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="quota")
    tokens_per_day = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=("Prompt + completion tokens of all replies in a day (from midnight, TIME_ZONE). " + LIMIT_HELP),
    )
    replies_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Replies asked for in any 60 seconds: a message, an edit, a regenerate, an API call (a comparison "
            "asks for two). " + LIMIT_HELP
        ),
    )

    replies_at_once = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Replies being written at the same time, in chats and API calls together (a comparison writes "
            "two). An API key may have a limit of its own. " + LIMIT_HELP
        ),
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=True, group__isnull=False)
                | models.Q(user__isnull=False, group__isnull=True),
                name="quota_for_one_user_or_one_group",
            )
        ]

    def __str__(self):
        return f"quota of {self.user or self.group}"


class UnkeptCallQuerySet(models.QuerySet):
    def running(self):
        return self.filter(ended_at=None)

    def orphaned(self):
        """Running calls whose writer is gone or silent (writers.py); never one this process answers."""
        running = self.running()
        gone = [name for name in set(running.values_list("writer", flat=True).distinct()) if writers.is_gone(name)]
        silent = timezone.now() - timedelta(seconds=settings.CHAT_WRITER_TIMEOUT_SECONDS)
        return running.filter(
            models.Q(writer__in=gone) | models.Q(heartbeat_at__lt=silent) | models.Q(heartbeat_at=None)
        ).exclude(pk__in=list(writers.calling))

    def end_orphans(self):
        """End the orphaned calls (their places under the cap are free again); how many."""
        ids = list(self.orphaned().values_list("pk", flat=True))
        return self.filter(pk__in=ids, ended_at=None).update(ended_at=timezone.now()) if ids else 0

    def renew(self):
        """This process is alive: renew the heartbeat of the calls it answers."""
        ids = list(writers.calling)
        return self.filter(pk__in=ids, ended_at=None).update(heartbeat_at=timezone.now()) if ids else 0


class UnkeptCallUsage(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    model_name = models.CharField(max_length=200)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True, help_text="Empty while the call is answered.")
    writer = models.CharField(max_length=200, blank=True, help_text="The process answering it (writers.py).")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)

    objects = UnkeptCallQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["user", "started_at"]),
            models.Index(fields=["user"], condition=models.Q(ended_at=None), name="unkept_call_running"),
        ]
        verbose_name = "usage of an API call that kept nothing"

    @classmethod
    def begin(cls, user, model_name):
        """The row of a call this process starts answering: running, with this process as its writer."""
        call = cls.objects.create(
            user=user, model_name=model_name, writer=writers.identity(), heartbeat_at=timezone.now()
        )
        writers.calling.add(call.pk)
        return call

    @classmethod
    def end(cls, pk, prompt_tokens=0, completion_tokens=0):
        """The call ended: its tokens, and its place under the cap is free."""
        cls.objects.filter(pk=pk).update(
            ended_at=timezone.now(), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )

    def __str__(self):
        return f"{self.user} · {self.model_name} · {self.started_at:%Y-%m-%d %H:%M}"
