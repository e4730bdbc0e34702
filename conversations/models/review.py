"""A reviewer's decision on one feedback item: raw feedback becomes training data once someone checked it.

A `Review` is made when the queue assigns an item to a reviewer (conversations/review/queue.py) and is
decided once: approved (with the correction as the reviewer left it, edited or not) or rejected. An
assignment left undecided for CHAT_REVIEW_ASSIGNMENT_MINUTES is free for another reviewer. Nobody decides
their own feedback (`Feedback.objects.own`): the queue never assigns it to them and `decide` refuses it.
An item needs CHAT_REVIEWS_PER_ITEM decisions; it is *approved* when it has them and more approve than
reject, and an export may take approved items only (training_data/examples.py `Filters.reviewed`), with
the correction of its latest approval.
"""

from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from conversations.models.feedback import Feedback


class ReviewQuerySet(models.QuerySet):
    def decided(self):
        return self.exclude(decision=Review.Decision.PENDING)

    def approved_feedback(self):
        """Feedback whose decisions are all in (CHAT_REVIEWS_PER_ITEM) and mostly approvals, each with
        `reviewed_correction`: the correction of its latest approval. What an export of approved items takes."""
        latest = (
            Review.objects.filter(feedback=models.OuterRef("pk"), decision=Review.Decision.APPROVED)
            .exclude(reviewer=models.OuterRef("user"))
            .exclude(reviewer=models.OuterRef("message__conversation__owner"))
            .order_by("-decided_at", "-pk")
            .values("correction")[:1]
        )
        # A decision on one's own feedback never counts (none is made now; `decide` refuses it).
        independent = ~models.Q(reviews__reviewer=models.F("user")) & ~models.Q(
            reviews__reviewer=models.F("message__conversation__owner")
        )
        approvals = models.Count("reviews", filter=models.Q(reviews__decision=Review.Decision.APPROVED) & independent)
        rejections = models.Count("reviews", filter=models.Q(reviews__decision=Review.Decision.REJECTED) & independent)
        return (
            Feedback.objects.annotate(approvals=approvals, rejections=rejections)
            .filter(
                approvals__gt=models.F("rejections"),
                approvals__gte=settings.CHAT_REVIEWS_PER_ITEM - models.F("rejections"),
            )
            .annotate(reviewed_correction=models.Subquery(latest))
        )

    def holding(self, now=None):
        """Reviews that hold a place on their item: decided, or assigned recently enough."""
        fresh = (now or timezone.now()) - timedelta(minutes=settings.CHAT_REVIEW_ASSIGNMENT_MINUTES)
        return self.filter(~models.Q(decision=Review.Decision.PENDING) | models.Q(assigned_at__gte=fresh))


class Review(models.Model):
    class Decision(models.TextChoices):
        PENDING = "", "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    feedback = models.ForeignKey(Feedback, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reviews")
    decision = models.CharField(max_length=8, choices=Decision.choices, blank=True)
    correction = models.TextField(blank=True, help_text="The correction as the reviewer approved it.")
    edited = models.BooleanField(default=False, help_text="The reviewer changed the user's correction.")
    note = models.TextField(blank=True)
    assigned_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)

    objects = ReviewQuerySet.as_manager()

    class Meta:
        ordering = ["-assigned_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["feedback", "reviewer"], name="one_review_per_reviewer")]

    def __str__(self):
        return f"{self.reviewer} on feedback #{self.feedback_id}: {self.get_decision_display()}"

    @transaction.atomic
    def decide(self, decision, correction=None, note=""):
        """Approve (with `correction`, the user's if None) or reject, once; ValueError if decided already."""
        review = type(self).objects.select_for_update().select_related("feedback").get(pk=self.pk)
        if review.decision:
            raise ValueError("this item was decided already")
        if Feedback.objects.own(review.reviewer_id).filter(pk=review.feedback_id).exists():
            raise PermissionError("a reviewer does not decide their own feedback: another reviewer does")
        if decision not in (self.Decision.APPROVED, self.Decision.REJECTED):
            raise ValueError(f"unknown decision {decision!r}")
        original = review.feedback.correction
        review.correction = original if correction is None else correction.strip()
        review.edited = review.correction != original
        review.decision, review.note, review.decided_at = decision, note.strip(), timezone.now()
        review.save()
        return review
