"""Rating answers, preferring one answer to another, training consent and deleting for good.

The owner rates the answers of their own conversations; `other_user` gets 404s and
changes nothing."""

import pytest
from django.test import Client
from django.urls import reverse

from conversations.models import Conversation, Feedback, FeedbackTag, Message, Preference, Verdict
from tests.factories import add_reply, make_comparison

HTMX = {"HX-Request": "true"}


@pytest.fixture
def answer(conversation):
    conversation.add_user_message("What is the capital of France?")
    return add_reply(conversation, "Lyon.")


@pytest.fixture
def tags(db):
    return [
        FeedbackTag.objects.create(name="wrong", label="Wrong facts"),
        FeedbackTag.objects.create(name="long", label="Too long"),
        FeedbackTag.objects.create(name="old", label="Retired tag", active=False),
    ]


def url(name, message):
    return reverse(f"conversations:{name}", args=[message.conversation_id, message.pk])


def regenerate(conversation, answer, text):
    """Another answer to the same question: a sibling of `answer`, now on the active branch."""
    sibling = conversation.start_reply(_spec(), {}, parent=answer.parent)
    sibling.finish("complete", text)
    return sibling


def _spec():
    from modelhub.models import ModelSpec

    return ModelSpec.objects.get_or_create(name="m", defaults={"source": "-", "backend": "scripted"})[0]


def test_thumbs_up_then_down_updates_the_owners_one_feedback_row(owner_client, owner, answer):
    first = owner_client.post(url("rate", answer), {"rating": "up"}, headers=HTMX)
    assert first.status_code == 200
    html = first.content.decode()
    assert html.lstrip().startswith(f'<div class="feedback" id="feedback-{answer.pk}"') and "<html" not in html
    assert 'aria-label="Good answer" title="Good answer"' in html and 'class="thumb on"' in html
    owner_client.post(url("rate", answer), {"rating": "down"}, headers=HTMX)
    feedback = Feedback.objects.get()
    assert (feedback.user, feedback.message, feedback.rating) == (owner, answer, "down")


def test_details_are_saved_and_shown_again_when_the_form_reopens(owner_client, answer, tags):
    wrong, long, retired = tags
    form = owner_client.get(url("feedback", answer), {"edit": "1"}, headers=HTMX).content.decode()
    assert "Wrong facts" in form and "Too long" in form and "Retired tag" not in form
    assert f'id="id_feedback{answer.pk}_correction"' in form
    response = owner_client.post(
        url("feedback", answer),
        {
            "tags": [wrong.pk],
            "comment": "Paris, not Lyon",
            "correction": "Paris is the capital of France.",
        },
        headers=HTMX,
    )
    assert response.status_code == 200 and "Saved." in response.content.decode()
    assert '<span class="chip">Wrong facts</span>' in response.content.decode()
    feedback = Feedback.objects.get()
    assert list(feedback.tags.all()) == [wrong]
    assert (feedback.rating, feedback.comment, feedback.correction) == (
        "",
        "Paris, not Lyon",
        "Paris is the capital of France.",
    )
    reopened = owner_client.get(url("feedback", answer), {"edit": "1"}, headers=HTMX).content.decode()
    assert "Paris is the capital of France.</textarea>" in reopened and "checked" in reopened


def test_a_retired_tag_is_refused_and_the_form_comes_back_with_the_error(owner_client, answer, tags):
    response = owner_client.post(url("feedback", answer), {"tags": [tags[2].pk], "comment": "x"}, headers=HTMX)
    assert response.status_code == 422 and 'role="alert"' in response.content.decode()
    assert not Feedback.objects.exists()


def test_thumbs_keep_the_details_and_feedback_emptied_of_everything_is_deleted(owner_client, answer):
    owner_client.post(url("feedback", answer), {"comment": "meh", "correction": ""}, headers=HTMX)
    owner_client.post(url("rate", answer), {"rating": "down"}, headers=HTMX)
    assert Feedback.objects.get().comment == "meh"
    owner_client.post(url("rate", answer), {"rating": ""}, headers=HTMX)
    assert Feedback.objects.get().rating == ""
    owner_client.post(url("feedback", answer), {"comment": "", "correction": ""}, headers=HTMX)
    assert not Feedback.objects.exists()


@pytest.mark.parametrize(
    "name, method", [("rate", "post"), ("feedback", "post"), ("feedback", "get"), ("prefer", "post")]
)
def test_another_users_answer_is_a_404_and_nothing_is_saved(client, other_user, conversation, answer, name, method):
    regenerate(conversation, answer, "Paris.")
    client.force_login(other_user)
    response = getattr(client, method)(url(name, answer), {"rating": "up", "comment": "pwned"}, headers=HTMX)
    assert response.status_code == 404
    assert not Feedback.objects.exists() and not Preference.objects.exists()


def test_questions_failed_and_streaming_answers_cannot_be_rated(owner_client, conversation, answer):
    question = answer.parent
    failed = conversation.add_failed_reply("no model")
    streaming = conversation.start_reply(_spec(), {}, parent=question)
    for message in (question, failed, streaming):
        assert owner_client.post(url("rate", message), {"rating": "up"}).status_code == 404
    assert not Feedback.objects.exists()


def test_rating_without_a_csrf_token_is_refused(owner, answer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(url("rate", answer), {"rating": "up"}).status_code == 403
    assert not Feedback.objects.exists()


def test_the_conversation_page_shows_each_answers_feedback(owner_client, owner, conversation, answer, tags):
    feedback = Feedback.record(owner, answer, rating="up", tags=[tags[1]], comment="", correction="Paris.")
    conversation.add_user_message("And of Italy?")
    unrated = add_reply(conversation, "Rome.")
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert page.count('class="feedback"') == 2
    block = page[page.index(f'id="feedback-{answer.pk}"') : page.index(f'id="feedback-{unrated.pk}"')]
    assert 'class="thumb on"' in block and "Too long" in block and "corrected" in block
    assert feedback.pk and f'id="feedback-{answer.parent_id}"' not in page


def test_preferring_a_sibling_replaces_the_earlier_choice_for_that_question(owner_client, owner, conversation, answer):
    second = regenerate(conversation, answer, "Paris.")
    third = regenerate(conversation, answer, "Marseille.")
    owner_client.post(url("prefer", third), headers=HTMX)
    response = owner_client.post(url("prefer", second), headers=HTMX)
    assert "Preferred answer ✓" in response.content.decode()
    pairs = {(p.chosen_id, p.rejected_id, p.verdict, p.source) for p in Preference.objects.all()}
    assert pairs == {(second.pk, answer.pk, "chosen", "sibling"), (second.pk, third.pk, "chosen", "sibling")}
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert "Preferred answer ✓" not in page  # the active answer is the third; the second is preferred


def test_an_answer_without_siblings_cannot_be_preferred(owner_client, answer):
    assert owner_client.post(url("prefer", answer), headers=HTMX).status_code == 422
    assert not Preference.objects.exists()


def test_a_side_by_side_verdict_is_one_preference_that_follows_the_latest_choice(owner, conversation):
    comparison = make_comparison(conversation)
    for reply in (comparison.left, comparison.right):
        reply.finish("complete", reply.model_name)
    comparison.decide(Verdict.RIGHT)
    preference = Preference.objects.get()
    assert (preference.chosen, preference.rejected, preference.verdict) == (comparison.right, comparison.left, "chosen")
    comparison.decide(Verdict.BOTH_BAD)
    preference = Preference.objects.get()
    assert (preference.user, preference.source, preference.verdict) == (owner, "comparison", "both_bad")


def test_new_conversations_take_the_users_default_consent(owner_client, owner):
    owner_client.post(reverse("conversations:new"))
    response = owner_client.post(reverse("conversations:privacy"), {"allow_training_default": ""})
    assert response.status_code == 200 and "Saved." in response.content.decode()
    owner_client.post(reverse("conversations:new"))
    first, second = Conversation.objects.filter(owner=owner).order_by("pk")
    assert (first.allow_training, second.allow_training) == (True, False)
    owner_client.post(reverse("conversations:privacy"), {"allow_training_default": "on", "apply_to_existing": "on"})
    assert set(Conversation.objects.values_list("allow_training", flat=True)) == {True}


def test_the_settings_panel_toggles_a_conversations_consent(owner_client, client, other_user, conversation):
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert 'name="allow_training" checked' in page
    consent = reverse("conversations:consent", args=[conversation.pk])
    response = owner_client.post(consent, {}, headers=HTMX)
    html = response.content.decode()
    assert html.lstrip().startswith('<form id="consent"') and "Kept out of training data." in html
    conversation.refresh_from_db()
    assert conversation.allow_training is False
    client.force_login(other_user)
    assert client.post(consent, {"allow_training": "on"}).status_code == 404
    conversation.refresh_from_db()
    assert conversation.allow_training is False


def test_deleting_a_conversation_removes_its_messages_feedback_and_preferences(
    owner_client, owner, conversation, answer
):
    sibling = regenerate(conversation, answer, "Paris.")
    Feedback.record(owner, answer, rating="down", correction="Paris.")
    Preference.prefer_sibling(owner, sibling)
    owner_client.post(reverse("conversations:delete", args=[conversation.pk]))
    assert not Conversation.objects.exists() and not Message.objects.exists()
    assert not Feedback.objects.exists() and not Preference.objects.exists()


def test_delete_all_removes_every_conversation_of_the_user_and_only_theirs(owner_client, owner, other_user, answer):
    Feedback.record(owner, answer, rating="up")
    theirs = Conversation.objects.create(owner=other_user)
    theirs.add_user_message("keep me")
    response = owner_client.post(reverse("conversations:delete_all"))
    assert response.status_code == 302
    assert list(Conversation.objects.all()) == [theirs]
    assert Message.objects.count() == 1 and not Feedback.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_verdicts_given_before_preferences_existed_become_preferences():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("conversations", "0005_comparison")], [("conversations", "0006_feedback_consent_snapshots")]
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(before)
    try:
        apps = executor.loader.project_state(before).apps
        user = apps.get_model("auth", "User").objects.create(username="legacy")
        conversation = apps.get_model("conversations", "Conversation").objects.create(owner_id=user.pk)
        OldMessage = apps.get_model("conversations", "Message")
        question = OldMessage.objects.create(conversation=conversation, role="user", content="q")
        left, right = (
            OldMessage.objects.create(conversation=conversation, role="assistant", content=side, parent=question)
            for side in ("l", "r")
        )
        apps.get_model("conversations", "Comparison").objects.create(
            conversation=conversation, question=question, left=left, right=right, choice="right"
        )
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        preference = executor.loader.project_state(after).apps.get_model("conversations", "Preference").objects.get()
        assert (
            preference.chosen_id,
            preference.rejected_id,
            preference.verdict,
            preference.source,
            preference.user_id,
        ) == (right.pk, left.pk, "chosen", "comparison", user.pk)
    finally:
        MigrationExecutor(connection).migrate(latest)
