"""The chat websocket through the real ASGI stack (origin check, session auth, routing)."""

import json

import pytest
from asgiref.sync import sync_to_async

from conversations.models import Conversation, Message
from modelhub.engine.arrivals import arrivals
from tests.factories import add_reply
from tests.sockets import frames_until, messages_of, open_socket, scripted, settled_messages_of
from tests.waiting import until

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_a_reply_streams_in_several_chunks_and_is_saved_with_its_usage(owner, conversation):
    await scripted(["Hello", " there", ",", " friend", "."], delay=0.01)
    socket, connected, _ = await open_socket(owner, conversation)
    assert connected

    await socket.send_json_to({"type": "send", "content": "Hi!"})
    frames = await frames_until(socket, "done")

    chunks = [f for f in frames if f["type"] == "chunk"]
    assert len(chunks) > 1
    assert "".join(c["text"] for c in chunks) == "Hello there, friend."
    user_msg, reply = await messages_of(conversation)
    assert (user_msg.role, user_msg.content, user_msg.status) == ("user", "Hi!", "complete")
    assert (reply.role, reply.content, reply.status) == ("assistant", "Hello there, friend.", "complete")
    assert reply.completion_tokens == 5 and reply.finish_reason == "stop"
    assert reply.time_to_first_token is not None and reply.duration >= reply.time_to_first_token
    assert frames[-1]["message_id"] == reply.pk and "Hello there, friend." in frames[-1]["html"]
    assert {"type": "title", "title": "Hi!"} in frames
    await socket.disconnect()


async def test_offsets_let_a_client_place_every_chunk_exactly(owner, conversation):
    await scripted(["naïve ", "😀 ", "end"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "go"})
    chunks = [f for f in await frames_until(socket, "done") if f["type"] == "chunk"]
    text = ""
    for chunk in chunks:
        assert chunk["offset"] == len(text.encode("utf-16-le")) // 2
        text += chunk["text"]
    assert text == "naïve 😀 end"
    await socket.disconnect()


async def test_the_user_message_is_saved_before_generation_starts(owner, conversation):
    _, backend = await scripted(["ok"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "remember me"})
    await frames_until(socket, "done")
    seen = backend.calls[0]["messages"]
    assert seen[-1] == {"role": "user", "content": "remember me"}
    await socket.disconnect()


async def test_the_conversations_adapter_answers_and_is_recorded(owner, conversation):
    from modelhub.models import Adapter

    spec, backend = await scripted(["styled"])
    style = await Adapter.objects.acreate(name="style", base=spec, path="/adapters/style")
    await sync_to_async(conversation.choose_model)(spec, style)
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "hi"})
    frames = await frames_until(socket, "done")
    assert backend.calls[0]["adapter"] == ("style", "/adapters/style")
    _, reply = await messages_of(conversation)
    assert (reply.model_name, reply.adapter_name) == ("scripted", "style")
    assert "scripted + style" in frames[-1]["html"]
    await socket.disconnect()


async def test_the_conversations_settings_shape_the_prompt_and_options(owner, conversation):
    _, backend = await scripted(["ok"])
    await sync_to_async(conversation.update_settings)("Answer in French.", {"temperature": 0.1, "max_new_tokens": 5})
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "hello", "options": {"max_new_tokens": 3}})
    await frames_until(socket, "done")
    call = backend.calls[0]
    assert call["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert call["options"].temperature == 0.1 and call["options"].max_new_tokens == 3
    await socket.disconnect()


async def test_options_sent_with_a_message_are_used_and_recorded(owner, conversation):
    _, backend = await scripted(["a", " b", " c"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "hi", "options": {"temperature": 0, "max_new_tokens": 2}})
    await frames_until(socket, "done")
    options = backend.calls[0]["options"]
    assert options.temperature == 0 and options.max_new_tokens == 2
    _, reply = await messages_of(conversation)
    assert reply.content == "a b" and reply.generation_options["max_new_tokens"] == 2
    assert reply.finish_reason == "length"
    await socket.disconnect()


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"temperature": -1}, "temperature must be between 0 and 2"),
        ({"max_new_tokens": 10**6}, "max_new_tokens"),
        ({"top_p": "wide"}, "top_p must be a number"),
        ("hot", "must be a JSON object"),
    ],
)
async def test_bad_options_are_refused_and_nothing_is_saved(owner, conversation, options, problem):
    await scripted(["x"])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "hi", "options": options})
    error = await socket.receive_json_from(timeout=5)
    assert error["code"] == "invalid_options" and problem in error["message"]
    assert await messages_of(conversation) == []
    await socket.disconnect()


async def test_stop_saves_the_partial_reply_as_stopped(owner, conversation):
    await scripted([f"word{i} " for i in range(200)], delay=0.02)
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "talk a lot"})
    await frames_until(socket, "chunk")
    await socket.send_json_to({"type": "stop"})
    frames = await frames_until(socket, "done")

    assert frames[-1]["status"] == "stopped"
    _, reply = await messages_of(conversation)
    assert reply.status == "stopped" and reply.finish_reason == "cancelled"
    assert reply.content.startswith("word0 ") and 0 < reply.completion_tokens < 200
    await socket.disconnect()


async def test_closing_the_socket_mid_reply_keeps_both_messages(owner, conversation, settings):
    await scripted([f"word{i} " for i in range(300)], delay=0.02)
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "tell me everything"})
    await frames_until(socket, "chunk")
    await socket.disconnect()

    user_msg, reply = await settled_messages_of(conversation)
    assert user_msg.content == "tell me everything"
    assert reply.status == "interrupted"
    assert reply.content.startswith("word0") and 0 < reply.completion_tokens < 300


async def test_a_second_watcher_gets_the_reply_so_far_then_the_rest(owner, conversation):
    await scripted([f"w{i} " for i in range(30)], delay=0.02)
    first, _, _ = await open_socket(owner, conversation)
    await first.send_json_to({"type": "send", "content": "go"})
    await frames_until(first, lambda f: f["type"] == "chunk" and f["offset"] > 10)  # well under way

    second, _, _ = await open_socket(owner, conversation)
    frames = await frames_until(second, "done")
    snapshot = frames[0]
    assert snapshot["type"] == "message" and snapshot["status"] == "streaming" and snapshot["offset"] > 0
    text = snapshot["html"].split('<div class="message-text">')[1].split("</div>")[0]
    for chunk in (f for f in frames if f["type"] == "chunk"):
        text = text[: chunk["offset"]] + chunk["text"]
    assert text == "".join(f"w{i} " for i in range(30))
    await first.disconnect()
    await second.disconnect()


async def closed_with(communicator):
    """The close code of a socket the server closes (after accepting it) before any frame."""
    output = await communicator.receive_output(timeout=10)
    assert output["type"] == "websocket.close", output
    return output["code"]


async def test_another_users_conversation_is_refused(owner, other_user, conversation):
    await scripted()
    socket, connected, _ = await open_socket(other_user, conversation)
    assert connected  # the handshake never waits for the database: the check follows it
    await socket.send_json_to({"type": "send", "content": "sent before the check ended"})
    assert await closed_with(socket) == 4404
    assert await messages_of(conversation) == []


async def test_an_anonymous_socket_is_refused(conversation):
    socket, connected, code = await open_socket(None, conversation)
    assert not connected and code == 4404


async def test_a_foreign_origin_is_refused(owner, conversation):
    socket, connected, _ = await open_socket(owner, conversation, origin=(b"origin", b"http://evil.example"))
    assert not connected


@pytest.mark.parametrize(
    "raw, code",
    [
        ("this is not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps({"type": "send", "content": "   "}), "empty_message"),
        (json.dumps({"type": "send", "content": 42}), "empty_message"),
        (json.dumps({"type": "send", "content": "x" * 101}), "message_too_long"),
        (json.dumps({"type": "stop"}), "nothing_to_stop"),
    ],
)
async def test_a_malformed_frame_gets_an_error_frame_and_the_socket_still_works(
    owner, conversation, settings, raw, code
):
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    await scripted(["fine"])
    socket, _, _ = await open_socket(owner, conversation)

    await socket.send_to(text_data=raw)
    error = await socket.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert await messages_of(conversation) == []

    await socket.send_json_to({"type": "send", "content": "still there?"})
    frames = await frames_until(socket, "done")
    assert frames[-1]["status"] == "complete"
    await socket.disconnect()


async def test_a_conversation_deleted_while_open_answers_unknown_conversation(owner, conversation):
    await scripted(["x"])
    socket, _, _ = await open_socket(owner, conversation)
    await sync_to_async(Conversation.objects.filter(pk=conversation.pk).delete)()
    await socket.send_json_to({"type": "send", "content": "hello?"})
    error = await socket.receive_json_from(timeout=5)
    assert error["code"] == "unknown_conversation"
    await socket.send_json_to({"type": "dance"})
    assert (await socket.receive_json_from(timeout=5))["code"] == "unknown_type"
    await socket.disconnect()


async def test_a_second_message_while_a_reply_streams_is_refused_as_busy(owner, conversation):
    await scripted([f"w{i} " for i in range(100)], delay=0.02)
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "one"})
    await frames_until(socket, "chunk")
    await socket.send_json_to({"type": "send", "content": "two"})
    frames = await frames_until(socket, "error")
    assert frames[-1]["code"] == "busy"
    await socket.send_json_to({"type": "stop"})
    await frames_until(socket, "done")
    assert [m.content for m in await messages_of(conversation) if m.role == "user"] == ["one"]
    await socket.disconnect()


async def test_every_turn_settles_its_notice_to_modelhub_whether_it_runs_or_is_refused(owner, conversation):
    """A turn announces its reply before saving (so running replies hold their step for it);
    an announcement left behind would slow every model down, so none may outlive its turn."""
    await scripted([f"w{i} " for i in range(100)], delay=0.02)
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "one"})
    await frames_until(socket, "chunk")
    assert len(arrivals) == 0  # taken by its request

    await socket.send_json_to({"type": "send", "content": "two"})
    assert (await frames_until(socket, "error"))[-1]["code"] == "busy"
    assert len(arrivals) == 0
    await socket.send_json_to({"type": "stop"})
    await frames_until(socket, "done")

    await socket.send_json_to({"type": "send", "content": "three", "options": {"temperature": -1}})
    assert (await frames_until(socket, "error"))[-1]["code"] == "invalid_options"
    assert len(arrivals) == 0
    await socket.disconnect()


async def test_one_user_may_have_only_so_many_replies_written_at_once(owner, conversation, settings):
    settings.CHAT_MAX_REPLIES_PER_USER = 1
    await scripted([f"w{i} " for i in range(100)], delay=0.02)
    other = await sync_to_async(Conversation.objects.create)(owner=owner)
    first, _, _ = await open_socket(owner, conversation)
    second, _, _ = await open_socket(owner, other)
    await first.send_json_to({"type": "send", "content": "one"})
    await frames_until(first, "chunk")

    await second.send_json_to({"type": "send", "content": "two"})
    refusal = (await frames_until(second, "error"))[-1]
    assert refusal["code"] == "too_many_replies" and "at most 1 at once" in refusal["message"]
    assert await messages_of(other) == []  # nothing saved for the refused turn

    await first.send_json_to({"type": "stop"})
    await frames_until(first, "done")
    await second.send_json_to({"type": "send", "content": "two"})
    await second.send_json_to({"type": "stop"})
    assert (await frames_until(second, "done"))[-1]["status"] in ("stopped", "complete")
    await first.disconnect()
    await second.disconnect()


async def test_a_model_failure_is_saved_as_an_error_and_shown(owner, conversation):
    await scripted(["partial ", RuntimeError("out of memory")])
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "hi"})
    frames = await frames_until(socket, "done")
    error = next(f for f in frames if f["type"] == "error")
    assert error["code"] == "generation_failed" and "out of memory" in error["message"]
    _, reply = await messages_of(conversation)
    assert reply.status == "error" and reply.content == "partial " and "out of memory" in reply.error
    await socket.disconnect()


async def test_without_any_model_the_reply_is_an_error_and_the_question_is_kept(owner, conversation):
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "anyone?"})
    frames = await frames_until(socket, "message")
    frames += await frames_until(socket, "message")
    user_msg, reply = await messages_of(conversation)
    assert user_msg.content == "anyone?"
    assert reply.status == "error" and "no model is registered" in reply.error
    assert len(arrivals) == 0
    await socket.disconnect()


async def test_an_over_long_history_is_truncated_visibly(owner, tiny_spec):
    @sync_to_async
    def long_conversation():
        tiny_spec.context_length = 96
        tiny_spec.max_new_tokens = 16
        tiny_spec.save()
        conversation = Conversation.objects.create(owner=owner, model=tiny_spec)
        for i in range(20):
            conversation.add_user_message(f"question {i} about hiking and books")
            add_reply(conversation, f"answer {i} about the weekend", spec=tiny_spec)
        return conversation

    conversation = await long_conversation()
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "and the last question?"})
    frames = await frames_until(socket, "done", timeout=60)

    reply = (await messages_of(conversation))[-1]
    assert reply.status == "complete"
    assert reply.prompt_tokens <= 96 - 16
    assert "oldest message(s) did not fit" in reply.notice
    assert "oldest message(s) did not fit" in frames[-1]["html"]
    await socket.disconnect()


async def test_a_replys_first_text_is_saved_at_once_not_after_the_flush_interval(owner, conversation, settings):
    settings.CHAT_FLUSH_SECONDS = 60  # a writer killed in its first minute would otherwise leave nothing
    await scripted([f"w{i} " for i in range(40)], delay=0.1)
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "hi"})
    reply_id = (await frames_until(socket, "chunk"))[-1]["message_id"]

    async def saved_text():
        reply = await Message.objects.aget(pk=reply_id)
        return reply if reply.content else None

    reply = await until(saved_text, timeout=2, what="text saved within 2 s of the first chunk")
    assert reply.status == Message.Status.STREAMING and reply.content.startswith("w0 ")
    await socket.send_json_to({"type": "stop"})
    await frames_until(socket, "done")
    await socket.disconnect()
