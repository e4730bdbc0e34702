"""Bad input is refused where it is entered, with one clear line: a CommandError (exit status 1
or 2, no traceback) from a command, a form error from the admin, InvalidOptions from modelhub.

The superuser (`admin_client`) may add anything the admin offers; what it enters is still checked.
"""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from modelhub.models import Adapter, ModelSpec
from modelhub.options import MAX_SEED, GenerationOptions, InvalidOptions
from tests.adapters import make_tiny_adapter
from tests.factories import install_scripted
from tests.modelhub.admin_forms import add_form

LIMIT = 2048  # the max_new_tokens limit the option tests validate against
OPTION_NAMES = [field.name for field in dataclasses.fields(GenerationOptions)]


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def manage(tmp_path, *args):
    """`manage.py ARGS` in its own process, on a scratch var folder (never the project's database)."""
    env = {**os.environ, "CHATSITE_VAR_DIR": str(tmp_path / "var"), "HF_HUB_OFFLINE": "1"}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def adapter_folder(tmp_path, config_text):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(config_text)
    return folder


BAD_ADAPTER_CONFIGS = [
    ("{not json", "is not JSON"),
    ("{}", 'its peft_type must be "LORA"'),
    ("[]", 'its peft_type must be "LORA"'),
    ('{"peft_type": "PROMPT_TUNING", "target_modules": ["q_proj"], "r": 4}', 'its peft_type must be "LORA"'),
    ('{"peft_type": "LORA", "target_modules": null, "r": 4}', "target_modules must be a list"),
    ('{"peft_type": "LORA", "target_modules": 5, "r": 4}', "target_modules must be a list"),
    ('{"peft_type": "LORA", "target_modules": [], "r": 4}', "target_modules is empty"),
    ('{"peft_type": "LORA", "target_modules": ["q_proj"], "r": 0}', "r (the LoRA rank) must be a whole number"),
]


# --- manage.py modelhub add / add-adapter ------------------------------------------------


def test_it_refuses_a_chat_template_file_that_does_not_exist(db, tiny_model_dir, tmp_path):
    with pytest.raises(CommandError, match="cannot read the chat template file: .*No such file"):
        run("modelhub", "add", "templated", str(tiny_model_dir), "--chat-template-file", str(tmp_path / "missing"))
    assert not ModelSpec.objects.exists()


def test_a_missing_chat_template_file_exits_with_one_line_and_no_traceback(tmp_path):
    result = manage(tmp_path, "modelhub", "add", "templated", "-", "--chat-template-file", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("CommandError: cannot read the chat template file")


def test_it_refuses_a_chat_template_file_that_is_a_folder_or_not_text(db, tiny_model_dir, tmp_path):
    (tmp_path / "binary.jinja").write_bytes(b"\xff\xfe\x00")
    for path, problem in [(tmp_path, "Is a directory"), (tmp_path / "binary.jinja", "can't decode")]:
        with pytest.raises(CommandError, match=problem):
            run("modelhub", "add", "templated", str(tiny_model_dir), "--chat-template-file", str(path))


def test_it_refuses_a_chat_template_that_jinja_cannot_compile(db, tiny_model_dir, tmp_path):
    (tmp_path / "broken.jinja").write_text("{% for m in messages %}{{ m['content'] }}")
    with pytest.raises(CommandError, match="chat_template: Not a valid Jinja template: .*endfor"):
        run("modelhub", "add", "templated", str(tiny_model_dir), "--chat-template-file", str(tmp_path / "broken.jinja"))
    assert not ModelSpec.objects.exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:abc", "cuda:", "CPU", "cpu "])
def test_it_refuses_a_device_torch_would_not_know(db, tiny_model_dir, device):
    with pytest.raises(CommandError, match=r"device: Use auto, cpu, mps, cuda or cuda:N"):
        run("modelhub", "add", "elsewhere", str(tiny_model_dir), "--device", device)
    assert not ModelSpec.objects.exists()


def test_it_still_accepts_a_numbered_gpu_and_the_other_devices(db):
    for device in ["auto", "cpu", "mps", "cuda", "cuda:0", "cuda:12"]:
        ModelSpec(name="d", source="-", device=device).full_clean(validate_unique=False)


@pytest.mark.parametrize("config_text, problem", BAD_ADAPTER_CONFIGS)
def test_it_refuses_an_adapter_folder_whose_config_is_not_a_lora_config(tiny_spec, tmp_path, config_text, problem):
    folder = adapter_folder(tmp_path, config_text)
    with pytest.raises(CommandError, match=f"path: .*adapter_config.json.*{re.escape(problem)}"):
        run("modelhub", "add-adapter", "tiny", "broken", str(folder))
    assert not Adapter.objects.exists()


def test_a_duplicate_adapter_name_is_reported_without_an_internal_field_key(tiny_spec, tiny_model_dir, tmp_path):
    folder = make_tiny_adapter(tiny_model_dir, tmp_path / "a", 3)
    run("modelhub", "add-adapter", "tiny", "style", str(folder))
    with pytest.raises(CommandError) as refused:
        run("modelhub", "add-adapter", "tiny", "style", str(folder))
    assert str(refused.value) == "Adapter with this Base and Name already exists."


# --- the admin: same checks, as form errors ------------------------------------------------


@pytest.mark.parametrize("config_text, problem", BAD_ADAPTER_CONFIGS[:3])
def test_the_admin_shows_a_bad_adapter_config_as_a_form_error(admin_client, tiny_spec, tmp_path, config_text, problem):
    folder = adapter_folder(tmp_path, config_text)
    data = {
        "name": "broken",
        "base": tiny_spec.pk,
        "path": str(folder),
        "enabled": "on",
        "description": "",
        "provenance": "{}",
    }
    response = admin_client.post(reverse("admin:modelhub_adapter_add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["path"]
    assert len(errors) == 1 and problem in errors[0]
    assert not Adapter.objects.exists()


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("device", "tpu", "Use auto, cpu, mps, cuda or cuda:N"),
        ("device", "cuda:abc", "Use auto, cpu, mps, cuda or cuda:N"),
        ("chat_template", "{% if messages %}{{ messages[0]['content'] }}", "Not a valid Jinja template"),
        ("chat_template", "{{ messages | no_such_filter }}", "No filter named 'no_such_filter'"),
        ("temperature", "0.001", "above 0, at least 0.01"),
        ("temperature", "2.5", "temperature must be between 0 and 2"),
        ("top_k", "10000000", "top_k must be 0 (off) or more, up to 1000000"),
        ("max_new_tokens", "5000", "max_new_tokens must be between 1 and 2048"),
    ],
)
def test_the_admin_refuses_a_model_field_that_would_fail_later(admin_client, tiny_model_dir, field, value, problem):
    response = admin_client.post(reverse("admin:modelhub_modelspec_add"), add_form(tiny_model_dir, **{field: value}))
    assert response.status_code == 200
    assert problem in " ".join(response.context["adminform"].form.errors[field])
    assert not ModelSpec.objects.exists()


def test_the_admin_accepts_a_template_with_the_tags_transformers_adds(admin_client, tiny_model_dir):
    template = (
        "{% for m in messages %}{% if loop.index > 8 %}{% break %}{% endif %}"
        "{% generation %}{{ m['content'] | tojson }}{% endgeneration %}{% endfor %}"
    )
    form = add_form(tiny_model_dir, chat_template=template)
    response = admin_client.post(reverse("admin:modelhub_modelspec_add"), form)
    assert response.status_code == 302


@pytest.mark.parametrize(
    "source", ["echo delay=abc", "echo delay=-1", "echo delay=nan", "echo delay=inf", "echo delay=3600"]
)
def test_the_admin_refuses_a_scripted_delay_when_the_model_is_saved(admin_client, source):
    response = admin_client.post(
        reverse("admin:modelhub_modelspec_add"), add_form(source, backend="scripted", name="echo")
    )
    assert response.status_code == 200
    assert "delay must be a number of seconds from 0 to 60" in response.context["adminform"].form.errors["source"][0]
    assert not ModelSpec.objects.exists()


def test_a_scripted_model_with_a_good_delay_is_saved_and_serves_it(admin_client):
    from modelhub import api

    response = admin_client.post(
        reverse("admin:modelhub_modelspec_add"), add_form("echo delay=0.01", backend="scripted", name="echo")
    )
    assert response.status_code == 302
    assert "".join(api.start(ModelSpec.objects.get(name="echo"), [{"role": "user", "content": "a b"}])) == "a b"


def test_it_refuses_quantization_on_mps_where_bitsandbytes_does_not_run(db):
    with pytest.raises(ValidationError) as refused:
        ModelSpec(name="apple", source="-", device="mps", quantization="nf4").full_clean()
    assert "bitsandbytes quantization runs on CPU and CUDA" in refused.value.message_dict["quantization"][0]


# --- manage.py export_feedback ----------------------------------------------------------


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--since", "2024-13-45"], "argument --since: '2024-13-45' is not a date"),
        (["--until", "soon"], "argument --until: 'soon' is not a date"),
        (["--since", "2024-05-01", "--until", "2024-01-01"], "--since 2024-05-01 is after --until 2024-01-01"),
        (["--eval-fraction", "nan"], "eval_fraction must be at least 0 and below 1"),
    ],
)
def test_export_feedback_refuses_bad_dates_and_fractions(db, args, problem):
    with pytest.raises(CommandError, match=problem):
        run("export_feedback", "--format", "sft", *args)


def test_export_feedback_refuses_an_out_folder_it_cannot_fill(db, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CommandError, match="argument --out: .* is not a folder this user may write in"):
        run("export_feedback", "--format", "sft", "--out", str(tmp_path / "a-file" / "deeper" / "snapshot"))
    with pytest.raises(CommandError, match="argument --out: .* is a file, not a folder"):
        run("export_feedback", "--format", "sft", "--out", str(tmp_path / "a-file"))
    with pytest.raises(CommandError, match="argument --out: .* is a folder with files in it"):
        run("export_feedback", "--format", "sft", "--out", str(tmp_path))
    with pytest.raises(CommandError, match="argument --license: invalid choice"):
        run("export_feedback", "--format", "sft", "--license", "gpl-9")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]


def test_export_feedback_turns_a_failed_write_into_a_command_error(db, tmp_path, monkeypatch):
    from conversations.models import DatasetSnapshot
    from conversations.training_data import export

    def full_disk(path, lines):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write", full_disk)
    with pytest.raises(CommandError, match="could not write the snapshot: .*No space left on device"):
        run("export_feedback", "--format", "sft", "--out", str(tmp_path / "snapshot"))
    assert not DatasetSnapshot.objects.exists()


def test_a_bad_export_date_exits_with_a_usage_error_and_no_traceback(tmp_path):
    result = manage(tmp_path, "export_feedback", "--format", "sft", "--since", "2024-13-45")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("argument --since: '2024-13-45' is not a date (YYYY-MM-DD)")


# --- manage.py chat and generation options ----------------------------------------------


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--seed", str(2**70)], f"seed must be between 0 and {MAX_SEED}"),
        (["--seed", "-1"], f"seed must be between 0 and {MAX_SEED}"),
        (["--temperature", "1e-40"], "at least 0.01"),
        (["--temperature", "inf"], "temperature must be a finite number"),
        (["--max-new-tokens", str(10**30)], "max_new_tokens must be between 1 and"),
    ],
)
def test_chat_refuses_options_the_model_could_not_use(db, args, problem):
    install_scripted()
    with pytest.raises(CommandError, match=problem):
        run("chat", *args, "hi")


def test_chat_refuses_a_prompt_or_system_prompt_that_is_not_utf8(db):
    install_scripted()
    undecodable = "hi \udcff"  # how Python keeps an argument's byte 0xff that is not UTF-8
    for args in [[undecodable], ["--system", undecodable, "hi"]]:
        with pytest.raises(CommandError, match="not valid UTF-8 text"):
            run("chat", *args)
    with pytest.raises(CommandError, match="argument prompt: not valid UTF-8 text"):
        run("modelhub", "test", "scripted", undecodable)


def test_interactive_chat_leaves_out_a_line_that_is_not_utf8_and_answers_the_next(db, monkeypatch):
    install_scripted()
    monkeypatch.setattr("sys.stdin", StringIO("bad \udcff\ngood line\n"))
    out, err = run("chat")
    assert "[that line is not valid UTF-8 text: left out]" in err
    assert "good line" in out and "bad" not in out


@pytest.mark.parametrize(
    "frame, problem",
    [
        ('{"seed": 1180591620717411303424}', "seed must be between 0 and"),
        ('{"seed": %d}' % 10**400, "seed must be between 0 and"),
        ('{"seed": 1e400}', "seed must be a finite number"),
        ('{"top_k": 1e400}', "top_k must be a finite number"),
        ('{"max_new_tokens": 1e400}', "max_new_tokens must be a finite number"),
        ('{"temperature": 1e400}', "temperature must be a finite number"),
        ('{"top_p": NaN}', "top_p must be a finite number"),
        ('{"temperature": -Infinity}', "temperature must be a finite number"),
        ('{"repetition_penalty": %d}' % 10**400, "repetition_penalty must be between 0.5 and 2"),
        ('{"top_k": 10000001}', "top_k must be 0 (off) or more, up to 1000000"),
        ('{"top_k": 2.5}', "top_k must be a whole number"),
        ('{"seed": true}', "seed must be a number"),
        ('{"temperature": false}', "temperature must be a number"),
        ('{"top_p": "wide"}', "top_p must be a number"),
        ('{"top_k": [1]}', "top_k must be a number"),
        ('{"max_new_tokens": {"n": 1}}', "max_new_tokens must be a number"),
        ('{"temperature": null}', "temperature must be a number"),
        ('{"ignore_eos": 1}', "ignore_eos must be true or false"),
        ('{"beams": 4, "best_of": 2}', "unknown option(s): beams, best_of"),
        ('{"logprobs": true}', "logprobs must be a number"),
        ('["temperature", 0]', "options must be a JSON object"),
    ],
)
def test_it_refuses_any_bad_value_a_json_frame_can_carry(frame, problem):
    with pytest.raises(InvalidOptions) as refused:
        GenerationOptions().merged(json.loads(frame)).validated(LIMIT)
    assert problem in refused.value.message


def test_the_largest_seed_is_accepted_and_torch_takes_it():
    import torch

    options = GenerationOptions().merged({"seed": MAX_SEED, "top_k": 12.0}).validated(LIMIT)
    assert options.seed == MAX_SEED and options.top_k == 12 and isinstance(options.top_k, int)
    assert torch.Generator().manual_seed(options.seed).initial_seed() == MAX_SEED


def test_validated_refuses_options_built_directly_with_wrong_types():
    for options, problem in [
        (GenerationOptions(seed=2**70), "seed must be between 0 and"),
        (GenerationOptions(top_k=50.0), "top_k must be a whole number"),
        (GenerationOptions(temperature="0.7"), "temperature must be a number"),
        (GenerationOptions(ignore_eos=None), "ignore_eos must be true or false"),
    ]:
        with pytest.raises(InvalidOptions, match=problem):
            options.validated(LIMIT)


# --- property: whatever JSON arrives, options are valid or InvalidOptions ---------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=0, max_value=3)
    | st.text(max_size=20)
    | st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{0,5})?(e-?[0-9]{1,4})?", fullmatch=True)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
option_dicts = st.dictionaries(st.sampled_from(OPTION_NAMES) | st.text(max_size=8), json_values, max_size=4)


def assert_usable(options):
    """Accepted options are what the sampler needs: right types, finite, in range, a seed torch takes."""
    import torch

    assert options.problems(LIMIT) == {}
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = getattr(options, name)
        assert isinstance(value, float) and math.isfinite(value)
    assert type(options.top_k) is int and type(options.max_new_tokens) is int and type(options.ignore_eos) is bool
    if options.seed is not None:
        torch.Generator().manual_seed(options.seed)


@hypothesis_settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(OPTION_NAMES), value=json_values)
def test_any_json_value_for_any_option_gives_valid_options_or_invalid_options(name, value):
    try:
        options = GenerationOptions().merged({name: value}).validated(LIMIT)
    except InvalidOptions as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert_usable(options)


@hypothesis_settings(max_examples=300, deadline=None)
@given(overrides=option_dicts | json_values)
def test_any_json_object_of_options_gives_valid_options_or_invalid_options(overrides):
    try:
        options = GenerationOptions().merged(overrides).validated(LIMIT)
    except InvalidOptions:
        return
    assert_usable(options)


@hypothesis_settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(OPTION_NAMES), value=json_values)
def test_options_built_directly_from_any_value_validate_or_raise_invalid_options(name, value):
    try:
        GenerationOptions(**{name: value}).validated(LIMIT)
    except InvalidOptions:
        pass
