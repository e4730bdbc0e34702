"""Fixtures of the modelhub tests: adapters made on the tiny Llama, reference models to compare
against, a gated worker (`served`), and `staff_client`: staff holding every modelhub permission."""

import pytest

from modelhub.models import Adapter
from tests.adapters import make_tiny_adapter
from tests.modelhub.served import Served


@pytest.fixture
def staff_client(client, staff):
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="modelhub"))
    client.force_login(staff)
    return client


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": make_tiny_adapter(tiny_model_dir, root / "alpha", 1),
        "beta": make_tiny_adapter(tiny_model_dir, root / "beta", 2, ("q_proj", "k_proj", "down_proj")),
    }


@pytest.fixture
def adapter_rows(tiny_spec, adapter_dirs):
    return {
        name: Adapter.objects.create(name=name, base=tiny_spec, path=str(path)) for name, path in adapter_dirs.items()
    }


@pytest.fixture
def served(tiny_spec):
    return Served(tiny_spec)


@pytest.fixture(scope="module")
def reference_models(tiny_model_dir, adapter_dirs):
    """Freshly loaded models to compare against: the base and each adapter as its own PeftModel."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    models = {None: AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)}
    for name, folder in adapter_dirs.items():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        models[name] = PeftModel.from_pretrained(base, folder)
    return tokenizer, models
