"""Conversation pages: login, ownership (404 for anyone else's), CSRF, htmx fragments."""

import pytest
from django.test import Client
from django.urls import reverse

from conversations.models import Conversation


def test_pages_require_login(client, conversation):
    for url in [reverse("conversations:list"), conversation.get_absolute_url()]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_login_page_logs_a_user_in(client, owner):
    response = client.post(reverse("login"), {"username": "owner", "password": "owner-pass-123"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_the_list_shows_only_the_users_own_conversations(owner_client, owner, other_user):
    Conversation.objects.create(owner=owner, title="Mine about tea")
    Conversation.objects.create(owner=other_user, title="Secret plans")
    page = owner_client.get("/").content.decode()
    assert "Mine about tea" in page and "Secret plans" not in page


def test_new_makes_a_conversation_for_the_user_with_the_default_model(owner_client, owner):
    from tests.conftest import install_scripted

    spec, _ = install_scripted()
    response = owner_client.post(reverse("conversations:new"))
    conversation = Conversation.objects.get(owner=owner)
    assert response["Location"] == conversation.get_absolute_url()
    assert conversation.model == spec


def test_the_detail_page_shows_history_escaped_with_statuses(owner_client, conversation):
    conversation.add_user_message("<script>alert(1)</script>")
    conversation.messages.create(role="assistant", content="partial", status="stopped", model_name="m")
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "Stopped" in page
    assert f'data-socket="/ws/conversations/{conversation.pk}/"' in page


@pytest.mark.parametrize("name, method", [("detail", "get"), ("rename", "post"), ("delete", "post")])
def test_another_users_conversation_is_a_404(client, other_user, conversation, name, method):
    client.force_login(other_user)
    url = reverse(f"conversations:{name}", args=[conversation.pk])
    response = getattr(client, method)(url, {"title": "pwned"})
    assert response.status_code == 404
    conversation.refresh_from_db()
    assert conversation.title != "pwned"


def test_rename_through_htmx_returns_the_title_fragment(owner_client, conversation):
    url = reverse("conversations:rename", args=[conversation.pk])
    response = owner_client.post(url, {"title": "Trip <planning>"}, headers={"HX-Request": "true"})
    conversation.refresh_from_db()
    assert conversation.title == "Trip <planning>"
    html = response.content.decode()
    assert html.lstrip().startswith('<form id="title"') and "<html" not in html
    assert 'value="Trip &lt;planning&gt;"' in html


def test_delete_through_htmx_removes_it_and_redirects_home(owner_client, conversation):
    conversation.add_user_message("bye")
    url = reverse("conversations:delete", args=[conversation.pk])
    response = owner_client.post(url, headers={"HX-Request": "true"})
    assert response["HX-Redirect"] == "/"
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_delete_by_get_is_refused(owner_client, conversation):
    response = owner_client.get(reverse("conversations:delete", args=[conversation.pk]))
    assert response.status_code == 405
    assert Conversation.objects.filter(pk=conversation.pk).exists()


@pytest.mark.parametrize("name", ["new", "rename", "delete"])
def test_posts_without_a_csrf_token_are_refused(owner, conversation, name):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    args = [] if name == "new" else [conversation.pk]
    response = client.post(reverse(f"conversations:{name}", args=args), {"title": "x"})
    assert response.status_code == 403
    assert Conversation.objects.filter(owner=owner).count() == 1
    conversation.refresh_from_db()
    assert conversation.title != "x"
