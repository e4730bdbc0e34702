"""Arena pages: open an arena, vote blind on its matches, promote the candidate.

Who may do what: an account (logged out: the login page) holding the Django model permissions of
what the page shows or changes (without them: 403; the role "model admin" has them all, a superuser too):

    the list of arenas        conversations.view_arena
    open one (the form)       conversations.add_arena, and view on the dataset snapshots and the
                              adapters it picks from (the form lists nothing without them)
    an arena's page           conversations.view_arena and conversations.view_datasetsnapshot: it
                              shows the snapshot's held-out prompts, other users' text
    vote                      the page's, and conversations.change_arenamatch: a vote is the one
                              change to a match, and becomes a Preference the exports train on
    promote                   conversations.view_arena and modelhub.change_adapter, as the Adapter
                              admin's "Promote" action

Arenas are reached through `_get_arena_for_user` (404 for another account's arena: its creator is
its voter). No GET writes: the arena turns ready when its generation ends or at
a vote (`Arena.check_finished`). The match page never names the contenders before the vote:
the answers are "A" and "B", and the vote's response reveals which was which.
"""

from django import forms
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from conversations.arena.generation import start_generation
from conversations.models import Arena, DatasetSnapshot, Verdict
from modelhub.models import Adapter, ModelSpec

LIST = ("conversations.view_arena",)
OPEN = ("conversations.add_arena", "conversations.view_datasetsnapshot", "modelhub.view_adapter")
PLAY = ("conversations.view_arena", "conversations.view_datasetsnapshot")
VOTE = (*PLAY, "conversations.change_arenamatch")
PROMOTE = ("conversations.view_arena", "modelhub.change_adapter")


class ArenaForm(forms.Form):
    # Their choices depend on the user (__init__).
    snapshot = forms.ModelChoiceField(
        DatasetSnapshot.objects.none(), help_text="Its held-out (eval) prompts are played."
    )
    candidate = forms.ModelChoiceField(
        Adapter.objects.none(), help_text="Any adapter, promoted or not, of an enabled model."
    )
    opponent = forms.ModelChoiceField(
        Adapter.objects.none(),
        required=False,
        empty_label="the base model alone",
        help_text="Or another adapter of the same base model.",
    )
    prompts = forms.IntegerField(min_value=1, max_value=500, initial=20, label="Number of prompts")

    def __init__(self, user, *args, **kwargs):
        """Offers only the snapshots and adapters (of enabled models open to their groups) `user` may view."""
        super().__init__(*args, **kwargs)
        if user.has_perm("conversations.view_datasetsnapshot"):
            self.fields["snapshot"].queryset = DatasetSnapshot.objects.all()
        if user.has_perm("modelhub.view_adapter"):
            adapters = (
                Adapter.objects.open_to(user).filter(base__in=ModelSpec.objects.visible_to(user)).select_related("base")
            )
            self.fields["candidate"].queryset = self.fields["opponent"].queryset = adapters

    def clean(self):
        cleaned = super().clean()
        candidate, opponent = cleaned.get("candidate"), cleaned.get("opponent")
        if candidate and opponent and (opponent.base_id != candidate.base_id or opponent == candidate):
            self.add_error("opponent", "Pick another adapter of the candidate's base model, or the base alone.")
        return cleaned


def _get_arena_for_user(request, pk):
    arenas = Arena.objects.for_user(request.user).select_related("base", "candidate", "opponent")
    return get_object_or_404(arenas, pk=pk)


@login_required
@permission_required(LIST, raise_exception=True)
@require_GET
def arena_list(request):
    return _list(request, ArenaForm(request.user) if request.user.has_perms(OPEN) else None)


def _list(request, form, status=200):
    """The user's arenas, and the form to open one (None: they may not)."""
    arenas = (
        Arena.objects.for_user(request.user).with_counts().select_related("base", "candidate", "opponent", "snapshot")
    )
    return render(request, "conversations/arena_list.html", {"arenas": arenas, "form": form}, status=status)


@login_required
@permission_required(OPEN, raise_exception=True)
@require_POST
def arena_new(request):
    form = ArenaForm(request.user, request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            arena = Arena.open(request.user, data["snapshot"], data["candidate"], data["opponent"], data["prompts"])
        except ValueError as exc:
            form.add_error(None, str(exc))
        else:
            start_generation(arena)
            return redirect(arena)
    return _list(request, form, status=422)


@login_required
@permission_required(PLAY, raise_exception=True)
@require_GET
def arena_detail(request, pk):
    """The next match to vote on (htmx: only that block, which polls while its answers are written)."""
    arena = _get_arena_for_user(request, pk)
    context = {"arena": arena, "match": arena.next_match(), "results": arena.results()}
    template = "conversations/arena_detail.html#match" if request.htmx else "conversations/arena_detail.html"
    return render(request, template, context)


@login_required
@permission_required(VOTE, raise_exception=True)
@require_POST
def arena_vote(request, pk, match_id):
    """Store the vote and reveal which contender wrote A and B; the results block updates too."""
    arena = _get_arena_for_user(request, pk)
    match = get_object_or_404(arena.matches.select_related("candidate_answer", "opponent_answer"), pk=match_id)
    vote = request.POST.get("vote", "")
    if vote not in Verdict.votes():
        return HttpResponse("Vote left, right, tie or both_bad.", status=422)
    try:
        match = match.decide(request.user, vote)
    except LookupError as exc:
        return HttpResponse(str(exc), status=409)
    if not request.htmx:
        return redirect(arena)
    context = {"arena": arena, "match": match, "results": arena.results()}
    return render(request, "conversations/arena_detail.html#voted", context)


@login_required
@permission_required(PROMOTE, raise_exception=True)
@require_POST
def arena_promote(request, pk):
    """Enable the candidate adapter for users."""
    arena = _get_arena_for_user(request, pk)
    arena.promote_candidate()
    if not request.htmx:
        return redirect(arena)
    context = {"arena": arena, "results": arena.results(), "promoted": True}
    return render(request, "conversations/arena_detail.html#results", context)
