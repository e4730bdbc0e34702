"""API keys: the page where a user makes, sees and revokes their own keys (conversations/openai_api/keys.py),
the model's lookup (models/api_key.py), the admin, and error reports that never show a key.

Users by role: `owner` makes keys, `other_user` must never see or revoke them, `staff` reads keys
in the admin and revokes them only with the change permission on API keys."""

import hashlib
import sys

import pytest
from django.contrib.auth.models import Permission
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.views.debug import ExceptionReporter

from conversations.models import ApiKey
from conversations.models.api_key import ApiKeyQuerySet
from modelhub.models import Adapter, ModelSpec

PAGE = reverse("conversations:api_keys")


def revoke_url(key):
    return reverse("conversations:api_key_revoke", args=[key.pk])


def stored_values(key):
    return [str(getattr(key, field.attname)) for field in ApiKey._meta.concrete_fields]


@pytest.fixture
def owner_key(owner):
    return ApiKey.objects.issue(owner, "vim plugin")


@pytest.fixture
def other_client(client, other_user):
    client.force_login(other_user)
    return client


def staff_client_with(staff, *codenames):
    staff.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="conversations", codename__in=codenames)
    )
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def revoking_staff_client(staff):
    """Staff who may view and change API keys: the revoke action is theirs."""
    return staff_client_with(staff, "view_apikey", "change_apikey")


@pytest.fixture
def viewing_staff_client(staff):
    """Staff who may only view API keys."""
    return staff_client_with(staff, "view_apikey")


# --- The page ----------------------------------------------------------------------------------


def test_a_new_key_is_shown_once_and_only_its_digest_is_stored(owner_client, owner):
    response = owner_client.post(PAGE, {"name": "my editor"})

    assert response.status_code == 200  # the key is in this response's page, not behind a redirect
    raw = response.context["raw_key"]
    assert raw.startswith("cs-") and raw in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get()
    assert (key.user, key.name, key.keep_calls, key.prefix) == (owner, "my editor", True, raw[:10])
    assert key.digest == hashlib.sha256(raw.encode()).hexdigest()
    assert not any(raw in value for value in stored_values(key))
    assert not any(raw in str(session.get_decoded()) for session in Session.objects.all())
    assert raw not in str(response.cookies)


def test_the_page_never_shows_the_key_again(owner_client):
    raw = owner_client.post(PAGE, {"name": "my editor"}).context["raw_key"]

    page = owner_client.get(PAGE).content.decode()

    assert raw not in page
    assert f"{raw[:10]}…" in page and "my editor" in page and "never" in page


def test_do_not_keep_my_calls_makes_a_key_that_keeps_no_conversation(owner_client):
    owner_client.post(PAGE, {"name": "notebook", "dont_keep_calls": "on"})

    assert ApiKey.objects.get().keep_calls is False
    assert "calls not kept" in owner_client.get(PAGE).content.decode()


@pytest.mark.parametrize(
    "name, error",
    [
        ("", "Give the key a name"),
        ("   ", "Give the key a name"),
        ("x" * 101, "at most 100 characters"),
    ],
)
def test_a_blank_or_too_long_name_gets_a_form_error_and_makes_no_key(owner_client, name, error):
    response = owner_client.post(PAGE, {"name": name})

    assert response.status_code == 200 and response.context["raw_key"] is None
    assert error in response.content.decode()
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("name", ["", "  ", "x" * 101])
def test_issue_refuses_a_name_the_form_would_refuse(owner, name):
    with pytest.raises(ValidationError):
        ApiKey.objects.issue(owner, name)
    assert not ApiKey.objects.exists()


def test_the_page_lists_only_the_users_own_keys(other_client, owner_key):
    page = other_client.get(PAGE).content.decode()

    assert "vim plugin" not in page and owner_key[0].prefix not in page and "No keys yet." in page


def test_the_owner_revokes_their_key(owner_client, owner_key):
    key, raw = owner_key

    response = owner_client.post(revoke_url(key))

    assert response.status_code == 302 and response["Location"] == PAGE
    key.refresh_from_db()
    assert key.revoked and ApiKey.objects.authenticate(raw) is None
    assert "revoked" in owner_client.get(PAGE).content.decode()


def test_a_revoke_from_htmx_redirects_the_page(owner_client, owner_key):
    response = owner_client.post(revoke_url(owner_key[0]), headers={"HX-Request": "true"})

    assert response.status_code == 200 and response["HX-Redirect"] == PAGE


def test_a_user_cannot_revoke_another_users_key(other_client, owner_key):
    key, raw = owner_key

    assert other_client.post(revoke_url(key)).status_code == 404
    key.refresh_from_db()
    assert not key.revoked and ApiKey.objects.authenticate(raw) == key


def test_create_and_revoke_need_a_csrf_token(owner, owner_key):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    key, raw = owner_key

    assert client.post(PAGE, {"name": "sneaky"}).status_code == 403
    assert client.post(revoke_url(key)).status_code == 403
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["vim plugin"]
    assert ApiKey.objects.authenticate(raw) == key


@pytest.mark.parametrize("method, url", [("get", PAGE), ("post", PAGE), ("post", "/keys/1/revoke/")])
def test_anonymous_users_are_sent_to_login(client, method, url):
    response = getattr(client, method)(url)

    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_the_page_explains_the_base_url_and_the_model_names(owner_client):
    spec = ModelSpec.objects.create(name="llama", source="-", backend="scripted")
    Adapter.objects.create(name="pirate", base=spec, path="-")
    Adapter.objects.create(name="retired", base=spec, path="-", enabled=False)
    ModelSpec.objects.create(name="staff-only", source="-", backend="scripted", visibility="staff")

    page = owner_client.get(PAGE).content.decode()

    assert "http://testserver/v1" in page and "OpenAI(base_url=" in page
    assert "<code>llama</code>" in page and "<code>llama:pirate</code>" in page
    assert "llama:retired" not in page and "staff-only" not in page


def test_the_page_costs_the_same_queries_for_many_keys(owner_client, owner, django_assert_max_num_queries):
    for number in range(20):
        key, _ = ApiKey.objects.issue(owner, f"key {number}", keep_calls=number % 3 == 0)
        if number % 2:
            key.revoke()

    with django_assert_max_num_queries(7):  # 2 of them: the user's permissions and their groups'
        assert owner_client.get(PAGE).status_code == 200


def test_the_navigation_links_the_page(owner_client):
    assert f'href="{PAGE}"' in owner_client.get(reverse("conversations:list")).content.decode()


# --- Authenticating a call -----------------------------------------------------------------------


def test_authenticate_finds_the_key_of_its_raw_key_only(owner_key):
    key, raw = owner_key

    assert ApiKey.objects.authenticate(raw) == key
    assert ApiKey.objects.authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert ApiKey.objects.authenticate(raw[3:]) is None
    assert ApiKey.objects.authenticate(None) is None


def test_a_revoked_key_fails_at_once(owner_key):
    key, raw = owner_key

    key.revoke()

    assert ApiKey.objects.authenticate(raw) is None


def test_a_key_of_an_inactive_user_fails(owner, owner_key):
    owner.is_active = False
    owner.save()

    assert ApiKey.objects.authenticate(owner_key[1]) is None


def test_a_call_notes_when_the_key_was_used_at_most_once_a_minute(owner_key, django_assert_num_queries):
    key, raw = owner_key
    assert key.last_used_at is None

    ApiKey.objects.authenticate(raw)
    key.refresh_from_db()
    first_use = key.last_used_at

    with django_assert_num_queries(1):  # the lookup, and no write a second time within the minute
        ApiKey.objects.authenticate(raw)
    key.refresh_from_db()
    assert first_use is not None and key.last_used_at == first_use


# --- The admin -----------------------------------------------------------------------------------


def test_staff_with_the_change_permission_revoke_keys_in_the_admin(revoking_staff_client, owner_key, other_user):
    key, raw = owner_key
    other_key, other_raw = ApiKey.objects.issue(other_user, "script")

    response = revoking_staff_client.post(
        reverse("admin:conversations_apikey_changelist"), {"action": "revoke", "_selected_action": [key.pk]}
    )

    assert response.status_code == 302
    assert ApiKey.objects.authenticate(raw) is None and ApiKey.objects.authenticate(other_raw) == other_key


def test_staff_without_the_change_permission_do_not_get_the_revoke_action(viewing_staff_client, owner_key):
    key, raw = owner_key
    url = reverse("admin:conversations_apikey_changelist")

    response = viewing_staff_client.get(url)
    viewing_staff_client.post(url, {"action": "revoke", "_selected_action": [key.pk]})

    assert response.status_code == 200 and 'value="revoke"' not in response.content.decode()
    assert ApiKey.objects.authenticate(raw) == key


def test_the_admin_change_page_never_shows_the_digest(admin_client, owner_key):
    key, raw = owner_key

    page = admin_client.get(reverse("admin:conversations_apikey_change", args=[key.pk])).content.decode()

    assert key.prefix in page and "vim plugin" in page
    assert key.digest not in page and raw not in page and 'name="name"' not in page


def test_nobody_adds_a_key_in_the_admin_and_superusers_delete_them(admin_client, owner_key):
    key = owner_key[0]

    assert admin_client.get(reverse("admin:conversations_apikey_add")).status_code == 403
    admin_client.post(reverse("admin:conversations_apikey_delete", args=[key.pk]), {"post": "yes"})
    assert not ApiKey.objects.exists()


# --- Error reports --------------------------------------------------------------------------------


def a_view_that_fails(request):
    header = request.headers["Authorization"]
    return ApiKey.objects.authenticate(header.removeprefix("Bearer "))


@pytest.mark.parametrize("debug", [False, True])
def test_error_reports_show_no_key_in_the_header_nor_in_any_variable(rf, settings, monkeypatch, owner_key, debug):
    settings.DEBUG = debug
    raw = owner_key[1]
    request = rf.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw}")

    def database_is_gone(queryset):
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(ApiKeyQuerySet, "live", database_is_gone)
    try:
        a_view_that_fails(request)
    except RuntimeError:
        reporter = ExceptionReporter(request, *sys.exc_info())

    text, html = reporter.get_traceback_text(), reporter.get_traceback_html()  # the e-mail's body, its attachment
    for report in (text, html):
        assert "the database is gone" in report and "HTTP_AUTHORIZATION" in report
        assert raw not in report
    assert "Local vars" in html and "cs-********************" in html  # variables shown, the key in them redacted
