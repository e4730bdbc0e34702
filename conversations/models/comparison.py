"""Side by side: one question answered by two model choices at once, and the user's verdict."""

from django.db import models, transaction
from django.utils import timezone

from conversations.models.feedback import Preference, Verdict


class Comparison(models.Model):
    """Two answers to one question from two model choices, and which one the user preferred."""

    conversation = models.ForeignKey("conversations.Conversation", on_delete=models.CASCADE, related_name="comparisons")
    question = models.ForeignKey("conversations.Message", on_delete=models.CASCADE, related_name="+")
    left = models.OneToOneField("conversations.Message", on_delete=models.CASCADE, related_name="comparison_as_left")
    right = models.OneToOneField("conversations.Message", on_delete=models.CASCADE, related_name="comparison_as_right")
    choice = models.CharField(
        max_length=10,
        blank=True,
        choices=Verdict.choices_of(Verdict.UNDECIDED, Verdict.LEFT, Verdict.RIGHT, Verdict.TIE, Verdict.BOTH_BAD),
    )

    def __str__(self):
        return f"comparison {self.pk} in conversation {self.conversation_id}"

    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)

    @transaction.atomic
    def decide(self, choice):
        """Store the user's verdict (and the `Preference` it expresses); the preferred answer
        (left on a tie or both bad) continues the branch."""
        if choice not in Verdict.votes():
            raise ValueError(f"unknown choice {choice!r}")
        self.choice, self.decided_at = choice, timezone.now()
        self.save(update_fields=["choice", "decided_at"])
        Preference.record(
            Preference.Source.COMPARISON, self.left, self.right, choice, self.conversation.owner_id, comparison=self
        )
        self.conversation.switch_to(self.right if choice == Verdict.RIGHT else self.left)
