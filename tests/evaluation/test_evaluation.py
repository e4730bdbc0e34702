"""Evaluation reports: the scores equal the reference libraries', the bootstrap is seeded, and
`manage.py evaluate` stores a report of a tiny model and a tiny adapter made in the test run.
Staff with the view permission read reports in the admin; nobody else does."""

import json
import math
import re

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.urls import reverse

from conversations.models import Arena, DatasetSnapshot, EvaluationReport, Verdict
from conversations.models.datasets import file_sha256
from modelhub.models import Adapter
from modelhub.training import text_scores
from modelhub.training.evaluation import answer_tokens, reference_nll
from tests.factories import install_scripted
from tests.finetuning import corrected_conversations

ANSWERS = ["the cat sat on the mat", "i like to go hiking", "hello there friend", "what a lovely day it is"]
REFERENCES = ["the cat is on the mat", "i like hiking and books", "hello there", "it is a lovely day"]
QUESTIONS = [
    "hello there, how are you doing today?",
    "what do you like to do on the weekend?",
    "that sounds fun. where do you hike?",
]


def test_bleu_and_chrf_equal_sacrebleus_corpus_scores():
    from sacrebleu import corpus_bleu, corpus_chrf

    assert text_scores.bleu(ANSWERS, REFERENCES) == corpus_bleu(ANSWERS, [REFERENCES]).score
    assert text_scores.chrf(ANSWERS, REFERENCES) == corpus_chrf(ANSWERS, [REFERENCES]).score
    assert 0 < text_scores.bleu(ANSWERS, REFERENCES) < 100


def test_rouge_is_the_mean_f1_of_rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    expected = [scorer.score(ref, ans) for ans, ref in zip(ANSWERS, REFERENCES)]
    scores = text_scores.score(ANSWERS, REFERENCES)
    for name in ("rouge1", "rouge2", "rougeL"):
        assert scores[name] == pytest.approx(sum(row[name].fmeasure for row in expected) / len(expected), abs=1e-12)


def test_distinct_n_and_lengths_count_whitespace_words():
    answers = ["a b a b", "a c"]  # unigrams a b a b a c: 3 of 6; bigrams ab ba ab ac: 3 of 4
    assert text_scores.distinct(answers, 1) == 3 / 6
    assert text_scores.distinct(answers, 2) == 3 / 4
    assert text_scores.distinct(["one"], 2) == 0.0
    scores = text_scores.score(answers, ["a b", "a c"])
    assert scores["mean_length"] == 3.0 and scores["median_length"] == 3.0


def test_the_bootstrap_interval_holds_the_difference_and_repeats_with_its_seed():
    candidates = {
        "base": {"answers": REFERENCES[:2] + ANSWERS[2:], "nll": None},
        "tuned": {"answers": ANSWERS, "nll": None},
    }
    first = text_scores.compare(candidates, REFERENCES, resamples=200, seed=7)
    again = text_scores.compare(candidates, REFERENCES, resamples=200, seed=7)
    other = text_scores.compare(candidates, REFERENCES, resamples=200, seed=8)

    assert first == again and first != other
    for metric in ("bleu", "chrf", "rouge1", "rougeL", "distinct1", "mean_length"):
        diff = first["differences"]["tuned"][metric]
        assert diff["low"] <= diff["difference"] <= diff["high"], metric
        assert diff["difference"] == pytest.approx(first["metrics"]["tuned"][metric] - first["metrics"]["base"][metric])
    assert "perplexity" not in first["differences"]["tuned"]  # no weights, no perplexity


def test_perplexity_is_exp_of_the_mean_nll_of_the_answer_tokens_by_a_plain_forward_pass(tiny_model_dir):
    import torch

    from modelhub.backends.loading import LoadSettings, load

    loaded = load(LoadSettings(source=str(tiny_model_dir), dtype="float32", device="cpu"))
    rows = [([{"role": "user", "content": q}], a) for q, a in zip(QUESTIONS, ANSWERS)]
    found = reference_nll(loaded, rows)

    total, tokens = 0.0, 0
    for prompt, reference in rows:
        prompt_ids, answer_ids = answer_tokens(loaded.tokenizer, prompt, reference)
        assert loaded.tokenizer.decode(answer_ids).startswith(reference)
        ids = torch.tensor([prompt_ids + answer_ids])
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100  # the loss covers the answer tokens only
        with torch.no_grad():
            mean_nll = loaded.model(input_ids=ids, labels=labels).loss.item()
        total, tokens = total + mean_nll * len(answer_ids), tokens + len(answer_ids)
    assert [count for _, count in found] == [len(answer_tokens(loaded.tokenizer, p, r)[1]) for p, r in rows]
    assert text_scores.perplexity(found) == pytest.approx(math.exp(total / tokens), rel=1e-5)


# --- manage.py evaluate ----------------------------------------------------------


@pytest.fixture
def tiny_adapter(tiny_spec, tiny_model_dir, tmp_path):
    """A LoRA adapter with random non-zero weights: its answers and perplexity differ from the base's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "tuned")
    return Adapter.objects.create(name="tuned", base=tiny_spec, path=str(tmp_path / "tuned"), enabled=False)


def make_snapshot(tmp_path, eval_rows, filters=None, name="snap"):
    train, evals = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.eval.jsonl"
    train.write_text("")
    evals.write_text("".join(json.dumps(row) + "\n" for row in eval_rows))
    return DatasetSnapshot.objects.create(
        format="sft",
        filters=filters or {},
        eval_fraction=0.5,
        train_path=str(train),
        eval_path=str(evals),
        card_path="",
        train_sha256=file_sha256(train),
        eval_sha256=file_sha256(evals),
        counts={"train": 0, "eval": len(eval_rows)},
    )


def sft_rows():
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in zip(QUESTIONS, ANSWERS)
    ]


@pytest.fixture
def snapshot(db, tmp_path):
    return make_snapshot(tmp_path, sft_rows(), filters={"model": "tiny"})


def evaluate(snapshot, *extra):
    call_command(
        "evaluate",
        "--model",
        "tiny",
        "--snapshot",
        str(snapshot.pk),
        "--max-new-tokens",
        "6",
        "--resamples",
        "50",
        *extra,
    )


@pytest.mark.slow
def test_the_command_stores_a_report_of_the_base_and_its_adapter(tiny_spec, tiny_adapter, snapshot):
    evaluate(snapshot, "--adapter", "tuned")

    report = EvaluationReport.objects.get()
    assert report.status == "succeeded" and report.error == ""
    assert report.candidates == ["tiny", "tiny + tuned"] and report.resamples == 50
    assert set(report.metrics["tiny"]) == set(text_scores.METRICS)
    assert report.metrics["tiny"]["perplexity"] > 1 and report.metrics["tiny + tuned"]["perplexity"] > 1
    assert report.metrics["tiny"]["perplexity"] != report.metrics["tiny + tuned"]["perplexity"]
    perplexity = report.differences["tiny + tuned"]["perplexity"]
    assert perplexity["low"] <= perplexity["difference"] <= perplexity["high"]
    assert len(report.rows) == 3 and report.rows[0]["reference"] == ANSWERS[0]
    assert set(report.rows[0]["answers"]) == {"tiny", "tiny + tuned"}
    assert report.as_json()["candidates"] == report.candidates


@pytest.mark.parametrize("case", ["no held-out rows", "another model's snapshot"])
def test_an_empty_or_foreign_snapshot_is_refused_and_nothing_is_stored(case, tiny_spec, tiny_adapter, tmp_path):
    snap = make_snapshot(
        tmp_path,
        [] if case == "no held-out rows" else sft_rows(),
        filters={"model": "chitchat"} if case == "another model's snapshot" else {},
    )
    message = "no held-out rows" if case == "no held-out rows" else "exported from chitchat's answers, not tiny's"

    with pytest.raises(CommandError, match=message):
        evaluate(snap)
    assert not EvaluationReport.objects.exists()


# --- the admin ----------------------------------------------------------------------


def image_sources(policy):
    """The sources a Content-Security-Policy allows images from: img-src, else default-src."""
    directives = {}
    for part in policy.split(";"):
        name, *sources = part.split() or [""]
        directives[name] = sources
    return directives.get("img-src", directives.get("default-src", []))


@pytest.fixture
def report(tiny_spec, tiny_adapter, snapshot):
    """A finished report, as `run()` stores one (the scores of fixed answers, no model run)."""
    candidates = {
        "tiny": {"answers": REFERENCES[:2] + ANSWERS[2:3], "nll": [(9.0, 4), (8.0, 5), (7.0, 3)]},
        "tiny + tuned": {"answers": ANSWERS[:3], "nll": [(6.0, 4), (7.5, 5), (5.0, 3)]},
    }
    compared = text_scores.compare(candidates, REFERENCES[:3], resamples=50)
    report = EvaluationReport.objects.create_for(snapshot, tiny_spec, [tiny_adapter])
    report.candidates = list(candidates)
    report.metrics, report.differences = compared["metrics"], compared["differences"]
    report.rows = [{"prompt": [], "reference": r, "answers": {}, "nll": {}} for r in REFERENCES[:3]]
    report.arena = {"tiny + tuned": {"win_rate": 0.75, "votes": 2}}
    report.finish(EvaluationReport.Status.SUCCEEDED)
    return report


def test_staff_with_the_view_permission_see_the_table_the_plot_and_the_json(client, staff, report):
    staff.user_permissions.add(Permission.objects.get(codename="view_evaluationreport"))
    client.force_login(staff)

    page = client.get(reverse("admin:conversations_evaluationreport_change", args=[report.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "tiny + tuned" in html and "perplexity" in html
    assert "95%" in html and "0.750 (2 votes)" in html
    plot_url = re.search(r'<img src="([^"]+)" alt="each adapter', html).group(1)
    assert plot_url == reverse("admin:conversations_evaluationreport_plot", args=[report.pk])  # same origin
    assert "'self'" in image_sources(page["Content-Security-Policy"])  # so the page's own policy shows it
    plot = client.get(plot_url)
    assert plot.status_code == 200 and plot["Content-Type"] == "image/png"
    assert plot.content.startswith(b"\x89PNG\r\n\x1a\n")
    exported = client.get(reverse("admin:conversations_evaluationreport_json", args=[report.pk]))
    assert exported.status_code == 200 and exported.json()["candidates"] == ["tiny", "tiny + tuned"]
    assert client.get(reverse("admin:conversations_evaluationreport_changelist")).status_code == 200


@pytest.mark.parametrize("role", ["anonymous", "owner", "staff without permission"])
def test_nobody_else_reads_a_report(client, role, owner, staff, report):
    if role == "owner":
        client.force_login(owner)
    elif role != "anonymous":
        client.force_login(staff)
    page = client.get(reverse("admin:conversations_evaluationreport_change", args=[report.pk]))
    exported = client.get(reverse("admin:conversations_evaluationreport_json", args=[report.pk]))
    plot = client.get(reverse("admin:conversations_evaluationreport_plot", args=[report.pk]))
    if role == "staff without permission":
        assert page.status_code == exported.status_code == plot.status_code == 403
    else:
        assert page.status_code == exported.status_code == plot.status_code == 302


def test_the_snapshot_action_needs_the_add_permission_and_refuses_a_foreign_snapshot(
    client, staff, tiny_spec, tiny_adapter, tmp_path, monkeypatch
):
    started = []
    monkeypatch.setattr("conversations.evaluation.admin.start_in_background", started.append)
    foreign = make_snapshot(tmp_path, sft_rows(), filters={"model": "chitchat"})
    url = reverse("admin:conversations_datasetsnapshot_changelist")
    staff.user_permissions.add(Permission.objects.get(codename="view_datasetsnapshot"))
    client.force_login(staff)
    post = {"action": "evaluate", "_selected_action": [foreign.pk], "apply": "1", "base": tiny_spec.pk}

    client.post(url, post)
    assert started == [] and not EvaluationReport.objects.exists()  # no permission: no such action

    staff.user_permissions.add(Permission.objects.get(codename="add_evaluationreport"))
    response = client.post(url, post, follow=True)
    assert "exported from chitchat" in response.content.decode()
    assert started == [] and not EvaluationReport.objects.exists()

    ours = make_snapshot(tmp_path, sft_rows(), name="ours")
    response = client.post(url, {**post, "_selected_action": [ours.pk]})
    report = EvaluationReport.objects.get()
    assert started == [report] and report.adapter_names == ["tuned"] and report.created_by == staff
    assert response.status_code == 302 and response.url == reverse(
        "admin:conversations_evaluationreport_change", args=[report.pk]
    )


@pytest.mark.slow
def test_a_fine_tune_on_a_snapshot_ends_with_a_report_of_the_base_vs_the_new_adapter(
    owner, tiny_spec, settings, tmp_path, capsys
):
    from conversations.training_data.export import export_snapshot

    settings.CHAT_DATASETS_DIR, settings.MODELHUB_ADAPTERS_DIR = tmp_path / "datasets", tmp_path / "adapters"
    settings.EVALUATION_RESAMPLES = 50
    corrected_conversations(owner, tiny_spec, 12)
    snapshot = export_snapshot("sft", eval_fraction=0.3)
    assert snapshot.counts["eval"] > 0

    call_command("finetune", snapshot=snapshot.pk, base="tiny", name="fresh", max_steps=2, eval_steps=1, batch_size=2)

    report = EvaluationReport.objects.get()
    assert report.status == "succeeded", report.error
    assert report.snapshot == snapshot and report.candidates == ["tiny", "tiny + fresh"]
    assert len(report.rows) == min(snapshot.counts["eval"], settings.EVALUATION_MAX_ROWS)
    assert f"stored evaluation report {report.pk}" in capsys.readouterr().out


def test_a_scripted_model_gets_no_perplexity_and_its_arena_votes_give_the_win_rate(staff, tmp_path):
    spec, backend = install_scripted()
    adapter = Adapter.objects.create(name="echo", base=spec, path=str(tmp_path), enabled=False)
    snap = make_snapshot(tmp_path, sft_rows())
    arena = Arena.open(staff, snap, adapter, prompts=3, seed=1)
    arena.generate()
    matches = list(arena.matches.order_by("position"))
    for match, vote in zip(matches, [Verdict.LEFT, Verdict.RIGHT, Verdict.TIE]):
        match.decide(staff, vote)
    results = arena.results()
    assert results["voted"] == 3

    report = EvaluationReport.objects.create_for(snap, spec, [adapter])
    report.run(resamples=20)

    assert report.status == "succeeded" and report.metrics["scripted"]["perplexity"] is None
    assert report.rows[0]["answers"]["scripted"] == QUESTIONS[0]  # the scripted model echoes the question
    assert "perplexity" not in report.differences["scripted + echo"]
    assert report.arena == {"scripted + echo": {"win_rate": (results["win"] + 0.5 * results["tie"]) / 3, "votes": 3}}
    assert [call["adapter"] for call in backend.calls[-3:]] == [("echo", str(tmp_path))] * 3


def test_the_arena_action_evaluates_the_base_against_the_arenas_adapters(client, staff, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("conversations.evaluation.admin.start_in_background", started.append)
    spec, _ = install_scripted()
    adapter = Adapter.objects.create(name="echo", base=spec, path=str(tmp_path), enabled=False)
    arena = Arena.open(staff, make_snapshot(tmp_path, sft_rows()), adapter, prompts=2, seed=1)
    for codename in ("view_arena", "add_evaluationreport"):
        staff.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(staff)

    response = client.post(
        reverse("admin:conversations_arena_changelist"), {"action": "evaluate", "_selected_action": [arena.pk]}
    )

    report = EvaluationReport.objects.get()
    assert started == [report] and report.base == spec and report.adapter_names == ["echo"]
    assert response.url == reverse("admin:conversations_evaluationreport_change", args=[report.pk])


def test_the_adapter_action_evaluates_the_chosen_adapters_against_their_base_on_a_snapshot(
    client, staff, tmp_path, monkeypatch
):
    started = []
    monkeypatch.setattr("conversations.evaluation.admin.start_in_background", started.append)
    spec, _ = install_scripted()
    chosen = [Adapter.objects.create(name=name, base=spec, path=str(tmp_path), enabled=False) for name in ("a", "b")]
    Adapter.objects.create(name="not-chosen", base=spec, path=str(tmp_path), enabled=False)
    snapshot = make_snapshot(tmp_path, sft_rows())
    for codename in ("view_adapter", "change_adapter"):
        staff.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(staff)
    changelist = reverse("admin:modelhub_adapter_changelist")
    picked = {"action": "evaluate", "_selected_action": [a.pk for a in chosen]}

    assert "Evaluate against their base" not in client.get(changelist).content.decode()  # no permission to add
    staff.user_permissions.add(Permission.objects.get(codename="add_evaluationreport"))
    form = client.post(changelist, picked)
    assert "held-out prompts" in form.content.decode() and not EvaluationReport.objects.exists()
    response = client.post(changelist, {**picked, "apply": "1", "snapshot": snapshot.pk})

    report = EvaluationReport.objects.get()
    assert started == [report] and report.base == spec and report.adapter_names == ["a", "b"]
    assert report.snapshot == snapshot
    assert response.url == reverse("admin:conversations_evaluationreport_change", args=[report.pk])


def test_answers_holding_nul_are_stored_with_it_replaced_as_a_replys_text_is(db, tmp_path):
    spec, _ = install_scripted(chunks=["bad ", "\x00", " bytes"])  # what a random model can write
    adapter = Adapter.objects.create(name="echo", base=spec, path=str(tmp_path), enabled=False)
    report = EvaluationReport.objects.create_for(make_snapshot(tmp_path, sft_rows()), spec, [adapter])
    report.run(resamples=5)

    report.refresh_from_db()  # PostgreSQL refuses NUL in jsonb: the row was saved
    assert report.status == "succeeded"
    assert report.rows[0]["answers"]["scripted"] == "bad \ufffd bytes"
