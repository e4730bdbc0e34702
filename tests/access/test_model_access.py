"""Per-model access: a model or adapter limited to groups is seen and used only by their members, in
the model menu, compare, the arena and the API; a conversation whose model was withdrawn says so and
offers the default. (ModelSpec.objects.usable_by, Adapter.objects.open_to / usable_by.)"""

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse

from conversations.access import roles
from conversations.arena.views import ArenaForm
from conversations.forms import ModelChoiceForm
from conversations.models import ApiKey, Conversation, Message
from modelhub.models import Adapter, ModelSpec
from tests.factories import install_scripted
from tests.sockets import open_socket


@pytest.fixture
def team(db):
    return Group.objects.create(name="team-a")


@pytest.fixture
def models_(db, team):
    """The default model for everyone; `private` only for team-a; an open adapter of each, and one
    adapter of the default model limited to team-a."""
    default, _ = install_scripted()
    private = ModelSpec.objects.create(name="private", source="-", backend="scripted")
    private.groups.add(team)
    Adapter.objects.create(name="open", base=default, path="/a")
    team_adapter = Adapter.objects.create(name="team-only", base=default, path="/b")
    team_adapter.groups.add(team)
    Adapter.objects.create(name="of-private", base=private, path="/c")
    return default, private


@pytest.fixture
def member(owner, team):
    owner.groups.add(team)
    return owner


def menu(user):
    return sorted(label for _, _, label in ModelChoiceForm(user).options.values())


def test_members_see_the_limited_model_and_adapter_and_others_do_not(models_, member, other_user):
    assert menu(member) == ["private", "private + of-private", "scripted", "scripted + open", "scripted + team-only"]
    assert menu(other_user) == ["scripted", "scripted + open"]


def test_a_superuser_sees_every_enabled_model_and_adapter(models_):
    root = get_user_model().objects.create_superuser("root", password="x-long-password-9")
    assert len(menu(root)) == 5


def test_leaving_the_group_takes_the_model_away(models_, member, team):
    member.groups.remove(team)
    assert menu(member) == ["scripted", "scripted + open"]


@pytest.mark.django_db(transaction=True)  # the API's async views reach the database from their own threads
def test_the_api_lists_and_serves_only_what_the_keys_user_may_use(client, models_, member, other_user):
    for user, listed, private_status in ((member, True, 200), (other_user, False, 404)):
        key = ApiKey.objects.issue(user, "t")[1]
        auth = {"Authorization": f"Bearer {key}"}
        names = [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
        assert ("private" in names) is listed and ("scripted:team-only" in names) is listed
        body = json.dumps({"model": "private", "messages": [{"role": "user", "content": "hi"}]})
        response = client.post("/v1/chat/completions", body, content_type="application/json", headers=auth)
        assert response.status_code == private_status
        if private_status == 404:
            assert response.json()["error"]["code"] == "model_not_found"


def test_a_new_conversation_cannot_choose_a_model_its_user_may_not_use(client, models_, other_user):
    _, private = models_
    client.force_login(other_user)
    client.post(reverse("conversations:new"), {"choice": f"m{private.pk}"})
    assert Conversation.objects.get(owner=other_user).model.name == "scripted"


@pytest.mark.django_db(transaction=True)
async def test_comparing_with_a_model_of_another_group_is_refused_and_saves_nothing(models_, other_user):
    default, private = models_
    conversation = await Conversation.objects.acreate(owner=other_user)
    socket, _, _ = await open_socket(other_user, conversation)
    await socket.send_json_to({"type": "compare", "content": "q", "models": [f"m{default.pk}", f"m{private.pk}"]})
    assert (await socket.receive_json_from(timeout=5))["code"] == "unknown_model"
    assert await Message.objects.acount() == 0
    await socket.disconnect()


def test_a_conversation_whose_model_was_withdrawn_says_so_and_offers_the_default(client, models_, member, team):
    default, private = models_
    conversation = Conversation.objects.create(owner=member, model=private)
    client.force_login(member)
    assert 'id="model-withdrawn"' not in client.get(conversation.get_absolute_url()).content.decode()
    member.groups.remove(team)
    page = client.get(conversation.get_absolute_url()).content.decode()
    assert "private is no longer available to you" in page
    assert f'<option value="m{default.pk}" selected>' in page
    assert conversation.model_for(member) == (default, None)  # the next reply's model
    response = client.post(
        reverse("conversations:model", args=[conversation.pk]),
        {"choice": f"m{default.pk}"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200 and "model-withdrawn" not in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.model == default


def test_a_withdrawn_adapter_is_named_and_the_base_answers(client, models_, member, team):
    default, _ = models_
    adapter = Adapter.objects.get(name="team-only")
    conversation = Conversation.objects.create(owner=member, model=default, adapter=adapter)
    member.groups.remove(team)
    client.force_login(member)
    assert (
        "scripted + team-only is no longer available to you"
        in client.get(conversation.get_absolute_url()).content.decode()
    )
    assert conversation.model_for(member) == (default, None)


def test_the_arena_offers_a_model_admin_only_adapters_of_their_groups(models_, team):
    admin = get_user_model().objects.create_user("modeller")
    admin.groups.add(Group.objects.get(name=roles.MODEL_ADMIN))
    names = sorted(a.name for a in ArenaForm(admin).fields["candidate"].queryset)
    assert names == ["open"]
    admin.groups.add(team)
    admin = get_user_model().objects.get(pk=admin.pk)  # permissions are cached per instance
    assert sorted(a.name for a in ArenaForm(admin).fields["candidate"].queryset) == ["of-private", "open", "team-only"]


def test_group_limits_are_set_in_the_admin(admin_client, models_, team):
    _, private = models_
    page = admin_client.get(reverse("admin:modelhub_modelspec_change", args=[private.pk])).content.decode()
    assert 'name="groups"' in page
    page = admin_client.get(
        reverse("admin:modelhub_adapter_change", args=[Adapter.objects.get(name="open").pk])
    ).content.decode()
    assert 'name="groups"' in page
