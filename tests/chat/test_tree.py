"""The conversation tree: regenerate and edit make branches, the page and the model follow one."""

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from conversations.models import Message
from tests.factories import add_reply, install_scripted
from tests.sockets import frames_until, open_socket


def contents(path):
    return [m.content for m in path]


def test_regenerating_keeps_the_old_answer_as_a_sibling(conversation):
    question = conversation.add_user_message("Q")
    first = add_reply(conversation, "A1")
    second = conversation.start_reply(first_spec(), {}, parent=question)
    second.finish("complete", "A2")
    path = conversation.active_path()
    assert contents(path) == ["Q", "A2"]
    assert path[1].siblings == [first.pk, second.pk] and path[1].sibling_index == 2
    assert path[1].previous_sibling == first.pk and path[1].next_sibling is None


def first_spec():
    from modelhub.models import ModelSpec

    return ModelSpec.objects.get_or_create(name="m", defaults={"source": "-", "backend": "scripted"})[0]


def test_editing_a_question_branches_and_the_old_branch_stays_reachable(conversation):
    q1 = conversation.add_user_message("Q1")
    add_reply(conversation, "A1")
    q2 = conversation.add_user_message("Q2")
    add_reply(conversation, "A2")
    edited = conversation.edit(q2, "Q2 edited")
    add_reply(conversation, "A2'")
    assert contents(conversation.active_path()) == ["Q1", "A1", "Q2 edited", "A2'"]
    assert conversation.history()[-2:] == [
        {"role": "user", "content": "Q2 edited"},
        {"role": "assistant", "content": "A2'"},
    ]
    conversation.switch_to(q2)
    assert contents(conversation.active_path()) == ["Q1", "A1", "Q2", "A2"]
    assert edited.parent_id == q2.parent_id and q1.parent_id is None


def test_switching_follows_the_newest_answer_down_the_branch(conversation):
    q = conversation.add_user_message("Q")
    old = add_reply(conversation, "old")
    conversation.add_user_message("follow-up")
    add_reply(conversation, "deep")
    new = conversation.start_reply(first_spec(), {}, parent=q)
    new.finish("complete", "new")
    conversation.switch_to(old)
    assert contents(conversation.active_path()) == ["Q", "old", "follow-up", "deep"]


def test_editing_the_first_question_makes_a_second_root(conversation):
    q = conversation.add_user_message("first")
    add_reply(conversation, "answer")
    conversation.edit(q, "first, better")
    path = conversation.active_path()
    assert contents(path) == ["first, better"] and path[0].siblings[0] == q.pk


def test_a_history_ending_with_an_answer_is_continued_not_answered(tiny_model_dir):
    from transformers import AutoTokenizer

    from modelhub.prompts import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = render_prompt(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "well, i"}])
    assert tokenizer.decode(ids).endswith("<|assistant|>well, i")


pytestmark_async = pytest.mark.django_db(transaction=True)


@pytestmark_async
async def test_regenerate_over_the_socket_streams_a_sibling_and_redraws_the_path(owner, conversation):
    await sync_to_async(install_scripted)(["first"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "Q"})
    first = (await frames_until(socket, "done"))[-1]["message_id"]
    await sync_to_async(install_scripted)(["second", " try"])
    await socket.send_json_to({"type": "regenerate", "message_id": first})
    frames = await frames_until(socket, "done")
    path = next(f for f in frames if f["type"] == "path")
    assert "1/2" in path["html"] or "2/2" in path["html"]
    replies = await sync_to_async(list)(Message.objects.filter(role="assistant").order_by("id"))
    assert [r.content for r in replies] == ["first", "second try"]
    assert replies[0].parent_id == replies[1].parent_id
    await socket.disconnect()


@pytestmark_async
async def test_edit_over_the_socket_branches_and_the_model_sees_only_the_new_branch(owner, conversation):
    _, backend = await sync_to_async(install_scripted)(["ok"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "colour?"})
    await frames_until(socket, "done")
    question = await Message.objects.filter(role="user").afirst()
    await socket.send_json_to({"type": "edit", "message_id": question.pk, "content": "color?"})
    await frames_until(socket, "done")
    assert backend.calls[-1]["messages"] == [{"role": "user", "content": "color?"}]
    assert await Message.objects.filter(role="user").acount() == 2
    await socket.disconnect()


@pytestmark_async
async def test_continue_appends_to_an_answer_cut_by_the_token_limit(owner, conversation):
    _, backend = await sync_to_async(install_scripted)(["one", " two", " three"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "count", "options": {"max_new_tokens": 2}})
    done = (await frames_until(socket, "done"))[-1]
    reply = await Message.objects.aget(pk=done["message_id"])
    assert (reply.content, reply.finish_reason) == ("one two", "length")
    backend.chunks = [" three"]
    await socket.send_json_to({"type": "continue", "message_id": reply.pk})
    frames = await frames_until(socket, "done")
    chunk = next(f for f in frames if f["type"] == "chunk")
    assert chunk["offset"] == len("one two")
    await reply.arefresh_from_db()
    assert (reply.content, reply.status) == ("one two three", "complete")
    assert backend.calls[-1]["messages"][-1] == {"role": "assistant", "content": "one two"}
    await socket.send_json_to({"type": "continue", "message_id": reply.pk})
    assert (await socket.receive_json_from(timeout=5))["code"] == "cannot_continue"
    await socket.disconnect()


@pytestmark_async
@pytest.mark.parametrize(
    "frame",
    [
        {"type": "regenerate", "message_id": 99999},
        {"type": "edit", "message_id": "1", "content": "x"},
        {"type": "continue"},
    ],
)
async def test_branch_frames_for_unknown_messages_are_refused(owner, conversation, frame):
    await sync_to_async(install_scripted)(["x"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to(frame)
    assert (await socket.receive_json_from(timeout=5))["code"] == "unknown_message"
    await socket.disconnect()


def test_the_sibling_switch_view_redraws_the_path(owner_client, conversation):
    q = conversation.add_user_message("Q")
    first = add_reply(conversation, "First answer")
    second = conversation.start_reply(first_spec(), {}, parent=q)
    second.finish("complete", "Second answer")
    url = reverse("conversations:switch", args=[conversation.pk, first.pk])
    html = owner_client.post(url, headers={"HX-Request": "true"}).content.decode()
    assert "First answer" in html and "Second answer" not in html and "1/2" in html
    conversation.refresh_from_db()
    assert conversation.leaf == first


def test_switching_is_refused_while_a_reply_streams_and_for_other_users(client, owner_client, other_user, conversation):
    conversation.add_user_message("Q")
    first = add_reply(conversation, "A1")
    conversation.start_reply(first_spec(), {})
    url = reverse("conversations:switch", args=[conversation.pk, first.pk])
    assert owner_client.post(url).status_code == 409
    client.force_login(other_user)
    assert client.post(url).status_code == 404
