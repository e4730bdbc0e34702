"""A model that thinks before it answers (the tiny Qwen3 of tests/thinking.py, TRL's qwen3 template and
response template): its reasoning streams, is stored and is shown apart from its answer, and goes back to
the model as its template expects; a reply cut while thinking keeps its reasoning and no answer."""

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from conversations.models import Conversation, Message
from modelhub.api import REASONING
from tests.factories import add_reply
from tests.sockets import frames_until, messages_of, open_socket, scripted
from tests.thinking import ANSWER, QUESTION
from tests.thinking import REASONING as THOUGHT

pytestmark = [pytest.mark.django_db(transaction=True)]


async def ask(owner, conversation, content="what is two plus two?"):
    socket, connected, _ = await open_socket(owner, conversation)
    assert connected
    await socket.send_json_to({"type": "send", "content": content})
    frames = await frames_until(socket, "done", timeout=60)
    await socket.disconnect()
    return frames


def streamed(frames, part):
    return "".join(f["text"] for f in frames if f["type"] == "chunk" and f.get("part", "answer") == part)


async def test_the_reasoning_streams_and_is_saved_apart_from_the_answer(owner, thinking_spec):
    conversation = await Conversation.objects.acreate(owner=owner, model=thinking_spec)
    frames = await ask(owner, conversation, QUESTION)

    assert streamed(frames, "reasoning").strip() == THOUGHT
    assert streamed(frames, "answer") == ANSWER
    _, reply = await messages_of(conversation)
    assert (reply.status, reply.content, reply.reasoning) == ("complete", ANSWER, THOUGHT)
    assert 0 < reply.reasoning_tokens < reply.completion_tokens
    assert reply.reasoning_seconds is not None and reply.reasoning_seconds >= 0
    html = frames[-1]["html"]
    assert '<details class="reasoning">' in html and "Thought for" in html and THOUGHT in html
    assert "think&gt;" not in html and "<think>" not in html


async def test_each_chunk_of_reasoning_says_where_it_goes(owner, thinking_spec):
    conversation = await Conversation.objects.acreate(owner=owner, model=thinking_spec)
    frames = await ask(owner, conversation, QUESTION)
    text = ""
    for chunk in [f for f in frames if f["type"] == "chunk" and f.get("part") == "reasoning"]:
        assert chunk["offset"] == len(text.encode("utf-16-le")) // 2
        text += chunk["text"]
    assert text.strip() == THOUGHT


async def test_the_history_gives_the_template_the_reasoning_to_keep_or_drop(owner, thinking_spec):
    conversation = await Conversation.objects.acreate(owner=owner, model=thinking_spec)
    await ask(owner, conversation, QUESTION)
    await ask(owner, conversation, "and three plus three?")

    first, second = [m for m in await messages_of(conversation) if m.role == "assistant"]
    history = await sync_to_async(lambda: conversation.history(upto=second.parent))()
    assert history[1] == {"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT}
    # Qwen3's template keeps the reasoning of the turns after the last question only: the exact prompt of
    # the second reply has the first answer and not its thinking (nor a <think> written into the answer).
    assert f"<|im_start|>assistant\n{ANSWER}<|im_end|>" in second.prompt
    assert THOUGHT not in second.prompt


async def test_a_reply_cut_while_thinking_keeps_its_reasoning_and_no_answer(owner, thinking_spec):
    thinking_spec.max_new_tokens = 4
    await thinking_spec.asave()
    conversation = await Conversation.objects.acreate(owner=owner, model=thinking_spec)
    frames = await ask(owner, conversation, QUESTION)

    _, reply = await messages_of(conversation)
    assert reply.finish_reason == "length"
    assert reply.content == "" and reply.reasoning and THOUGHT.startswith(reply.reasoning)
    assert "<think>" not in reply.content + reply.reasoning
    assert "still thinking" in frames[-1]["html"]


async def test_stopping_while_it_thinks_saves_the_reasoning_so_far(owner, conversation):
    await scripted([(REASONING, f"step {i}. ") for i in range(200)], delay=0.02)
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "think hard"})
    await frames_until(socket, lambda f: f["type"] == "chunk" and f.get("part") == "reasoning")
    await socket.send_json_to({"type": "stop"})
    await frames_until(socket, "done")
    await socket.disconnect()

    _, reply = await messages_of(conversation)
    assert reply.status == "stopped" and reply.content == ""
    assert reply.reasoning.startswith("step 0. step 1.")


async def test_reasoning_is_escaped_like_an_answer(owner, conversation):
    await scripted([(REASONING, "<script>alert(1)</script> <img src=x onerror=alert(2)>"), "fine"])
    frames = await ask(owner, conversation, "hi")
    html = frames[-1]["html"]
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "fine" in html


def test_the_page_shows_the_thinking_collapsed_above_the_answer(owner_client, owner):
    conversation = Conversation.objects.create(owner=owner)
    conversation.add_user_message(QUESTION)
    reply = add_reply(conversation, ANSWER)
    Message.objects.filter(pk=reply.pk).update(reasoning=THOUGHT, reasoning_seconds=1.25)

    page = owner_client.get(reverse("conversations:detail", args=[conversation.pk])).content.decode()
    block = page.index('<details class="reasoning">')
    assert block < page.index(f"<p>{ANSWER}</p>", block)
    assert "Thought for 1.3 s" in page


async def test_the_conversations_thinking_switch_reaches_the_template(owner, client, thinking_spec):
    conversation = await Conversation.objects.acreate(owner=owner, model=thinking_spec)
    await sync_to_async(client.force_login)(owner)
    url = reverse("conversations:settings", args=[conversation.pk])
    response = await sync_to_async(client.post)(url, {"system_prompt": "", "think": "False"})
    assert response.status_code == 302
    await conversation.arefresh_from_db()
    assert conversation.options == {"think": False}

    await ask(owner, conversation, QUESTION)
    _, reply = await messages_of(conversation)
    assert reply.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert (reply.content, reply.reasoning, reply.generation_options["think"]) == (ANSWER, "", False)


def test_an_api_calls_tool_calls_and_results_show_as_collapsed_blocks(owner_client, owner, db):
    from conversations.models import ApiKey
    from modelhub.models import ModelSpec

    spec = ModelSpec.objects.create(name="m", source="-", backend="scripted")
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "<b>paris</b>"}'},
    }
    conversation = ApiKey.objects.issue(owner, "agent")[0].start_conversation(
        spec,
        None,
        [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "<i>sunny</i>", "tool_call_id": "call_1"},
        ],
    )
    assert [m["role"] for m in conversation.history()] == ["user", "assistant", "tool"]
    assert conversation.history()[1]["tool_calls"] == [call] and conversation.history()[2]["tool_call_id"] == "call_1"

    page = owner_client.get(reverse("conversations:detail", args=[conversation.pk])).content.decode()
    assert '<details class="tool-call"><summary>Called <code>get_weather</code>' in page
    assert "{&quot;city&quot;: &quot;&lt;b&gt;paris&lt;/b&gt;&quot;}" in page
    assert '<details class="tool-result"><summary>Result of call <code>call_1</code>' in page
    assert "&lt;i&gt;sunny&lt;/i&gt;" in page and "<i>sunny" not in page


async def test_an_api_calls_answer_regenerated_on_its_page_sees_the_calls_tools(owner, thinking_spec):
    from conversations.models import ApiKey
    from tests.thinking import WEATHER_QUESTION, WEATHER_TOOL

    @sync_to_async
    def kept_call():
        key = ApiKey.objects.issue(owner, "agent")[0]
        question = [{"role": "user", "content": WEATHER_QUESTION}]
        conversation = key.start_conversation(thinking_spec, None, question, {"tools": [WEATHER_TOOL]})
        answer = add_reply(conversation, "no idea.")
        conversation.update_settings("", {"temperature": 0.0})  # the page's settings leave the call's tools
        return conversation, answer

    conversation, answer = await kept_call()
    socket, connected, _ = await open_socket(owner, conversation)
    assert connected
    await socket.send_json_to({"type": "regenerate", "message_id": answer.pk})
    frames = await frames_until(socket, "done", timeout=60)
    await socket.disconnect()

    reply = await Message.objects.aget(pk=frames[-1]["message_id"])
    # The template rendered the call's tools into the regenerated answer's prompt. (Whether the tiny model then
    # calls one depends on the tools' exact text, which PostgreSQL's jsonb reorders: the live API test checks it.)
    assert reply.pk != answer.pk and reply.status == "complete"
    assert "<tools>" in reply.prompt and '"name": "get_weather"' in reply.prompt
    assert reply.generation_options["tools"] == [WEATHER_TOOL]
    await conversation.arefresh_from_db()
    assert conversation.options == {"tools": [WEATHER_TOOL], "temperature": 0.0}
