"""The closed loop on a tiny model: corrections given in conversations become a frozen
snapshot, `manage.py finetune --snapshot` trains an adapter on it with the snapshot named in
its lineage, and once promoted the adapter answers the way the corrections taught."""

import json

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.urls import reverse

from conversations.training_data.export import export_snapshot
from modelhub import api
from modelhub.models import Adapter, FinetuneJob
from tests.finetuning import PHRASE, FakePopen, corrected_conversations

LEARN = {"epochs": 10, "learning_rate": 1e-2, "eval_steps": 10, "lora_dropout": 0.0, "batch_size": 4}


@pytest.fixture(autouse=True)
def var_dirs(settings, tmp_path):
    settings.CHAT_DATASETS_DIR = tmp_path / "datasets"
    settings.MODELHUB_ADAPTERS_DIR = tmp_path / "adapters"


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
    assert (
        "".join(api.start(tiny_spec, question, {"temperature": 0, "max_new_tokens": 24}, adapter=served)).strip()
        == PHRASE
    )


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


def finetune_action(client, snapshot, **form):
    url = reverse("admin:conversations_datasetsnapshot_changelist")
    return client.post(url, {"action": "finetune", "_selected_action": [snapshot.pk], **form})


@pytest.fixture
def snapshot(owner, tiny_spec):
    corrected_conversations(owner, tiny_spec, 4)
    return export_snapshot("sft", eval_fraction=0.5)


def test_staff_start_a_background_fine_tune_on_a_snapshot_from_the_admin(
    client, staff, tiny_spec, snapshot, monkeypatch
):
    monkeypatch.setattr("modelhub.training.finetune.subprocess.Popen", FakePopen)
    FakePopen.calls.clear()
    for codename in ("view_datasetsnapshot", "add_finetunejob", "view_finetunejob"):
        staff.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(staff)

    confirm = finetune_action(client, snapshot)
    assert confirm.status_code == 200 and b"Start fine-tuning" in confirm.content and not FakePopen.calls
    started = finetune_action(
        client, snapshot, apply="1", base=tiny_spec.pk, adapter_name="from-admin", epochs="2", learning_rate="0.001"
    )

    job = FinetuneJob.objects.get()
    assert started.status_code == 302 and started.url == reverse("admin:modelhub_finetunejob_change", args=[job.pk])
    assert (job.method, job.adapter_name, job.status, job.pid) == ("sft", "from-admin", "queued", 4242)
    assert job.dataset_ref["snapshot"] == snapshot.pk and job.hyperparameters["epochs"] == 2.0
    assert job.train_path == snapshot.train_path and job.created_by == staff
    ((command, _),) = FakePopen.calls
    assert command[-3:] == ["finetune", "--job", str(job.pk)]


@pytest.mark.parametrize("role", ["anonymous", "owner", "staff"])
def test_only_staff_allowed_to_fine_tune_can_start_one_from_a_snapshot(
    client, role, owner, staff, tiny_spec, snapshot, monkeypatch
):
    monkeypatch.setattr("modelhub.training.finetune.subprocess.Popen", FakePopen)
    FakePopen.calls.clear()
    if role == "staff":  # may see snapshots, may not fine-tune
        staff.user_permissions.add(Permission.objects.get(codename="view_datasetsnapshot"))
    if role != "anonymous":
        client.force_login(owner if role == "owner" else staff)

    response = finetune_action(client, snapshot, apply="1", base=tiny_spec.pk, epochs="1", learning_rate="0.001")

    expected = {"anonymous": 302, "owner": 302, "staff": 200}  # to the login page; staff: the list, no such action
    assert response.status_code == expected[role] and b"Start fine-tuning" not in response.content
    assert not FinetuneJob.objects.exists() and FakePopen.calls == []
