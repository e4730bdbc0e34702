"""The reasoning of models that think before they answer, in exports: each assistant message keeps it in
`reasoning_content`, apart from the answer in `content`; a correction replaces the answer and keeps or drops
the reasoning as its author chose; `include_reasoning=False` (the admin's box, `--no-reasoning`) leaves it
out everywhere; it is scrubbed like any text; the card says which; and TRL's Qwen3 training template renders
the exported rows with the reasoning as the think block before the answer."""

import json
import re

import pytest
from django.core.management import call_command
from django.urls import reverse

from conversations.models import Conversation, DatasetSnapshot, Feedback
from conversations.training_data.export import export_snapshot
from tests.training_data.snapshots import all_rows, rows, spec

HTMX = {"HX-Request": "true"}
THOUGHT = "The user asks for the capital of France. That is Paris, not Lyon."
ANSWER = "Lyon."
CORRECTION = "Paris."


@pytest.fixture(autouse=True)
def datasets_dir(settings, tmp_path):
    settings.CHAT_DATASETS_DIR = tmp_path / "datasets"


def think(conversation, question, answer, reasoning, parent=None):
    """A question (unless `parent` is given: then another answer to it) and a reply that reasoned first."""
    if parent is None:
        parent = conversation.add_user_message(question)
    reply = conversation.start_reply(spec("thinker"), {}, parent=parent)
    reply.finish("complete", answer, reasoning=reasoning)
    return reply


def said(text, reasoning=None):
    """An assistant message as an export writes it."""
    return {"role": "assistant", "content": text, **({"reasoning_content": reasoning} if reasoning else {})}


@pytest.fixture
def two_turns(owner, conversation):
    """A first turn the model reasoned through (kept as history) and a second one corrected by the owner."""
    think(conversation, "Hi?", "Hello.", "A greeting: greet back.")
    answer = think(conversation, "Capital of France?", ANSWER, THOUGHT)
    return answer


PROMPT = [
    {"role": "user", "content": "Hi?"},
    said("Hello.", "A greeting: greet back."),
    {"role": "user", "content": "Capital of France?"},
]


def checkbox(html, name):
    """ "ticked" or "unticked": the checkbox whose name ends with `name` (None: there is none)."""
    found = re.search(rf'<input type="checkbox" name="[^"]*{name}"[^>]*>', html)
    return found and ("ticked" if found.group().endswith(" checked>") else "unticked")


def contents(row):
    return [turn["content"] for column in row.values() if isinstance(column, list) for turn in column]


def test_a_correction_keeps_the_replys_reasoning_apart_from_the_corrected_answer_in_sft_dpo_and_kto(owner, two_turns):
    Feedback.record(owner, two_turns, correction=CORRECTION)

    assert all_rows(export_snapshot("sft")) == [{"messages": [*PROMPT, said(CORRECTION, THOUGHT)]}]
    assert all_rows(export_snapshot("dpo")) == [
        {"prompt": PROMPT, "chosen": [said(CORRECTION, THOUGHT)], "rejected": [said(ANSWER, THOUGHT)]}
    ]
    kto = sorted(all_rows(export_snapshot("kto")), key=lambda row: row["label"])
    assert kto == [
        {"prompt": PROMPT, "completion": [said(ANSWER, THOUGHT)], "label": False},
        {"prompt": PROMPT, "completion": [said(CORRECTION, THOUGHT)], "label": True},
    ]


def test_a_correction_that_drops_the_reasoning_is_exported_as_the_answer_alone(owner, two_turns):
    Feedback.record(owner, two_turns, correction=CORRECTION, correction_keeps_reasoning=False)

    assert all_rows(export_snapshot("sft")) == [{"messages": [*PROMPT, said(CORRECTION)]}]
    # the answer it corrects is still what the model wrote, reasoning and all
    assert all_rows(export_snapshot("dpo")) == [
        {"prompt": PROMPT, "chosen": [said(CORRECTION)], "rejected": [said(ANSWER, THOUGHT)]}
    ]
    kto = sorted(all_rows(export_snapshot("kto")), key=lambda row: row["label"])
    assert [row["completion"] for row in kto] == [[said(ANSWER, THOUGHT)], [said(CORRECTION)]]


def test_rated_answers_and_preferences_carry_each_answers_own_reasoning_never_in_content(owner, conversation):
    worse = think(conversation, "Capital of France?", ANSWER, "Lyon is big, so it must be the capital.")
    better = think(conversation, "", CORRECTION, THOUGHT, parent=worse.parent)
    Feedback.record(owner, worse, rating="down")
    Feedback.record(owner, better, rating="up")
    prompt = [{"role": "user", "content": "Capital of France?"}]

    dpo = export_snapshot("dpo")
    assert all_rows(dpo) == [
        {
            "prompt": prompt,
            "chosen": [said(CORRECTION, THOUGHT)],
            "rejected": [said(ANSWER, "Lyon is big, so it must be the capital.")],
        }
    ]
    kto = sorted(all_rows(export_snapshot("kto")), key=lambda row: row["label"])
    assert [(row["completion"], row["label"]) for row in kto] == [
        ([said(ANSWER, "Lyon is big, so it must be the capital.")], False),
        ([said(CORRECTION, THOUGHT)], True),
    ]
    for row in all_rows(dpo) + kto:
        assert not any("Lyon is big" in text or THOUGHT in text for text in contents(row))


@pytest.mark.parametrize("format", ["sft", "dpo", "kto"])
def test_include_reasoning_false_leaves_it_out_of_every_row_and_the_card_says_so(owner, two_turns, format):
    Feedback.record(owner, two_turns, rating="down", correction=CORRECTION)

    snapshot = export_snapshot(format, include_reasoning=False)

    lines = open(snapshot.train_path).read() + open(snapshot.eval_path).read()
    assert lines and "reasoning_content" not in lines and "greet back" not in lines and "not Lyon" not in lines
    plain_prompt = [
        {"role": "user", "content": "Hi?"},
        said("Hello."),
        {"role": "user", "content": "Capital of France?"},
    ]
    assert all(row.get("prompt", row.get("messages", [])[:-1]) == plain_prompt for row in all_rows(snapshot))
    assert snapshot.card["reasoning"] == {"included": False, "field": None, "rows": 0}
    assert json.loads(open(snapshot.card_path).read())["reasoning"] == snapshot.card["reasoning"]
    readme = (snapshot.folder / "README.md").read_text()
    assert "Reasoning: left out." in readme and "Reasoning: included" not in readme


def test_a_prompt_lands_in_the_same_split_with_or_without_reasoning(owner, conversation):
    for number in range(12):
        answer = think(conversation, f"Question {number}?", f"Answer {number}.", f"Thinking about {number}.")
        Feedback.record(owner, answer, rating="up")

    def held_out(snapshot):
        return {row["prompt"][-1]["content"] for row in rows(snapshot.eval_path)}

    with_reasoning = export_snapshot("kto", eval_fraction=0.5)
    without = export_snapshot("kto", eval_fraction=0.5, include_reasoning=False)
    assert 0 < len(held_out(with_reasoning)) < 12
    assert held_out(with_reasoning) == held_out(without)


def test_pii_in_reasoning_is_scrubbed_like_the_answers_and_kept_with_no_scrub(owner, conversation):
    reasoning = "Mail jane.doe@example.com from 10.0.0.7, then answer."
    Feedback.record(owner, think(conversation, "Who do I write to?", "Write to the team.", reasoning), rating="up")

    scrubbed = export_snapshot("kto")
    (row,) = all_rows(scrubbed)
    assert row["completion"] == [said("Write to the team.", "Mail [EMAIL] from [IP], then answer.")]
    assert scrubbed.card["scrubbing"]["replaced"] == {"email": 1, "ip": 1}
    (kept,) = all_rows(export_snapshot("kto", scrub=False))
    assert kept["completion"][0]["reasoning_content"] == reasoning


def test_the_card_counts_the_rows_that_have_reasoning(owner, conversation):
    Feedback.record(owner, think(conversation, "Capital of France?", ANSWER, THOUGHT), rating="down")
    Feedback.record(owner, think(conversation, "And of Italy?", "Rome.", ""), rating="up")  # history has reasoning
    Feedback.record(owner, think(Conversation.objects.create(owner=owner), "Hi?", "Hello.", ""), rating="up")

    snapshot = export_snapshot("kto", eval_fraction=0)

    assert snapshot.card["reasoning"] == {"included": True, "field": "reasoning_content", "rows": 2}
    assert snapshot.counts["train"] == 3
    readme = (snapshot.folder / "README.md").read_text()
    assert "Reasoning: included as `reasoning_content` of assistant messages (2 rows have some)." in readme


def test_the_command_leaves_reasoning_out_with_no_reasoning(owner, two_turns, tmp_path):
    Feedback.record(owner, two_turns, correction=CORRECTION)

    call_command("export_feedback", "--format", "sft", "--out", str(tmp_path / "plain"), "--no-reasoning")
    call_command("export_feedback", "--format", "sft", "--out", str(tmp_path / "full"))

    plain = DatasetSnapshot.objects.get(train_path=str(tmp_path / "plain" / "train.jsonl"))
    assert plain.card["reasoning"]["included"] is False
    assert all_rows(plain) == [{"messages": [PROMPT[0], said("Hello."), PROMPT[2], said(CORRECTION)]}]
    full = DatasetSnapshot.objects.get(train_path=str(tmp_path / "full" / "train.jsonl"))
    assert all_rows(full) == [{"messages": [*PROMPT, said(CORRECTION, THOUGHT)]}]


def test_the_admins_snapshot_form_offers_the_choice_ticked_and_unticked_leaves_reasoning_out(
    client, staff, owner, two_turns
):
    from django.contrib.auth.models import Permission

    Feedback.record(owner, two_turns, correction=CORRECTION)
    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="conversations"))
    client.force_login(staff)
    add = reverse("admin:conversations_datasetsnapshot_add")
    assert checkbox(client.get(add).content.decode(), "include_reasoning") == "ticked"
    fields = {"format": "sft", "eval_fraction": "0", "scrub": "on", "license": "other"}

    client.post(add, {**fields, "include_reasoning": "on"})
    client.post(add, fields)

    full, plain = DatasetSnapshot.objects.order_by("pk")
    assert full.card["reasoning"] == {"included": True, "field": "reasoning_content", "rows": 1}
    assert all_rows(full) == [{"messages": [*PROMPT, said(CORRECTION, THOUGHT)]}]
    assert plain.card["reasoning"]["included"] is False and "reasoning_content" not in open(plain.train_path).read()


def test_the_feedback_form_offers_to_keep_the_reasoning_only_for_an_answer_that_has_some(owner_client, conversation):
    reasoned = think(conversation, "Capital of France?", ANSWER, THOUGHT)
    plain = think(conversation, "And of Italy?", "Rome.", "")

    def form(answer):
        path = reverse("conversations:feedback", args=[conversation.pk, answer.pk])
        return owner_client.get(path, {"edit": "1"}, headers=HTMX).content.decode()

    assert "Keep the model&#x27;s reasoning with my corrected answer" in form(reasoned)
    assert checkbox(form(reasoned), "correction_keeps_reasoning") == "ticked"
    assert "Keep the model" not in form(plain) and checkbox(form(plain), "correction_keeps_reasoning") is None


def test_the_feedback_form_stores_whether_the_correction_keeps_the_reasoning(owner_client, owner, conversation):
    answer = think(conversation, "Capital of France?", ANSWER, THOUGHT)
    path = reverse("conversations:feedback", args=[conversation.pk, answer.pk])

    dropped = owner_client.post(path, {"correction": CORRECTION}, headers=HTMX)  # the box left unticked
    assert dropped.status_code == 200 and "corrected, without the reasoning" in dropped.content.decode()
    assert Feedback.objects.get().correction_keeps_reasoning is False
    reopened = owner_client.get(path, {"edit": "1"}, headers=HTMX).content.decode()
    assert checkbox(reopened, "correction_keeps_reasoning") == "unticked"
    assert all_rows(export_snapshot("sft")) == [
        {"messages": [{"role": "user", "content": "Capital of France?"}, said(CORRECTION)]}
    ]

    owner_client.post(path, {"correction": CORRECTION, "correction_keeps_reasoning": "on"}, headers=HTMX)
    assert Feedback.objects.get().correction_keeps_reasoning is True


def test_the_choice_is_left_as_it_was_when_an_answer_without_reasoning_gets_feedback(owner_client, conversation):
    answer = think(conversation, "Capital of Italy?", "Milan.", "")
    path = reverse("conversations:feedback", args=[conversation.pk, answer.pk])
    owner_client.post(path, {"correction": "Rome."}, headers=HTMX)
    assert Feedback.objects.get().correction_keeps_reasoning is True


def test_exported_sft_rows_render_through_trls_qwen3_training_template_with_the_reasoning_as_the_think_block(
    owner, two_turns, conversation, tmp_path
):
    from datasets import load_dataset
    from trl.chat_template_utils import qwen3_training_chat_template

    from modelhub.training.finetune import load_split
    from tests.thinking import make_tokenizer

    Feedback.record(owner, two_turns, correction=CORRECTION)
    Feedback.record(owner, think(conversation, "Thanks!", "You're welcome.", ""), correction="Any time.")
    snapshot = export_snapshot("sft", eval_fraction=0)
    dataset = load_dataset("json", data_files=snapshot.train_path, split="train", cache_dir=str(tmp_path / "cache"))
    tokenizer = make_tokenizer()
    tokenizer.chat_template = qwen3_training_chat_template

    rendered = {
        row["messages"][-1]["content"]: tokenizer.apply_chat_template(row["messages"], tokenize=False)
        for row in dataset
    }

    corrected, thanked = rendered[CORRECTION], rendered["Any time."]
    history = (
        "<|im_start|>user\nHi?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nA greeting: greet back.\n</think>\n\nHello.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n"
    )
    assert corrected == history + f"<|im_start|>assistant\n<think>\n{THOUGHT}\n</think>\n\n{CORRECTION}<|im_end|>\n"
    # the answer it corrects is history here, with its reasoning; the correction has none to keep, and the
    # template writes an empty think block
    assert thanked == (
        history
        + f"<|im_start|>assistant\n<think>\n{THOUGHT}\n</think>\n\n{ANSWER}<|im_end|>\n"
        + "<|im_start|>user\nThanks!<|im_end|>\n"
        + "<|im_start|>assistant\n<think>\n\n</think>\n\nAny time.<|im_end|>\n"
    )
    # fine-tuning reads the same fields: the answer to learn, its reasoning beside it
    completions = [row["completion"][0] for row in load_split(snapshot.train_path, "sft", tmp_path / "finetune")]
    assert {(c["content"], c.get("reasoning_content")) for c in completions} == {
        (CORRECTION, THOUGHT),
        ("Any time.", None),
    }


def test_a_turn_that_only_reasoned_is_left_out_of_the_prompt_with_the_reasoning(owner, conversation):
    think(conversation, "Capital of France?", "", "Stopped while thinking about Paris.")
    later = think(conversation, "Well?", CORRECTION, THOUGHT)
    Feedback.record(owner, later, rating="up")

    (full,) = all_rows(export_snapshot("kto"))
    (plain,) = all_rows(export_snapshot("kto", include_reasoning=False))

    question, well = {"role": "user", "content": "Capital of France?"}, {"role": "user", "content": "Well?"}
    assert full["prompt"] == [question, said("", "Stopped while thinking about Paris."), well]
    assert plain == {"prompt": [question, well], "completion": [said(CORRECTION)], "label": True}


def test_the_feedback_admin_shows_the_reasoning_and_whether_the_correction_keeps_it(admin_client, owner, two_turns):
    feedback = Feedback.record(owner, two_turns, correction=CORRECTION, correction_keeps_reasoning=False)

    page = admin_client.get(reverse("admin:conversations_feedback_change", args=[feedback.pk])).content.decode()

    assert f'<pre class="feedback-answer">{THOUGHT}</pre>' in page
    assert "Correction keeps reasoning" in page and 'alt="False"' in page
