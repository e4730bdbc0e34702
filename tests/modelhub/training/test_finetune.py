"""Fine-tuning LoRA adapters with TRL on tiny models built in the test run: the export
formats train, a synthetic task is learnt and served, failures are recorded, and only
staff with the change permission may run jobs or promote adapters."""

import hashlib
import math

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from safetensors.torch import load_file

from modelhub import api
from modelhub.models import Adapter, FinetuneJob
from modelhub.models.finetune_job import FinetuneError
from modelhub.options import ModelNotFound
from modelhub.training.finetune import finetune, run_job
from tests.finetuning import PHRASE, QUESTIONS, FakePopen, sft_rows, write_jsonl

TWO_STEPS = {"max_steps": 2, "eval_steps": 1, "batch_size": 2}


@pytest.fixture(autouse=True)
def adapters_dir(settings, tmp_path):
    settings.MODELHUB_ADAPTERS_DIR = tmp_path / "adapters"
    settings.VAR_DIR = tmp_path / "var"
    return settings.MODELHUB_ADAPTERS_DIR


def dpo_rows(n):
    """Preference pairs in the DPO export format: conversational prompt, one assistant turn each side."""
    return [
        {
            "prompt": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "chosen": [{"role": "assistant", "content": PHRASE}],
            "rejected": [{"role": "assistant", "content": "i like to go hiking and read books."}],
        }
        for i in range(n)
    ]


def lora_b_norm(folder):
    """LoRA B matrices start at zero: a non-zero norm proves the adapter was trained."""
    weights = load_file(str(folder / "adapter_model.safetensors"))
    return sum(float(t.abs().sum()) for name, t in weights.items() if "lora_B" in name)


# --- the export formats go through TRL ----------------------------------------------


def test_the_sft_export_format_trains_two_steps_through_trl(tiny_spec, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(6, seed=1))
    evals = write_jsonl(tmp_path / "eval.jsonl", sft_rows(2, seed=2))

    result = finetune(tiny_spec.load_settings(), "sft", train, evals, tmp_path / "out", TWO_STEPS)

    assert result.metrics["steps"] == 2
    assert (tmp_path / "out" / "adapter_config.json").exists() and lora_b_norm(tmp_path / "out") > 0
    before = result.metrics["eval_before"]
    assert before["perplexity"] == pytest.approx(math.exp(before["loss"]), rel=1e-3)
    assert [step for step, _ in result.history["train"]] == [1, 2]
    assert result.target_modules == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_sft_loss_covers_the_answer_to_learn_only_not_the_users_words_or_earlier_answers(tiny_spec, tmp_path):
    from modelhub.models.finetune_job import Hyperparameters
    from modelhub.training.finetune import build_trainer, load_for_training, load_split, lora_config

    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an old answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": PHRASE},
    ]
    hp = Hyperparameters.from_dict(TWO_STEPS)
    train = load_split(write_jsonl(tmp_path / "train.jsonl", [{"messages": chat}]), "sft", tmp_path / "data")
    loaded = load_for_training(tiny_spec.load_settings(), hp)
    trainer = build_trainer("sft", loaded, train, train, hp, lora_config(loaded.model, hp), tmp_path / "ck", [], False)

    row = trainer.train_dataset[0]
    learned = [label for label in row["labels"] if label != -100]  # the tokens the loss counts
    assert loaded.tokenizer.decode(learned, skip_special_tokens=True).strip() == PHRASE
    assert "an old answer" in loaded.tokenizer.decode(row["input_ids"])  # still there, as context

    ends_with_user = write_jsonl(tmp_path / "bad.jsonl", [{"messages": chat[:-1]}])
    with pytest.raises(FinetuneError, match="must end with the assistant's answer"):
        load_split(ends_with_user, "sft", tmp_path / "data")


def test_the_dpo_export_format_trains_two_steps_against_the_base_as_reference(tiny_spec, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(4))

    hparams = {**TWO_STEPS, "learning_rate": 1e-2}
    result = finetune(tiny_spec.load_settings(), "dpo", pairs, pairs, tmp_path / "out", hparams)

    # Before training the policy is the reference, so the DPO loss is exactly -log(sigmoid(0)) = log 2.
    assert result.metrics["eval_before"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert result.metrics["eval_after"]["loss"] < math.log(2)
    assert result.metrics["steps"] == 2 and lora_b_norm(tmp_path / "out") > 0


def test_qlora_on_a_4bit_base_still_learns_after_the_evaluation_before_training(tiny_spec, tmp_path):
    # bitsandbytes repacks 4-bit CPU weights on the first eval-mode call, which zeroes later gradients.
    tiny_spec.quantization = "nf4"
    tiny_spec.save()
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(4, seed=3))

    hparams = {**TWO_STEPS, "learning_rate": 1e-2}
    result = finetune(tiny_spec.load_settings(), "sft", train, train, tmp_path / "out", hparams)

    assert result.metrics["quantization"] == "nf4"
    assert lora_b_norm(tmp_path / "out") > 0
    assert result.metrics["eval_after"]["loss"] < result.metrics["eval_before"]["loss"]


# --- a synthetic task is learnt, registered with its lineage, and served ---------------


def test_a_fine_tune_on_a_fixed_answer_lowers_held_out_loss_and_the_promoted_adapter_says_it(
    tiny_spec, tiny_model_dir, tmp_path, staff
):
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(40, seed=10))
    evals = write_jsonl(tmp_path / "eval.jsonl", sft_rows(8, seed=11))
    hparams = {"epochs": 10, "learning_rate": 1e-2, "eval_steps": 10, "lora_dropout": 0.0, "batch_size": 4}
    job = FinetuneJob.objects.create_for(
        tiny_spec, "sft", train, evals, {"snapshot": 3, "sha256": "abc"}, hparams, staff, "fixed-answer"
    )

    adapter = run_job(job)

    job.refresh_from_db()
    before, after = job.metrics["eval_before"], job.metrics["eval_after"]
    print(
        f"held-out loss {before['loss']} -> {after['loss']},",
        f"perplexity {before['perplexity']} -> {after['perplexity']},",
        f"{job.metrics['steps']} steps in {job.metrics['train_seconds']} s",
    )
    assert job.status == "succeeded" and job.adapter == adapter and job.step == job.metrics["steps"] > 0
    assert after["loss"] < before["loss"] - 0.5
    assert job.loss_history["eval"][0][0] == 0 and len(job.loss_history["train"]) >= 10
    assert adapter.enabled is False and adapter.path.startswith(str(tmp_path / "adapters" / "tiny"))

    lineage = adapter.provenance
    template = (tiny_model_dir / "chat_template.jinja").read_text()
    assert lineage["dataset"] == {"snapshot": 3, "sha256": "abc"}
    assert lineage["base"] == {
        "name": "tiny",
        "source": str(tiny_model_dir),
        "revision": "",
        "commit": "",
        "quantization": "none",
    }
    assert lineage["chat_template_sha256"] == hashlib.sha256(template.encode()).hexdigest()
    assert lineage["hyperparameters"]["learning_rate"] == 1e-2 and lineage["hyperparameters"]["lora_r"] == 8
    assert lineage["metrics"] == job.metrics and lineage["method"] == "sft" and lineage["job"] == job.pk
    assert lineage["created_by"] == "staff"

    with pytest.raises(ModelNotFound):  # not served until promoted
        api.get_adapter(tiny_spec, "fixed-answer")
    adapter.promote()
    served = api.get_adapter(tiny_spec, "fixed-answer")
    question = [{"role": "user", "content": "what do you think about the weather?"}]
    text = "".join(api.start(tiny_spec, question, {"temperature": 0, "max_new_tokens": 24}, adapter=served))
    base_text = "".join(api.start(tiny_spec, question, {"temperature": 0, "max_new_tokens": 24}))
    assert text.strip() == PHRASE
    assert PHRASE not in base_text


# --- failures are recorded ----------------------------------------------------------


def test_a_job_with_a_missing_eval_file_is_recorded_failed_with_its_error(tiny_spec, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(4, seed=1))
    job = FinetuneJob.objects.create_for(tiny_spec, "sft", train, tmp_path / "missing.jsonl")

    with pytest.raises(FinetuneError, match="does not exist"):
        run_job(job)

    job.refresh_from_db()
    assert job.status == "failed" and job.finished_at is not None
    assert f"the data file {tmp_path / 'missing.jsonl'} does not exist" in job.error
    assert not Adapter.objects.exists()


def test_a_job_on_a_broken_base_fails_through_the_command_and_keeps_the_error(tiny_spec, tiny_model_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")
    tiny_spec.source = str(tmp_path / "broken")
    tiny_spec.save()
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(4, seed=1))
    job = FinetuneJob.objects.create_for(tiny_spec, "sft", train, train)

    with pytest.raises(CommandError, match=f"fine-tune job {job.pk} failed: could not load the weights"):
        call_command("finetune", "--job", str(job.pk))

    job.refresh_from_db()
    assert job.status == "failed" and "could not load the weights" in job.error
    assert "Traceback" in job.error or "File " in job.error


def test_a_job_that_already_ran_is_not_run_again(tiny_spec, tmp_path):
    job = FinetuneJob.objects.create_for(tiny_spec, "sft", tmp_path / "t.jsonl", tmp_path / "e.jsonl")
    job.fail("earlier failure")

    with pytest.raises(FinetuneError, match=f"job {job.pk} is failed, not queued"):
        run_job(job)
    job.refresh_from_db()
    assert job.error == "earlier failure"


def test_unknown_hyperparameters_and_taken_adapter_names_are_refused_before_queueing(tiny_spec, tmp_path):
    Adapter.objects.create(name="taken", base=tiny_spec, path=str(tmp_path))
    with pytest.raises(FinetuneError, match="unknown hyper-parameters: lora_rank"):
        FinetuneJob.objects.create_for(tiny_spec, "sft", "t", "e", hparams={"lora_rank": 4})
    with pytest.raises(FinetuneError, match="already has an adapter named 'taken'"):
        FinetuneJob.objects.create_for(tiny_spec, "sft", "t", "e", adapter_name="taken")
    assert not FinetuneJob.objects.exists()


def test_the_command_trains_from_files_and_registers_a_disabled_adapter(tiny_spec, tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(4))

    call_command(
        "finetune",
        "--base",
        "tiny",
        "--method",
        "dpo",
        "--train",
        str(pairs),
        "--eval",
        str(pairs),
        "--name",
        "cli",
        "--dataset-ref",
        '{"snapshot": 7}',
        "--max-steps",
        "2",
        "--eval-steps",
        "1",
        "--batch-size",
        "2",
    )

    adapter = Adapter.objects.get(name="cli")
    assert adapter.enabled is False and adapter.provenance["dataset"] == {"snapshot": 7}
    assert adapter.jobs.get().status == "succeeded"
    template = (tiny_model_dir / "chat_template.jinja").read_text()  # the template it trained with, hashed
    assert adapter.template_hash == hashlib.sha256(template.encode()).hexdigest()[:16]


# --- who may train and promote ------------------------------------------------------


@pytest.fixture
def disabled_adapter(tiny_spec, tmp_path):
    return Adapter.objects.create(name="candidate", base=tiny_spec, path=str(tmp_path), enabled=False)


def run_action(client, job):
    url = reverse("admin:modelhub_finetunejob_changelist")
    return client.post(url, {"action": "run_in_background", "_selected_action": [job.pk]})


def promote_action(client, adapter):
    url = reverse("admin:modelhub_adapter_changelist")
    return client.post(url, {"action": "promote", "_selected_action": [adapter.pk]})


@pytest.mark.parametrize("role", ["anonymous", "owner"])
def test_non_staff_cannot_see_run_or_promote(client, role, owner, queued_job, disabled_adapter, monkeypatch):
    monkeypatch.setattr("modelhub.training.finetune.subprocess.Popen", FakePopen)
    FakePopen.calls.clear()
    if role == "owner":
        client.force_login(owner)

    assert client.get(reverse("admin:modelhub_finetunejob_changelist")).status_code == 302
    assert client.get(reverse("admin:modelhub_finetunejob_change", args=[queued_job.pk])).status_code == 302
    assert run_action(client, queued_job).status_code == 302
    assert promote_action(client, disabled_adapter).status_code == 302

    assert FakePopen.calls == []
    queued_job.refresh_from_db()
    disabled_adapter.refresh_from_db()
    assert queued_job.pid is None and disabled_adapter.enabled is False


def test_staff_without_the_change_permission_is_refused(client, staff, queued_job, disabled_adapter):
    client.force_login(staff)
    assert client.get(reverse("admin:modelhub_finetunejob_changelist")).status_code == 403
    assert run_action(client, queued_job).status_code == 403
    assert promote_action(client, disabled_adapter).status_code == 403
    disabled_adapter.refresh_from_db()
    assert disabled_adapter.enabled is False


def test_staff_see_progress_and_the_loss_plot_start_the_job_and_promote(
    client, staff_with_rights, queued_job, disabled_adapter, monkeypatch, settings
):
    monkeypatch.setattr("modelhub.training.finetune.subprocess.Popen", FakePopen)
    FakePopen.calls.clear()
    client.force_login(staff_with_rights)

    listing = client.get(reverse("admin:modelhub_finetunejob_changelist"))
    assert listing.status_code == 200 and "3/10 (30%)" in listing.content.decode()
    page = client.get(reverse("admin:modelhub_finetunejob_change", args=[queued_job.pk])).content.decode()
    assert page.count("<polyline") == 2 and 'class="eval"' in page

    assert run_action(client, queued_job).status_code == 302
    ((command, kwargs),) = FakePopen.calls
    assert command[-3:] == ["finetune", "--job", str(queued_job.pk)] and kwargs["start_new_session"] is True
    queued_job.refresh_from_db()
    assert queued_job.pid == 4242
    assert queued_job.log_path == str(settings.VAR_DIR / "logs" / f"finetune-job-{queued_job.pk}.log")
    run_action(client, queued_job)  # a second click does not start a second process
    assert len(FakePopen.calls) == 1

    assert promote_action(client, disabled_adapter).status_code == 302
    disabled_adapter.refresh_from_db()
    assert disabled_adapter.enabled is True


def test_staff_add_a_job_in_the_admin_with_defaults_filled_in(client, staff_with_rights, tiny_spec, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(2, seed=1))
    client.force_login(staff_with_rights)
    form = {
        "base": tiny_spec.pk,
        "method": "sft",
        "adapter_name": "",
        "train_path": str(train),
        "eval_path": str(train),
        "dataset_ref": "{}",
        "hyperparameters": '{"epochs": 1}',
    }

    response = client.post(reverse("admin:modelhub_finetunejob_add"), form)

    assert response.status_code == 302
    job = FinetuneJob.objects.get()
    assert job.created_by == staff_with_rights and job.adapter_name == f"sft-job-{job.pk}"
    assert job.hyperparameters["epochs"] == 1.0 and job.hyperparameters["lora_r"] == 8 and job.status == "queued"
