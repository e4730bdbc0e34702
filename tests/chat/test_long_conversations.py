"""A long conversation's page shows its newest messages and loads the earlier ones a window at a time
(Conversation.path_window, CHAT_PAGE_MESSAGES): every message of the branch is reachable, once, in order."""

import re

import pytest
from django.urls import reverse

from conversations.chat.frames import path_frame
from tests.factories import add_reply

SHOWN = re.compile(r'data-message-id="(\d+)"')
EARLIER = re.compile(r'hx-get="([^"]+/earlier/\?before=(\d+))"')


@pytest.fixture
def long_conversation(conversation, settings):
    """20 questions and answers; a page shows 7 messages at a time."""
    settings.CHAT_PAGE_MESSAGES = 7
    for n in range(20):
        conversation.add_user_message(f"question {n}")
        add_reply(conversation, f"answer {n}")
    return conversation


def ids(html):
    return [int(pk) for pk in SHOWN.findall(html)]


def test_the_page_shows_the_newest_messages_from_a_question_and_offers_the_earlier_ones(
    owner_client, long_conversation
):
    page = owner_client.get(long_conversation.get_absolute_url()).content.decode()
    path = long_conversation.active_path()
    # 7 would start at an answer: the window starts one earlier, at its question.
    assert ids(page) == [m.pk for m in path[-8:]] and path[-8].content == "question 16"
    assert "Show earlier messages (32)" in page
    assert EARLIER.search(page).group(2) == str(path[-8].pk)


def test_following_the_earlier_buttons_shows_every_message_once_in_order(owner_client, long_conversation):
    page = owner_client.get(long_conversation.get_absolute_url()).content.decode()
    seen, html, requests = ids(page), page, 0
    while (found := EARLIER.search(html)) is not None:
        response = owner_client.get(found.group(1).replace("&amp;", "&"), HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        html = response.content.decode()
        assert "<html" not in html  # a fragment, swapped in place of the button
        seen, requests = ids(html) + seen, requests + 1
    assert seen == [m.pk for m in long_conversation.active_path()] and requests == 4  # 8 at a time: 40 messages


def test_earlier_messages_of_a_branch_that_changed_meanwhile_are_a_409(owner_client, long_conversation):
    path = long_conversation.active_path()
    long_conversation.edit(path[10], "question 5, edited")  # path[20] is no longer on the branch
    url = reverse("conversations:earlier", args=[long_conversation.pk])
    response = owner_client.get(url, {"before": path[20].pk})
    assert response.status_code == 409 and "reload" in response.content.decode()
    for bad in ({}, {"before": "x"}):
        response = owner_client.get(url, bad)
        assert response.status_code == 400 and "?before=" in response.content.decode()


def test_the_redraw_frame_shows_the_same_window_as_the_page(owner_client, long_conversation):
    page = owner_client.get(long_conversation.get_absolute_url()).content.decode()
    frame = path_frame(long_conversation)["html"]
    assert ids(frame) == ids(page)
    assert "Show earlier messages (32)" in frame
