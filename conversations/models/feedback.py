"""What users say about answers: ratings, corrections and preferences between two answers.

- `Feedback`: one row per user per assistant answer (editing updates it): thumbs up or
  down, reason tags (`FeedbackTag`, defined by admins), a comment and a corrected answer.
- `Preference`: "this answer is better than that one" for two answers to the same
  question. Sources: `sibling` (the user marked one regenerated answer as preferred),
  `comparison` (the verdict of a side-by-side `Comparison`) and `arena` (blind votes,
  added later: arena answers are stored as `Message` rows of an arena conversation
  owned by the voter, so consent and deletion work the same way). Both answers are
  `Message` rows with the same parent, so the prompt is that parent's history.
- `Verdict`: the one vote enum, from the vote on two answers shown side by side to the
  Preference it becomes; `Preference.record` is the one place that turns a vote into one.

Only a conversation's owner rates its answers; views check that (404 for anyone else)
and the methods here refuse anything else as a second line of defence.

Everything cascades from `Message`: deleting a conversation deletes its feedback and
preferences for good.
"""

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone


class Verdict(models.TextChoices):
    """What a person said of two answers to the same question.

    A vote on two answers shown side by side (`Comparison.choice`, `ArenaMatch.vote`) names
    the better side, LEFT or RIGHT, or neither: TIE, BOTH_BAD (UNDECIDED: no vote yet). The
    `Preference` it becomes keeps the better answer in its `chosen` column, so there either
    side is CHOSEN. Each field offers its own members (`choices_of`), labelled as its page
    shows them.
    """

    UNDECIDED = "", "undecided"
    LEFT = "left"
    RIGHT = "right"
    CHOSEN = "chosen"
    TIE = "tie"
    BOTH_BAD = "both_bad", "both bad"

    @classmethod
    def votes(cls):
        """What may be voted on two answers shown side by side."""
        return [cls.LEFT, cls.RIGHT, cls.TIE, cls.BOTH_BAD]

    @classmethod
    def choices_of(cls, *members, **labels):
        """A field's choices: `members`, with the labels named in `labels` (by member name) replaced."""
        return [(member.value, labels.get(member.name, member.label)) for member in members]


class FeedbackTag(models.Model):
    """A reason an answer was good or bad ("wrong facts", "too long"), defined by admins."""

    name = models.SlugField(max_length=50, unique=True)
    label = models.CharField(max_length=100)
    description = models.CharField(max_length=300, blank=True)
    active = models.BooleanField(default=True, help_text="Offered to users when they rate an answer.")

    class Meta:
        ordering = ["label"]

    def __str__(self):
        return self.label


class FeedbackQuerySet(models.QuerySet):
    def for_training(self):
        """Feedback on answers whose conversation may be used for training."""
        return self.filter(message__conversation__allow_training=True)

    def own(self, user):
        """Feedback this user gave, or on answers in their own conversations: never theirs to review."""
        return self.filter(models.Q(user=user) | models.Q(message__conversation__owner=user))


class Feedback(models.Model):
    class Rating(models.TextChoices):
        NONE = "", "no rating"
        UP = "up", "thumbs up"
        DOWN = "down", "thumbs down"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback")
    message = models.ForeignKey("conversations.Message", on_delete=models.CASCADE, related_name="feedback")
    rating = models.CharField(max_length=4, choices=Rating.choices, blank=True)
    tags = models.ManyToManyField(FeedbackTag, blank=True, related_name="feedback")
    comment = models.TextField(blank=True)
    correction = models.TextField(blank=True, help_text="The answer the user expected, written by them.")
    # A correction replaces the answer (`content`) only: an export gives it the reply's reasoning unless the user
    # dropped it (the reasoning was what went wrong, say).
    correction_keeps_reasoning = models.BooleanField(
        default=True, help_text="Exports give the correction the model's reasoning (where the answer has some)."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = FeedbackQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["user", "message"], name="one_feedback_per_user_and_message")]
        verbose_name_plural = "feedback"
        permissions = [("review_feedback", "Can review feedback of consented conversations in the review queue")]

    def __str__(self):
        return f"{self.get_rating_display()} on message #{self.message_id}"

    @classmethod
    @transaction.atomic
    def record(cls, user, message, rating=None, **details):
        """Create or update this user's feedback on `message`.

        `rating` alone (thumbs) leaves the details as they are; `details` (tags, comment,
        correction, correction_keeps_reasoning) replace theirs. Feedback left with nothing in it is deleted.
        """
        _check_may_rate(user, message)
        feedback, _ = cls.objects.select_for_update().get_or_create(user=user, message=message)
        if rating is not None:
            feedback.rating = rating
        tags = details.pop("tags", None)
        for name in ("comment", "correction"):
            if name in details:
                setattr(feedback, name, details[name].strip())
        if "correction_keeps_reasoning" in details:
            feedback.correction_keeps_reasoning = bool(details["correction_keeps_reasoning"])
        if tags is not None:
            feedback.tags.set(tags)
        if not (feedback.rating or feedback.comment or feedback.correction or feedback.tags.exists()):
            feedback.delete()
            return None
        feedback.updated_at = timezone.now()
        feedback.save()
        return feedback


def _check_may_rate(user, message):
    if message.role != "assistant" or message.conversation.owner_id != user.pk:
        raise PermissionError("only the conversation's owner rates its answers")


class PreferenceQuerySet(models.QuerySet):
    def for_training(self):
        return self.filter(chosen__conversation__allow_training=True)

    def preferred_ids(self, user, messages):
        """Which of `messages` this user marked as the better sibling."""
        return set(
            self.filter(user=user, source=Preference.Source.SIBLING, chosen__in=messages).values_list(
                "chosen_id", flat=True
            )
        )


class Preference(models.Model):
    """One answer against another to the same question.

    With verdict `chosen`, `chosen` is the better answer. With `tie` or `both_bad`
    the two columns only name the pair (left, right): neither is preferred.
    """

    class Source(models.TextChoices):
        SIBLING = "sibling"
        COMPARISON = "comparison"
        ARENA = "arena"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preferences")
    chosen = models.ForeignKey("conversations.Message", on_delete=models.CASCADE, related_name="+")
    rejected = models.ForeignKey("conversations.Message", on_delete=models.CASCADE, related_name="+")
    verdict = models.CharField(
        max_length=10, choices=Verdict.choices_of(Verdict.CHOSEN, Verdict.TIE, Verdict.BOTH_BAD), default=Verdict.CHOSEN
    )
    source = models.CharField(max_length=12, choices=Source.choices)
    comparison = models.OneToOneField(
        "conversations.Comparison", null=True, blank=True, on_delete=models.CASCADE, related_name="preference"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = PreferenceQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self):
        return f"{self.source}: #{self.chosen_id} {self.verdict} vs #{self.rejected_id}"

    @classmethod
    def record(cls, source, left, right, verdict, user_id, comparison=None):
        """The one place a vote on two answers becomes a Preference; returns it.

        `verdict` on `left` and `right` as they were shown: LEFT (or CHOSEN) and RIGHT name
        the better one, which becomes `chosen`; TIE and BOTH_BAD keep the pair in its order.
        A `comparison`'s preference is updated when its verdict changes; any other is new.
        """
        if verdict not in (*Verdict.votes(), Verdict.CHOSEN):
            raise ValueError(f"unknown verdict {verdict!r}")
        right_wins = verdict == Verdict.RIGHT
        fields = {
            "user_id": user_id,
            "chosen": right if right_wins else left,
            "rejected": left if right_wins else right,
            "verdict": verdict if verdict in (Verdict.TIE, Verdict.BOTH_BAD) else Verdict.CHOSEN,
            "source": source,
            "updated_at": timezone.now(),
        }
        if comparison is None:
            return cls.objects.create(**fields)
        preference, _ = cls.objects.update_or_create(comparison=comparison, defaults=fields)
        return preference

    @classmethod
    @transaction.atomic
    def prefer_sibling(cls, user, message):
        """Mark `message` as the best of its regenerated siblings: one pair against each other one.

        Replaces this user's earlier sibling choice for the same question.
        """
        _check_may_rate(user, message)
        others = list(
            message.conversation.messages.rateable().filter(parent_id=message.parent_id).exclude(pk=message.pk)
        )
        if not others:
            raise ValueError("this answer has no sibling to be preferred to")
        cls.objects.filter(
            user=user,
            source=cls.Source.SIBLING,
            chosen__parent_id=message.parent_id,
            chosen__conversation_id=message.conversation_id,
        ).delete()
        return [cls.record(cls.Source.SIBLING, message, other, Verdict.CHOSEN, user.pk) for other in others]
