"""Roles (conversations/access/roles.py) against every entry point: the table below is what each role may do,
and one parametrized test walks it through the real stack (pages, the admin and its actions, exports,
fine-tunes, arenas, the socket, the API). Then: roles are groups made by the migration and kept whole,
new accounts join "user", a role taken away closes that user's open sockets at once."""

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import AsyncClient
from django.urls import reverse

from chatsite.asgi import application
from conversations.access import roles
from conversations.models import ApiKey, Conversation
from modelhub.models import Adapter
from tests.factories import add_reply, install_scripted
from tests.sockets import HOST, ORIGIN, nothing_waiting

pytestmark = [pytest.mark.django_db(transaction=True)]

WHO = ("anonymous", "no role", roles.USER, roles.REVIEWER, roles.MODEL_ADMIN, roles.ADMIN)
OK, LOGIN, DENIED, MISSING, NO_KEY = "ok", "login", 403, 404, 401
OPEN, CLOSED_4403, CLOSED_4404 = "open", 4403, 4404

# entry point: (how to reach it, what each of WHO gets). "login": sent to a login page (the site's or the
# admin's); "own": the role's own conversation, answer or key; "other's": another account's.
TABLE = {
    "chat list": (("get", "conversations:list"), (LOGIN, DENIED, OK, DENIED, DENIED, OK)),
    "own conversation": (("get", "conversations:detail", "own"), (LOGIN, DENIED, OK, DENIED, DENIED, OK)),
    "other's conversation": (
        ("get", "conversations:detail", "other's"),
        (LOGIN, DENIED, MISSING, DENIED, DENIED, MISSING),
    ),
    "own conversation's earlier messages": (
        ("get", "conversations:earlier", "own, before its answer"),
        (LOGIN, DENIED, OK, DENIED, DENIED, OK),
    ),
    "other's conversation's earlier messages": (
        ("get", "conversations:earlier", "other's, before its answer"),
        (LOGIN, DENIED, MISSING, DENIED, DENIED, MISSING),
    ),
    "new conversation": (("post", "conversations:new"), (LOGIN, DENIED, OK, DENIED, DENIED, OK)),
    "rate own answer": (
        ("post", "conversations:rate", "own answer", {"rating": "up"}),
        (LOGIN, DENIED, OK, DENIED, DENIED, OK),
    ),
    "rate other's answer": (
        ("post", "conversations:rate", "other's answer", {"rating": "up"}),
        (LOGIN, DENIED, MISSING, DENIED, DENIED, MISSING),
    ),
    "own answer's prompt": (("get", "conversations:prompt", "own answer"), (LOGIN, DENIED, OK, DENIED, DENIED, OK)),
    "API keys page": (("get", "conversations:api_keys"), (LOGIN, DENIED, OK, DENIED, DENIED, OK)),
    "privacy page": (("get", "conversations:privacy"), (LOGIN, OK, OK, OK, OK, OK)),
    "account page": (("get", "conversations:account"), (LOGIN, OK, OK, OK, OK, OK)),
    "review queue": (("get", "conversations:review_queue"), (LOGIN, DENIED, DENIED, OK, DENIED, OK)),
    "review: take the next item": (("post", "conversations:review_next"), (LOGIN, DENIED, DENIED, OK, DENIED, OK)),
    "arena list": (("get", "conversations:arena_list"), (LOGIN, DENIED, DENIED, DENIED, OK, OK)),
    "admin index": (("get", "admin:index"), (LOGIN, LOGIN, LOGIN, LOGIN, OK, OK)),
    "admin: models": (("get", "admin:modelhub_modelspec_changelist"), (LOGIN, LOGIN, LOGIN, LOGIN, OK, OK)),
    "admin: promote an adapter": (
        ("post", "admin:modelhub_adapter_changelist", "adapter action", {"action": "promote"}),
        (LOGIN, LOGIN, LOGIN, LOGIN, OK, OK),
    ),
    "admin: fine-tune": (("get", "admin:modelhub_finetunejob_add"), (LOGIN, LOGIN, LOGIN, LOGIN, OK, OK)),
    "admin: export a snapshot": (
        ("get", "admin:conversations_datasetsnapshot_add"),
        (LOGIN, LOGIN, LOGIN, LOGIN, OK, OK),
    ),
    "admin: conversations": (
        ("get", "admin:conversations_conversation_changelist"),
        (LOGIN, LOGIN, LOGIN, LOGIN, DENIED, OK),
    ),
    "admin: users": (("get", "admin:auth_user_changelist"), (LOGIN, LOGIN, LOGIN, LOGIN, DENIED, OK)),
    "admin: usage": (("get", "admin:conversations_quota_usage"), (LOGIN, LOGIN, LOGIN, LOGIN, DENIED, OK)),
    "admin: reviewers' agreement": (
        ("get", "admin:conversations_review_agreement"),
        (LOGIN, LOGIN, LOGIN, LOGIN, DENIED, OK),
    ),
    "socket of own conversation": (("socket",), (CLOSED_4404, CLOSED_4403, OPEN, CLOSED_4403, CLOSED_4403, OPEN)),
    "API: models": (("api", "get", "/v1/models"), (NO_KEY, DENIED, OK, DENIED, DENIED, OK)),
    "API: chat completion": (("api", "post", "/v1/chat/completions"), (NO_KEY, DENIED, OK, DENIED, DENIED, OK)),
}


class Place:
    """One account per role, each with a conversation, an answer and an API key; the scripted model."""

    def __init__(self):
        self.spec, _ = install_scripted(chunks=["fine"])
        self.adapter = Adapter.objects.create(name="candidate", base=self.spec, path="/nowhere", enabled=False)
        self.accounts = {}
        User = get_user_model()
        for who in WHO[1:]:
            user = User.objects.create_user(who.replace(" ", "-"))
            user.groups.set([] if who == "no role" else [Group.objects.get(name=who)])
            conversation = Conversation.objects.create(owner=user, model=self.spec)
            conversation.add_user_message("hello")
            answer = add_reply(conversation, "hi there", spec=self.spec)
            self.accounts[who] = {
                "user": user,
                "conversation": conversation,
                "answer": answer,
                "key": ApiKey.objects.issue(user, "tests")[1],
            }
        self.stranger = self.accounts[roles.USER]  # the "other" account of every other role
        self.stranger_of_user = self.accounts[roles.ADMIN]

    def target(self, who, what):
        mine = self.accounts.get(who) or self.accounts[roles.USER]
        other = self.stranger_of_user if who == roles.USER else self.stranger
        account = other if what.startswith("other's") else mine
        if what.endswith("before its answer"):  # a query string: ?before=<the answer>
            return [account["conversation"].pk], {"before": account["answer"].pk}
        if what.endswith("answer"):
            return [account["conversation"].pk, account["answer"].pk]
        return [account["conversation"].pk]


async def outcome(place, who, how):
    kind = how[0]
    if kind == "socket":
        return await _socket(place, who)
    if kind == "api":
        return await _api(place, who, *how[1:])
    method, name, *rest = how
    target = rest[0] if rest else None
    data = rest[1] if len(rest) > 1 else {}
    if target == "adapter action":
        data = {**data, "_selected_action": [place.adapter.pk]}
        url = reverse(name)
    else:
        args = place.target(who, target) if target else None
        if isinstance(args, tuple):
            args, data = args
        url = reverse(name, args=args)
    client = AsyncClient()
    if who != "anonymous":
        await client.aforce_login(place.accounts[who]["user"])
    response = await getattr(client, method)(url, data)
    if response.status_code == 302:
        location = response["Location"]
        return LOGIN if location.startswith((reverse("login"), reverse("admin:login"))) else OK
    return OK if response.status_code == 200 else response.status_code


async def _socket(place, who):
    headers = [HOST, ORIGIN]
    if who != "anonymous":
        client = AsyncClient()
        await client.aforce_login(place.accounts[who]["user"])
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    pk = place.target(who if who != "anonymous" else roles.USER, "own")[0]
    communicator = WebsocketCommunicator(application, f"/ws/conversations/{pk}/", headers=headers)
    connected, code = await communicator.connect()
    if connected:  # accepted at once, then checked: closed with a code, or answering a sync
        await communicator.send_json_to({"type": "sync"})
        output = await communicator.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            connected, code = False, output["code"]
        else:
            assert json.loads(output["text"])["type"] == "path"
    await communicator.disconnect()
    return OPEN if connected else code


async def _api(place, who, method, path):
    headers = {} if who == "anonymous" else {"Authorization": f"Bearer {place.accounts[who]['key']}"}
    body = json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "hi"}]})
    client = AsyncClient()
    if method == "get":
        response = await client.get(path, headers=headers)
    else:
        response = await client.post(path, body, content_type="application/json", headers=headers)
    return OK if response.status_code == 200 else response.status_code


@pytest.mark.parametrize("entry", list(TABLE))
async def test_each_role_reaches_exactly_what_the_table_says(entry):
    how, expected = TABLE[entry]
    place = await sync_to_async(Place)()
    got = {who: await outcome(place, who, how) for who in WHO}
    assert got == dict(zip(WHO, expected))
    if entry == "admin: promote an adapter":
        await place.adapter.arefresh_from_db()
        assert place.adapter.enabled  # a model admin promoted it; nobody refused did anything


def test_the_roles_are_groups_with_the_permissions_the_table_needs(db):
    user, reviewer, model_admin, admin = (Group.objects.get(name=name) for name in roles.ROLES)
    assert set(user.permissions.values_list("codename", flat=True)) == {"chat"}
    assert set(reviewer.permissions.values_list("codename", flat=True)) == {"review_feedback"}
    assert {"add_finetunejob", "change_adapter", "add_arena", "add_datasetsnapshot"} <= set(
        model_admin.permissions.values_list("codename", flat=True)
    )
    assert not model_admin.permissions.filter(codename__in=["chat", "view_conversation", "change_user"]).exists()
    from django.contrib.auth.models import Permission

    assert admin.permissions.count() == Permission.objects.count()


def test_sync_gives_the_roles_back_what_was_taken_and_keeps_what_was_added(db):
    from django.apps import apps
    from django.contrib.auth.models import Permission

    user = Group.objects.get(name=roles.USER)
    user.permissions.clear()
    extra = Permission.objects.get(codename="view_modelspec")
    Group.objects.get(name=roles.REVIEWER).permissions.add(extra)
    roles.sync(apps)
    assert set(user.permissions.values_list("codename", flat=True)) == {"chat"}
    assert Group.objects.get(name=roles.REVIEWER).permissions.filter(pk=extra.pk).exists()


def test_a_new_account_joins_the_configured_groups(db, settings):
    User = get_user_model()
    assert list(User.objects.create_user("new").groups.values_list("name", flat=True)) == [roles.USER]
    settings.CHATSITE_NEW_USER_GROUPS = [roles.USER, roles.REVIEWER]
    assert set(User.objects.create_user("both").groups.values_list("name", flat=True)) == {roles.USER, roles.REVIEWER}
    settings.CHATSITE_NEW_USER_GROUPS = []
    assert not User.objects.create_user("none").groups.exists()


# --- a role taken away ---------------------------------------------------------------------------------


async def open_socket(user):
    client = AsyncClient()
    await client.aforce_login(user)
    conversation = await Conversation.objects.filter(owner=user).afirst() or await Conversation.objects.acreate(
        owner=user
    )
    communicator = WebsocketCommunicator(
        application,
        f"/ws/conversations/{conversation.pk}/",
        headers=[HOST, ORIGIN, (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())],
    )
    connected, _ = await communicator.connect()
    assert connected
    return communicator, client


async def closed_with(communicator):
    """The error frame and the close code a socket gets when it is closed."""
    frame = await communicator.receive_json_from(timeout=5)
    closing = await communicator.receive_output(timeout=5)
    assert closing["type"] == "websocket.close"
    return frame["code"], closing["code"]


@pytest.fixture
def two_users(db):
    User = get_user_model()
    return User.objects.create_user("kept"), User.objects.create_user("removed")


@pytest.mark.parametrize(
    "taken", ["the user's group", "the group's permission", "the account (disabled)", "the password (changed)"]
)
async def test_taking_access_away_closes_that_users_open_sockets_at_once_and_refuses_the_next_request(two_users, taken):
    kept, removed = two_users
    await sync_to_async(install_scripted)()
    kept_socket, _ = await open_socket(kept)
    socket, client = await open_socket(removed)
    key = (await sync_to_async(ApiKey.objects.issue)(removed, "tests"))[1]
    user_group = await Group.objects.aget(name=roles.USER)
    if taken == "the user's group":
        await sync_to_async(removed.groups.remove)(user_group)
        assert await closed_with(socket) == ("access_revoked", 4403)
    elif taken == "the group's permission":
        chat = await user_group.permissions.aget(codename="chat")
        await sync_to_async(user_group.permissions.remove)(chat)
        assert await closed_with(socket) == ("access_revoked", 4403)
        assert await closed_with(kept_socket) == ("access_revoked", 4403)  # every member's
    elif taken == "the account (disabled)":
        removed.is_active = False
        await removed.asave()
        assert await closed_with(socket) == ("session_ended", 4401)
    else:  # the session the socket was opened with is no longer valid (Django's session hash)
        changed = await get_user_model().objects.aget(pk=removed.pk)
        changed.set_password("a-new-pass-456")
        await changed.asave()
        assert await closed_with(socket) == ("session_ended", 4401)
    if taken != "the group's permission":
        assert await nothing_waiting(kept_socket)  # still open: it answers its next frame
        await kept_socket.disconnect()
    response = await client.get(reverse("conversations:list"))
    assert response.status_code in (302, 403)  # disabled: logged out; role gone: refused
    api = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    if taken == "the password (changed)":
        assert response.status_code == 302 and api.status_code == 200  # logged out; its keys are not its password
    else:
        assert api.status_code in (401, 403)
