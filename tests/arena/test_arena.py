"""The blind arena: a candidate adapter against its base on a snapshot's held-out prompts.

`staff` here holds every arena permission (PERMISSIONS): opens arenas, votes in them (they
own the arena's answers) and promotes; `bare_staff` holds none and is refused everywhere
(403); `other_staff` holds them all but may not see or vote in someone else's arena;
`owner` (not staff) is refused everywhere. The model is a scripted backend that answers
differently for the candidate and the base: the model is not what these tests are about,
the arena's code path through modelhub is."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from conversations.arena.views import ArenaForm
from conversations.forms import ModelChoiceForm
from conversations.models import Arena, ArenaMatch, Comparison, Conversation, Feedback, Message, Preference
from conversations.models.arena import held_out_prompts
from conversations.training_data.export import export_snapshot
from modelhub.backends.local import ScriptedBackend
from modelhub.models import Adapter, ModelSpec
from modelhub.registry import registry
from tests.factories import add_reply
from tests.waiting import wait_until

HTMX = {"HX-Request": "true"}
BASE, CANDIDATE = "basemodel-zeta", "dpo-cand-41"  # names that must not leak onto the blind page
REPLIES = {CANDIDATE: ["Paris", ", surely."], None: ["Maybe", " Lyon."]}
QUESTIONS = [f"Question {i}: what is {i} plus {i}?" for i in range(12)]


class PerContender(ScriptedBackend):
    """A scripted model whose reply depends on the adapter asked for (None: the base alone)."""

    def __init__(self, replies):
        super().__init__()
        self.replies = replies

    def open(self, request):
        self.chunks = self.replies[request.adapter[0] if request.adapter else None]
        return super().open(request)


@pytest.fixture(autouse=True)
def datasets_dir(settings, tmp_path):
    settings.CHAT_DATASETS_DIR = tmp_path / "datasets"


# What each arena URL needs besides a staff account (conversations/arena/views.py).
PERMISSIONS = {
    "list": ["conversations.view_arena"],
    "new": ["conversations.add_arena", "conversations.view_datasetsnapshot", "modelhub.view_adapter"],
    "detail": ["conversations.view_arena", "conversations.view_datasetsnapshot"],
    "vote": ["conversations.view_arena", "conversations.view_datasetsnapshot", "conversations.change_arenamatch"],
    "promote": ["conversations.view_arena", "modelhub.change_adapter"],
}


def grant(user, perms):
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


@pytest.fixture
def staff(staff):
    """The conftest's staff member, given every arena permission."""
    grant(staff, {perm for perms in PERMISSIONS.values() for perm in perms})
    return staff


@pytest.fixture
def bare_staff(db):
    """A staff account without any permission."""
    return get_user_model().objects.create_user("bare-staff", password="bare-pass-123", is_staff=True)


@pytest.fixture
def base(db):
    return ModelSpec.objects.create(name=BASE, source="-", backend="scripted", max_new_tokens=64, temperature=0.9)


@pytest.fixture
def backend(base):
    backend = PerContender(REPLIES)
    registry.install(BASE, backend)
    return backend


@pytest.fixture
def candidate(base):
    """A fine-tuned adapter, registered disabled until someone promotes it."""
    return Adapter.objects.create(name=CANDIDATE, base=base, path="/adapters/dpo-cand-41", enabled=False)


@pytest.fixture
def snapshot(owner):
    """A DPO snapshot of real feedback: one correction per question (the first with a system prompt)."""
    for i, question in enumerate(QUESTIONS):
        conversation = Conversation.objects.start_for(owner)
        if i == 0:
            conversation.update_settings("Answer briefly.", {})
        conversation.add_user_message(question)
        Feedback.record(owner, add_reply(conversation, "I do not know."), correction=f"{2 * i}.")
    return export_snapshot("dpo", eval_fraction=0.6)  # 8 of the 12 prompts held out


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def arena(staff, snapshot, candidate, backend):
    """An arena whose answers are all written (generated here, in the test's thread)."""
    arena = Arena.open(staff, snapshot, candidate, prompts=4, seed=3)
    arena.generate()
    return arena


def eval_prompts(snapshot):
    return [json.loads(line)["prompt"] for line in open(snapshot.eval_path, encoding="utf-8")]


def vote_url(match):
    return reverse("conversations:arena_vote", args=[match.arena_id, match.pk])


def test_an_arena_plays_every_held_out_prompt_and_writes_both_answers_greedily(staff, snapshot, candidate, backend):
    held_out = eval_prompts(snapshot)
    assert 4 <= len(held_out) < len(QUESTIONS) and held_out_prompts(snapshot) == held_out
    arena = Arena.open(staff, snapshot, candidate, prompts=100, seed=1)
    assert arena.status == "generating" and arena.options["temperature"] == 0
    arena.generate()
    arena.refresh_from_db()
    matches = list(arena.matches.all())
    assert arena.status == "ready"
    assert sorted(json.dumps(m.prompt) for m in matches) == sorted(json.dumps(p) for p in held_out)
    for match in matches:
        assert (match.candidate_answer.status, match.candidate_answer.content) == ("complete", "Paris, surely.")
        assert (match.opponent_answer.status, match.opponent_answer.content) == ("complete", "Maybe Lyon.")
        assert match.candidate_answer.adapter_name == CANDIDATE and match.opponent_answer.adapter_name == ""
        assert match.candidate_answer.generation_options == arena.options
        assert match.candidate_answer.conversation.owner == staff
    seen = sorted(
        (call["adapter"][0] if call["adapter"] else "", json.dumps(call["messages"])) for call in backend.calls
    )
    assert seen == sorted((name, json.dumps(m.prompt)) for m in matches for name in (CANDIDATE, ""))
    assert {call["options"].temperature for call in backend.calls} == {0}


def test_a_system_prompt_of_the_snapshot_reaches_the_model_and_the_answers_history(staff, snapshot, candidate, backend):
    arena = Arena.open(staff, snapshot, candidate, prompts=100, seed=1)
    with_system = [m for m in arena.matches.all() if m.prompt[0]["role"] == "system"]
    assert len(with_system) == 1
    for match in with_system:
        assert match.candidate_answer.conversation.history(upto=match.candidate_answer.parent) == match.prompt
    assert Conversation.objects.filter(owner=staff).count() == 2  # one per distinct system prompt


def test_the_left_right_order_is_drawn_stored_and_reproducible_from_the_seed(staff, snapshot, candidate, backend):
    orders = [
        [m.candidate_left for m in Arena.open(staff, snapshot, candidate, seed=seed).matches.all()]
        for seed in (5, 5, 6, 7, 8)
    ]
    assert orders[0] == orders[1]
    assert {side for order in orders for side in order} == {True, False}


def test_the_page_polls_while_the_answers_are_written(staff_client, staff, snapshot, candidate):
    arena = Arena.open(staff, snapshot, candidate, prompts=2, seed=3)
    html = staff_client.get(arena.get_absolute_url()).content.decode()
    assert "writing both answers" in html and 'hx-trigger="every 2s"' in html
    assert "A is better" not in html


def test_the_match_page_is_blind_until_the_vote_which_reveals_who_wrote_a_and_b(staff_client, arena):
    match = arena.next_match()
    page = staff_client.get(arena.get_absolute_url()).content.decode()
    assert "Paris, surely." in page and "Maybe Lyon." in page and "A is better" in page
    assert BASE not in page and CANDIDATE not in page
    response = staff_client.post(vote_url(match), {"vote": "left"}, headers=HTMX)
    revealed = response.content.decode()
    assert response.status_code == 200 and f"{BASE} + {CANDIDATE} (candidate)" in revealed
    assert 'id="arena-results" hx-swap-oob="true"' in revealed
    match.refresh_from_db()
    winner = "win" if match.candidate_left else "loss"
    assert (match.vote, match.outcome, match.voter) == ("left", winner, arena.created_by)
    following = staff_client.get(arena.get_absolute_url(), headers=HTMX).content.decode()
    assert f"Prompt {match.position + 2} of 4" in following and BASE not in following


def test_votes_are_arena_preferences_that_the_dpo_and_kto_exports_pick_up(staff, arena):
    left, right, tie, both_bad = arena.matches.all()
    for match, vote in ((left, "left"), (right, "right"), (tie, "tie"), (both_bad, "both_bad")):
        match.decide(staff, vote)
    preferences = {p.arena_match.vote: p for p in Preference.objects.filter(source="arena")}
    assert (preferences["left"].chosen, preferences["left"].rejected) == (left.left, left.right)
    assert (preferences["right"].chosen, preferences["right"].rejected) == (right.right, right.left)
    assert preferences["tie"].verdict == "tie" and preferences["both_bad"].verdict == "both_bad"
    dpo = export_snapshot("dpo", eval_fraction=0)
    assert dpo.counts["sources"]["arena"] == 2
    rows = [json.loads(line) for line in open(dpo.train_path, encoding="utf-8")]
    assert {
        "prompt": left.prompt,
        "chosen": [{"role": "assistant", "content": left.left.content}],
        "rejected": [{"role": "assistant", "content": left.right.content}],
    } in rows
    kto = export_snapshot("kto", eval_fraction=0)
    assert kto.counts["sources"]["arena"] == 2  # both answers of the "both bad" match, labelled false


def test_a_vote_is_final_and_a_match_still_being_written_cannot_be_voted(
    staff_client, staff, snapshot, candidate, backend
):
    arena = Arena.open(staff, snapshot, candidate, prompts=2, seed=3)
    first = arena.matches.first()
    assert staff_client.post(vote_url(first), {"vote": "left"}).status_code == 409
    arena.generate()
    assert staff_client.post(vote_url(first), {"vote": "sideways"}).status_code == 422
    assert staff_client.post(vote_url(first), {"vote": "tie"}).status_code == 302
    assert staff_client.post(vote_url(first), {"vote": "left"}).status_code == 409
    first.refresh_from_db()
    assert first.vote == "tie" and Preference.objects.filter(source="arena").count() == 1


def test_a_failed_answer_is_stored_with_its_error_and_its_match_skipped(staff, snapshot, candidate):
    registry.install(BASE, PerContender({CANDIDATE: ["Par", RuntimeError("out of memory")], None: ["Lyon."]}))
    arena = Arena.open(staff, snapshot, candidate, prompts=2, seed=3)
    arena.generate()
    answer = arena.matches.first().candidate_answer
    answer.refresh_from_db()
    assert answer.status == "error" and "out of memory" in answer.error
    assert arena.next_match() is None
    assert arena.results() == {
        "win": 0,
        "loss": 0,
        "tie": 0,
        "both_bad": 0,
        "undecided": 0,
        "skipped": 2,
        "voted": 0,
        "total": 2,
    }


def test_results_count_the_candidates_wins_losses_and_ties_and_name_them_when_done(staff_client, staff, arena):
    for match, candidate_wins in zip(arena.matches.all(), (True, True, False)):
        match.decide(staff, "left" if candidate_wins == match.candidate_left else "right")
    arena.matches.last().decide(staff, "tie")
    assert arena.results() == {
        "win": 2,
        "loss": 1,
        "tie": 1,
        "both_bad": 0,
        "undecided": 0,
        "skipped": 0,
        "voted": 4,
        "total": 4,
    }
    page = staff_client.get(arena.get_absolute_url()).content.decode()
    assert "Nothing left to vote on" in page and f"<strong>{BASE} + {CANDIDATE}</strong>" in page


def test_opening_an_arena_from_the_form_schedules_its_generation_after_the_commit(
    staff_client, snapshot, candidate, django_capture_on_commit_callbacks
):
    form = {"snapshot": snapshot.pk, "candidate": candidate.pk, "opponent": "", "prompts": 3}
    with django_capture_on_commit_callbacks() as callbacks:
        response = staff_client.post(reverse("conversations:arena_new"), form)
    arena = Arena.objects.get()
    assert response.status_code == 302 and response["Location"] == arena.get_absolute_url()
    assert arena.matches.count() == 3 and arena.opponent is None and len(callbacks) == 1
    listing = staff_client.get(reverse("conversations:arena_list")).content.decode()
    assert f"{BASE} + {CANDIDATE}" in listing and "not promoted" in listing


@pytest.mark.django_db(transaction=True)
def test_the_background_thread_writes_every_answer(staff, snapshot, candidate, backend):
    from conversations.arena.generation import start_generation

    arena = Arena.open(staff, snapshot, candidate, prompts=3, seed=3)
    start_generation(arena)  # no transaction open: the thread starts at once
    wait_until(lambda: Arena.objects.get(pk=arena.pk).status == "ready", timeout=20)
    statuses = Message.objects.filter(role="assistant", conversation__owner=staff).values_list("status", flat=True)
    assert Arena.objects.get(pk=arena.pk).status == "ready" and list(set(statuses)) == ["complete"]


def test_the_form_refuses_an_opponent_of_another_base_and_a_snapshot_without_held_out_prompts(
    staff_client, owner, snapshot, candidate
):
    other = Adapter.objects.create(name="elsewhere", base=ModelSpec.objects.get(name="m"), path="/x")
    form = {"snapshot": snapshot.pk, "candidate": candidate.pk, "opponent": other.pk, "prompts": 3}
    assert staff_client.post(reverse("conversations:arena_new"), form).status_code == 422
    no_eval = export_snapshot("dpo", eval_fraction=0)
    response = staff_client.post(reverse("conversations:arena_new"), {**form, "snapshot": no_eval.pk, "opponent": ""})
    assert response.status_code == 422 and "has no held-out prompts" in response.content.decode()
    assert not Arena.objects.exists()


def test_promote_enables_the_adapter_for_users(staff_client, owner, arena, candidate):
    assert ModelChoiceForm.key_for(arena.base, candidate) not in ModelChoiceForm(owner).options
    response = staff_client.post(reverse("conversations:arena_promote", args=[arena.pk]), headers=HTMX)
    assert response.status_code == 200 and "Promoted" in response.content.decode()
    candidate.refresh_from_db()
    assert candidate.enabled
    assert ModelChoiceForm.key_for(arena.base, candidate) in ModelChoiceForm(owner).options


def arena_urls(arena):
    match = arena.matches.first()
    return [
        ("get", reverse("conversations:arena_list"), {}),
        ("get", reverse("conversations:arena_new"), {}),
        (
            "post",
            reverse("conversations:arena_new"),
            {"snapshot": arena.snapshot_id, "candidate": arena.candidate_id, "prompts": 2},
        ),
        ("get", arena.get_absolute_url(), {}),
        ("post", vote_url(match), {"vote": "left"}),
        ("post", reverse("conversations:arena_promote", args=[arena.pk]), {}),
        ("get", reverse("admin:conversations_arena_leaderboard"), {}),
    ]


@pytest.mark.parametrize("who", ["anonymous", "owner", "other_staff"])
def test_everyone_but_the_arenas_staff_owner_is_refused_everywhere_and_nothing_changes(client, owner, arena, who):
    if who == "owner":
        client.force_login(owner)
    elif who == "other_staff":
        other_staff = get_user_model().objects.create_user("other-staff", is_staff=True)
        grant(other_staff, {perm for perms in PERMISSIONS.values() for perm in perms})
        client.force_login(other_staff)
    for method, url, data in arena_urls(arena):
        if who == "other_staff" and url.endswith(("/arena/", "/arena/new/", "/leaderboard/")):
            continue  # their own list, their own new arena, and the leaderboard of every arena
        response = getattr(client, method)(url, data, headers=HTMX)
        assert response.status_code in (302, 403, 404), (url, response.status_code)
        if response.status_code == 302:
            assert response["Location"].startswith((reverse("login"), reverse("admin:login")))
    arena.candidate.refresh_from_db()
    assert not arena.candidate.enabled and Arena.objects.count() == 1
    assert not Preference.objects.exists() and not arena.matches.exclude(vote="").exists()


def test_a_staff_member_without_permissions_is_refused_everywhere_and_nothing_changes(client, bare_staff, arena):
    client.force_login(bare_staff)
    messages = Message.objects.count()
    for method, url, data in arena_urls(arena):
        for headers in ({}, HTMX):
            assert getattr(client, method)(url, data, headers=headers).status_code == 403, (method, url)
    arena.candidate.refresh_from_db()
    assert not arena.candidate.enabled and Arena.objects.count() == 1 and Message.objects.count() == messages
    assert not Preference.objects.exists() and not arena.matches.exclude(vote="").exists()


SUCCEEDS = {"list": 200, "new": 302, "detail": 200, "vote": 200, "promote": 200}


def arena_request(client, action, arena):
    """One arena URL, requested as its page does (htmx)."""
    method, url, data = {
        "list": ("get", reverse("conversations:arena_list"), {}),
        "new": (
            "post",
            reverse("conversations:arena_new"),
            {"snapshot": arena.snapshot_id, "candidate": arena.candidate_id, "prompts": 2},
        ),
        "detail": ("get", arena.get_absolute_url(), {}),
        "vote": ("post", vote_url(arena.matches.first()), {"vote": "left"}),
        "promote": ("post", reverse("conversations:arena_promote", args=[arena.pk]), {}),
    }[action]
    return getattr(client, method)(url, data, headers=HTMX)


@pytest.mark.parametrize("action", PERMISSIONS)
def test_each_arena_url_needs_exactly_its_permissions(client, snapshot, candidate, backend, action):
    player = get_user_model().objects.create_user("player", is_staff=True)
    arena = Arena.open(player, snapshot, candidate, prompts=2, seed=3)
    arena.generate()
    client.force_login(player)
    for missing in PERMISSIONS[action]:
        player.user_permissions.clear()
        grant(player, set(PERMISSIONS[action]) - {missing})
        assert arena_request(client, action, arena).status_code == 403, missing
    assert Arena.objects.count() == 1 and not Preference.objects.exists() and not Adapter.objects.filter(enabled=True)
    grant(player, PERMISSIONS[action])
    assert arena_request(client, action, arena).status_code == SUCCEEDS[action]


def test_the_form_offers_only_what_the_user_may_view_and_only_to_who_may_open_an_arena(
    client, bare_staff, snapshot, candidate
):
    grant(bare_staff, ["conversations.view_arena", "conversations.add_arena"])
    client.force_login(bare_staff)
    assert "New arena" not in client.get(reverse("conversations:arena_list")).content.decode()
    form = ArenaForm(get_user_model().objects.get(pk=bare_staff.pk))
    assert not form.fields["snapshot"].queryset.exists() and not form.fields["candidate"].queryset.exists()
    grant(bare_staff, PERMISSIONS["new"])
    page = client.get(reverse("conversations:arena_list")).content.decode()
    assert "New arena" in page and str(snapshot) in page and CANDIDATE in page


def test_the_page_offers_the_vote_and_promotion_only_to_who_may(client, staff, arena):
    staff.user_permissions.clear()
    grant(staff, PERMISSIONS["detail"])
    client.force_login(staff)
    page = client.get(arena.get_absolute_url()).content.decode()
    assert "Paris, surely." in page and "A is better" not in page and "Promote this adapter" not in page
    grant(staff, PERMISSIONS["vote"] + PERMISSIONS["promote"])
    page = client.get(arena.get_absolute_url()).content.decode()
    assert "A is better" in page and "Promote this adapter" in page


def test_a_page_view_writes_nothing_even_after_a_restart_interrupted_the_answers(
    staff_client, staff, snapshot, candidate, backend
):
    arena = Arena.open(staff, snapshot, candidate, prompts=4, seed=3)
    first, second = arena.matches.all()[:2]
    first.generate()
    second.generate()
    Message.objects.filter(status="streaming").update(status="interrupted")  # the process writing the other two died
    with CaptureQueriesContext(connection) as queries:
        for url, headers in (
            (arena.get_absolute_url(), {}),
            (arena.get_absolute_url(), HTMX),
            (reverse("conversations:arena_list"), {}),
        ):
            assert staff_client.get(url, headers=headers).status_code == 200
    writes = [
        query["sql"] for query in queries if query["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    ]
    assert writes == [] and len(queries) > 0
    arena.refresh_from_db()
    assert arena.status == "generating" and arena.conversations().get().sealed
    for match in (first, second):  # the votes settle it: ready, and unsealed once nothing is left
        staff_client.post(vote_url(match), {"vote": "tie"})
    arena.refresh_from_db()
    assert arena.status == "ready" and not arena.conversations().get().sealed


def test_settle_readies_arenas_whose_answers_were_interrupted_and_unseals_them(staff, snapshot, candidate):
    arena = Arena.open(staff, snapshot, candidate, prompts=2, seed=3)
    Message.objects.filter(status="streaming").update(status="interrupted")  # their writer died
    Arena.objects.settle()
    arena.refresh_from_db()
    assert arena.status == "ready" and arena.next_match() is None
    assert not arena.conversations().get().sealed


def compare(conversation, first, second, choice):
    """A side-by-side verdict between two model choices (spec, adapter)."""
    comparison = conversation.start_comparison("q", (*first, {}), (*second, {}))
    for answer in (comparison.left, comparison.right):
        answer.finish("complete", "an answer")
    comparison.decide(choice)
    return comparison


def test_the_leaderboard_ranks_contenders_from_arena_votes_and_side_by_side_verdicts(
    admin_client, staff, owner, arena, base, candidate
):
    for match in arena.matches.all():  # the candidate wins every arena game
        match.decide(staff, "left" if match.candidate_left else "right")
    other = ModelSpec.objects.create(name="weakling", source="-", backend="scripted")
    conversation = Conversation.objects.start_for(owner)
    for choice in ("left", "left", "tie"):  # the base beats the weakling twice, one tie
        compare(conversation, (base, None), (other, None), choice)
    assert Comparison.objects.count() == 3
    html = admin_client.get(reverse("admin:conversations_arena_leaderboard")).content.decode()
    rows = html.split('<tr class="contender">')[1:]
    assert [row.split("<td>")[2].split("<")[0] for row in rows] == [f"{BASE} + {CANDIDATE}", BASE, "weakling"]
    cells = [cell.split("<")[0] for cell in rows[1].split("<td>")[5:9]]
    assert cells == ["7", "2", "4", "1"]  # the base: games, wins, losses, ties
    changelist = admin_client.get(reverse("admin:conversations_arena_changelist")).content.decode()
    assert reverse("admin:conversations_arena_leaderboard") in changelist


def test_deleting_the_voters_conversations_deletes_the_arena_answers_and_votes(staff_client, staff, arena):
    arena.next_match().decide(staff, "left")  # three matches left: the arena's conversation is still sealed
    staff_client.post(reverse("conversations:delete_all"))
    assert not ArenaMatch.objects.exists() and not Preference.objects.exists()
    assert not Conversation.objects.filter(owner=staff).exists()


def test_the_arenas_conversation_stays_sealed_to_its_voter_until_every_match_is_voted(staff_client, staff, arena):
    """Its messages name the model behind each answer: opening it would unblind the vote."""
    sealed = arena.conversations().get()
    page, socket_allowed = reverse("conversations:detail", args=[sealed.pk]), Conversation.objects.for_user(staff)
    assert sealed.sealed and not socket_allowed.filter(pk=sealed.pk).exists()
    assert staff_client.get(page).status_code == 404
    assert sealed.title not in staff_client.get(reverse("conversations:list")).content.decode()
    assert staff_client.get(reverse("conversations:list"), {"q": "plus"}).content.decode().count(sealed.title) == 0

    for match in arena.matches.all():
        assert staff_client.get(page).status_code == 404
        staff_client.post(vote_url(match), {"vote": "tie"})

    opened = staff_client.get(page)
    assert opened.status_code == 200 and BASE in opened.content.decode()  # now the labels may show


def test_the_voter_cannot_open_their_sealed_answers_in_the_admin_but_another_admin_can(client, staff, arena):
    from django.contrib.auth.models import Permission

    sealed = arena.conversations().get()
    staff.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    client.force_login(staff)
    change = reverse("admin:conversations_conversation_change", args=[sealed.pk])
    assert sealed.title not in client.get(reverse("admin:conversations_conversation_changelist")).content.decode()
    assert client.get(change).status_code == 302  # "does not exist", back to the admin index

    client.force_login(get_user_model().objects.create_superuser("root", password="root-pass-123"))
    assert client.get(change).status_code == 200


def test_the_arena_admin_shows_the_seed_only_once_every_match_is_voted(admin_client, staff, arena):
    page = reverse("admin:conversations_arena_change", args=[arena.pk])
    pending = admin_client.get(page)
    assert (
        pending.status_code == 200
        and "Seed" not in pending.content.decode()
        and "Candidate" in pending.content.decode()
    )
    for match in arena.matches.all():
        match.decide(staff, "tie")
    assert "Seed" in admin_client.get(page).content.decode()


def test_deleting_an_arena_unseals_its_answers_for_their_owner(staff_client, arena):
    sealed = arena.conversations().get()
    arena.delete()
    assert staff_client.get(reverse("conversations:detail", args=[sealed.pk])).status_code == 200


def test_the_sidebar_links_staff_to_the_arena_and_admin_and_nobody_else(client, owner, staff, bare_staff):
    arena_url, admin_url = reverse("conversations:arena_list").encode(), reverse("admin:index").encode()
    client.force_login(owner)
    assert arena_url not in client.get(reverse("conversations:list")).content
    client.force_login(staff)
    assert arena_url in client.get(reverse("conversations:list")).content
    client.force_login(bare_staff)  # staff, but may not view arenas
    page = client.get(reverse("conversations:list")).content
    assert arena_url not in page and admin_url in page
