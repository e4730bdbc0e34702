"""The review queue: feedback of consented conversations, handed to reviewers one item at a time.

    items        feedback on answers whose conversation allows training (`Feedback.for_training`),
                 narrowed by `QueueFilters` (model, adapter, rating, reason tag, has a correction, dates)
    reviewable_by  the items a reviewer may decide: all but their own feedback (`Feedback.objects.own`),
                 which another reviewer decides
    next_for     the reviewer's own undecided item if it still matches, else the oldest item that has
                 fewer than CHAT_REVIEWS_PER_ITEM reviews holding a place (decided, or assigned within
                 CHAT_REVIEW_ASSIGNMENT_MINUTES) and none by this reviewer: assigned in one transaction,
                 the item's row locked (skip_locked), so two reviewers are never given the same place
    approved     items with their decisions in, more approvals than rejections (Review.objects.approved_feedback):
                 what an export may take
    agreement    who reviewed how many items and how much they agree (training_data/agreement.py): the admin's page and
                 each snapshot's card

The pages are review/views.py; a decision is `Review.decide`.
"""

from dataclasses import dataclass
from datetime import date

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from conversations.models import Feedback, Review
from conversations.training_data.examples import Filters

CANDIDATES = 20  # items read per assignment, of which the first not locked by another reviewer is taken


@dataclass(frozen=True)
class QueueFilters:
    """What a reviewer asks for: the export's filters (model, adapter, tag, dates of the last edit), and
    the rating and whether the item has a correction."""

    model: str = ""
    adapter: str = ""
    rating: str = ""  # "up", "down", or "" for any
    tag: str = ""
    correction: str = ""  # "yes", "no", or "" for any
    since: date | None = None
    until: date | None = None

    def feedback(self):
        rows = Filters(
            since=self.since, until=self.until, model=self.model, adapter=self.adapter, tag=self.tag
        ).feedback()
        if self.rating:
            rows = rows.filter(rating=self.rating)
        if self.correction:
            rows = rows.exclude(correction="") if self.correction == "yes" else rows.filter(correction="")
        return rows


def items():
    """Every reviewable item: feedback on a finished answer of a conversation that allows training (what an
    export would take)."""
    return QueueFilters().feedback()


def reviewable_by(reviewer, filters=QueueFilters()):
    """Matching items this reviewer may decide: not their own feedback (nor feedback in their conversations)."""
    return filters.feedback().exclude(pk__in=Feedback.objects.own(reviewer).values("pk"))


def own_matching(reviewer, filters=QueueFilters()):
    """Matching items that are this reviewer's own feedback: another reviewer decides them."""
    return filters.feedback().filter(pk__in=Feedback.objects.own(reviewer).values("pk"))


def next_for(reviewer, filters=QueueFilters()):
    """The Review to work on now (assigned to `reviewer`), or None when the queue holds nothing for them."""
    with transaction.atomic():
        mine = (
            Review.objects.holding()
            .filter(reviewer=reviewer, decision=Review.Decision.PENDING, feedback__in=reviewable_by(reviewer, filters))
            .first()
        )
        if mine is not None:
            return mine
        return _assign(reviewer, filters)


def waiting_for(reviewer, filters=QueueFilters()):
    """Items this reviewer may be given: matching, not their own, not decided by them, with a review place free."""
    return (
        reviewable_by(reviewer, filters)
        .exclude(reviews__in=Review.objects.decided().filter(reviewer=reviewer))
        .annotate(holding=Count("reviews", filter=Q(reviews__in=Review.objects.holding())))
        .filter(holding__lt=settings.CHAT_REVIEWS_PER_ITEM)
    )


def _assign(reviewer, filters):
    candidates = waiting_for(reviewer, filters).order_by("updated_at", "pk").values("pk")[:CANDIDATES]
    item = (
        Feedback.objects.select_for_update(skip_locked=True)
        .filter(pk__in=[row["pk"] for row in candidates])
        .order_by("updated_at", "pk")
        .first()
    )
    if item is None:
        return None
    if Review.objects.holding().filter(feedback=item).count() >= settings.CHAT_REVIEWS_PER_ITEM:  # taken meanwhile
        return None
    review, created = Review.objects.get_or_create(feedback=item, reviewer=reviewer)
    if not created:  # their own assignment, expired: theirs again
        review.assigned_at = timezone.now()
        review.save(update_fields=["assigned_at"])
    return review
