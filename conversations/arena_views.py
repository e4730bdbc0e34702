"""Arena pages, for staff only: open an arena, vote blind on its matches, promote the candidate.

Every view is `staff_member_required` (anyone else is sent to the admin login) and reaches
arenas through `_get_arena_for_user` (404 for another staff member's arena: its creator is
its voter). The match page never names the contenders before the vote: the answers are
"A" and "B", and the vote's response reveals which was which.
"""

from django import forms
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from conversations.arena import Arena, ArenaMatch, start_generation
from conversations.datasets import DatasetSnapshot
from modelhub.models import Adapter


class ArenaForm(forms.Form):
    snapshot = forms.ModelChoiceField(DatasetSnapshot.objects.all(), help_text="Its held-out (eval) prompts are played.")
    candidate = forms.ModelChoiceField(
        Adapter.objects.filter(base__enabled=True).select_related("base"),
        help_text="Any adapter, promoted or not, of an enabled model.",
    )
    opponent = forms.ModelChoiceField(
        Adapter.objects.filter(base__enabled=True).select_related("base"), required=False,
        empty_label="the base model alone", help_text="Or another adapter of the same base model.",
    )
    prompts = forms.IntegerField(min_value=1, max_value=500, initial=20, label="Number of prompts")

    def clean(self):
        cleaned = super().clean()
        candidate, opponent = cleaned.get("candidate"), cleaned.get("opponent")
        if candidate and opponent and (opponent.base_id != candidate.base_id or opponent == candidate):
            self.add_error("opponent", "Pick another adapter of the candidate's base model, or the base alone.")
        return cleaned


def _get_arena_for_user(request, pk):
    arenas = Arena.objects.for_user(request.user).select_related("base", "candidate", "opponent")
    return get_object_or_404(arenas, pk=pk)


@staff_member_required
@require_GET
def arena_list(request):
    return _list(request, ArenaForm())


def _list(request, form, status=200):
    arenas = Arena.objects.for_user(request.user).with_counts().select_related("base", "candidate", "opponent",
                                                                               "snapshot")
    return render(request, "conversations/arena_list.html", {"arenas": arenas, "form": form}, status=status)


@staff_member_required
@require_POST
def arena_new(request):
    form = ArenaForm(request.POST)
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


@staff_member_required
@require_GET
def arena_detail(request, pk):
    """The next match to vote on (htmx: only that block, which polls while its answers are written)."""
    arena = _get_arena_for_user(request, pk)
    arena.check_finished()
    context = {"arena": arena, "match": arena.next_match(), "results": arena.results()}
    template = "conversations/arena_detail.html#match" if request.htmx else "conversations/arena_detail.html"
    return render(request, template, context)


@staff_member_required
@require_POST
def arena_vote(request, pk, match_id):
    """Store the vote and reveal which contender wrote A and B; the results block updates too."""
    arena = _get_arena_for_user(request, pk)
    match = get_object_or_404(arena.matches.select_related("candidate_answer", "opponent_answer"), pk=match_id)
    vote = request.POST.get("vote", "")
    if not vote or vote not in ArenaMatch.Vote.values:
        return HttpResponse("Vote left, right, tie or both_bad.", status=422)
    try:
        match = match.decide(request.user, vote)
    except LookupError as exc:
        return HttpResponse(str(exc), status=409)
    if not request.htmx:
        return redirect(arena)
    context = {"arena": arena, "match": match, "results": arena.results()}
    return render(request, "conversations/arena_detail.html#voted", context)


@staff_member_required
@require_POST
def arena_promote(request, pk):
    """Enable the candidate adapter for users."""
    arena = _get_arena_for_user(request, pk)
    arena.promote_candidate()
    if not request.htmx:
        return redirect(arena)
    context = {"arena": arena, "results": arena.results(), "promoted": True}
    return render(request, "conversations/arena_detail.html#results", context)
