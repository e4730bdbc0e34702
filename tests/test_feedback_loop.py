"""The closed loop on a tiny model: corrections given in conversations become a frozen
snapshot, `manage.py finetune --snapshot` trains an adapter on it with the snapshot named in
its lineage, and once promoted the adapter answers the way the corrections taught."""

import json

import pytest
from django.core.management import CommandError, call_command

from conversations.datasets import export_snapshot
from conversations.feedback import Feedback
from conversations.models import Conversation
from modelhub import api
from modelhub.models import Adapter

PHRASE = "Blue is my answer."
QUESTIONS = [
    "hello there, how are you doing today?", "what do you like to do on the weekend?", "where do you hike?",
    "what is your favourite colour?", "tell me something about books", "is it going to rain?",
]
LEARN = {"epochs": 10, "learning_rate": 1e-2, "eval_steps": 10, "lora_dropout": 0.0, "batch_size": 4}


@pytest.fixture(autouse=True)
def var_dirs(settings, tmp_path):
    settings.CHAT_DATASETS_DIR = tmp_path / "datasets"
    settings.MODELHUB_ADAPTERS_DIR = tmp_path / "adapters"


def corrected_conversations(owner, spec, count, correction=PHRASE):
    """`count` conversations whose answer the owner corrected (and rated down)."""
    for number in range(count):
        conversation = Conversation.objects.create(owner=owner, model=spec)
        first, second = QUESTIONS[number % 6], QUESTIONS[number // 6 % 6]
        conversation.add_user_message(first if first == second else f"{first} {second}")
        reply = conversation.start_reply(spec, {})
        reply.finish("complete", "i like to go hiking and read books.")
        Feedback.record(owner, reply, rating="down", correction=correction)


def test_corrections_become_an_adapter_that_answers_like_them_once_promoted(owner, staff, tiny_spec, capsys):
    corrected_conversations(owner, tiny_spec, 36)
    snapshot = export_snapshot("sft", eval_fraction=0.2, created_by=staff)
    assert snapshot.counts["eval"] > 0

    call_command("finetune", snapshot=snapshot.pk, base="tiny", name="from-feedback", **LEARN)

    adapter = Adapter.objects.get(base=tiny_spec, name="from-feedback")
    metrics = adapter.provenance["metrics"]
    assert adapter.provenance["dataset"]["snapshot"] == snapshot.pk
    assert adapter.provenance["dataset"]["train_sha256"] == snapshot.train_sha256
    assert metrics["eval_after"]["loss"] < metrics["eval_before"]["loss"] - 0.5
    assert "held-out loss" in capsys.readouterr().out
    assert not adapter.enabled

    adapter.promote()
    question = [{"role": "user", "content": "what do you think about the weather?"}]
    served = api.get_adapter(tiny_spec, "from-feedback")
    assert "".join(api.start(tiny_spec, question, {"temperature": 0, "max_new_tokens": 24}, adapter=served)).strip() == PHRASE


def test_a_dpo_snapshot_trains_with_dpo_and_a_kto_snapshot_is_refused(owner, tiny_spec):
    corrected_conversations(owner, tiny_spec, 6)
    dpo = export_snapshot("dpo", eval_fraction=0.5)
    kto = export_snapshot("kto", eval_fraction=0.5)

    call_command("finetune", snapshot=dpo.pk, base="tiny", name="pairs", max_steps=2, eval_steps=1, batch_size=2)

    assert Adapter.objects.get(name="pairs").provenance["method"] == "dpo"
    with pytest.raises(CommandError, match="kto dataset"):
        call_command("finetune", snapshot=kto.pk, base="tiny")
    with pytest.raises(CommandError, match="cannot train --method sft"):
        call_command("finetune", snapshot=dpo.pk, base="tiny", method="sft")


def test_a_snapshot_whose_file_changed_since_the_export_is_refused(owner, tiny_spec):
    corrected_conversations(owner, tiny_spec, 4)
    snapshot = export_snapshot("sft", eval_fraction=0.5)
    with open(snapshot.train_path, "a", encoding="utf-8") as train:
        train.write(json.dumps({"messages": [{"role": "user", "content": "sneaked in"}]}) + "\n")

    with pytest.raises(CommandError, match="missing or changed"):
        call_command("finetune", snapshot=snapshot.pk, base="tiny")
    assert not Adapter.objects.exists()
