"""Inside a reply: the token probabilities a model with the switch on keeps with each reply (equal to a
separate forward pass), the owner's Inspect view, a branch that continues from an alternative, and the
attention view (rows that sum to 1, equal to the plain model's `output_attentions`)."""

import math

import pytest
import torch
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.urls import reverse
from transformers import AutoModelForCausalLM, AutoTokenizer

from conversations.inspection.attention import _attention
from conversations.models import Conversation, Message
from modelhub import api
from modelhub.models import Adapter
from modelhub.registry import registry
from tests.adapters import make_tiny_adapter
from tests.factories import add_reply
from tests.modelhub.logprobs import assert_matches, expected
from tests.sockets import frames_until, open_socket, scripted


@pytest.fixture
def inspected_spec(tiny_spec):
    """The tiny Llama with the switch on, greedy, short replies."""
    tiny_spec.token_probabilities, tiny_spec.max_new_tokens, tiny_spec.temperature = True, 12, 0
    tiny_spec.save()
    return tiny_spec


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    """The tiny Llama loaded afresh, with eager attention: the reference for every number here."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    return tokenizer, {None: model}


async def ask(user, conversation, frame):
    socket, connected, _ = await open_socket(user, conversation)
    assert connected
    await socket.send_json_to(frame)
    frames = await frames_until(socket, lambda f: f["type"] in ("done", "error"), timeout=60)
    await socket.disconnect()
    return frames


async def chat(user, conversation, content="hello there, how are you doing today?"):
    frames = await ask(user, conversation, {"type": "send", "content": content})
    return await Message.objects.aget(pk=frames[-1]["message_id"])


@sync_to_async
def question_of(reply):
    return reply.conversation.history(upto=reply.parent)


# --- what a reply keeps ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_reply_of_a_model_with_the_switch_on_keeps_probabilities_equal_to_a_forward_pass(
    owner, inspected_spec, plain
):
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_spec)

    reply = await chat(owner, conversation)

    record = reply.token_probs
    assert_matches(record, expected(plain, await question_of(reply), record))
    assert "".join(text for _, text, _, _ in record) == reply.content
    assert len(record) == reply.completion_tokens
    assert reply.generation_options["logprobs"] == 5


@pytest.mark.django_db(transaction=True)
async def test_a_model_with_the_switch_off_keeps_none_whatever_the_frame_asks(owner, tiny_spec):
    conversation = await Conversation.objects.acreate(owner=owner, model=tiny_spec)

    frames = await ask(
        owner, conversation, {"type": "send", "content": "hi", "options": {"logprobs": 5, "max_new_tokens": 8}}
    )

    reply = await Message.objects.aget(pk=frames[-1]["message_id"])
    assert reply.token_probs is None and reply.generation_options["logprobs"] is None
    assert "Inspect" not in frames[-1]["html"]


@pytest.mark.django_db(transaction=True)
async def test_a_continued_answer_keeps_one_record_for_its_whole_text(owner, inspected_spec, plain):
    inspected_spec.max_new_tokens = 4
    await inspected_spec.asave()
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_spec)
    reply = await chat(owner, conversation, "what do you like to do on the weekend?")
    if reply.finish_reason != "length":
        pytest.fail(f"the tiny model ended after {reply.completion_tokens} tokens: pick another question")

    await ask(owner, conversation, {"type": "continue", "message_id": reply.pk})

    await reply.arefresh_from_db()
    assert len(reply.token_probs) > 4
    assert "".join(text for _, text, _, _ in reply.token_probs) == reply.content


# --- the Inspect view -----------------------------------------------------------------------


def inspect_url(reply):
    return reverse("conversations:inspect", args=[reply.conversation_id, reply.pk])


@pytest.mark.django_db(transaction=True)
async def test_the_owner_inspects_each_token_with_its_probability_and_alternatives(owner, inspected_spec, client):
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_spec)
    reply = await chat(owner, conversation)
    await sync_to_async(client.force_login)(owner)

    page = (await sync_to_async(client.get)(inspect_url(reply), headers={"HX-Request": "true"})).content.decode()

    assert page.count('class="tok ') >= len(reply.token_probs)
    assert "greedy" in page  # which scores: the model's own distribution
    first = reply.token_probs[0]
    assert f"{math.exp(first[2]):.3f}" in page
    branchable = sum(1 for token, _, _, alts in reply.token_probs for alt, text, _ in alts if text and alt != token)
    assert page.count('data-action="alternative"') == branchable > 0
    shown = (await sync_to_async(client.get)(conversation.get_absolute_url())).content.decode()
    assert inspect_url(reply) in shown


def test_inspect_says_why_a_reply_has_no_probabilities(owner_client, conversation, tiny_spec):
    reply = add_reply(conversation, "an answer", spec=tiny_spec)

    page = owner_client.get(inspect_url(reply)).content.decode()

    assert "does not keep token probabilities" in page and "Token probabilities" in page
    assert inspect_url(reply) not in owner_client.get(conversation.get_absolute_url()).content.decode()


def test_inspect_of_a_scripted_models_reply_says_it_runs_outside_chatsite(owner_client, conversation):
    from modelhub.models import ModelSpec

    spec = ModelSpec.objects.create(name="script", backend="scripted", token_probabilities=True)
    reply = add_reply(conversation, "scripted", spec=spec)

    assert "runs outside chatsite" in owner_client.get(inspect_url(reply)).content.decode()


def test_another_users_reply_cannot_be_inspected_or_looked_into(client, other_user, conversation, tiny_spec):
    reply = add_reply(conversation, "mine", spec=tiny_spec)
    client.force_login(other_user)

    assert client.get(inspect_url(reply)).status_code == 404
    assert client.get(reverse("conversations:attention", args=[conversation.pk, reply.pk])).status_code == 404
    png = reverse("conversations:attention_png", args=[conversation.pk, reply.pk, "map"])
    assert client.get(png).status_code == 404
    client.logout()
    assert client.get(inspect_url(reply)).status_code == 302


# --- a branch from an alternative ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_choosing_an_alternative_writes_a_sibling_that_goes_on_from_it(owner, inspected_spec):
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_spec)
    reply = await chat(owner, conversation)
    index = 2
    choice = next(
        n
        for n, (alt, text, _) in enumerate(reply.token_probs[index][3])
        if alt != reply.token_probs[index][0] and text.strip()
    )
    alt, alt_text, alt_lp = reply.token_probs[index][3][choice]

    frames = await ask(
        owner, conversation, {"type": "alternative", "message_id": reply.pk, "token": index, "choice": choice}
    )

    assert frames[0]["type"] == "title" and any(f["type"] == "path" for f in frames)
    branch = await Message.objects.aget(pk=frames[-1]["message_id"])
    prefix = "".join(text for _, text, _, _ in reply.token_probs[:index]) + alt_text
    assert branch.pk != reply.pk and branch.parent_id == reply.parent_id
    assert branch.status == Message.Status.COMPLETE and branch.content.startswith(prefix)
    assert branch.token_probs[:index] == reply.token_probs[:index]
    assert branch.token_probs[index][:3] == [alt, alt_text, alt_lp]
    assert len(branch.token_probs) == index + 1 + branch.completion_tokens
    assert "".join(text for _, text, _, _ in branch.token_probs) == branch.content
    await conversation.arefresh_from_db()
    assert conversation.leaf_id == branch.pk


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "token, choice, code",
    [
        (999, 0, "unknown_alternative"),
        (0, 17, "unknown_alternative"),
        (-1, 0, "unknown_alternative"),
        ("2", 0, "unknown_alternative"),
    ],
)
async def test_a_bad_alternative_is_refused_and_nothing_is_saved(owner, inspected_spec, token, choice, code):
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_spec)
    reply = await chat(owner, conversation)
    count = await Message.objects.filter(conversation=conversation).acount()

    frames = await ask(
        owner, conversation, {"type": "alternative", "message_id": reply.pk, "token": token, "choice": choice}
    )

    assert frames[-1]["type"] == "error" and frames[-1]["code"] == code
    assert await Message.objects.filter(conversation=conversation).acount() == count


@pytest.mark.django_db(transaction=True)
async def test_an_alternative_of_a_reply_without_probabilities_is_refused(owner, conversation):
    await scripted(["Hello."])
    reply = await chat(owner, conversation, "hi")

    frames = await ask(owner, conversation, {"type": "alternative", "message_id": reply.pk, "token": 0, "choice": 0})

    assert frames[-1]["code"] == "not_inspectable"


# --- the attention view ---------------------------------------------------------------------


def reference_attentions(plain, history, reply_tokens, model=None):
    tokenizer, models = plain
    prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt")["input_ids"][0]
    ids = torch.cat([prompt, torch.tensor(reply_tokens, dtype=torch.long)]).unsqueeze(0)
    with torch.no_grad():
        out = (model or models[None])(input_ids=ids, output_attentions=True)
    return torch.stack([a[0] for a in out.attentions]), len(prompt)


@pytest.mark.django_db(transaction=True)
async def test_attention_rows_sum_to_one_and_equal_the_plain_models_output_attentions(owner, inspected_spec, plain):
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_spec)
    reply = await chat(owner, conversation)

    attention = await sync_to_async(api.attention)(
        inspected_spec, await question_of(reply), [t for t, *_ in reply.token_probs]
    )

    weights, prompt_tokens = reference_attentions(plain, await question_of(reply), [t for t, *_ in reply.token_probs])
    assert attention.prompt_tokens == prompt_tokens
    assert attention.weights.shape == weights.shape
    assert weights.shape[-1] == prompt_tokens + len(reply.token_probs)
    torch.testing.assert_close(attention.weights, weights, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attention.weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5, rtol=0)
    assert torch.all(attention.weights.triu(diagonal=1) == 0)  # nothing attends to a later token
    loaded = registry.worker(inspected_spec).backend.loaded.model
    assert loaded.config._attn_implementation == "sdpa"  # eager for that pass only


@pytest.mark.django_db(transaction=True)
async def test_attention_of_an_adapters_reply_is_the_adapters(owner, inspected_spec, plain, tiny_model_dir, tmp_path):
    from peft import PeftModel

    folder = make_tiny_adapter(tiny_model_dir, tmp_path / "gamma", 3)
    adapter = await Adapter.objects.acreate(name="gamma", base=inspected_spec, path=str(folder))
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_spec, adapter=adapter)
    reply = await chat(owner, conversation)
    assert reply.adapter_name == "gamma"
    history, tokens = await question_of(reply), [t for t, *_ in reply.token_probs]

    attention = await sync_to_async(_attention)(_Request(owner), conversation, reply)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    weights, _ = reference_attentions(plain, history, tokens, PeftModel.from_pretrained(base, folder))
    plain_weights, _ = reference_attentions(plain, history, tokens)
    torch.testing.assert_close(attention.weights, weights, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(attention.weights, plain_weights, atol=1e-4)


class _Request:
    def __init__(self, user):
        self.user = user


@pytest.mark.django_db(transaction=True)
async def test_the_attention_page_and_its_images_are_shown_to_the_owner(owner, inspected_spec, client):
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_spec)
    reply = await chat(owner, conversation)
    registry.unload(inspected_spec.name)  # not loaded: the page loads it
    await sync_to_async(client.force_login)(owner)
    url = reverse("conversations:attention", args=[conversation.pk, reply.pk])

    page = (await sync_to_async(client.get)(url + "?token=1&layer=1&head=0")).content.decode()

    assert 'class="atok' in page and "chosen" in page and "layer 1" in page and "head 0" in page
    for kind in ("token", "map"):
        image = await sync_to_async(client.get)(
            reverse("conversations:attention_png", args=[conversation.pk, reply.pk, kind]) + "?token=1&layer=1&head=0"
        )
        assert image.status_code == 200 and image["Content-Type"] == "image/png"
        assert image.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.django_db(transaction=True)
async def test_attention_over_the_limit_says_why_not(owner, inspected_spec, client, settings):
    settings.MODELHUB_ATTENTION_MAX_TOKENS = 8
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_spec)
    reply = await chat(owner, conversation)
    await sync_to_async(client.force_login)(owner)

    page = await sync_to_async(client.get)(reverse("conversations:attention", args=[conversation.pk, reply.pk]))

    assert "MODELHUB_ATTENTION_MAX_TOKENS" in page.content.decode()
    settings.MODELHUB_ATTENTION_MAX_TOKENS, settings.MODELHUB_ATTENTION_MAX_MB = 1024, 0.0001
    page = await sync_to_async(client.get)(reverse("conversations:attention", args=[conversation.pk, reply.pk]))
    assert "MODELHUB_ATTENTION_MAX_MB" in page.content.decode()


def test_attention_of_a_withdrawn_or_outside_model_says_why_not(owner_client, conversation, tiny_spec, settings):
    reply = add_reply(conversation, "an answer", spec=tiny_spec)
    url = reverse("conversations:attention", args=[conversation.pk, reply.pk])
    tiny_spec.enabled = False
    tiny_spec.save()
    assert "no longer available to you" in owner_client.get(url).content.decode()

    tiny_spec.enabled = True
    tiny_spec.save()
    settings.MODELHUB_WORKERS, settings.MODELHUB_WORKER_TIMEOUT_SECONDS = True, 0.5  # the models are in workers
    assert "no model worker serving tiny answered" in owner_client.get(url).content.decode()


def test_attention_through_an_adapter_withdrawn_from_the_user_says_why_not(
    owner_client, conversation, tiny_spec, tiny_model_dir, tmp_path
):
    adapter = Adapter.objects.create(
        name="tone", base=tiny_spec, path=str(make_tiny_adapter(tiny_model_dir, tmp_path / "tone", 1))
    )
    reply = conversation.start_reply(tiny_spec, {}, adapter)
    reply.finish("complete", "an answer")
    adapter.groups.add(Group.objects.create(name="tuners"))  # the owner is not one of them

    page = owner_client.get(reverse("conversations:attention", args=[conversation.pk, reply.pk]))
    image = owner_client.get(reverse("conversations:attention_png", args=[conversation.pk, reply.pk, "token"]))

    assert "Adapter tone of tiny is no longer available to you" in page.content.decode()
    assert image.status_code == 409 and image["Content-Type"].startswith("text/plain")
    assert not registry.load_counts  # nothing was loaded to recompute it
