"""The review queue's pages (reviewers: conversations.review_feedback). The queue and its rules are
queue.py; a decision is `Review.decide`.

    /review/             the filters, what waits, the reviewer's latest decisions; "Review next" (POST)
    /review/next/        POST: assign the next item (or the reviewer's own undecided one) and open it
    /review/<id>/        the item (the reviewer's own review only; 404 otherwise, once the conversation
                         no longer allows training, or when the feedback is the reviewer's own): the
                         conversation up to the answer, the answer, the rating, reasons, comment and
                         correction; POST approves (with the correction as edited) or rejects, then opens
                         the next item with the same filters
"""

from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from conversations.access.permissions import review_required
from conversations.models import Feedback, FeedbackTag, Review
from conversations.review import queue as review_queue
from conversations.training_data.examples import Prompts


class QueueForm(forms.Form):
    model = forms.CharField(required=False, max_length=100)
    adapter = forms.CharField(required=False, max_length=100)
    rating = forms.ChoiceField(required=False, choices=[("", "any"), *Feedback.Rating.choices[1:]])
    tag = forms.ChoiceField(required=False)
    correction = forms.ChoiceField(
        required=False, label="Has a correction", choices=[("", "any"), ("yes", "yes"), ("no", "no")]
    )
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tag"].choices = [
            ("", "any"),
            *((t, t) for t in FeedbackTag.objects.values_list("name", flat=True)),
        ]

    def filters(self):
        data = self.cleaned_data if self.is_valid() else {}
        text = {name: data.get(name) or "" for name in ("model", "adapter", "rating", "tag", "correction")}
        return review_queue.QueueFilters(**text, since=data.get("since"), until=data.get("until"))

    def query(self):
        """The filters as a query string, carried from item to item."""
        data = self.cleaned_data if self.is_valid() else {}
        return urlencode({name: value for name, value in data.items() if value})


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[(Review.Decision.APPROVED, "Approve"), (Review.Decision.REJECTED, "Reject")])
    correction = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6}), max_length=32000)
    note = forms.CharField(required=False, max_length=2000)


@review_required
@require_http_methods(["GET"])
def queue(request):
    form = QueueForm(request.GET or None)
    filters = form.filters()
    mine = Review.objects.filter(reviewer=request.user).select_related("feedback__message")
    context = {
        "form": form,
        "query": form.query(),
        "matching": filters.feedback().count(),
        "own": review_queue.own_matching(request.user, filters).count(),
        "waiting": review_queue.waiting_for(request.user, filters).count(),
        "open": mine.filter(
            decision=Review.Decision.PENDING, feedback__in=review_queue.reviewable_by(request.user)
        ).count(),
        "decided": mine.decided()[:20],
        "per_item": settings.CHAT_REVIEWS_PER_ITEM,
    }
    return render(request, "conversations/review_queue.html", context)


@review_required
@require_POST
def next_item(request):
    form = QueueForm(request.GET or None)
    review = review_queue.next_for(request.user, form.filters())
    if review is None:
        return redirect(f"{reverse('conversations:review_queue')}?{form.query()}&empty=1")
    return redirect(f"{reverse('conversations:review_item', args=[review.pk])}?{form.query()}")


def _get_review_for_reviewer(request, pk):
    """The reviewer's own review of an item still in the queue (its conversation allows training) and not
    their own feedback; else 404."""
    return get_object_or_404(
        Review.objects.filter(
            reviewer=request.user, feedback__in=review_queue.reviewable_by(request.user)
        ).select_related("feedback__message__conversation__model"),
        pk=pk,
    )


@review_required
@require_http_methods(["GET", "POST"])
def item(request, pk):
    review = _get_review_for_reviewer(request, pk)
    queue_form = QueueForm(request.GET or None)
    form = DecisionForm(request.POST or None, initial={"correction": review.feedback.correction})
    if request.method == "POST" and form.is_valid() and not review.decision:
        decision = form.cleaned_data["decision"]
        correction = form.cleaned_data["correction"] if decision == Review.Decision.APPROVED else None
        review.decide(decision, correction, form.cleaned_data["note"])
        following = review_queue.next_for(request.user, queue_form.filters())
        if following is None:
            return redirect(f"{reverse('conversations:review_queue')}?{queue_form.query()}&empty=1")
        return redirect(f"{reverse('conversations:review_item', args=[following.pk])}?{queue_form.query()}")
    feedback = review.feedback
    context = {
        "review": review,
        "feedback": feedback,
        "form": form,
        "query": queue_form.query(),
        "prompt": Prompts().before(feedback.message) or [],
        "tags": list(feedback.tags.all()),
    }
    return render(request, "conversations/review_item.html", context, status=422 if form.errors else 200)
