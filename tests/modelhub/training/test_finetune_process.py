"""A fine-tune job whose process dies without a word (killed, out of memory, a restart) is
marked failed when an admin looks, instead of staying "running" forever.

Real processes stand in for the training process here: what is under test is telling a
live job's process from a dead one, a reaped one and a stranger that reused its pid."""

import signal
import socket
import subprocess
import sys

import pytest
from django.urls import reverse

from modelhub.models import FinetuneJob
from tests.waiting import wait_until


def looks_like_training(job):
    """A live process whose command line is the training command's: `... finetune --job ID`."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "finetune", "--job", str(job.pk)])


def running_as(job, pid, host=None):
    FinetuneJob.objects.filter(pk=job.pk).update(status="running", pid=pid, host=host or socket.gethostname())
    job.refresh_from_db()
    return job


def look(client, job):
    assert client.get(reverse("admin:modelhub_finetunejob_change", args=[job.pk])).status_code == 200
    job.refresh_from_db()
    return job


@pytest.fixture
def staff_client(client, staff_with_rights):
    client.force_login(staff_with_rights)
    return client


def process_state(pid):
    """The kernel's one-letter state of a process: R running, S sleeping, Z a zombie (exited, not reaped)…"""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_a_job_whose_process_has_exited_is_failed_with_a_reason(staff_client, queued_job):
    gone = subprocess.Popen(["true"])
    gone.wait()
    job = look(staff_client, running_as(queued_job, gone.pid))

    assert job.status == "failed" and f"pid {gone.pid}" in job.error and "killed" in job.error
    assert job.finished_at is not None


def test_a_killed_process_not_yet_reaped_counts_as_gone(staff_client, queued_job):
    process = looks_like_training(queued_job)
    process.send_signal(signal.SIGKILL)
    try:
        job = running_as(queued_job, process.pid)
        wait_until(lambda: process_state(process.pid) == "Z")  # until the kernel has turned it into a zombie
        assert look(staff_client, job).status == "failed"
    finally:
        process.wait()


def test_a_live_training_process_keeps_its_job_running(staff_client, queued_job):
    process = looks_like_training(queued_job)
    try:
        job = look(staff_client, running_as(queued_job, process.pid))
        listing = staff_client.get(reverse("admin:modelhub_finetunejob_changelist"))
        job.refresh_from_db()
    finally:
        process.kill()
        process.wait()
    assert listing.status_code == 200 and job.status == "running" and job.error == ""


def test_another_program_on_the_same_pid_does_not_keep_a_job_alive(staff_client, queued_job):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        job = look(staff_client, running_as(queued_job, stranger.pid))
    finally:
        stranger.kill()
        stranger.wait()
    assert job.status == "failed"


def test_a_job_running_on_another_machine_is_left_alone(staff_client, queued_job):
    gone = subprocess.Popen(["true"])
    gone.wait()
    job = look(staff_client, running_as(queued_job, gone.pid, host="gpu-box-2"))

    assert job.status == "running"


def test_a_finished_job_keeps_its_result_after_its_process_exits(staff_client, queued_job):
    gone = subprocess.Popen(["true"])
    gone.wait()
    queued_job.launched("/nowhere.log", gone.pid)
    FinetuneJob.objects.filter(pk=queued_job.pk).update(status="succeeded")
    job = look(staff_client, queued_job)

    assert job.status == "succeeded" and job.error == "" and job.host == socket.gethostname()
