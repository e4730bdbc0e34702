"""What a page or a turn costs in queries must not grow with its data (healthchecks' assertNumQueries habit).

Each test measures the same page over a small and a large data set: the count is equal, and
under a fixed ceiling."""

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from conversations.chat.turns import Turn, prepare
from conversations.models import Conversation, Feedback, Message
from modelhub.models import ModelSpec


@pytest.fixture
def spec(db):
    return ModelSpec.objects.create(name="m", source="-", backend="scripted", is_default=True)


def grow(conversation, spec, turns):
    """`turns` question/answer pairs on the active branch, every other answer rated (the first one
    too), the second one regenerated, and last a question answered side by side."""
    for i in range(turns):
        conversation.add_user_message(f"question {i}")
        reply = conversation.start_reply(spec, {})
        reply.finish(Message.Status.COMPLETE, f"answer {i}")
        if i % 2 == 0:
            Feedback.objects.create(message=reply, user=conversation.owner, rating=Feedback.Rating.UP)
        if i == 1:  # a second version of this answer: the page shows ‹ 2/2 ›
            again = conversation.start_reply(spec, {}, parent=reply.parent)
            again.finish(Message.Status.COMPLETE, f"answer {i}, again")
    comparison = conversation.start_comparison("which is better?", (spec, None, {}), (spec, None, {}))
    for answer in (comparison.left, comparison.right):  # the last turn: two answers side by side
        answer.finish(Message.Status.COMPLETE, "one of two")
    return conversation


def queries(client, url):
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_a_conversation_page_costs_the_same_queries_at_4_and_500_messages(owner_client, owner, spec):
    small = grow(Conversation.objects.create(owner=owner), spec, 2)
    large = grow(Conversation.objects.create(owner=owner), spec, 250)
    assert large.messages.count() >= 500

    # The first view renders the answers' markdown and stores it (Message.html): what a reply's done frame does
    # when it finishes, which these answers, made without one, did not have.
    for conversation in (small, large):
        owner_client.get(conversation.get_absolute_url())
    few, many = queries(owner_client, small.get_absolute_url()), queries(owner_client, large.get_absolute_url())
    page = owner_client.get(small.get_absolute_url()).content.decode()
    assert page.count('data-raw="one of two"') == 2 and "answer 1" in page and "2/2" in page  # all of it is shown
    assert "Show earlier messages" not in page
    assert few == many
    assert many <= 13  # session, user, the user's permissions and their groups' (access.chat_required); the
    # conversation, its messages' tree (four columns), the shown ones (with their comparisons), feedback, their
    # tags, preferences; the model menu (models, adapters); the sidebar


def test_earlier_messages_cost_the_same_queries_wherever_the_window_is(owner_client, owner, spec, settings):
    settings.CHAT_PAGE_MESSAGES = 40
    conversation = grow(Conversation.objects.create(owner=owner), spec, 250)
    owner_client.get(conversation.get_absolute_url())
    shown = conversation.path_window()[0]
    windows = []
    while True:
        first = shown[0]
        url = reverse("conversations:earlier", args=[conversation.pk]) + f"?before={first.pk}"
        windows.append(queries(owner_client, url))
        shown, earlier = conversation.path_window(before=first.pk)
        if not earlier:
            break
    assert len(windows) >= 10 and len(set(windows)) == 1
    assert windows[0] <= 11  # session, user, permissions (2), the conversation, the tree, the shown messages,
    # feedback, tags, preferences; and here, where these answers were never shown, storing their HTML


def test_the_sidebar_costs_the_same_queries_for_2_and_60_conversations(owner_client, owner, spec):
    for _ in range(2):
        grow(Conversation.objects.create(owner=owner), spec, 1)
    few = queries(owner_client, reverse("conversations:list"))
    for _ in range(58):
        grow(Conversation.objects.create(owner=owner), spec, 1)
    assert queries(owner_client, reverse("conversations:list")) == few
    assert few <= 5  # session, user, the user's permissions and their groups', the list


@pytest.mark.parametrize(
    "changelist",
    [
        "admin:conversations_conversation_changelist",
        "admin:conversations_preference_changelist",
        "admin:conversations_feedback_changelist",
    ],
)
def test_admin_lists_cost_the_same_queries_for_few_and_many_rows(client, owner, spec, changelist):
    admin = get_user_model().objects.create_superuser("root", password="root-pass-123")
    client.force_login(admin)
    grow(Conversation.objects.create(owner=owner), spec, 2)
    few = queries(client, reverse(changelist))
    for _ in range(20):
        grow(Conversation.objects.create(owner=owner), spec, 3)
    assert queries(client, reverse(changelist)) == few


@pytest.mark.django_db(transaction=True)
def test_one_turn_is_saved_and_rendered_in_a_fixed_number_of_queries(owner, spec):
    small = grow(Conversation.objects.create(owner=owner), spec, 1)
    large = grow(Conversation.objects.create(owner=owner), spec, 100)
    counts = []
    for conversation in (small, large):
        with CaptureQueriesContext(connection) as captured:
            prepare(owner, conversation.pk, Turn("send", "one more question"), {})
        counts.append(len(captured))
    assert counts[0] == counts[1], counts
    assert counts[1] <= 13  # was 21 with a savepoint per model method and a query per rendered message, 14 with
    # the reply re-locking the conversation that the turn had locked; 12, then the user's quotas (own and groups')
