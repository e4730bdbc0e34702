"""Conversation pages: login, ownership (404 for anyone else's), CSRF, htmx fragments."""

import pytest
from django.test import Client
from django.urls import reverse

from conversations.models import Conversation
from tests.factories import add_reply, install_scripted


def test_pages_require_login(client, conversation):
    for url in [reverse("conversations:list"), conversation.get_absolute_url()]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_login_page_logs_a_user_in(client, owner):
    response = client.post(reverse("login"), {"username": "owner", "password": "owner-pass-123"})
    assert response.status_code == 302 and response["Location"] == reverse("conversations:start")
    assert client.get(response["Location"])["Location"] == "/"
    assert client.get("/").status_code == 200


@pytest.mark.parametrize(
    "role, home",
    [("reviewer", "conversations:review_queue"), ("model admin", "admin:index"), (None, "conversations:account")],
)
def test_a_login_without_the_chat_lands_where_the_role_may_go(client, owner, role, home):
    from django.contrib.auth.models import Group

    owner.groups.set([Group.objects.get(name=role)] if role else [])
    client.force_login(owner)
    assert client.get(reverse("conversations:start"))["Location"] == reverse(home)
    page = client.get("/")
    assert page.status_code == 403 and "none of its roles allows it" in page.content.decode()


def test_the_list_shows_only_the_users_own_conversations(owner_client, owner, other_user):
    Conversation.objects.create(owner=owner, title="Mine about tea")
    Conversation.objects.create(owner=other_user, title="Secret plans")
    page = owner_client.get("/").content.decode()
    assert "Mine about tea" in page and "Secret plans" not in page


def test_new_makes_a_conversation_for_the_user_with_the_default_model(owner_client, owner):
    spec, _ = install_scripted()
    response = owner_client.post(reverse("conversations:new"))
    conversation = Conversation.objects.get(owner=owner)
    assert response["Location"] == conversation.get_absolute_url()
    assert conversation.model == spec


def test_the_detail_page_shows_history_escaped_with_statuses(owner_client, conversation):
    conversation.add_user_message("<script>alert(1)</script>")
    add_reply(conversation, "partial", status="stopped")
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "Stopped" in page
    assert f'data-socket="/ws/conversations/{conversation.pk}/"' in page


def test_the_send_button_starts_disabled_until_the_page_script_has_a_connection(owner_client, conversation):
    """Otherwise a message typed before the websocket opens is refused ("Not connected")."""
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert '<button type="submit" id="send-button" aria-label="Send message" disabled>' in page


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


@pytest.fixture
def models_and_adapter(db):
    from modelhub.models import Adapter, ModelSpec

    public = ModelSpec.objects.create(name="public", source="-", backend="scripted", is_default=True)
    secret = ModelSpec.objects.create(name="secret", source="-", backend="scripted", visibility="staff")
    style = Adapter.objects.create(name="style", base=public, path="/nowhere")
    return public, secret, style


def test_the_model_picker_lists_visible_models_and_their_adapters(owner_client, conversation, models_and_adapter):
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert "public + style" in page and ">public<" in page
    assert "secret" not in page


def test_choosing_a_model_and_adapter_through_htmx(owner_client, conversation, models_and_adapter):
    public, _, style = models_and_adapter
    url = reverse("conversations:model", args=[conversation.pk])
    response = owner_client.post(url, {"choice": f"m{public.pk}-a{style.pk}"}, headers={"HX-Request": "true"})
    assert response.status_code == 200 and response.content.decode().lstrip().startswith('<form id="model"')
    conversation.refresh_from_db()
    assert (conversation.model, conversation.adapter) == (public, style)


def test_a_staff_only_model_cannot_be_chosen_by_a_regular_user(owner_client, conversation, models_and_adapter):
    _, secret, _ = models_and_adapter
    url = reverse("conversations:model", args=[conversation.pk])
    response = owner_client.post(url, {"choice": f"m{secret.pk}"}, headers={"HX-Request": "true"})
    assert response.status_code == 422
    conversation.refresh_from_db()
    assert conversation.model != secret


def test_a_model_left_staff_only_falls_back_to_the_default_for_regular_users(owner, conversation, models_and_adapter):
    public, secret, _ = models_and_adapter
    conversation.choose_model(secret)
    assert conversation.model_for(owner) == (public, None)


def test_new_chat_with_a_chosen_model(owner_client, owner, models_and_adapter):
    public, _, style = models_and_adapter
    owner_client.post(reverse("conversations:new"), {"choice": f"m{public.pk}-a{style.pk}"})
    conversation = Conversation.objects.get(owner=owner)
    assert (conversation.model, conversation.adapter) == (public, style)


def test_choosing_a_model_for_someone_elses_conversation_is_a_404(client, other_user, conversation, models_and_adapter):
    public, _, _ = models_and_adapter
    client.force_login(other_user)
    response = client.post(reverse("conversations:model", args=[conversation.pk]), {"choice": f"m{public.pk}"})
    assert response.status_code == 404


def test_search_finds_titles_and_message_text_of_own_conversations_only(owner_client, owner, other_user):
    tea = Conversation.objects.create(owner=owner, title="About tea")
    Conversation.objects.create(owner=owner, title="Other").add_user_message("I love green tea in the morning")
    Conversation.objects.create(owner=owner, title="Coffee")
    Conversation.objects.create(owner=other_user, title="tea secrets")
    page = owner_client.get("/", {"q": "tea"}).content.decode()
    assert "About tea" in page and "Other" in page
    assert "Coffee" not in page and "tea secrets" not in page
    fragment = owner_client.get("/", {"q": "green morning"}, headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<ul class="conversation-list"') and "Other" in fragment
    assert tea.title not in fragment


def test_settings_are_validated_on_the_server_and_saved(owner_client, conversation, models_and_adapter):
    public, _, _ = models_and_adapter
    public.context_length = 512
    public.save()
    conversation.choose_model(public)
    url = reverse("conversations:settings", args=[conversation.pk])
    bad = owner_client.post(
        url,
        {"system_prompt": "", "temperature": "-1", "top_p": "", "max_new_tokens": "1024"},
        headers={"HX-Request": "true"},
    )
    assert bad.status_code == 422
    html = bad.content.decode()
    assert "temperature must be between 0 and 2" in html
    assert "context is 512 tokens" in html
    good = owner_client.post(
        url,
        {"system_prompt": "Be terse.", "temperature": "0.2", "top_p": "", "max_new_tokens": "64"},
        headers={"HX-Request": "true"},
    )
    assert good.status_code == 200 and "Saved." in good.content.decode()
    conversation.refresh_from_db()
    assert conversation.system_prompt == "Be terse."
    assert conversation.options == {"temperature": 0.2, "max_new_tokens": 64}


def test_the_settings_panel_shows_the_models_defaults(owner_client, conversation, models_and_adapter):
    public, _, _ = models_and_adapter
    conversation.choose_model(public)
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert f'placeholder="model default: {public.temperature}"' in page
