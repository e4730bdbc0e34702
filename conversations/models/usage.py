"""Quotas an admin set, and the usage of API calls that keep no conversation.

A `Quota` overrides the defaults (settings CHAT_TOKENS_PER_DAY, CHAT_REPLIES_PER_MINUTE) for one
user or one group; an empty field leaves the limit to the next level, 0 means no limit. What counts
against them is stored usage (conversations/quotas.py): the replies of the user's conversations
(`Message`), and `UnkeptCallUsage`, one row per API call made with a key that keeps nothing (its
time, model and token counts; never its text).
"""

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone

LIMIT_HELP = "Empty: the group's or the site's limit; 0: no limit."


class Quota(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="quota")
    group = models.OneToOneField(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="quota")
    tokens_per_day = models.PositiveIntegerField(null=True, blank=True, help_text=(
        "Prompt + completion tokens of all replies in a day (from midnight, TIME_ZONE). " + LIMIT_HELP))
    replies_per_minute = models.PositiveIntegerField(null=True, blank=True, help_text=(
        "Replies asked for in any 60 seconds: a message, an edit, a regenerate, an API call (a comparison "
        "asks for two). " + LIMIT_HELP))

    class Meta:
        constraints = [models.CheckConstraint(
            condition=models.Q(user__isnull=True, group__isnull=False) | models.Q(user__isnull=False,
                                                                                group__isnull=True),
            name="quota_for_one_user_or_one_group")]

    def __str__(self):
        return f"quota of {self.user or self.group}"


class UnkeptCallUsage(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    model_name = models.CharField(max_length=200)
    started_at = models.DateTimeField(default=timezone.now)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["user", "started_at"])]
        verbose_name = "usage of an API call that kept nothing"

    def __str__(self):
        return f"{self.user} · {self.model_name} · {self.started_at:%Y-%m-%d %H:%M}"
