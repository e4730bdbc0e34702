"""Model management in the admin: validation of sources and adapters, actions, the test prompt."""

import pytest
from django.urls import reverse

from conversations.models import Feedback
from modelhub import api
from modelhub.models import Adapter, ModelSpec
from modelhub.registry import registry
from tests.adapters import make_tiny_adapter
from tests.factories import add_reply
from tests.markup import INLINE
from tests.modelhub.admin_forms import add_form
from tests.waiting import wait_until


def test_staff_adds_a_local_model_that_passes_the_checks(staff_client, tiny_model_dir):
    response = staff_client.post(reverse("admin:modelhub_modelspec_add"), add_form(tiny_model_dir))
    assert response.status_code == 302
    assert ModelSpec.objects.get(name="new-model").source == str(tiny_model_dir)


def make_bert(folder):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(folder)


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "does not exist"),
        ("bert", "is a BertModel model, not a causal language model"),
        ("no-tokenizer", "has no usable tokenizer"),
        ("no-template", "has no chat template"),
    ],
)
def test_bad_sources_are_refused_with_a_clear_form_error(staff_client, tiny_model_dir, tmp_path, breakage, message):
    import shutil

    folder = tmp_path / breakage
    if breakage == "bert":
        make_bert(folder)
    elif breakage != "missing":
        shutil.copytree(tiny_model_dir, folder)
        if breakage == "no-tokenizer":
            for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
                (folder / name).unlink(missing_ok=True)
        else:
            (folder / "chat_template.jinja").unlink()
    response = staff_client.post(reverse("admin:modelhub_modelspec_add"), add_form(folder))
    assert response.status_code == 200
    assert message in response.context["adminform"].form.errors["source"][0]
    assert not ModelSpec.objects.filter(name="new-model").exists()


def test_a_chat_template_override_makes_a_template_less_model_acceptable(staff_client, tiny_model_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    (tmp_path / "m" / "chat_template.jinja").unlink()
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    response = staff_client.post(
        reverse("admin:modelhub_modelspec_add"), add_form(tmp_path / "m", chat_template=template)
    )
    assert response.status_code == 302


def test_an_adapter_for_another_base_is_refused_in_the_form(staff_client, tiny_spec, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=96,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "foreign")
    data = {
        "name": "foreign",
        "base": tiny_spec.pk,
        "path": str(tmp_path / "foreign"),
        "enabled": "on",
        "description": "",
        "provenance": "{}",
    }
    response = staff_client.post(reverse("admin:modelhub_adapter_add"), data)
    assert response.status_code == 200
    assert "q_proj has 64 features where the adapter expects 96" in str(response.context["adminform"].form.errors)


def test_a_fitting_adapter_is_accepted(staff_client, tiny_spec, tiny_model_dir, tmp_path):
    folder = make_tiny_adapter(tiny_model_dir, tmp_path / "ok", 5)
    data = {
        "name": "ok",
        "base": tiny_spec.pk,
        "path": str(folder),
        "enabled": "on",
        "description": "",
        "provenance": "{}",
    }
    assert staff_client.post(reverse("admin:modelhub_adapter_add"), data).status_code == 302
    assert Adapter.objects.filter(name="ok", base=tiny_spec).exists()


def test_load_and_unload_actions_change_the_runtime_status(staff_client, tiny_spec):
    url = reverse("admin:modelhub_modelspec_changelist")
    staff_client.post(url, {"action": "load_models", "_selected_action": [tiny_spec.pk]})
    registry.worker(tiny_spec)._thread.join(0)
    wait_until(lambda: registry.status()["tiny"]["state"] == "ready")
    page = staff_client.get(url).content.decode()
    assert "loaded on cpu, float32, none" in page and "MiB" in page and "0 replying, 0 waiting" in page
    "".join(api.start(tiny_spec, [{"role": "user", "content": "hello"}], {"temperature": 0, "max_new_tokens": 4}))
    assert "KV cache 1 turns" in staff_client.get(url).content.decode()  # the reply's keys and values are kept
    staff_client.post(url, {"action": "unload_models", "_selected_action": [tiny_spec.pk]})
    assert "tiny" not in registry.status()
    assert "not loaded" in staff_client.get(url).content.decode()


def test_a_failed_load_shows_its_error_in_the_runtime_column(staff_client, db, tmp_path):
    spec = ModelSpec.objects.create(name="broken", source=str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text("{not json")
    url = reverse("admin:modelhub_modelspec_changelist")
    staff_client.post(url, {"action": "load_models", "_selected_action": [spec.pk]})
    wait_until(lambda: registry.status()["broken"]["state"] == "failed")
    assert "failed: could not read a model" in staff_client.get(url).content.decode()


def test_the_test_prompt_page_renders_for_staff(staff_client, tiny_spec):
    page = staff_client.get(reverse("admin:modelhub_modelspec_test", args=[tiny_spec.pk]))
    assert page.status_code == 200 and b"Try a prompt" in page.content


@pytest.mark.django_db(transaction=True)
async def test_the_test_prompt_streams_a_reply_chunk_by_chunk(async_client, staff, tiny_spec):
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import Permission

    await sync_to_async(staff.user_permissions.add)(await Permission.objects.aget(codename="change_modelspec"))
    await async_client.aforce_login(staff)
    url = reverse("admin:modelhub_modelspec_test_stream", args=[tiny_spec.pk])
    response = await async_client.post(url, {"prompt": "hello there"})
    chunks = [chunk async for chunk in response.streaming_content]
    assert len(chunks) > 1 and b"".join(chunks).strip()
    assert registry.status()["tiny"]["state"] == "ready"


@pytest.mark.parametrize("url_name", ["test", "test_stream"])
def test_non_staff_users_cannot_reach_model_admin(client, owner, tiny_spec, url_name):
    client.force_login(owner)
    response = client.post(reverse(f"admin:modelhub_modelspec_{url_name}", args=[tiny_spec.pk]), {"prompt": "hi"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    changelist = reverse("admin:modelhub_modelspec_changelist")
    client.post(changelist, {"action": "load_models", "_selected_action": [tiny_spec.pk]})
    assert "tiny" not in registry.status()


def test_staff_without_the_change_permission_cannot_load(client, staff, tiny_spec):
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="view_modelspec"))
    client.force_login(staff)
    client.post(
        reverse("admin:modelhub_modelspec_changelist"), {"action": "load_models", "_selected_action": [tiny_spec.pk]}
    )
    assert "tiny" not in registry.status()
    assert client.post(reverse("admin:modelhub_modelspec_test_stream", args=[tiny_spec.pk])).status_code == 403


def test_the_feedback_page_shows_the_rated_answer_without_an_inline_style_the_policy_would_block(
    admin_client, conversation
):
    """The admin's HTML made in Python (here `FeedbackAdmin.answer`) keeps to the policy like the templates."""
    conversation.add_user_message("a question")
    answer = add_reply(conversation, "line one\n  line <b>two</b>")
    feedback = Feedback.record(conversation.owner, answer, rating="down")
    page = admin_client.get(reverse("admin:conversations_feedback_change", args=[feedback.pk])).content.decode()
    assert '<pre class="feedback-answer">line one\n  line &lt;b&gt;two&lt;/b&gt;</pre>' in page
    assert "chatsite/admin.css" in page  # where .feedback-answer keeps the line breaks
    assert [what for what, pattern in INLINE.items() if pattern.search(page)] == []


@pytest.mark.parametrize("action", ["load_models", "unload_models", "reload_models"])
def test_with_model_workers_on_the_web_process_loads_nothing_and_says_who_does(
    admin_client, tiny_spec, settings, action
):
    settings.MODELHUB_WORKERS = True
    changelist = reverse("admin:modelhub_modelspec_changelist")
    response = admin_client.post(changelist, {"action": action, "_selected_action": [tiny_spec.pk]}, follow=True)
    assert "The model workers load models" in response.content.decode()
    assert "no live model worker serves it" in response.content.decode()  # the runtime column
    assert registry.status() == {}
