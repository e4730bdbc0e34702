"""Failed-login throttling (django-axes, settings LOGIN_FAILURE_LIMIT / LOGIN_LOCKOUT_MINUTES): the count
is kept in the database, so every process sees it; one username from one address is locked, with a page
that says for how long."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.urls import reverse

LOGIN = reverse("login")


def log_in(client, username, password, address="10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def fail(client, username, times, address="10.0.0.1"):
    """`times` wrong passwords; the statuses (200: the form again, with its error; 429: locked)."""
    return [log_in(client, username, "wrong-password", address).status_code for _ in range(times)]


def test_after_the_limit_even_the_right_password_is_refused_with_when_to_come_back(client, owner, settings):
    assert fail(client, "owner", settings.AXES_FAILURE_LIMIT) == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
    assert AccessAttempt.objects.get(username="owner").failures_since_start == settings.AXES_FAILURE_LIMIT
    response = log_in(client, "owner", "owner-pass-123")
    page = response.content.decode()
    assert response.status_code == 429 and response["Retry-After"] == str(15 * 60)
    assert "Too many failed logins" in page and "locked for 15 minutes" in page
    assert "_auth_user_id" not in client.session


def test_the_lock_is_per_username_and_address(client, owner, other_user, settings):
    fail(client, "owner", settings.AXES_FAILURE_LIMIT)
    assert log_in(client, "intruder", "intruder-pass-123").status_code == 302  # another username: not locked
    client.logout()
    assert log_in(client, "owner", "owner-pass-123", address="10.0.0.2").status_code == 302  # another address


def test_a_success_resets_the_count(client, owner, settings):
    fail(client, "owner", settings.AXES_FAILURE_LIMIT - 1)
    assert log_in(client, "owner", "owner-pass-123").status_code == 302
    client.logout()
    fail(client, "owner", settings.AXES_FAILURE_LIMIT - 1)
    assert log_in(client, "owner", "owner-pass-123").status_code == 302


def test_the_lock_ends_after_the_cool_off(client, owner, settings):
    fail(client, "owner", settings.AXES_FAILURE_LIMIT)
    assert log_in(client, "owner", "owner-pass-123").status_code == 429
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16))
    assert log_in(client, "owner", "owner-pass-123").status_code == 302


def test_the_admin_login_is_throttled_too(db, client, settings):
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser("root", password="root-pass-12345")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(reverse("admin:login"), {"username": "root", "password": "nope"}, REMOTE_ADDR="10.0.0.9")
    response = client.post(
        reverse("admin:login"), {"username": "root", "password": "root-pass-12345"}, REMOTE_ADDR="10.0.0.9"
    )
    assert response.status_code == 429


@pytest.mark.parametrize("password", ["short", "password123", "qwertyuiop"])
def test_weak_passwords_are_refused_by_the_validators(owner, password):
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        validate_password(password, owner)
