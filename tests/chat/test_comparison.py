"""Side by side: one question to two model choices at once, and the user's verdict."""

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from conversations.models import Comparison, Message
from modelhub.backends.local import ScriptedBackend
from modelhub.models import ModelSpec
from modelhub.registry import registry
from tests.factories import make_comparison, two_models
from tests.sockets import frames_until, open_socket


@pytest.mark.django_db(transaction=True)
async def test_one_question_streams_from_two_models_and_both_answers_are_saved(owner, conversation):
    left, right = await sync_to_async(two_models)()
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "compare", "content": "which?", "models": [f"m{left.pk}", f"m{right.pk}"]})
    frames = await frames_until(socket, "done")
    frames += await frames_until(socket, "done")
    path = next(f for f in frames if f["type"] == "path")
    assert 'class="comparison"' in path["html"]
    chunks = {f["message_id"] for f in frames if f["type"] == "chunk"}
    assert len(chunks) == 2
    comparison = await Comparison.objects.select_related("left", "right", "question").aget()
    assert comparison.question.content == "which?"
    assert (comparison.left.model_name, comparison.left.content) == ("left-model", "from left")
    assert (comparison.right.model_name, comparison.right.content) == ("right-model", "from right")
    assert comparison.left.parent_id == comparison.right.parent_id == comparison.question.pk
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_comparing_with_an_unknown_or_hidden_model_is_refused(owner, conversation):
    left, right = await sync_to_async(two_models)()
    hidden = await ModelSpec.objects.acreate(name="hidden", source="-", backend="scripted", visibility="staff")
    socket, _, _ = await open_socket(owner, conversation)
    for models in ([f"m{left.pk}", f"m{hidden.pk}"], [f"m{left.pk}"], [f"m{left.pk}", 7], "m1"):
        await socket.send_json_to({"type": "compare", "content": "q", "models": models})
        assert (await socket.receive_json_from(timeout=5))["code"] == "unknown_model"
    assert await Message.objects.acount() == 0
    await socket.disconnect()


def test_the_verdict_is_stored_and_the_preferred_answer_continues(owner_client, conversation):
    comparison = make_comparison(conversation)
    for reply in (comparison.left, comparison.right):
        reply.finish("complete", f"answer {reply.model_name}")
    url = reverse("conversations:vote", args=[conversation.pk, comparison.pk])
    html = owner_client.post(url, {"choice": "right"}, headers={"HX-Request": "true"}).content.decode()
    comparison.refresh_from_db()
    conversation.refresh_from_db()
    assert comparison.choice == "right" and comparison.decided_at is not None
    assert conversation.leaf == comparison.right
    assert "Your verdict: <strong>Right</strong>" in html and "answer left-model" in html
    owner_client.post(url, {"choice": "both_bad"})
    comparison.refresh_from_db()
    conversation.refresh_from_db()
    assert comparison.choice == "both_bad" and conversation.leaf == comparison.left


def test_voting_is_refused_while_answers_stream_for_bad_choices_and_for_other_users(
    client, owner_client, other_user, conversation
):
    comparison = make_comparison(conversation)
    url = reverse("conversations:vote", args=[conversation.pk, comparison.pk])
    assert owner_client.post(url, {"choice": "left"}).status_code == 409
    for reply in (comparison.left, comparison.right):
        reply.finish("complete", "x")
    assert owner_client.post(url, {"choice": "best"}).status_code == 422
    client.force_login(other_user)
    assert client.post(url, {"choice": "left"}).status_code == 404
    comparison.refresh_from_db()
    assert comparison.choice == ""


@pytest.mark.django_db(transaction=True)
async def test_stop_stops_both_answers_of_a_comparison(owner, conversation):
    left, right = await sync_to_async(two_models)()
    for name in ("left-model", "right-model"):
        registry.install(name, ScriptedBackend(chunks=[f"w{i} " for i in range(200)], delay=0.02))
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "compare", "content": "talk", "models": [f"m{left.pk}", f"m{right.pk}"]})
    await frames_until(socket, "chunk")
    await socket.send_json_to({"type": "stop"})
    await frames_until(socket, "done")
    await frames_until(socket, "done")
    statuses = [m.status async for m in Message.objects.filter(role="assistant")]
    assert statuses == ["stopped", "stopped"]
    await socket.disconnect()
