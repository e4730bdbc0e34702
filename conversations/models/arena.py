"""The blind arena: a candidate LoRA adapter against its base model (or another adapter of
that base) on the held-out prompts of a dataset snapshot, judged by a staff member.

    Arena.open(...)            one ArenaMatch per held-out prompt, the left/right order drawn
                               at random and stored; both answers saved as `streaming` rows
    start_generation(arena)    after the commit, a background thread fills them (generate()):
                               conversations/arena/generation.py
    ArenaMatch.decide(...)     the vote: left / right / tie / both bad, final, and a
                               Preference(source="arena") so exports pick it up

The answers are `Message` rows of an arena conversation owned by the arena's creator, who
is its voter: training consent (their privacy default), deleting their conversations and
the exports work exactly as for any other answer. The prompt is rebuilt as messages of
that conversation (its system message as the conversation's system prompt: one
conversation per distinct system prompt), so `history()` gives the model, and the
exporter, exactly the snapshot's prompt. Those messages name the model that wrote
each answer, so the conversation is sealed (`Conversation.sealed`: out of its owner's
list, pages and sockets) until no match is left to vote on, or the arena is deleted.

Answers are generated greedily (temperature 0, the base's other defaults; stored on the
arena and on each answer) in one daemon thread per arena, a match at a time with its two
answers submitted together so the base model's worker batches them. The thread only
reads and saves rows, as their writer (writers.py); if the process dies, whichever process
notices marks the rows still `streaming` as `interrupted` and settles the arena
(`Arena.objects.settle`): their matches are skipped, as only two complete answers can be
voted on. The candidate may be disabled (not promoted yet): `modelhub.api.start` takes
the Adapter row itself, so users still cannot pick it until it is promoted.
"""

import json
import logging
import random
import secrets

from django.conf import settings
from django.db import models, transaction
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.urls import reverse
from django.utils import timezone

import conversations.models.writers as writers
from conversations.models.chat import Conversation, Message
from conversations.models.datasets import DatasetSnapshot, SnapshotChanged
from conversations.models.feedback import Preference, Verdict
from modelhub import api
from modelhub.api import ModelhubError
from modelhub.models import Adapter, ModelSpec

log = logging.getLogger(__name__)

GREEDY = {"temperature": 0.0}


class ArenaQuerySet(models.QuerySet):
    def for_user(self, user):
        """The arenas this account opened (and votes in); none without the permission to view arenas."""
        if not user.has_perm("conversations.view_arena"):
            return self.none()
        return self.filter(created_by=user)

    def settle(self):
        """Once answers whose writer died are marked interrupted (at start-up, say): the arenas they
        held up are ready (those matches skipped), and unsealed if nothing is left to vote on."""
        for arena in self.filter(status=Arena.Status.GENERATING):
            arena.check_finished()

    def with_counts(self):
        """`total` matches and `votes` cast, per arena."""
        return self.annotate(
            total=models.Count("matches"), votes=models.Count("matches", filter=~models.Q(matches__vote=""))
        )


class Arena(models.Model):
    class Status(models.TextChoices):
        GENERATING = "generating"
        READY = "ready"

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="arenas")
    snapshot = models.ForeignKey(
        DatasetSnapshot,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="arenas",
        help_text="Whose held-out prompts are played.",
    )
    base = models.ForeignKey(ModelSpec, on_delete=models.CASCADE, related_name="+")
    candidate = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="arenas")
    opponent = models.ForeignKey(
        Adapter,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="Another adapter of the base; empty: the base model alone.",
    )
    options = models.JSONField(default=dict, blank=True, help_text="Generation options of every answer.")
    seed = models.BigIntegerField(help_text="Draws the prompts and which answer is shown on the left.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.GENERATING)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ArenaQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"Arena #{self.pk}: {self.candidate_name} vs {self.opponent_name}"

    def get_absolute_url(self):
        return reverse("conversations:arena", args=[self.pk])

    @property
    def candidate_name(self):
        return f"{self.base.name} + {self.candidate.name}"

    @property
    def opponent_name(self):
        return f"{self.base.name} + {self.opponent.name}" if self.opponent else self.base.name

    @classmethod
    @transaction.atomic
    def open(cls, user, snapshot, candidate, opponent=None, prompts=20, seed=None):
        """A new arena of up to `prompts` held-out prompts of `snapshot`, drawn at random.

        Raises ValueError for an opponent of another base, or a snapshot without usable
        held-out prompts (or whose files changed since the export). Generation is not
        started here: call `start_generation(arena)`.
        """
        if opponent is not None and (opponent.base_id != candidate.base_id or opponent.pk == candidate.pk):
            raise ValueError("the opponent must be another adapter of the candidate's base model")
        held_out = held_out_prompts(snapshot)
        if not held_out:
            raise ValueError(f"{snapshot} has no held-out prompts to play")
        seed = secrets.randbits(48) if seed is None else seed
        rng = random.Random(seed)
        arena = cls.objects.create(
            created_by=user,
            snapshot=snapshot,
            base=candidate.base,
            candidate=candidate,
            opponent=opponent,
            options=api.options_for(candidate.base, GREEDY).as_dict(),
            seed=seed,
        )
        conversations = {}
        for position, prompt in enumerate(rng.sample(held_out, min(prompts, len(held_out)))):
            ArenaMatch.start(arena, position, prompt, candidate_left=rng.random() < 0.5, conversations=conversations)
        return arena

    def generate(self):
        """Generate every answer still to be written, a match at a time (blocking: run it in a thread).

        This process is their writer from the start: its heartbeat keeps them all alive (writers.py)."""
        matches = list(self.matches.select_related("candidate_answer", "opponent_answer"))
        writing = {answer.pk for match in matches for answer in match.answers() if answer.status == "streaming"}
        writers.writing.update(writing)
        try:
            for match in matches:
                match.generate()
        except Exception as exc:  # never leave answers "writing…" forever; the log has the traceback
            log.exception("arena %s: generation failed", self.pk)
            self._fail_pending(f"Generation stopped: {exc}")
        finally:
            writers.writing.difference_update(writing)
        self.check_finished()

    def _fail_pending(self, error):
        for match in self.matches.all():
            for answer in match.answers():
                answer.finish(answer.Status.ERROR, answer.content, error=error)

    def check_finished(self):
        """Ready once no answer is being written (also after a restart marked them interrupted), and
        unsealed once nothing is left to vote on. A write: run when generation ends, at each vote and
        by `settle`, never by a page view."""
        if self.status == self.Status.GENERATING and not self.matches.generating().exists():
            self.status = self.Status.READY
            self.save(update_fields=["status"])
        if self.status == self.Status.READY:
            self.unseal_when_decided()
        return self.status == self.Status.READY

    def unseal_when_decided(self):
        """Once no match is left to vote on, its voter may open the arena's conversations."""
        if self.next_match() is None:
            self.conversations().update(sealed=False)

    def conversations(self):
        return Conversation.objects.filter(pk__in=self.matches.values("candidate_answer__conversation"))

    def next_match(self):
        """The first match not voted on yet whose answers exist or are being written; None when done."""
        for match in self.matches.select_related("candidate_answer", "opponent_answer").filter(vote=""):
            if match.votable or match.generating:
                return match
        return None

    def results(self):
        """The candidate's record against the opponent: wins, losses, ties, both bad, left to vote, skipped."""
        counts = dict.fromkeys(["win", "loss", "tie", "both_bad", "undecided", "skipped"], 0)
        for match in self.matches.select_related("candidate_answer", "opponent_answer"):
            counts[match.outcome or ("undecided" if match.votable or match.generating else "skipped")] += 1
        counts["voted"] = counts["win"] + counts["loss"] + counts["tie"] + counts["both_bad"]
        counts["total"] = counts["voted"] + counts["undecided"] + counts["skipped"]
        return counts

    def promote_candidate(self):
        """Serve the candidate to users: enable the adapter (modelhub's `Adapter.promote`)."""
        self.candidate.promote()
        return self.candidate


def held_out_prompts(snapshot):
    """The distinct prompts of the snapshot's eval file, in file order: prompts its adapters never trained on."""
    try:
        eval_path = snapshot.verify()["eval"]
    except SnapshotChanged as exc:
        raise ValueError(str(exc)) from exc
    prompts, seen = [], set()
    with open(eval_path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            prompt = row["prompt"] if "prompt" in row else row["messages"][:-1]
            key = json.dumps(prompt, sort_keys=True)
            if key not in seen and _playable(prompt):
                seen.add(key)
                prompts.append(prompt)
    return prompts


def _playable(prompt):
    """An optional system message, then user/assistant turns ending with the user's."""
    turns = prompt[1:] if prompt and prompt[0].get("role") == "system" else prompt
    return (
        bool(turns)
        and turns[-1].get("role") == "user"
        and all(turn.get("role") in ("user", "assistant") and isinstance(turn.get("content"), str) for turn in turns)
    )


class ArenaMatchQuerySet(models.QuerySet):
    def generating(self):
        streaming = "streaming"
        return self.filter(models.Q(candidate_answer__status=streaming) | models.Q(opponent_answer__status=streaming))


class ArenaMatch(models.Model):
    """One held-out prompt, two blind answers (A on the left, B on the right) and the vote."""

    arena = models.ForeignKey(Arena, on_delete=models.CASCADE, related_name="matches")
    position = models.PositiveIntegerField()
    prompt = models.JSONField(help_text="The snapshot's prompt messages, as exported.")
    candidate_answer = models.OneToOneField("conversations.Message", on_delete=models.CASCADE, related_name="+")
    opponent_answer = models.OneToOneField("conversations.Message", on_delete=models.CASCADE, related_name="+")
    candidate_left = models.BooleanField(help_text="Drawn at random: the candidate's answer is shown as A.")
    vote = models.CharField(
        max_length=10,
        blank=True,
        choices=Verdict.choices_of(
            Verdict.UNDECIDED,
            Verdict.LEFT,
            Verdict.RIGHT,
            Verdict.TIE,
            Verdict.BOTH_BAD,
            LEFT="A is better",
            RIGHT="B is better",
        ),
    )
    voter = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    voted_at = models.DateTimeField(null=True, blank=True)
    preference = models.OneToOneField(
        Preference, null=True, blank=True, on_delete=models.SET_NULL, related_name="arena_match"
    )

    objects = ArenaMatchQuerySet.as_manager()

    class Meta:
        ordering = ["arena", "position"]
        constraints = [models.UniqueConstraint(fields=["arena", "position"], name="one_match_per_arena_position")]
        verbose_name_plural = "arena matches"

    def __str__(self):
        return f"arena #{self.arena_id}, prompt {self.position + 1}"

    @classmethod
    def start(cls, arena, position, prompt, candidate_left, conversations):
        """Save the prompt as messages of the voter's arena conversation and both answers as `streaming` rows.

        `conversations`: {system prompt: Conversation} of this arena, filled as needed.
        """
        has_system = prompt[0]["role"] == "system"
        system = prompt[0]["content"] if has_system else ""
        conversation = conversations.get(system)
        if conversation is None:
            conversation = conversations[system] = Conversation.objects.start_for(arena.created_by)
            conversation.rename(f"Arena #{arena.pk} (blind answers)")
            Conversation.objects.filter(pk=conversation.pk).update(sealed=True)  # its labels would unblind the vote
            conversation.update_settings(system, {})
        question = None
        for turn in prompt[1:] if has_system else prompt:
            question = conversation.messages.create(
                role=turn["role"], content=turn["content"], parent=question, status=Message.Status.COMPLETE
            )
        answers = [
            conversation.new_reply(question.pk, arena.base.name, adapter, arena.options)
            for adapter in (arena.candidate, arena.opponent)
        ]
        Conversation.objects.filter(pk=conversation.pk).update(leaf=question, updated_at=timezone.now())
        return cls.objects.create(
            arena=arena,
            position=position,
            prompt=prompt,
            candidate_answer=answers[0],
            opponent_answer=answers[1],
            candidate_left=candidate_left,
        )

    def answers(self):
        return [self.candidate_answer, self.opponent_answer]

    @property
    def left(self):
        return self.candidate_answer if self.candidate_left else self.opponent_answer

    @property
    def right(self):
        return self.opponent_answer if self.candidate_left else self.candidate_answer

    @property
    def labelled(self):
        """The answers as the voter sees them: A on the left, B on the right."""
        return [("A", self.left), ("B", self.right)]

    @property
    def generating(self):
        return any(answer.status == answer.Status.STREAMING for answer in self.answers())

    @property
    def votable(self):
        """Two complete answers: a failed or interrupted one would not be a fair game."""
        return all(answer.status == answer.Status.COMPLETE for answer in self.answers())

    @property
    def outcome(self):
        """The vote from the candidate's side: win, loss, tie, both_bad, or None before the vote."""
        if self.vote in (Verdict.TIE, Verdict.BOTH_BAD):
            return self.vote
        if not self.vote:
            return None
        return "win" if (self.vote == Verdict.LEFT) == self.candidate_left else "loss"

    def generate(self):
        """Write both answers (submitted together, so the base's worker batches them); each ends saved."""
        adapters = {self.candidate_answer.pk: self.arena.candidate, self.opponent_answer.pk: self.arena.opponent}
        running = []
        for answer in self.answers():
            if answer.status != answer.Status.STREAMING:
                continue
            history = answer.conversation.history(upto=answer)
            try:
                running.append(
                    (
                        answer,
                        api.start(self.arena.base, history, answer.generation_options, adapter=adapters[answer.pk]),
                    )
                )
            except ModelhubError as exc:
                answer.finish(answer.Status.ERROR, "", error=exc.message)
        for answer, request in running:
            text = []
            try:
                for chunk in request:
                    text.append(chunk)
            except ModelhubError as exc:
                answer.finish(answer.Status.ERROR, "".join(text), error=exc.message)
                continue
            answer.finish(answer.Status.COMPLETE, "".join(text), usage=request.usage)

    @transaction.atomic
    def decide(self, user, vote):
        """Store the voter's verdict, once, and the Preference it expresses (source "arena").

        Raises ValueError for an unknown vote, PermissionError for anyone but the owner of
        the answers, and LookupError if already voted or the answers cannot be voted on.
        """
        if vote not in Verdict.votes():
            raise ValueError(f"unknown vote {vote!r}")
        match = (
            ArenaMatch.objects.select_for_update()
            .select_related("candidate_answer__conversation", "opponent_answer")
            .get(pk=self.pk)
        )
        if match.candidate_answer.conversation.owner_id != user.pk:
            raise PermissionError("only the arena's voter votes on its answers")
        if match.vote or not match.votable:
            raise LookupError("this match was voted on already, or its answers cannot be voted on")
        match.preference = Preference.record(Preference.Source.ARENA, match.left, match.right, vote, user.pk)
        match.vote, match.voter, match.voted_at = vote, user, timezone.now()
        match.save(update_fields=["vote", "voter", "voted_at", "preference"])
        match.arena.check_finished()
        return match


@receiver(pre_delete, sender=Arena)
def _unseal(sender, instance, **kwargs):
    """A deleted arena leaves its answers to their owner, who may open them now."""
    instance.conversations().update(sealed=False)
