"""Conversations: who owns what, the tree of messages, and every state change of a turn.

A reply's life (docs/architecture.md): the user message is saved first (`Conversation.add_user_message`),
then an assistant row is created as `streaming` (`Conversation.start_reply`); the generation task saves
partial text as it goes (`Message.save_partial`) and ends it exactly once (`Message.finish`). Rows left
`streaming` by a dead process are marked `interrupted` by whichever process notices (writers.py,
conversations/delivery/heartbeat.py); a message and its reply's end live in message.py. A `Comparison` is
one question answered by two models side by side, and the user's vote on them.
"""

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

import conversations.models.tree as tree
import conversations.models.writers as writers
from conversations.models.comparison import Comparison
from conversations.models.feedback import Feedback, Preference
from conversations.models.message import Message
from conversations.models.privacy import PrivacySettings
from modelhub.api import STRUCTURE_OPTIONS
from modelhub.models import Adapter, ModelSpec, pick_default

DEFAULT_TITLE = "New conversation"


class ConversationQuerySet(models.QuerySet):
    def for_user(self, user):
        """The conversations this user owns and may open; everything user-facing goes through here."""
        return self.owned_by(user).filter(sealed=False)

    def owned_by(self, user):
        """Every conversation of this user, sealed ones included (for deleting them, and consent)."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(owner=user)

    def start_for(self, owner, model=None, adapter=None):
        """A new conversation of `owner`, with their training-consent default."""
        allow_training = PrivacySettings.of(owner).allow_training_default
        return self.create(owner=owner, model=model, adapter=adapter, allow_training=allow_training)

    def search(self, query):
        """Conversations whose title or any message contains the words of `query`."""
        results = self
        for word in query.split()[:8]:
            matching = Message.objects.filter(content__icontains=word).values("conversation_id")
            results = results.filter(models.Q(title__icontains=word) | models.Q(pk__in=matching))
        return results


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default=DEFAULT_TITLE)
    model = models.ForeignKey(ModelSpec, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    adapter = models.ForeignKey(Adapter, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    system_prompt = models.TextField(blank=True)
    options = models.JSONField(default=dict, blank=True, help_text="Generation options overriding the model's.")
    allow_training = models.BooleanField(
        default=True, help_text="Its messages and feedback may be exported as training data (see privacy.py)."
    )
    sealed = models.BooleanField(
        default=False, help_text="Holds an arena's blind answers: its owner cannot open it until the votes are in."
    )
    leaf = models.ForeignKey(
        "Message",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The last message of the active branch.",
    )
    api_key = models.ForeignKey(
        "conversations.ApiKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversations",
        help_text="The key of the API call this conversation keeps (conversations/openai_api/); none for chats.",
    )
    api_key_name = models.CharField(max_length=100, blank=True, help_text="That key's name, kept if it is deleted.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]
        permissions = [("chat", "Can chat (pages, socket, API keys, API) with the models their groups allow")]

    def __str__(self):
        return self.title

    def get_absolute_url(self):
        return reverse("conversations:detail", args=[self.pk])

    def update_settings(self, system_prompt, options):
        """Save the system prompt and generation options (validated by the caller's form). The tools and
        response format an API call was kept with are not settings of the page: they stay."""
        self.system_prompt = system_prompt
        kept = {key: value for key, value in self.options.items() if key in STRUCTURE_OPTIONS}
        self.options = kept | {key: value for key, value in options.items() if value is not None}
        self.save(update_fields=["system_prompt", "options"])

    def set_training_consent(self, allowed):
        self.allow_training = allowed
        self.save(update_fields=["allow_training"])

    def rename(self, title):
        self.title = title.strip()[:200] or DEFAULT_TITLE
        self.save(update_fields=["title"])

    def choose_model(self, spec, adapter=None):
        """Switch the model (and LoRA adapter) that answers from the next message on."""
        if adapter is not None and adapter.base_id != spec.pk:
            raise ValueError("the adapter belongs to another model")
        self.model, self.adapter = spec, adapter
        self.save(update_fields=["model", "adapter"])

    def model_for(self, user, usable=None):
        """The model and adapter that answer next: the chosen ones while this user may use them.

        `usable`: `ModelSpec.objects.usable_by(user)`, when the caller has it already (a page's model
        menu); else it is loaded (two queries)."""
        if usable is None:
            usable = ModelSpec.objects.usable_by(user)
        usable = list(usable)
        spec = next((spec for spec in usable if spec.pk == self.model_id), None)
        if spec is None:
            return pick_default(usable), None
        adapter = next((a for a in spec.usable_adapters if a.pk == self.adapter_id), None)
        return spec, adapter

    def withdrawn_from(self, user, usable=None):
        """The model (or "model + adapter") this conversation was set to that `user` may no longer use
        (disabled, or limited to groups they are not in), as a name; "" if nothing was withdrawn."""
        spec, adapter = self.model_for(user, usable)
        kept_model = spec is not None and spec.pk == self.model_id
        if self.model_id is None or (kept_model and (self.adapter_id is None or adapter is not None)):
            return ""
        name = str(spec if kept_model else self.model)
        return f"{name} + {self.adapter.name}" if self.adapter_id else name

    def active_path(self):
        """The messages of the active branch, oldest first, with their sibling positions.

        An answer that is half of a side-by-side comparison carries `comparison`, whose
        other answer is shown beside it. Every answer shown carries the owner's feedback
        (`owner_feedback`, `preferred_by_owner`). Five queries at most, however long the path: the tree, then
        those of `_load`.
        """
        nodes = self._nodes()
        return self._load(tree.path_to(self.leaf_id, nodes), nodes)

    def path_window(self, before=None):
        """What a page shows of the active branch: (its newest CHAT_PAGE_MESSAGES, how many come before them).

        A long conversation's page shows its end and loads the rest a window at a time on demand: only the
        window's rows are loaded whole, the rest of the tree as four columns. With `before` (a message id on
        the branch), the window ends just before that message. A window starts at a question where it can,
        so an answer is not shown without it. Raises Message.DoesNotExist if `before` is not on the active
        branch (it changed meanwhile).
        """
        nodes = self._nodes()
        path = tree.path_to(self.leaf_id, nodes)
        end = len(path)
        if before is not None:
            end = next((i for i, node in enumerate(path) if node.pk == before), None)
            if end is None:
                raise Message.DoesNotExist(f"message {before} is not on the active branch")
        start = max(0, end - settings.CHAT_PAGE_MESSAGES)
        if start and path[start].role != Message.Role.USER:
            start -= 1
        return self._load(path[start:end], nodes), start

    def _nodes(self):
        """Every message of the conversation without its text: the tree, in one small query."""
        return [tree.Node(*row) for row in self.messages.values_list(*tree.NODE_FIELDS)]

    def _load(self, shown, nodes):
        """The messages of `shown` (tree nodes), loaded with the other answer of each comparison among them,
        with their sibling positions among `nodes`, their comparisons and their owner's feedback and
        preferences. Queries: the rows; the feedback, its tags (if any); the preferences."""
        partner = {}
        for node in nodes:
            if node.compared_with is not None:
                partner[node.pk], partner[node.compared_with] = node.compared_with, node.pk
        ids = [node.pk for node in shown]
        wanted = ids + [partner[pk] for pk in ids if pk in partner]
        rows = self.messages.light().select_related("comparison_as_left", "comparison_as_right").in_bulk(wanted)
        path = tree.annotate_siblings([rows[pk] for pk in ids if pk in rows], nodes)
        for message in path:  # None: not half of a comparison
            message.comparison = getattr(message, "comparison_as_left", None) or getattr(
                message, "comparison_as_right", None
            )
        compared = [
            m.comparison
            for m in path
            if m.comparison is not None and {m.comparison.left_id, m.comparison.right_id} <= rows.keys()
        ]
        for comparison in compared:
            comparison.left, comparison.right = rows[comparison.left_id], rows[comparison.right_id]
        shown = path + [side for c in compared for side in (c.left, c.right)]
        feedback = {
            f.message_id: f
            for f in Feedback.objects.filter(user_id=self.owner_id, message__in=shown).prefetch_related("tags")
        }
        preferred = Preference.objects.preferred_ids(self.owner_id, path)
        for message in shown:
            message.owner_feedback = feedback.get(message.pk)
            message.preferred_by_owner = message.pk in preferred
        return path

    def history(self, upto=None, loaded=None):
        """The chat messages a model sees: system prompt, then the active branch's turns.

        Failed replies are left out (they are not the assistant's words); stopped,
        interrupted and complete ones are kept as the user saw them. With `upto`,
        the branch ends at that message. `loaded`: this conversation's messages, when
        the caller already has them (exports build many prompts per conversation).
        """
        messages = []
        system = self.system_prompt or (self.model.system_prompt if self.model else "")
        if system:
            messages.append({"role": "system", "content": system})
        loaded = list(self.messages.defer(*Message.LARGE_FIELDS)) if loaded is None else loaded
        path = tree.path_to(upto.pk if upto else self.leaf_id, loaded)
        for message in path:
            if message.status != Message.Status.ERROR and (message.content or message.reasoning or message.tool_calls):
                messages.append(message.as_turn())
        return messages

    def _grow(self, message, *changed):
        """Make `message` the end of the active branch (saving the `changed` fields in the same update)."""
        self.leaf = message
        self.updated_at = message.created_at
        self.save(update_fields=["leaf", "updated_at", *changed])
        return message

    # A turn's methods run inside turns.prepare's transaction: no savepoint of their own (a failure
    # fails the whole turn), which saves the database two round trips each.
    @transaction.atomic(savepoint=False)
    def add_user_message(self, content, parent=None):
        """Save the user's message (after the active branch, or as a sibling edit) before any generation."""
        parent_id = parent.pk if parent else self.leaf_id
        message = self.messages.create(
            role=Message.Role.USER, content=content, status=Message.Status.COMPLETE, parent_id=parent_id
        )
        if self.title == DEFAULT_TITLE:
            self.title = title_from(content)
            return self._grow(message, "title")
        return self._grow(message)

    def edit(self, message, content):
        """A new version of a question: a sibling of `message`, on a new active branch."""
        if message.role != Message.Role.USER or message.conversation_id != self.pk:
            raise ValueError("only this conversation's own questions can be edited")
        parent = self.messages.filter(pk=message.parent_id).first()
        return self.add_user_message(content, parent=parent) if parent else self._edit_root(content)

    def _edit_root(self, content):
        message = self.messages.create(role=Message.Role.USER, content=content, status=Message.Status.COMPLETE)
        return self._grow(message)

    def switch_to(self, message):
        """Show `message`'s branch: the active path runs through it to its newest leaf."""
        return self._grow(tree.newest_leaf_under(message, list(self.messages.all())))

    @transaction.atomic(savepoint=False)
    def start_reply(self, spec, options, adapter=None, parent=None, locked=False, begins=None):
        """Create the assistant row, `streaming`, that a generation task will fill.

        Its parent is the end of the active branch (or `parent`, to regenerate an
        answer as a sibling). Refuses (returns None) while another reply of this
        conversation streams: one reply at a time keeps the history well defined.
        `locked`: the caller holds this conversation's row lock and found it idle (turns.prepare).
        `begins`: the fields (text, token probabilities, reasoning) the reply starts with, which the model
        continues (a branch from an alternative token: inspection/tokens.py `branch_start`).
        """
        if not locked and not self._lock_if_idle():
            return None
        return self._grow(self.new_reply(parent.pk if parent else self.leaf_id, spec.name, adapter, options, begins))

    def _lock_if_idle(self):
        """Lock this conversation's row (until the transaction ends); False while one of its replies streams.

        turns.prepare takes the same lock first; these methods check again for callers that come
        without a turn (tests, commands)."""
        Conversation.objects.select_for_update().filter(pk=self.pk).first()
        return not self.messages.filter(status=Message.Status.STREAMING).exists()

    def new_reply(self, parent_id, model_name, adapter, options, begins=None):
        """The one way a `streaming` assistant row is made (chat, comparison, arena): written by this process."""
        return self.messages.create(
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            parent_id=parent_id,
            model_name=model_name,
            adapter_name=adapter.name if adapter else "",
            generation_options=options,
            **(begins or {}),
        )

    @transaction.atomic
    def start_comparison(self, content, first, second):
        """One question answered by two models at once, side by side: (spec, adapter, options) each.

        Returns the Comparison, or None while another reply streams.
        """
        if not self._lock_if_idle():
            return None
        question = self.add_user_message(content)
        left, right = (
            self.new_reply(question.pk, spec.name, adapter, options) for spec, adapter, options in (first, second)
        )
        self._grow(left)
        return Comparison.objects.create(conversation=self, question=question, left=left, right=right)

    @transaction.atomic
    def resume_reply(self, reply, spec, options):
        """Continue an answer that hit the token limit: the same row streams again."""
        if not self._lock_if_idle():
            return None
        reply.status, reply.finish_reason, reply.generation_options = Message.Status.STREAMING, "", options
        reply.writer, reply.heartbeat_at = writers.identity(), timezone.now()
        reply.save(update_fields=["status", "finish_reason", "generation_options", "writer", "heartbeat_at"])
        return reply

    def add_failed_reply(self, error):
        """An assistant row that says why no reply could be generated (no usable model, say)."""
        reply = self._grow(self.new_reply(self.leaf_id, "", None, {}))
        reply.finish(Message.Status.ERROR, "", error=error)
        return reply

    def streaming_reply(self):
        return self.messages.filter(status=Message.Status.STREAMING).last()


def title_from(content):
    words = " ".join(content.split())
    if len(words) <= 60:
        return words or DEFAULT_TITLE
    return words[:60].rsplit(" ", 1)[0] + "…"
