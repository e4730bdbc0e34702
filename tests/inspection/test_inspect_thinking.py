"""Inside a reply of a model that thinks first (the tiny Qwen3 of tests/thinking.py): Inspect lists the
thinking's tokens apart from the answer's, a branch starts from an answer token and keeps the reasoning,
attention covers the thinking (with the token record or without it, on the prompt the reply got), and a
reply cut by the token limit while it thought continues into an answer and keeps what it thought."""

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from conversations.inspection.attention import _attention
from conversations.inspection.tokens import token_rows
from conversations.models import Conversation, Message
from tests.inspection.test_inspect import ask
from tests.thinking import ANSWER, QUESTION, REASONING

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def inspected_thinker(thinking_spec):
    """The thinking model with token probabilities kept, greedy."""
    thinking_spec.token_probabilities = True
    thinking_spec.save()
    return thinking_spec


async def think(user, conversation, **options):
    frame = {"type": "send", "content": QUESTION, **({"options": options} if options else {})}
    frames = await ask(user, conversation, frame)
    return await Message.objects.aget(pk=frames[-1]["message_id"])


def written(reply):
    return "".join(text for _, text, _, _ in reply.token_probs)


async def test_inspect_lists_the_thinkings_tokens_apart_and_branches_only_from_the_answers(
    owner, inspected_thinker, client
):
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_thinker)
    reply = await think(owner, conversation)
    assert (reply.reasoning, reply.content) == (REASONING, ANSWER)
    assert written(reply).startswith("<think>") and written(reply).endswith(ANSWER)

    rows = token_rows(reply)
    thinking = "".join(row.text for row in rows if row.thinking)
    answer = "".join(row.text for row in rows if not row.thinking)
    assert REASONING in thinking and "</think>" in thinking and answer == ANSWER
    assert not any(row.cut for row in rows)

    await sync_to_async(client.force_login)(owner)
    url = reverse("conversations:inspect", args=[conversation.pk, reply.pk])
    page = (await sync_to_async(client.get)(url, headers={"HX-Request": "true"})).content.decode()
    section, answer_section = page.split('<p class="tokens tokens-thinking"')[1].split('<p class="tokens"')
    assert section.count('class="tok ') == sum(row.thinking for row in rows)
    assert 'data-action="alternative"' not in section  # no branch from inside the thinking
    branchable = sum(1 for row in rows if not row.thinking for alt in row.alternatives if alt.text and not alt.written)
    assert answer_section.count('data-action="alternative"') == branchable


async def test_a_branch_from_an_answer_token_keeps_the_reasoning_and_continues_the_answer(owner, inspected_thinker):
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_thinker)
    reply = await think(owner, conversation)
    rows = token_rows(reply)
    index = next(row.index for row in rows if not row.thinking)
    plain_words = [alt.text.strip() and "<" not in alt.text and not alt.written for alt in rows[index].alternatives]
    choice = plain_words.index(True)  # a word, not a tag the model might also write there
    alt_text = rows[index].alternatives[choice].text

    frames = await ask(
        owner, conversation, {"type": "alternative", "message_id": reply.pk, "token": index, "choice": choice}
    )

    branch = await Message.objects.aget(pk=frames[-1]["message_id"])
    assert branch.status == Message.Status.COMPLETE and branch.content.startswith(alt_text)
    assert "think>" not in branch.content
    assert (branch.reasoning, branch.reasoning_seconds) == (reply.reasoning, reply.reasoning_seconds)
    # The model went on from the answer it had begun, its thinking before it as the template writes it.
    assert branch.prompt.endswith(f"<think>\n{REASONING}\n</think>\n\n{alt_text}")
    assert written(branch) == written(reply)[: len(written(branch)) - len(branch.content)] + branch.content


async def test_an_alternative_inside_the_thinking_is_refused_and_nothing_is_saved(owner, inspected_thinker):
    conversation = await Conversation.objects.acreate(owner=owner, model=inspected_thinker)
    reply = await think(owner, conversation)
    row = next(row for row in token_rows(reply) if row.thinking and len(row.alternatives) > 1)
    choice = next(n for n, alt in enumerate(row.alternatives) if alt.text and not alt.written)
    count = await Message.objects.filter(conversation=conversation).acount()

    frames = await ask(
        owner, conversation, {"type": "alternative", "message_id": reply.pk, "token": row.index, "choice": choice}
    )

    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "alternative_in_thinking"
    assert await Message.objects.filter(conversation=conversation).acount() == count


@sync_to_async
def attention_of(user, reply):
    request = type("Request", (), {"user": user})()
    return _attention(request, reply.conversation, reply)


@pytest.mark.parametrize("kept", [True, False], ids=["token-record", "no-record"])
@pytest.mark.parametrize("think_option", [None, False], ids=["thinking", "thinking-off"])
async def test_attention_covers_the_thinking_on_the_prompt_the_reply_got(owner, thinking_spec, kept, think_option):
    thinking_spec.token_probabilities = kept
    await thinking_spec.asave()
    conversation = await Conversation.objects.acreate(owner=owner, model=thinking_spec)
    reply = await think(owner, conversation, **({"think": think_option} if think_option is not None else {}))
    reply = await Message.objects.select_related("conversation").aget(pk=reply.pk)

    attention = await attention_of(owner, reply)

    assert "".join(attention.tokens[: attention.prompt_tokens]) == reply.prompt
    written_text = "".join(attention.tokens[attention.prompt_tokens :])
    assert written_text.removesuffix("<|im_end|>").endswith(ANSWER)
    if think_option is None:
        assert written_text.startswith("<think>") and REASONING in written_text
    if kept:
        assert len(attention.tokens) - attention.prompt_tokens == len(reply.token_probs)


async def test_an_answer_cut_by_the_token_limit_continues_after_its_thinking(owner, thinking_spec):
    conversation = await Conversation.objects.acreate(owner=owner, model=thinking_spec)
    whole = await think(owner, conversation)
    thinking_spec.max_new_tokens = whole.completion_tokens - 2  # cut inside the answer
    await thinking_spec.asave()
    reply = await think(owner, conversation)
    assert reply.finish_reason == "length" and ANSWER.startswith(reply.content) and reply.content != ANSWER
    assert reply.reasoning == REASONING
    begun = reply.content

    thinking_spec.max_new_tokens = 64
    await thinking_spec.asave()
    await ask(owner, conversation, {"type": "continue", "message_id": reply.pk})

    await reply.arefresh_from_db()
    assert (reply.status, reply.content, reply.reasoning) == ("complete", ANSWER, REASONING)
    assert reply.prompt.endswith(f"<think>\n{REASONING}\n</think>\n\n{begun}")
    assert reply.reasoning_tokens == whole.reasoning_tokens


async def test_a_reply_cut_while_thinking_is_regenerated_not_continued(owner, thinking_spec, client):
    thinking_spec.max_new_tokens = 5
    await thinking_spec.asave()
    conversation = await Conversation.objects.acreate(owner=owner, model=thinking_spec)
    reply = await think(owner, conversation)
    assert reply.finish_reason == "length" and reply.content == "" and REASONING.startswith(reply.reasoning)

    frames = await ask(owner, conversation, {"type": "continue", "message_id": reply.pk})

    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "cannot_continue"
    assert "still thinking" in frames[-1]["message"]
    await reply.arefresh_from_db()
    assert (reply.status, reply.content, reply.finish_reason) == ("complete", "", "length")
    await sync_to_async(client.force_login)(owner)
    page = (await sync_to_async(client.get)(conversation.get_absolute_url())).content.decode()
    assert 'data-action="regenerate"' in page and 'data-action="continue"' not in page
