"""The review queue (queue.py, review/views.py, Review.decide): reviewers get consented feedback one
item at a time, never the same place as another reviewer; they approve (editing the correction) or reject;
agreement with overlap equals scikit-learn's and statsmodels' kappas; a snapshot can take approved items
only, and its card says who reviewed how much. The browser walk-through is tests/browser/test_review_page.py."""

from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

from conversations.access import roles
from conversations.models import Conversation, Feedback, FeedbackTag, Preference, Review, Verdict
from conversations.review import queue
from conversations.review.queue import QueueFilters
from conversations.training_data import agreement
from conversations.training_data.examples import Filters
from conversations.training_data.export import export_snapshot
from tests.training_data.snapshots import all_rows, ask


@pytest.fixture(autouse=True)
def datasets_dir(settings, tmp_path):
    settings.CHAT_DATASETS_DIR = tmp_path / "datasets"


def reviewer(name):
    user = get_user_model().objects.create_user(name)
    user.groups.set([Group.objects.get(name=roles.REVIEWER)])
    return user


@pytest.fixture
def alice(db):
    return reviewer("alice")


@pytest.fixture
def bob(db):
    return reviewer("bob")


@pytest.fixture
def items(owner, conversation):
    """Three feedback items, oldest first: a thumbs-down with a correction, a thumbs-up, a thumbs-down
    tagged "wrong"; and one in a conversation that does not allow training (never offered)."""
    made = []
    for index, (rating, correction) in enumerate((("down", "Paris."), ("up", ""), ("down", ""))):
        answer = ask(conversation, f"question {index}?", f"answer {index}", model="base" if index < 2 else "other")
        feedback = Feedback.record(owner, answer, rating=rating, correction=correction)
        Feedback.objects.filter(pk=feedback.pk).update(updated_at=timezone.now() - timedelta(hours=3 - index))
        made.append(feedback)
    made[2].tags.add(FeedbackTag.objects.create(name="wrong", label="Wrong"))
    private = Conversation.objects.create(owner=owner, allow_training=False)
    Feedback.record(owner, ask(private, "secret?", "hidden"), rating="down", correction="no")
    return made


# --- agreement ------------------------------------------------------------------------------------------

LABELS = [
    (["a", "a", "r", "a", "r", "r", "a", "a"], ["a", "r", "r", "a", "r", "a", "a", "a"]),
    (["a"] * 5 + ["r"] * 5, ["a"] * 3 + ["r"] * 7),
    (["r", "a", "a", "r"], ["a", "r", "r", "a"]),
    (["a", "r", "x", "x", "a", "r"], ["a", "r", "x", "a", "a", "x"]),
]


@pytest.mark.parametrize("first, second", LABELS)
def test_cohens_kappa_equals_scikit_learns(first, second):
    assert agreement.cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second), abs=1e-12)


def test_cohens_kappa_is_undefined_when_chance_agrees_fully():
    assert agreement.cohen_kappa(["a", "a"], ["a", "a"]) is None
    assert agreement.cohen_kappa([], []) is None


@pytest.mark.parametrize(
    "table",
    [
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ],  # Fleiss (1971) via Wikipedia: 0.210
        [[2, 0], [1, 1], [0, 2], [2, 0], [1, 1]],
        [[3, 0], [2, 1], [3, 0], [0, 3], [1, 2], [3, 0]],
    ],
)
def test_fleiss_kappa_equals_statsmodels(table):
    assert agreement.fleiss_kappa(table) == pytest.approx(statsmodels_fleiss(np.array(table)), abs=1e-12)


def test_pairwise_and_overall_read_decisions_per_item():
    decisions = {
        1: {"ann": "a", "ben": "a", "cy": "r"},
        2: {"ann": "r", "ben": "r", "cy": "r"},
        3: {"ann": "a", "ben": "r"},
        4: {"ann": "a", "ben": "a", "cy": "a"},
    }
    pairs = {(a, b): (n, observed, kappa) for a, b, n, observed, kappa in agreement.pairwise(decisions)}
    assert pairs[("ann", "ben")][:2] == (4, 0.75)
    assert pairs[("ann", "ben")][2] == pytest.approx(cohen_kappa_score(["a", "r", "a", "a"], ["a", "r", "r", "a"]))
    assert pairs[("ann", "cy")][0] == 3
    kappa, used = agreement.overall(decisions, ["a", "r"])
    assert used == 3 and kappa == pytest.approx(statsmodels_fleiss(np.array([[2, 1], [0, 3], [3, 0]])))


# --- the queue ------------------------------------------------------------------------------------------


def test_two_reviewers_get_different_items_and_nothing_from_a_conversation_without_consent(items, alice, bob):
    first, second = queue.next_for(alice), queue.next_for(bob)
    assert (first.feedback, second.feedback) == (items[0], items[1])  # oldest first
    assert queue.next_for(alice) == first  # undecided: still theirs
    third = queue.next_for(reviewer("cy"))
    assert third.feedback == items[2] and queue.next_for(reviewer("dee")) is None


def test_with_overlap_each_item_goes_to_as_many_reviewers_as_asked(items, alice, bob, settings):
    settings.CHAT_REVIEWS_PER_ITEM = 2
    assert queue.next_for(alice).feedback == queue.next_for(bob).feedback == items[0]
    assert queue.next_for(reviewer("cy")).feedback == items[1]


def test_an_assignment_left_undecided_goes_to_another_reviewer_after_its_time(items, alice, bob, settings):
    mine = queue.next_for(alice)
    Review.objects.filter(pk=mine.pk).update(assigned_at=timezone.now() - timedelta(minutes=31))
    assert queue.next_for(bob).feedback == items[0]


def test_a_decided_item_is_not_offered_to_its_reviewer_again(items, alice, settings):
    settings.CHAT_REVIEWS_PER_ITEM = 2
    queue.next_for(alice).decide(Review.Decision.APPROVED)
    assert queue.next_for(alice).feedback == items[1]


@pytest.mark.parametrize(
    "filters, expected",
    [
        (QueueFilters(model="other"), [2]),
        (QueueFilters(rating="up"), [1]),
        (QueueFilters(tag="wrong"), [2]),
        (QueueFilters(correction="yes"), [0]),
        (QueueFilters(correction="no"), [1, 2]),
        (QueueFilters(since=timezone.localdate() + timedelta(days=1)), []),
    ],
)
def test_filters_narrow_the_queue(items, alice, filters, expected):
    given = []
    while (review := queue.next_for(alice, filters)) is not None:
        given.append(items.index(review.feedback))
        review.decide(Review.Decision.REJECTED)
    assert given == expected


def test_a_decision_is_made_once_and_keeps_the_edited_correction(items, alice):
    review = queue.next_for(alice)
    decided = review.decide(Review.Decision.APPROVED, "Paris, of course.", note="fixed")
    assert (decided.decision, decided.correction, decided.edited, decided.note) == (
        "approved",
        "Paris, of course.",
        True,
        "fixed",
    )
    with pytest.raises(ValueError, match="decided already"):
        review.decide(Review.Decision.REJECTED)
    assert items[0].correction == "Paris."  # the user's own words stay theirs


def test_an_item_is_approved_when_its_decisions_are_in_and_most_approve(items, alice, bob, settings):
    settings.CHAT_REVIEWS_PER_ITEM = 2
    queue.next_for(alice).decide(Review.Decision.APPROVED, "Paris!")
    assert not Review.objects.approved_feedback().exists()  # one of two decisions
    queue.next_for(bob).decide(Review.Decision.APPROVED)
    assert list(Review.objects.approved_feedback().values_list("pk", "reviewed_correction")) == [
        (items[0].pk, "Paris.")
    ]
    queue.next_for(alice).decide(Review.Decision.APPROVED)
    queue.next_for(bob).decide(Review.Decision.REJECTED)
    assert list(Review.objects.approved_feedback().values_list("pk", flat=True)) == [
        items[0].pk
    ]  # a tie is not approval


# --- snapshots of approved items ------------------------------------------------------------------------


def test_a_snapshot_of_approved_items_takes_only_them_with_their_corrections_and_its_card_says_so(
    items, alice, bob, owner, settings
):
    Preference.record(Preference.Source.SIBLING, items[1].message, items[0].message, Verdict.CHOSEN, owner.pk)
    settings.CHAT_REVIEWS_PER_ITEM = 2
    for who, decisions in ((alice, ["approved", "approved", "rejected"]), (bob, ["approved", "rejected", "rejected"])):
        for decision in decisions:
            review = queue.next_for(who)
            review.decide(decision, "Paris, the capital." if review.feedback == items[0] else None)
    kto = export_snapshot("kto", filters=Filters(reviewed=True), eval_fraction=0)
    completions = sorted((row["completion"][0]["content"], row["label"]) for row in all_rows(kto))
    assert completions == [("Paris, the capital.", True), ("answer 0", False)]  # item 1: split; item 2: rejected
    sft = export_snapshot("sft", filters=Filters(reviewed=True), eval_fraction=0)
    assert [row["messages"][-1]["content"] for row in all_rows(sft)] == ["Paris, the capital."]
    dpo = export_snapshot("dpo", filters=Filters(reviewed=True), eval_fraction=0)
    assert [row["chosen"][0]["content"] for row in all_rows(dpo)] == ["Paris, the capital."]  # no preference
    review = kto.card["review"]
    assert review["approved_only"] and review["reviews_per_item"] == 2
    assert (review["items"], review["reviewers"], review["fleiss_items"]) == (1, 2, 1)
    assert review["pairs"] == [{"a": "alice", "b": "bob", "items": 1, "observed": 1.0, "cohen_kappa": None}]
    everything = export_snapshot("kto", eval_fraction=0)
    assert everything.card["review"]["items"] == 3 and not everything.card["review"]["approved_only"]
    assert everything.card["review"]["fleiss_kappa"] == pytest.approx(
        statsmodels_fleiss(np.array([[2, 0], [1, 1], [0, 2]]))
    )


# --- pages ----------------------------------------------------------------------------------------------


def test_the_pages_walk_a_reviewer_through_approving_and_rejecting(client, items, alice):
    client.force_login(alice)
    page = client.get(reverse("conversations:review_queue")).content.decode()
    assert "3 items wait for a review, of 3" in page
    response = client.post(reverse("conversations:review_next") + "?correction=yes")
    item_url = response["Location"]
    page = client.get(item_url).content.decode()
    assert "question 0?" in page and "answer 0" in page and "Paris." in page and "thumbs down" in page
    assert "secret?" not in page
    response = client.post(item_url, {"decision": "approved", "correction": "Paris, France."})
    assert response["Location"].startswith(reverse("conversations:review_queue")) and "empty=1" in response["Location"]
    assert Review.objects.get().correction == "Paris, France."
    page = client.get(reverse("conversations:review_queue") + "?correction=yes").content.decode()
    assert "0 items wait for a review, of 1" in page


def test_a_review_is_its_reviewers_and_leaves_the_queue_when_consent_is_withdrawn(client, items, alice, bob):
    review = queue.next_for(alice)
    url = reverse("conversations:review_item", args=[review.pk])
    client.force_login(bob)
    assert client.get(url).status_code == 404
    assert client.post(url, {"decision": "approved"}).status_code == 404
    client.force_login(alice)
    items[0].message.conversation.set_training_consent(False)
    assert client.get(url).status_code == 404
    assert not Review.objects.decided().exists()


def test_the_admin_shows_agreement_per_pair(admin_client, items, alice, bob, settings):
    settings.CHAT_REVIEWS_PER_ITEM = 2
    for decisions in (["approved", "rejected"], ["approved", "approved"]):
        for who, decision in zip((alice, bob), decisions):
            queue.next_for(who).decide(decision)
    page = admin_client.get(reverse("admin:conversations_review_agreement")).content.decode()
    assert "<td>alice</td><td>bob</td><td>2</td>" in page
    assert "0.500" in page  # observed: one of two


# --- a reviewer's own feedback --------------------------------------------------------------------------


@pytest.fixture
def reviewing_owner(owner):
    """The owner of the rated conversation, who is a reviewer too: another reviewer decides their feedback."""
    owner.groups.add(Group.objects.get(name=roles.REVIEWER))
    return owner


def test_a_reviewer_is_never_given_their_own_feedback_and_the_queue_page_says_why(
    client, items, reviewing_owner, alice
):
    client.force_login(reviewing_owner)
    response = client.post(reverse("conversations:review_next"))
    assert "empty=1" in response["Location"] and not Review.objects.exists()
    page = client.get(reverse("conversations:review_queue")).content.decode()
    assert "0 items wait for a review, of 3" in page
    assert "3 of the matching items are your own feedback: another reviewer decides them" in page
    assert queue.next_for(alice).feedback == items[0]  # another reviewer gets them


def test_a_reviewer_cannot_decide_their_own_feedback_assigned_to_them_before(client, items, reviewing_owner):
    review = Review.objects.create(feedback=items[0], reviewer=reviewing_owner)  # assigned before the rule
    url = reverse("conversations:review_item", args=[review.pk])
    client.force_login(reviewing_owner)
    assert client.get(url).status_code == 404
    assert client.post(url, {"decision": "approved"}).status_code == 404
    assert queue.next_for(reviewing_owner) is None
    assert "0 assigned to you" in client.get(reverse("conversations:review_queue")).content.decode()
    with pytest.raises(PermissionError, match="their own feedback"):
        review.decide(Review.Decision.APPROVED)
    assert not Review.objects.decided().exists()


def test_a_decision_on_ones_own_feedback_made_before_the_rule_never_approves_it(items, reviewing_owner):
    Review.objects.create(
        feedback=items[0],
        reviewer=reviewing_owner,
        decision=Review.Decision.APPROVED,
        decided_at=timezone.now(),
        correction="my own fix",
    )  # made before `decide` refused it
    assert not Review.objects.approved_feedback().filter(pk=items[0].pk).exists()
