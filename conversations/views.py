"""Conversation pages. Every view reaches conversations through `_get_conversation_for_user`
(404 for anyone else's) or `Conversation.objects.for_user`."""

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from django_htmx.http import HttpResponseClientRedirect

from conversations import replies
from conversations.forms import ModelChoiceForm, RenameForm, SettingsForm
from conversations.models import Comparison, Conversation
from modelhub.models import ModelSpec


def _get_conversation_for_user(request, pk):
    return get_object_or_404(Conversation.objects.for_user(request.user).select_related("model"), pk=pk)


def _sidebar(request, current=None):
    query = request.GET.get("q", "").strip()
    conversations = Conversation.objects.for_user(request.user)
    if query:
        conversations = conversations.search(query)
    return {
        "conversations": conversations[:200],
        "query": query,
        "current": current,
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
    }


@login_required
@require_GET
def conversation_list(request):
    template = "conversations/list.html#conversation-list" if request.htmx else "conversations/list.html"
    return render(request, template, _sidebar(request))


@login_required
@require_POST
def conversation_new(request):
    spec, adapter = ModelSpec.objects.visible_to(request.user).default(), None
    form = ModelChoiceForm(request.user, request.POST)
    if form.is_valid():
        spec, adapter = form.chosen()
    conversation = Conversation.objects.create(owner=request.user, model=spec, adapter=adapter)
    return redirect(conversation)


@login_required
@require_GET
def conversation_detail(request, pk):
    conversation = _get_conversation_for_user(request, pk)
    context = _sidebar(request, conversation)
    context["messages_list"] = conversation.active_path()
    context["rename_form"] = RenameForm(initial={"title": conversation.title})
    context["model_form"] = _model_form(request, conversation)
    context["settings_form"] = _settings_form(request, conversation)
    return render(request, "conversations/detail.html", context)


def _settings_form(request, conversation, data=None):
    spec, _ = conversation.model_for(request.user)
    initial = {"system_prompt": conversation.system_prompt, **conversation.options}
    return SettingsForm(spec, data, initial=initial)


@login_required
@require_POST
def conversation_settings(request, pk):
    conversation = _get_conversation_for_user(request, pk)
    form = _settings_form(request, conversation, request.POST)
    saved = form.is_valid()
    if saved:
        conversation.update_settings(form.cleaned_data["system_prompt"], form.overrides())
    context = {"current": conversation, "settings_form": form, "saved": saved}
    if request.htmx:
        return render(request, "conversations/detail.html#settings", context, status=200 if saved else 422)
    return redirect(conversation)


def _model_form(request, conversation, data=None):
    spec, adapter = conversation.model_for(request.user)
    return ModelChoiceForm(request.user, data, initial={"choice": ModelChoiceForm.key_for(spec, adapter)})


@login_required
@require_POST
def conversation_model(request, pk):
    conversation = _get_conversation_for_user(request, pk)
    form = _model_form(request, conversation, request.POST)
    if form.is_valid():
        conversation.choose_model(*form.chosen())
    context = {"current": conversation, "model_form": form}
    if request.htmx:
        return render(request, "conversations/detail.html#model", context, status=200 if form.is_valid() else 422)
    return redirect(conversation)


@login_required
@require_POST
def conversation_rename(request, pk):
    conversation = _get_conversation_for_user(request, pk)
    form = RenameForm(request.POST)
    if form.is_valid():
        conversation.rename(form.cleaned_data["title"])
    context = {"conversation": conversation, "current": conversation, "rename_form": form}
    if request.htmx:
        return render(request, "conversations/detail.html#title", context)
    return redirect(conversation)


@login_required
@require_POST
def conversation_delete(request, pk):
    conversation = _get_conversation_for_user(request, pk)
    conversation.delete()
    if request.htmx:
        return HttpResponseClientRedirect(reverse("conversations:list"))
    return redirect("conversations:list")


@login_required
@require_POST
def conversation_switch(request, pk, message_id):
    """Show another version of a message: its branch becomes the active path."""
    conversation = _get_conversation_for_user(request, pk)
    message = get_object_or_404(conversation.messages, pk=message_id)
    if conversation.streaming_reply() is not None:
        return HttpResponse("Wait for the reply being written, or stop it.", status=409)
    conversation.switch_to(message)
    return _path_changed(request, conversation)


@login_required
@require_POST
def comparison_vote(request, pk, comparison_id):
    """Store which of two side-by-side answers the user preferred; the preferred one continues."""
    conversation = _get_conversation_for_user(request, pk)
    comparison = get_object_or_404(conversation.comparisons, pk=comparison_id)
    if conversation.streaming_reply() is not None:
        return HttpResponse("Wait for both answers, or stop them.", status=409)
    choice = request.POST.get("choice")
    if not choice or choice not in Comparison.Choice.values:
        return HttpResponse("Choose left, right, tie or both_bad.", status=422)
    comparison.decide(choice)
    return _path_changed(request, conversation)


def _path_changed(request, conversation):
    """After a branch change: redraw every open tab of the conversation, and answer this request."""
    async_to_sync(replies.publish)(conversation.pk, replies.path_frame(conversation))
    if request.htmx:
        return render(request, "conversations/_path.html", {"messages_list": conversation.active_path()})
    return redirect(conversation)
