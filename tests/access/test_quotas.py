"""Quotas (conversations/access/quotas.py): tokens per day and replies per minute, per user and per group, from
stored usage; over a limit a turn or an API call is refused saying when the count resets, and nothing is
saved. The user sees their usage on the account page, admins per user, group and model. The same counts
across two live processes are in test_quotas_live.py."""

import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from conversations.access import quotas, roles
from conversations.models import ApiKey, Conversation, Message, Quota, UnkeptCallUsage
from tests.factories import add_reply, install_scripted
from tests.sockets import frames_until, open_socket


@pytest.fixture
def team(owner):
    group = Group.objects.create(name="team")
    owner.groups.add(group)
    return group


def used(conversation, tokens, ago=timedelta(0)):
    """A finished reply of `tokens` tokens (prompt 1 + completion), asked for `ago` ago."""
    reply = add_reply(conversation, "words", prompt_tokens=1, completion_tokens=tokens - 1)
    Message.objects.filter(pk=reply.pk).update(created_at=timezone.now() - ago)
    return reply


# --- limits ---------------------------------------------------------------------------------------------


def test_the_limits_are_the_sites_then_the_most_generous_group_then_the_users_own(owner, team, settings):
    settings.CHAT_TOKENS_PER_DAY, settings.CHAT_REPLIES_PER_MINUTE, settings.CHAT_MAX_REPLIES_PER_USER = 1000, 5, 4
    assert quotas.limits_for(owner) == quotas.Limits(1000, 5, 4)
    Quota.objects.create(group=team, tokens_per_day=5000)
    other = Group.objects.create(name="other")
    owner.groups.add(other)
    Quota.objects.create(group=other, tokens_per_day=8000, replies_per_minute=2, replies_at_once=8)
    assert quotas.limits_for(owner) == quotas.Limits(8000, 2, 8)
    Quota.objects.filter(group=team).update(replies_per_minute=0)  # 0: no limit, the most generous of all
    assert quotas.limits_for(owner) == quotas.Limits(8000, 0, 8)
    Quota.objects.create(user=owner, tokens_per_day=100, replies_at_once=2)
    assert quotas.limits_for(owner) == quotas.Limits(100, 0, 2)


def test_a_quota_is_for_one_user_or_one_group(owner, team):
    from django.db import IntegrityError, transaction

    for fields in ({}, {"user": owner, "group": team}):
        with pytest.raises(IntegrityError), transaction.atomic():
            Quota.objects.create(tokens_per_day=1, **fields)


def test_todays_tokens_count_kept_replies_and_unkept_calls_but_not_yesterdays(owner, conversation):
    used(conversation, 40)
    used(conversation, 500, ago=timedelta(days=1, hours=1))
    UnkeptCallUsage.objects.create(user=owner, model_name="m", prompt_tokens=3, completion_tokens=7)
    assert quotas.standing(owner).tokens_today == 50


# --- refusals -------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_over_the_days_tokens_a_message_is_refused_saying_when_it_resets_and_nothing_is_saved(owner, settings):
    settings.CHAT_TOKENS_PER_DAY = 100
    await sync_to_async(install_scripted)(chunks=["ok"])
    conversation = await Conversation.objects.acreate(owner=owner)
    await sync_to_async(used)(conversation, 100)
    before = await Message.objects.acount()
    socket, _, _ = await open_socket(owner, conversation)
    await socket.send_json_to({"type": "send", "content": "one more?"})
    error = (await frames_until(socket, "error"))[-1]
    assert error["code"] == "quota_exceeded"
    assert "You have used 100 of your 100 tokens for today" in error["message"]
    assert "resets at midnight (00:00 UTC), in" in error["message"]
    assert await Message.objects.acount() == before
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_past_the_replies_a_minute_a_turn_is_refused_until_the_oldest_is_a_minute_old(owner, settings):
    settings.CHAT_REPLIES_PER_MINUTE = 2
    await sync_to_async(install_scripted)(chunks=["ok"])
    conversation = await Conversation.objects.acreate(owner=owner)
    socket, _, _ = await open_socket(owner, conversation)
    for question in ("one", "two"):
        await socket.send_json_to({"type": "send", "content": question})
        await frames_until(socket, "done")
    await socket.send_json_to({"type": "send", "content": "three"})
    error = (await frames_until(socket, "error"))[-1]
    assert error["code"] == "quota_exceeded" and "2 replies in the last minute (at most 2 a minute)" in error["message"]
    assert await Message.objects.acount() == 4
    await Message.objects.filter(role="assistant").aupdate(created_at=timezone.now() - timedelta(seconds=61))
    await socket.send_json_to({"type": "send", "content": "three"})
    assert (await frames_until(socket, "done"))[-1]["status"] == "complete"
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_comparison_asks_for_two_replies(owner, settings):
    settings.CHAT_REPLIES_PER_MINUTE = 1
    spec, _ = await sync_to_async(install_scripted)(chunks=["ok"])
    conversation = await Conversation.objects.acreate(owner=owner)
    socket, _, _ = await open_socket(owner, conversation)
    key = f"m{spec.pk}"
    await socket.send_json_to({"type": "compare", "content": "q", "models": [key, key]})
    error = (await frames_until(socket, "error"))[-1]
    assert error["code"] == "quota_exceeded" and "this asks for 2" in error["message"]
    assert await Message.objects.acount() == 0
    await socket.disconnect()


def completion(client, key):
    body = json.dumps({"model": "scripted", "messages": [{"role": "user", "content": "hi there"}]})
    return client.post(
        "/v1/chat/completions", body, content_type="application/json", headers={"Authorization": f"Bearer {key}"}
    )


@pytest.mark.django_db(transaction=True)  # the API's async views reach the database from their own threads
@pytest.mark.parametrize("keep_calls", [True, False])
def test_the_api_counts_its_calls_and_refuses_past_a_quota_with_429_and_retry_after(
    client, owner, settings, keep_calls
):
    install_scripted(chunks=["a", "b", "c"])
    key = ApiKey.objects.issue(owner, "t", keep_calls=keep_calls)[1]
    assert completion(client, key).status_code == 200
    if not keep_calls:
        row = UnkeptCallUsage.objects.get()
        assert (row.user, row.model_name, row.prompt_tokens, row.completion_tokens) == (owner, "scripted", 2, 3)
        assert not Conversation.objects.exists()
    assert quotas.standing(owner).tokens_today == 5
    settings.CHAT_TOKENS_PER_DAY = 5
    response = completion(client, key)
    assert response.status_code == 429 and response.json()["error"]["code"] == "quota_exceeded"
    assert 0 < int(response["Retry-After"]) <= 24 * 3600
    settings.CHAT_TOKENS_PER_DAY, settings.CHAT_REPLIES_PER_MINUTE = 0, 1
    response = completion(client, key)
    assert response.status_code == 429 and 0 < int(response["Retry-After"]) <= 60
    assert Message.objects.filter(role="assistant").count() == (1 if keep_calls else 0)
    assert UnkeptCallUsage.objects.count() == (0 if keep_calls else 1)


# --- what people see ------------------------------------------------------------------------------------


def test_the_account_page_shows_the_users_limits_usage_and_days(owner_client, owner, conversation, settings):
    settings.CHAT_TOKENS_PER_DAY, settings.CHAT_MAX_REPLIES_PER_USER = 1000, 3
    used(conversation, 40)
    used(conversation, 60, ago=timedelta(days=2))
    page = owner_client.get(reverse("conversations:account")).content.decode()
    assert "roles: user" in page
    assert "<td>40</td>" in page and "<td>1000</td>" in page and "no limit" in page  # replies a minute: none
    assert "<td>0</td>\n          <td>3 at once</td>" in page  # replies being written now
    assert page.count('<rect class="bar"') == 30
    assert "100 in all, at most 60 in a day" in page
    assert "<td>m</td><td>2</td><td>100</td>" in page  # by model


def test_the_admin_usage_page_sums_per_user_group_and_model_and_charts_the_chosen_one(
    admin_client, owner, other_user, team
):
    used(Conversation.objects.create(owner=owner), 30)
    used(Conversation.objects.create(owner=other_user), 70)
    UnkeptCallUsage.objects.create(user=owner, model_name="m", prompt_tokens=5, completion_tokens=5)
    url = reverse("admin:conversations_quota_usage")
    page = admin_client.get(url, {"by": "user"}).content.decode()
    assert page.index(">intruder<") < page.index(">owner<")  # most tokens first
    assert "<td>2</td><td>40</td>" in page and "<td>1</td><td>70</td>" in page
    page = admin_client.get(url, {"by": "group", "name": "team"}).content.decode()
    assert "group team" in page and "40 in all" in page
    page = admin_client.get(url, {"by": "model"}).content.decode()
    assert "<td>3</td><td>110</td>" in page and "110 in all" in page


def test_only_admins_see_the_usage_page(client, db):
    from django.contrib.auth import get_user_model

    modeller = get_user_model().objects.create_user("modeller")
    modeller.groups.add(Group.objects.get(name=roles.MODEL_ADMIN))
    client.force_login(modeller)
    assert client.get(reverse("admin:conversations_quota_usage")).status_code == 403
