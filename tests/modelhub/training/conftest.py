"""Fixtures of the fine-tuning tests: staff holding every modelhub permission, and a queued job."""

import pytest

from modelhub.models import FinetuneJob


@pytest.fixture
def staff_with_rights(staff):
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="modelhub"))
    return staff


@pytest.fixture
def queued_job(tiny_spec, tmp_path):
    job = FinetuneJob.objects.create_for(tiny_spec, "sft", tmp_path / "t.jsonl", tmp_path / "e.jsonl")
    job.record_progress(3, 10, {"train": [[1, 5.7], [2, 5.2], [3, 4.9]], "eval": [[0, 5.8], [2, 5.1]]})
    return job
