"""The API keys page: a user's own keys for the OpenAI-compatible API (conversations/openai_api/).

Keys are reached through `_get_key_for_user` (404 for anyone else's) or `ApiKey.objects.of`.
A new key is shown once, in the response to the POST that made it: never in a URL, the session,
a message or a log, and that response is not cached. Only its digest is kept (models/api_key.py).
"""

from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from conversations.access.permissions import chat_required
from conversations.forms import ApiKeyForm
from conversations.models import ApiKey
from conversations.openai_api.requests import usable_models


def _get_key_for_user(request, pk):
    return get_object_or_404(ApiKey.objects.of(request.user), pk=pk)


@never_cache
@chat_required
@require_http_methods(["GET", "POST"])
def api_keys(request):
    """The user's keys, and the form that makes one; the response to a made key shows it, once."""
    form, new_key, raw_key = ApiKeyForm(request.POST or None), None, None
    if request.method == "POST" and form.is_valid():
        new_key, raw_key = ApiKey.objects.issue(
            request.user, form.cleaned_data["name"], keep_calls=not form.cleaned_data["dont_keep_calls"]
        )
        form = ApiKeyForm()
    context = {
        "form": form,
        "new_key": new_key,
        "raw_key": raw_key,
        "keys": ApiKey.objects.of(request.user),
        "base_url": request.build_absolute_uri("/v1"),
        "model_names": list(usable_models(request.user)),
    }
    return render(request, "conversations/api_keys.html", context)


@chat_required
@require_POST
def api_key_revoke(request, pk):
    _get_key_for_user(request, pk).revoke()
    if request.htmx:
        return HttpResponseClientRedirect(reverse("conversations:api_keys"))
    return redirect("conversations:api_keys")
