"""State changes of conversations and replies, through their model methods."""

import pytest

from conversations.models import Conversation, Message
from conversations.models.chat import DEFAULT_TITLE
from modelhub.options import Usage


@pytest.fixture
def spec(db):
    from modelhub.models import ModelSpec

    return ModelSpec.objects.create(name="m", source="-", backend="scripted")


def test_the_first_user_message_titles_the_conversation(conversation):
    conversation.add_user_message(
        "What is   the best way to learn to juggle three balls at once without dropping them?"
    )
    conversation.refresh_from_db()
    assert conversation.title == "What is the best way to learn to juggle three balls at once…"
    conversation.add_user_message("another one")
    conversation.refresh_from_db()
    assert conversation.title.startswith("What is the best way")


def test_renaming_to_blank_falls_back_to_the_default_title(conversation):
    conversation.rename("   ")
    assert Conversation.objects.get(pk=conversation.pk).title == DEFAULT_TITLE


def test_only_one_reply_streams_at_a_time(conversation, spec):
    assert conversation.start_reply(spec, {}) is not None
    assert conversation.start_reply(spec, {}) is None


def test_finish_ends_a_reply_once_with_its_usage(conversation, spec):
    reply = conversation.start_reply(spec, {"temperature": 0})
    usage = Usage(prompt_tokens=7, completion_tokens=3, time_to_first_token=0.1, duration=0.5, finish_reason="stop")
    assert reply.finish(Message.Status.COMPLETE, "done", usage=usage)
    assert not reply.finish(Message.Status.ERROR, "overwritten?", error="late")
    reply.refresh_from_db()
    assert (reply.status, reply.content, reply.completion_tokens, reply.error) == ("complete", "done", 3, "")
    assert reply.tokens_per_second == pytest.approx(2 / 0.4)


def test_the_history_has_the_system_prompt_and_leaves_out_failed_replies(conversation, spec):
    conversation.system_prompt = "Be brief."
    conversation.save()
    conversation.add_user_message("one")
    failed = conversation.start_reply(spec, {})
    failed.finish(Message.Status.ERROR, "half", error="boom")
    conversation.add_user_message("two")
    stopped = conversation.start_reply(spec, {})
    stopped.finish(Message.Status.STOPPED, "partial answer")
    assert conversation.history() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "partial answer"},
    ]


def test_for_user_shows_only_the_owners_conversations(owner, other_user, conversation):
    from django.contrib.auth.models import AnonymousUser

    assert list(Conversation.objects.for_user(owner)) == [conversation]
    assert list(Conversation.objects.for_user(other_user)) == []
    assert list(Conversation.objects.for_user(AnonymousUser())) == []
