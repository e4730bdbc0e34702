"""A message, and the end of a reply: partial saves while it streams, the one final save
(`Message.finish`), and replies whose writing process is gone (`Message.objects.interrupt_orphans`).
The conversation a message belongs to, and every turn's state change, are in chat.py.
"""

from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone
from django.utils.functional import cached_property

import conversations.models.writers as writers
from conversations import metrics
from conversations.models.feedback import Preference

WRITER_GONE = "The server writing this reply stopped; this is the text it had saved."


def storable(text):
    """Model text fit to store: NUL (which PostgreSQL refuses in text and jsonb) becomes U+FFFD."""
    return text.replace("\x00", "\ufffd")


class MessageQuerySet(models.QuerySet):
    def orphaned(self):
        """Replies still `streaming` whose writer is gone (see writers.py); never one this process writes."""
        streaming = self.filter(status=Message.Status.STREAMING)
        names = set(streaming.values_list("writer", flat=True).distinct())
        gone = [name for name in names if writers.is_gone(name)]
        silent = timezone.now() - timedelta(seconds=settings.CHAT_WRITER_TIMEOUT_SECONDS)
        return streaming.filter(
            models.Q(writer__in=gone) | models.Q(heartbeat_at__lt=silent) | models.Q(heartbeat_at=None)
        ).exclude(pk__in=list(writers.writing))

    def interrupt_orphans(self):
        """Mark orphaned replies `interrupted`, keeping the text last flushed; returns them."""
        ids = list(self.orphaned().values_list("pk", flat=True))
        if ids:
            Message.objects.filter(pk__in=ids, status=Message.Status.STREAMING).update(
                status=Message.Status.INTERRUPTED,
                finished_at=timezone.now(),
                error=WRITER_GONE,
            )
        ended = list(Message.objects.filter(pk__in=ids, status=Message.Status.INTERRUPTED))
        for message in ended:
            metrics.record_reply(Message.Status.INTERRUPTED, message.model_name)
        return ended

    def renew(self):
        """This process is alive: renew the heartbeat of the replies it writes."""
        ids = list(writers.writing)
        return self.filter(pk__in=ids, status=Message.Status.STREAMING).update(heartbeat_at=timezone.now())

    def light(self):
        """Without the columns that grow with a reply, but saying whether its token probabilities were kept."""
        return self.defer(*Message.LARGE_FIELDS).annotate(
            has_token_probs=models.ExpressionWrapper(
                models.Q(token_probs__isnull=False), output_field=models.BooleanField()
            )
        )

    def streaming_of(self, user):
        """The replies of this user being written now, in conversations they may open (every caller asks here:
        the limits, a stop)."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(conversation__owner=user, conversation__sealed=False, status=Message.Status.STREAMING)

    def rateable(self):
        """Assistant answers that exist as text: finished, stopped or interrupted (not streaming, not failed)."""
        return self.filter(role=Message.Role.ASSISTANT).exclude(
            status__in=[Message.Status.STREAMING, Message.Status.ERROR]
        )


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"  # a tool's result, sent back by an API client (tool_call_id names the call it answers)

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        INTERRUPTED = "interrupted"
        ERROR = "error"

    conversation = models.ForeignKey("conversations.Conversation", on_delete=models.CASCADE, related_name="messages")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    error = models.TextField(blank=True)
    notice = models.CharField(max_length=300, blank=True, help_text="Shown with the reply, e.g. history truncation.")
    # What a model that thinks before it answers wrote first: apart from the answer (`content`) everywhere
    # (the page, the history sent back, feedback, exports, the API).
    reasoning = models.TextField(blank=True, help_text="The model's reasoning before its answer (not the answer).")
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_seconds = models.FloatField(null=True, blank=True, help_text="How long it thought, in seconds.")
    # An assistant turn's tool calls, in OpenAI's shape ({"id", "type": "function", "function": {"name",
    # "arguments": a JSON string}}); a tool turn names the call it answers.
    tool_calls = models.JSONField(default=list, blank=True)
    tool_call_id = models.CharField(max_length=100, blank=True)
    # A finished answer's markdown (and reasoning's) as sanitized HTML, rendered once (conversations/chat/markdown.py)
    # by the renderer that `rendered_with` names; blank, or another renderer's: rendered again when shown.
    html = models.TextField(blank=True)
    reasoning_html = models.TextField(blank=True)
    rendered_with = models.CharField(max_length=120, blank=True)
    model_name = models.CharField(max_length=100, blank=True)
    adapter_name = models.CharField(max_length=100, blank=True)
    generation_options = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    time_to_first_token = models.FloatField(null=True, blank=True, help_text="seconds")
    duration = models.FloatField(null=True, blank=True, help_text="seconds")
    finish_reason = models.CharField(max_length=20, blank=True)
    # The prompt exactly as the model got it (an assistant reply's only; prompt_view.py shows it to the owner).
    prompt = models.TextField(
        blank=True,
        help_text="The rendered chat template after truncation, or the JSON "
        "messages sent where a remote server renders it.",
    )
    prompt_template_hash = models.CharField(
        max_length=16, blank=True, help_text="Its chat template's hash; blank: not rendered by chatsite."
    )
    prompt_left_out = models.PositiveIntegerField(default=0, help_text="Oldest messages left out to fit the context.")
    # Each token's probability and its likeliest alternatives' (modelhub/decoding/logprobs.py), where the model's switch
    # was on: [[token_id, text, logprob, [[alt_id, alt_text, alt_logprob], ...]], ...]; None: not kept.
    token_probs = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    writer = models.CharField(
        max_length=120,
        blank=True,
        default=writers.identity,
        help_text="The process that saved this row, and writes it while it streams.",
    )
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, default=timezone.now, help_text="Renewed by the writer while the reply streams."
    )

    objects = MessageQuerySet.as_manager()

    # Columns that grow with a reply (or its history): loaded for one reply's own page, never for a list.
    LARGE_FIELDS = ("prompt", "token_probs")

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.role} #{self.pk} ({self.status})"

    @property
    def tokens_per_second(self):
        if self.completion_tokens and self.duration and self.time_to_first_token is not None:
            decode_time = self.duration - self.time_to_first_token
            if decode_time > 0 and self.completion_tokens > 1:
                return (self.completion_tokens - 1) / decode_time
        return None

    @cached_property
    def owner_feedback(self):
        """The conversation owner's feedback on this answer (`active_path` fills it for a whole page)."""
        return self.feedback.filter(user_id=self.conversation.owner_id).prefetch_related("tags").first()

    @property
    def owner_rating(self):
        """The owner's rating: up, down, or the empty string for none."""
        return self.owner_feedback.rating if self.owner_feedback else ""

    @cached_property
    def preferred_by_owner(self):
        return self.pk in Preference.objects.preferred_ids(self.conversation.owner_id, [self])

    @property
    def inspectable(self):
        """Its token probabilities were kept (the Inspect link); read without loading them where annotated."""
        if "has_token_probs" in self.__dict__:  # MessageQuerySet.with_probability_flag
            return self.has_token_probs
        return self.role == Message.Role.ASSISTANT and self.token_probs is not None

    @property
    def rateable(self):
        return self.role == Message.Role.ASSISTANT and self.status not in (
            Message.Status.STREAMING,
            Message.Status.ERROR,
        )

    def _token_probs_after(self, usage):
        """The reply's token probabilities once this stream's are added: a continued answer (or a branch from
        an alternative, which starts with its prefix's) keeps one record for its whole text; None: none kept."""
        new = getattr(usage, "token_logprobs", None)
        if new is None:
            return None
        if self.token_probs is None and self.content:  # its first part kept none: a record of half would lie
            return None
        return (self.token_probs or []) + [
            [token, storable(text), logprob, [[alt, storable(alt_text), alt_lp] for alt, alt_text, alt_lp in alts]]
            for token, text, logprob, alts in new
        ]

    def as_turn(self):
        """The message as a chat template takes it: an assistant turn's reasoning (the template decides what
        of it the model sees again) and tool calls, a tool turn's call id."""
        turn = {"role": self.role, "content": self.content}
        if self.reasoning:
            turn["reasoning_content"] = self.reasoning
        if self.tool_calls:
            turn["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            turn["tool_call_id"] = self.tool_call_id
        return turn

    def save_partial(self, content, notice="", reasoning=""):
        """Flush the text streamed so far, so a crash loses at most a few seconds."""
        Message.objects.filter(pk=self.pk, status=Message.Status.STREAMING).update(
            content=content, reasoning=reasoning, notice=notice, heartbeat_at=timezone.now()
        )

    def finish(self, status, content, usage=None, error="", notice="", reasoning="", reasoning_seconds=None):
        """End a streaming reply exactly once with its final text (its answer, and apart from it what the
        model reasoned first), status and usage. Where modelhub parsed the whole reply, its reasoning is
        the parsed one (usage.reasoning): what streamed may differ in leading and trailing blanks.

        The writer's own final save also wins over an `interrupted` another process put
        there while this one was silent (a database outage, say): its text is the whole.
        """
        fields = {
            "status": status,
            "content": content,
            "reasoning": storable((usage.reasoning if usage is not None else "") or reasoning),
            # A continued reply (or a branch that begins with another's reasoning) thought as long as before, and more.
            "reasoning_seconds": _added(self.reasoning_seconds, reasoning_seconds),
            "error": error,
            "notice": notice,
            "finished_at": timezone.now(),
        }
        if usage is not None:
            fields.update(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                time_to_first_token=usage.time_to_first_token,
                duration=usage.duration,
                finish_reason=usage.finish_reason,
                reasoning_tokens=_added(self.reasoning_tokens, usage.reasoning_tokens or None),
                tool_calls=usage.tool_calls,
            )
            if self.role == Message.Role.ASSISTANT:  # exact: the system prompt and history may change later
                fields.update(
                    prompt=usage.prompt_text,
                    prompt_template_hash=usage.template_hash,
                    prompt_left_out=usage.truncated_messages,
                )
                if (kept := self._token_probs_after(usage)) is not None:
                    fields["token_probs"] = kept
        mine = models.Q(status=Message.Status.INTERRUPTED, writer=writers.identity())
        with transaction.atomic():
            updated = Message.objects.filter(models.Q(status=Message.Status.STREAMING) | mine, pk=self.pk).update(
                **fields
            )
            if updated:
                type(self).conversation.field.related_model.objects.filter(pk=self.conversation_id).update(
                    updated_at=fields["finished_at"]
                )
                transaction.on_commit(lambda: metrics.record_reply(status, self.model_name, usage))
        self.refresh_from_db()
        return bool(updated)


def _added(before, now):
    """A count kept over a reply's parts (a continued reply): None where neither part has one."""
    return None if before is None and now is None else (before or 0) + (now or 0)
