"""API keys: how a tool that speaks the OpenAI API (conversations/openai_api/) acts as a user.

A user creates, names and revokes their own keys (the Keys page); staff can revoke any in the
admin. The key itself is shown once, when it is created: the database keeps its SHA-256 digest
and its first characters (to tell keys apart), never the key. A key is 32 random bytes, so a
plain hash is enough (no salt, no slow hash: there is no dictionary to guess it from), and a
lookup is one indexed query. A revoked key, or a key of a user who is no longer active, fails at
once. A key acts as its user in every way (models, adapters, reply cap, consent), except that
one made with `keep_calls` off leaves no conversation behind.
"""

import hashlib
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from conversations.models.chat import Conversation, Message, title_from

PREFIX = "cs-"  # what a chatsite key starts with, so that a key pasted in the wrong place is recognisable
SHOWN_CHARACTERS = 10  # of the key, kept in clear to tell keys apart: PREFIX and 7 random characters
LAST_USED_RESOLUTION = timedelta(minutes=1)  # a call writes `last_used_at` at most this often per key
NAME_LENGTH = 100
# A key, or most of one, in any text: error reports show it redacted (chatsite/reporting.py).
# A key is PREFIX and 43 characters of token_urlsafe; the shown prefix (7 of them) does not match.
KEY_PATTERN = re.compile(r"(?<![\w-])" + re.escape(PREFIX) + r"[\w-]{20,}")


def digest_of(raw):
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def of(self, user):
        return self.filter(user=user)

    def live(self):
        return self.filter(revoked_at__isnull=True, user__is_active=True)

    def issue(self, user, name, keep_calls=True):
        """A new key of `user`: (ApiKey, the key in clear), the only time the clear key exists.
        A name that is blank or longer than NAME_LENGTH is refused (ValidationError), not cut."""
        name = name.strip()
        if not 0 < len(name) <= NAME_LENGTH:
            raise ValidationError(f"A key's name is 1 to {NAME_LENGTH} characters.", code="name")
        raw = PREFIX + secrets.token_urlsafe(32)
        key = self.create(
            user=user, name=name, keep_calls=keep_calls, prefix=raw[:SHOWN_CHARACTERS], digest=digest_of(raw)
        )
        return key, raw

    def authenticate(self, raw):
        """The live key whose digest matches `raw` (its user loaded), or None; notes when it was used."""
        if not isinstance(raw, str) or not raw.startswith(PREFIX) or len(raw) > 200:
            return None
        key = self.live().select_related("user").filter(digest=digest_of(raw)).first()
        if key is not None:
            key.note_use()
        return key

    def revoke(self):
        """Revoke the live keys among these (the admin's action); returns how many."""
        return self.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())

    revoke.queryset_only = True  # never `ApiKey.objects.revoke()`: that would revoke every key


class ApiKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=NAME_LENGTH, help_text="What the key is for (an editor, a notebook, a script).")
    prefix = models.CharField(max_length=SHOWN_CHARACTERS, help_text="The key's first characters, to tell keys apart.")
    digest = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the key; the key is not stored.")
    keep_calls = models.BooleanField(
        default=True, help_text="Calls with this key are kept as conversations of its user (consent as set there)."
    )
    replies_at_once = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Calls with this key answered at the same time (set by staff; e.g. higher for a batch job). A call "
            "past it waits briefly for a place (CHAT_API_QUEUE_SECONDS), then gets 429 with Retry-After. "
            "Empty: the user's limit of replies at once; 0: no limit."
        ),
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def revoked(self):
        return self.revoked_at is not None

    def revoke(self):
        """From now on the key fails; a call streaming with it meanwhile ends with its reply saved."""
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=self.revoked_at)

    def note_use(self):
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at >= LAST_USED_RESOLUTION:
            self.last_used_at = now
            ApiKey.objects.filter(pk=self.pk).update(last_used_at=now)

    def start_conversation(self, spec, adapter, prompt, structure=None):
        """A new conversation of the key's user that keeps one call: the system prompt, then the call's
        messages (the last one the user's question), on one branch; the reply row comes next (turns.py).

        `prompt`: [{"role": "system" | "user" | "assistant" | "tool", "content": str}], system messages
        first; an assistant turn may carry `reasoning_content` and `tool_calls`, a tool turn `tool_call_id`.
        `structure`: the call's tools, tool choice and response format, kept as the conversation's options, so
        an answer regenerated on its page sees the same tools and keeps to the same format."""
        system = "\n\n".join(m["content"] for m in prompt if m["role"] == "system")
        turns = [m for m in prompt if m["role"] != "system"]
        first_question = next(m["content"] for m in turns if m["role"] == "user")
        conversation = Conversation.objects.start_for(self.user, model=spec, adapter=adapter)
        conversation.options = dict(structure or {})
        parent = None
        for turn in turns:
            parent = conversation.messages.create(
                role=turn["role"],
                content=turn["content"],
                reasoning=turn.get("reasoning_content", ""),
                tool_calls=turn.get("tool_calls", []),
                tool_call_id=turn.get("tool_call_id", ""),
                parent=parent,
                status=Message.Status.COMPLETE,
            )
        conversation.system_prompt, conversation.title, conversation.leaf = system, title_from(first_question), parent
        conversation.api_key, conversation.api_key_name = self, self.name
        conversation.save(update_fields=["system_prompt", "title", "leaf", "api_key", "api_key_name", "options"])
        return conversation
