"""Conversation pages. Every view reaches conversations through `access.permissions.conversation_for`
(404 for anyone else's) or `Conversation.objects.for_user`."""

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from conversations.access.permissions import chat_required, conversation_for
from conversations.chat.frames import path_frame
from conversations.chat.markdown import store_rendered
from conversations.delivery.groups import publish
from conversations.forms import (
    ConsentForm,
    FeedbackForm,
    ModelChoiceForm,
    PrivacyForm,
    RatingForm,
    RenameForm,
    SettingsForm,
)
from conversations.models import Conversation, Feedback, Message, Preference, PrivacySettings, Verdict, tree
from modelhub.models import ModelSpec


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


@chat_required
@require_GET
def conversation_list(request):
    template = "conversations/list.html#conversation-list" if request.htmx else "conversations/list.html"
    return render(request, template, _sidebar(request))


@chat_required
@require_POST
def conversation_new(request):
    spec, adapter = ModelSpec.objects.visible_to(request.user).default(), None
    form = ModelChoiceForm(request.user, request.POST)
    if form.is_valid():
        spec, adapter = form.chosen()
    conversation = Conversation.objects.start_for(request.user, model=spec, adapter=adapter)
    return redirect(conversation)


@chat_required
@require_GET
def conversation_detail(request, pk):
    conversation = conversation_for(request, pk)
    context = _sidebar(request, conversation)
    context.update(_window(conversation))
    context["rename_form"] = RenameForm(initial={"title": conversation.title})
    context["model_form"] = model_form = _model_form(request, conversation)
    spec, _ = conversation.model_for(request.user, model_form.specs)
    context["settings_form"] = _settings_form(request, conversation, spec=spec)
    context["consent_form"] = ConsentForm(initial={"allow_training": conversation.allow_training})
    return render(request, "conversations/detail.html", context)


@chat_required
@require_GET
def conversation_earlier(request, pk):
    """The messages of the active branch before message `?before=`: a page's "Show earlier messages"."""
    conversation = conversation_for(request, pk)
    try:
        window = _window(conversation, before=int(request.GET["before"]))
    except (KeyError, ValueError):
        return HttpResponse("Say which message the earlier ones come before: ?before=<message id>.", status=400)
    except Message.DoesNotExist:
        return HttpResponse("The conversation's branch changed since this page was loaded: reload it.", status=409)
    return render(request, "conversations/_path.html", window)


def _window(conversation, before=None):
    """What `_path.html` shows (conversation.path_window), its answers' HTML rendered and stored once where
    an older renderer (or none) made it, side-by-side answers too."""
    messages, earlier = conversation.path_window(before=before)
    store_rendered({m for message in messages for m in (message, *_sides(message))})
    return {"messages_list": messages, "earlier": earlier}


def _sides(message):
    comparison = getattr(message, "comparison", None)
    return (comparison.left, comparison.right) if comparison is not None else ()


def _settings_form(request, conversation, data=None, spec=None):
    spec = spec or conversation.model_for(request.user)[0]
    initial = {"system_prompt": conversation.system_prompt, **conversation.options}
    return SettingsForm(spec, data, initial=initial)


@chat_required
@require_POST
def conversation_settings(request, pk):
    conversation = conversation_for(request, pk)
    form = _settings_form(request, conversation, request.POST)
    saved = form.is_valid()
    if saved:
        conversation.update_settings(form.cleaned_data["system_prompt"], form.overrides())
    context = {
        "current": conversation,
        "settings_form": form,
        "saved": saved,
        "consent_form": ConsentForm(initial={"allow_training": conversation.allow_training}),
    }
    if request.htmx:
        return render(request, "conversations/detail.html#settings", context, status=200 if saved else 422)
    return redirect(conversation)


def _model_form(request, conversation, data=None):
    """The model menu, on the model that answers next; `withdrawn`: the chosen one, if the user lost it."""
    form = ModelChoiceForm(request.user, data)
    form.initial["choice"] = ModelChoiceForm.key_for(*conversation.model_for(request.user, form.specs))
    form.withdrawn = conversation.withdrawn_from(request.user, form.specs)
    return form


@chat_required
@require_POST
def conversation_model(request, pk):
    conversation = conversation_for(request, pk)
    form = _model_form(request, conversation, request.POST)
    if form.is_valid():
        conversation.choose_model(*form.chosen())
        form.withdrawn = ""
    context = {"current": conversation, "model_form": form}
    if request.htmx:
        return render(request, "conversations/detail.html#model", context, status=200 if form.is_valid() else 422)
    return redirect(conversation)


@chat_required
@require_POST
def conversation_rename(request, pk):
    conversation = conversation_for(request, pk)
    form = RenameForm(request.POST)
    if form.is_valid():
        conversation.rename(form.cleaned_data["title"])
    context = {"conversation": conversation, "current": conversation, "rename_form": form}
    if request.htmx:
        return render(request, "conversations/detail.html#title", context)
    return redirect(conversation)


@chat_required
@require_POST
def conversation_delete(request, pk):
    conversation = conversation_for(request, pk)
    conversation.delete()
    if request.htmx:
        return HttpResponseClientRedirect(reverse("conversations:list"))
    return redirect("conversations:list")


@chat_required
@require_POST
def conversation_switch(request, pk, message_id):
    """Show another version of a message: its branch becomes the active path."""
    conversation = conversation_for(request, pk)
    message = get_object_or_404(conversation.messages, pk=message_id)
    if conversation.streaming_reply() is not None:
        return HttpResponse("Wait for the reply being written, or stop it.", status=409)
    conversation.switch_to(message)
    return _path_changed(request, conversation)


@chat_required
@require_POST
def comparison_vote(request, pk, comparison_id):
    """Store which of two side-by-side answers the user preferred; the preferred one continues."""
    conversation = conversation_for(request, pk)
    comparison = get_object_or_404(conversation.comparisons, pk=comparison_id)
    if conversation.streaming_reply() is not None:
        return HttpResponse("Wait for both answers, or stop them.", status=409)
    choice = request.POST.get("choice")
    if choice not in Verdict.votes():
        return HttpResponse("Choose left, right, tie or both_bad.", status=422)
    comparison.decide(choice)
    return _path_changed(request, conversation)


def _path_changed(request, conversation):
    """After a branch change: redraw every open tab of the conversation, and answer this request."""
    async_to_sync(publish)(conversation.pk, path_frame(conversation))
    if request.htmx:
        return render(request, "conversations/_path.html", _window(conversation))
    return redirect(conversation)


@chat_required
@require_POST
def conversation_consent(request, pk):
    """Include this conversation in training data, or keep it out of every later export."""
    conversation = conversation_for(request, pk)
    form = ConsentForm(request.POST)
    if form.is_valid():
        conversation.set_training_consent(form.cleaned_data["allow_training"])
    if request.htmx:
        return render(
            request,
            "conversations/detail.html#consent",
            {"current": conversation, "consent_form": form, "consent_saved": True},
        )
    return redirect(conversation)


def _get_answer_for_user(request, pk, message_id):
    """An answer of one of this user's conversations that can be rated (404 otherwise)."""
    conversation = conversation_for(request, pk)
    message = get_object_or_404(conversation.messages.rateable(), pk=message_id)
    tree.annotate_siblings([message], list(conversation.messages.filter(parent_id=message.parent_id)))
    message.conversation = conversation
    return message


def _feedback_block(request, message, form=None, saved=False, status=200):
    if not request.htmx:
        return redirect(message.conversation)
    context = {"message": message, "form": form, "saved": saved}
    return render(request, "conversations/_feedback.html", context, status=status)


@chat_required
@require_http_methods(["GET", "POST"])
def message_feedback(request, pk, message_id):
    """GET: the answer's feedback block (`?edit=1`: with its form open). POST: save tags, comment, correction."""
    message = _get_answer_for_user(request, pk, message_id)
    if request.method == "GET":
        form = FeedbackForm.for_answer(message) if request.GET.get("edit") else None
        return _feedback_block(request, message, form)
    form = FeedbackForm.for_answer(message, request.POST)
    if not form.is_valid():
        return _feedback_block(request, message, form, status=422)
    message.owner_feedback = Feedback.record(request.user, message, **form.cleaned_data)
    return _feedback_block(request, message, saved=True)


@chat_required
@require_POST
def message_rate(request, pk, message_id):
    """Thumbs up or down (an empty rating takes it back); the feedback's details stay."""
    message = _get_answer_for_user(request, pk, message_id)
    form = RatingForm(request.POST)
    if not form.is_valid():
        return HttpResponse("Rate with up or down.", status=422)
    message.owner_feedback = Feedback.record(request.user, message, rating=form.cleaned_data["rating"])
    return _feedback_block(request, message)


@chat_required
@require_POST
def message_prefer(request, pk, message_id):
    """Mark this answer as better than its regenerated siblings."""
    message = _get_answer_for_user(request, pk, message_id)
    try:
        Preference.prefer_sibling(request.user, message)
    except ValueError as exc:
        return HttpResponse(str(exc), status=422)
    message.preferred_by_owner = True
    return _feedback_block(request, message)


@login_required
@require_http_methods(["GET", "POST"])
def privacy(request):
    """The user's default for new conversations, and deleting all their conversations."""
    settings_row = PrivacySettings.of(request.user)
    form = PrivacyForm(request.POST or None, initial={"allow_training_default": settings_row.allow_training_default})
    saved = request.method == "POST" and form.is_valid()
    if saved:
        PrivacySettings.set_default(
            request.user,
            form.cleaned_data["allow_training_default"],
            apply_to_existing=form.cleaned_data["apply_to_existing"],
        )
    context = {
        **_sidebar(request),
        "privacy_form": form,
        "saved": saved,
        "excluded": Conversation.objects.for_user(request.user).filter(allow_training=False).count(),
    }
    return render(request, "conversations/privacy.html", context)


@login_required
@require_POST
def delete_all_conversations(request):
    """Delete every conversation of this user, with their messages, feedback and preferences, for good."""
    Conversation.objects.owned_by(request.user).delete()
    if request.htmx:
        return HttpResponseClientRedirect(reverse("conversations:list"))
    return redirect("conversations:list")
