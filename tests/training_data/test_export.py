"""Exporting feedback as frozen TRL datasets: shapes, consent, scrubbing, split, lineage, command, admin."""

import json
from datetime import date, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.core.management.color import no_style
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from conversations.models import Conversation, DatasetSnapshot, Feedback, FeedbackTag, Preference
from conversations.models.datasets import SnapshotChanged
from conversations.training_data.examples import Filters
from conversations.training_data.export import export_snapshot, in_eval
from conversations.training_data.scrub import Scrubber
from tests.training_data.snapshots import all_rows, ask, rows, spec

COLUMNS = {"sft": ["messages"], "dpo": ["prompt", "chosen", "rejected"], "kto": ["prompt", "completion", "label"]}


@pytest.fixture(autouse=True)
def datasets_dir(settings, tmp_path):
    settings.CHAT_DATASETS_DIR = tmp_path / "datasets"
    return settings.CHAT_DATASETS_DIR


@pytest.fixture
def rated(owner, conversation):
    """One conversation with a system prompt: a corrected answer, two rated siblings, a preferred sibling."""
    conversation.update_settings("Be brief.", {})
    first = ask(conversation, "Capital of France?", "Lyon.")
    second = ask(conversation, "", "Paris.", parent=first.parent)
    Feedback.record(owner, first, rating="down", correction="Paris.")
    Feedback.record(owner, second, rating="up")
    later = ask(conversation, "And of Italy?", "Rome.")
    Feedback.record(owner, later, rating="up")
    return first, second, later


PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]


@pytest.mark.parametrize("format", ["sft", "dpo", "kto"])
def test_each_format_loads_with_datasets_and_has_exactly_trls_columns(rated, format):
    from datasets import load_dataset

    snapshot = export_snapshot(format, eval_fraction=0)
    dataset = load_dataset("json", data_files={"train": snapshot.train_path}, split="train")
    assert dataset.column_names == COLUMNS[format]
    assert len(dataset) == snapshot.counts["train"] > 0 and snapshot.counts["eval"] == 0
    assert open(snapshot.eval_path).read() == ""


def test_corrections_give_sft_rows_and_dpo_pairs_with_the_branch_as_prompt(rated):
    first, second, later = rated
    assert all_rows(export_snapshot("sft")) == [{"messages": PROMPT + [{"role": "assistant", "content": "Paris."}]}]
    dpo = all_rows(export_snapshot("dpo"))
    correction = {
        "prompt": PROMPT,
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Lyon."}],
    }
    # the correction and the thumbs up/down siblings give the same pair: one row after dedup
    assert dpo == [correction]


def test_thumbs_give_kto_rows_with_the_history_of_their_branch(rated):
    kto = sorted(all_rows(export_snapshot("kto")), key=lambda row: row["completion"][0]["content"])
    assert [(row["completion"][0]["content"], row["label"]) for row in kto] == [
        ("Lyon.", False),
        ("Paris.", True),
        ("Rome.", True),
    ]
    assert kto[0]["prompt"] == PROMPT
    assert kto[2]["prompt"] == PROMPT + [
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]


def test_a_correction_gives_kto_rows_the_correction_desirable_and_the_answer_it_corrects_not(owner, conversation):
    answer = ask(conversation, "Capital of Spain?", "Lisbon.")
    Feedback.record(owner, answer, correction="Madrid.")  # no thumbs: the correction alone

    kto = export_snapshot("kto", eval_fraction=0)

    prompt = [{"role": "user", "content": "Capital of Spain?"}]
    assert sorted((row["completion"][0]["content"], row["label"]) for row in all_rows(kto)) == [
        ("Lisbon.", False),
        ("Madrid.", True),
    ]
    assert all(row["prompt"] == prompt for row in all_rows(kto))
    assert kto.counts["sources"] == {"correction": 2} and list(kto.feedback.all()) == [answer.feedback.get()]


def test_preferred_siblings_and_side_by_side_verdicts_give_dpo_pairs_and_both_bad_gives_two_kto_false(
    owner, conversation
):
    first = ask(conversation, "Tell a joke", "No.")
    second = ask(conversation, "", "Knock knock.", parent=first.parent)
    Preference.prefer_sibling(owner, second)
    verdicts = {}
    for choice in ("right", "tie", "both_bad"):
        comparison = conversation.start_comparison(f"q-{choice}", (spec("a"), None, {}), (spec("b"), None, {}))
        comparison.left.finish("complete", f"left-{choice}")
        comparison.right.finish("complete", f"right-{choice}")
        comparison.decide(choice)
        verdicts[choice] = comparison
    dpo = export_snapshot("dpo")
    pairs = {(row["chosen"][0]["content"], row["rejected"][0]["content"]) for row in all_rows(dpo)}
    assert pairs == {("Knock knock.", "No."), ("right-right", "left-right")}
    assert dpo.counts["sources"] == {"comparison": 1, "sibling": 1}
    kto = export_snapshot("kto")
    assert sorted((r["completion"][0]["content"], r["label"]) for r in all_rows(kto)) == [
        ("left-both_bad", False),
        ("right-both_bad", False),
    ]
    assert list(kto.preferences.all()) == [verdicts["both_bad"].preference]


def test_conversations_kept_out_of_training_and_deleted_ones_are_not_exported(owner, other_user, conversation, rated):
    theirs = Conversation.objects.create(owner=other_user)
    Feedback.record(other_user, ask(theirs, "secret?", "yes"), rating="up")
    conversation.set_training_consent(False)
    snapshot = export_snapshot("kto")
    assert [row["completion"][0]["content"] for row in all_rows(snapshot)] == ["yes"]
    theirs.delete()
    assert all_rows(export_snapshot("kto")) == []


def test_pii_is_scrubbed_by_default_and_kept_with_no_scrub(owner, conversation):
    text = "Mail jane.doe@example.com or call +1 (555) 123-4567; host 10.0.0.12 or 2001:db8::1"
    Feedback.record(owner, ask(conversation, text, "Noted: jane.doe@example.com"), rating="up")
    scrubbed = all_rows(export_snapshot("kto"))[0]
    assert scrubbed["prompt"][0]["content"] == "Mail [EMAIL] or call [PHONE]; host [IP] or [IP]"
    assert scrubbed["completion"][0]["content"] == "Noted: [EMAIL]"
    kept = export_snapshot("kto", scrub=False)
    assert all_rows(kept)[0]["prompt"][0]["content"] == text
    assert kept.card["scrubbing"]["enabled"] is False
    assert DatasetSnapshot.objects.get(card__scrubbing__enabled=True).card["scrubbing"]["replaced"] == {
        "email": 2,
        "phone": 1,
        "ip": 2,
    }


def test_the_scrubber_leaves_ordinary_numbers_dates_and_times_alone():
    scrub = Scrubber()
    text = "On 2024-01-31 at 12:30:45, version 1.2.3 cost 3.14159 for 1,000 items in 2024"
    assert scrub(text) == text
    assert scrub("ping 192.168.1.20 or fe80::1, phone 555-123-4567") == "ping [IP] or [IP], phone [PHONE]"


def test_exact_duplicates_are_removed_and_counted(owner, conversation, other_user):
    for _ in range(2):
        Feedback.record(owner, ask(Conversation.objects.create(owner=owner), "hi", "hello"), rating="up")
    snapshot = export_snapshot("kto")
    assert len(all_rows(snapshot)) == 1 and snapshot.counts["duplicates_removed"] == 1
    assert snapshot.feedback.count() == 2  # both rows produced the line in the file


def make_prompts(owner, count):
    for number in range(count):
        conversation = Conversation.objects.create(owner=owner)
        Feedback.record(owner, ask(conversation, f"question {number}", f"answer {number}"), rating="up")


def test_the_split_is_stable_across_runs_and_independent_of_row_order(owner, datasets_dir):
    make_prompts(owner, 40)
    first = export_snapshot("kto", eval_fraction=0.3)
    eval_prompts = {row["prompt"][-1]["content"] for row in rows(first.eval_path)}
    assert 0 < len(eval_prompts) < 40
    for row in all_rows(first):  # the split is exactly the hash rule
        assert in_eval(json.dumps(row["prompt"], ensure_ascii=False, sort_keys=True), 0.3) == (
            row["prompt"][-1]["content"] in eval_prompts
        )
    # the same feedback again, created in reverse order (other ids, other row order): identical files
    records = list(Feedback.objects.select_related("message").order_by("-pk"))
    Feedback.objects.all().delete()
    for feedback in records:
        Feedback.record(owner, feedback.message, rating="up")
    second = export_snapshot("kto", eval_fraction=0.3)
    assert (second.train_sha256, second.eval_sha256) == (first.train_sha256, first.eval_sha256)


def test_a_snapshots_lineage_is_exact_and_later_feedback_does_not_change_it(owner, conversation, rated):
    first, second, later = rated
    untagged = Feedback.objects.get(message=later)
    snapshot = export_snapshot("sft")
    assert list(snapshot.feedback.all()) == [Feedback.objects.get(message=first)]
    kto = export_snapshot("kto")
    assert set(kto.feedback.all()) == set(Feedback.objects.all()) and untagged in kto.feedback.all()
    Feedback.record(owner, ask(conversation, "More?", "Yes."), rating="up", correction="Sure.")
    assert snapshot.feedback.count() == 1 and kto.feedback.count() == 3
    assert snapshot.verify() == {"train": snapshot.files()["train"], "eval": snapshot.files()["eval"]}
    assert snapshot.dataset_ref()["train_sha256"] == snapshot.card["files"]["train"]["sha256"]


def test_files_are_never_overwritten_and_a_changed_file_is_detected(rated, tmp_path):
    out = tmp_path / "mine"
    snapshot = export_snapshot("kto", out=out, eval_fraction=0)
    assert snapshot.eval_path == str(out / "test.jsonl") and snapshot.folder == out
    assert sorted(path.name for path in out.iterdir()) == ["README.md", "card.json", "test.jsonl", "train.jsonl"]
    assert json.loads((out / "card.json").read_text())["snapshot_id"] == snapshot.pk
    with pytest.raises(FileExistsError):
        export_snapshot("kto", out=out)
    assert DatasetSnapshot.objects.count() == 1
    (out / "train.jsonl").write_text("tampered\n")
    with pytest.raises(SnapshotChanged):
        snapshot.verify()


def test_the_card_records_counts_sources_labels_filters_and_hashes(rated):
    snapshot = export_snapshot("kto", filters=Filters(model="base"), eval_fraction=0)
    card = json.loads(open(snapshot.card_path).read())
    assert card == snapshot.card
    assert card["counts"]["train"] == 3 and card["counts"]["labels"]["train"] == {"false": 1, "true": 2}
    assert card["counts"]["sources"] == {"thumbs": 3}
    assert card["filters"]["model"] == "base" and card["split"]["eval_fraction"] == 0
    assert card["files"]["train"]["sha256"] == snapshot.train_sha256 and card["lineage"] == {
        "feedback": 3,
        "preferences": 0,
    }


def test_the_command_exports_with_model_adapter_tag_and_date_filters(owner, conversation, tmp_path, capsys):
    wrong = FeedbackTag.objects.create(name="wrong", label="Wrong")
    Feedback.record(owner, ask(conversation, "a?", "from base"), rating="down", tags=[wrong])
    Feedback.record(owner, ask(conversation, "b?", "from other", model="other"), rating="up")
    old = Feedback.record(owner, ask(conversation, "c?", "old base"), rating="up")
    Feedback.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=30))

    def export(name, *options):
        call_command(
            "export_feedback", "--format", "kto", "--out", str(tmp_path / name), "--eval-fraction", "0", *options
        )
        return sorted(row["completion"][0]["content"] for row in rows(tmp_path / name / "train.jsonl"))

    assert export("all") == ["from base", "from other", "old base"]
    assert export("model", "--model", "base") == ["from base", "old base"]
    assert export("tag", "--tag", "wrong", "--license", "cc-by-4.0") == ["from base"]
    since = (date.today() - timedelta(days=7)).isoformat()
    assert export("recent", "--since", since) == ["from base", "from other"]
    assert export("until", "--until", since) == ["old base"]
    assert export("adapter", "--adapter", "none-such") == []
    assert "Snapshot #" in capsys.readouterr().out
    tagged = DatasetSnapshot.objects.get(train_path=str(tmp_path / "tag" / "train.jsonl"))
    assert tagged.filters["tag"] == "wrong" and tagged.license == "cc-by-4.0"
    with pytest.raises(CommandError, match="not a date"):
        call_command("export_feedback", "--format", "kto", "--since", "yesterday")


def test_non_staff_never_reach_the_admin_export(client, owner, rated):
    client.force_login(owner)
    add = reverse("admin:conversations_datasetsnapshot_add")
    for response in (client.get(add), client.post(add, {"format": "kto", "eval_fraction": "0.1", "scrub": "on"})):
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert not DatasetSnapshot.objects.exists()


def test_staff_without_the_add_permission_cannot_export(client, staff, rated):
    client.force_login(staff)
    response = client.post(reverse("admin:conversations_datasetsnapshot_add"), {"format": "kto", "eval_fraction": "0"})
    assert response.status_code == 403 and not DatasetSnapshot.objects.exists()


def test_staff_create_a_snapshot_from_the_admin_and_read_its_card(client, staff, rated):
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="conversations"))
    client.force_login(staff)
    add = reverse("admin:conversations_datasetsnapshot_add")
    assert "Create snapshot" in client.get(add).content.decode()
    response = client.post(
        add, {"format": "dpo", "eval_fraction": "0.1", "scrub": "on", "model": "base", "license": "odc-by"}
    )
    snapshot = DatasetSnapshot.objects.get()
    assert response.status_code == 302 and snapshot.created_by == staff and snapshot.filters["model"] == "base"
    assert snapshot.license == "odc-by" and "license: odc-by" in (snapshot.folder / "README.md").read_text()
    page = client.get(reverse("admin:conversations_datasetsnapshot_change", args=[snapshot.pk])).content.decode()
    assert snapshot.train_sha256 in page and "&quot;duplicates_removed&quot;" in page
    feedback_list = client.get(reverse("admin:conversations_feedback_changelist"), {"rating__exact": "down"})
    assert feedback_list.status_code == 200 and "Lyon." in feedback_list.content.decode()


def test_a_deleted_conversations_exported_rows_are_counted_as_withdrawn_in_each_snapshot(owner, conversation, rated):
    kto, sft = export_snapshot("kto"), export_snapshot("sft")
    untouched = Conversation.objects.create(owner=owner)
    Feedback.record(owner, ask(untouched, "Still here?", "Yes."), rating="up")
    later = export_snapshot("kto")
    held = {snapshot.pk: snapshot.feedback.count() for snapshot in (kto, sft)}

    conversation.delete()

    for snapshot in (kto, sft, later):
        snapshot.refresh_from_db()
    assert kto.withdrawn == held[kto.pk] == 3 and sft.withdrawn == held[sft.pk] == 1
    assert later.withdrawn == 3 and later.feedback.count() == 1  # the other conversation's row stays
    assert "Capital of France?" in json.dumps(all_rows(sft))  # the files are as written: withdrawn says so


def test_deleting_a_snapshot_in_the_admin_deletes_its_files(client, staff, rated, django_capture_on_commit_callbacks):
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="conversations"))
    client.force_login(staff)
    snapshot = export_snapshot("kto")
    files = [snapshot.train_path, snapshot.eval_path, snapshot.card_path]
    listing = client.get(reverse("admin:conversations_datasetsnapshot_changelist")).content.decode()
    assert "withdrawn" in listing.lower()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:conversations_datasetsnapshot_changelist"),
            {"action": "delete_selected", "_selected_action": [snapshot.pk], "post": "yes"},
        )

    assert response.status_code == 302 and not DatasetSnapshot.objects.exists()
    assert not any(Path(path).exists() for path in files)


# --- the folder as a Hugging Face dataset -----------------------------------------------------------------


def test_the_folder_loads_with_load_dataset_and_its_card_is_a_valid_hugging_face_card(owner, conversation, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    for number in range(10):
        Feedback.record(owner, ask(conversation, f"question {number}?", f"answer {number}"), rating="up")
    snapshot = export_snapshot("kto", out=tmp_path / "kto", eval_fraction=0.5, license="cc-by-4.0")
    counts = snapshot.counts
    assert counts["train"] and counts["eval"]  # both splits hold rows at this fraction
    dataset = load_dataset(str(snapshot.folder))
    assert {split: dataset[split].num_rows for split in dataset} == {"train": counts["train"], "test": counts["eval"]}
    assert dataset["train"].column_names == ["prompt", "completion", "label"]
    assert dataset["train"][0]["completion"][0]["role"] == "assistant" and dataset["test"][0]["label"] is True
    assert sorted(row["completion"][0]["content"] for split in dataset for row in dataset[split]) == sorted(
        row["completion"][0]["content"] for row in all_rows(snapshot)
    )
    card = DatasetCard.load(snapshot.folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["task_categories"] == ["text-generation"]
    assert data["size_categories"] == ["n<1K"] and data["annotations_creators"] == ["crowdsourced"]
    assert data["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": "train.jsonl"}, {"split": "test", "path": "test.jsonl"}],
        }
    ]
    assert f"from {snapshot.card['lineage']['feedback']} feedback rows" in card.text
    assert snapshot.train_sha256 in card.text and "No row was reviewed" in card.text


def test_a_snapshot_without_held_out_rows_declares_only_its_train_split(rated, tmp_path):
    from datasets import load_dataset

    snapshot = export_snapshot("kto", out=tmp_path / "kto", eval_fraction=0)
    assert list(load_dataset(str(snapshot.folder))) == ["train"]


def test_deleting_a_snapshot_deletes_its_folder(rated, django_capture_on_commit_callbacks):
    snapshot = export_snapshot("sft")
    folder = snapshot.folder
    assert (folder / "README.md").exists()
    with django_capture_on_commit_callbacks(execute=True):
        snapshot.delete()
    assert not folder.exists() and folder.parent.exists()


def restart_snapshot_ids():
    """Another install's database: no snapshots yet, their ids counting from 1 again."""
    DatasetSnapshot.objects.all().delete()  # the files stay: they go once a deletion commits, never in a test
    table = [{"table": DatasetSnapshot._meta.db_table, "column": "id"}]
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_by_name_sql(no_style(), table):
            cursor.execute(sql)


def test_snapshots_of_two_installs_with_the_same_id_get_folders_of_their_own_and_each_loads_its_own_rows(
    owner, settings, tmp_path
):
    from datasets import load_dataset

    loaded = {}
    for install in ("first", "second"):
        restart_snapshot_ids()
        settings.CHAT_DATASETS_DIR = tmp_path / install / "datasets"
        Conversation.objects.all().delete()
        answer = ask(Conversation.objects.create(owner=owner), "Which install?", "I do not know.")
        Feedback.record(owner, answer, rating="down", correction=f"The {install} one.")
        snapshot = export_snapshot("sft", eval_fraction=0)
        dataset = load_dataset(str(snapshot.folder), cache_dir=str(tmp_path / "hf-cache"))  # one machine's cache
        loaded[install] = (snapshot.pk, snapshot.folder.name, dataset["train"][0]["messages"][-1]["content"])
    (first_id, first_folder, first_rows), (second_id, second_folder, second_rows) = loaded.values()
    assert first_id == second_id == 1
    assert (first_rows, second_rows) == ("The first one.", "The second one.")
    assert first_folder != second_folder and first_folder.startswith("snapshot-0001-sft-")
