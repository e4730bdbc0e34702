"""The OpenAI-compatible endpoints: `GET /v1/models`, `POST /v1/chat/completions`.

A call authenticates with `Authorization: Bearer <key>` (an ApiKey, never a session cookie,
hence no CSRF token) of an account that may chat (access/permissions.py; else 403), is read
(requests.py), run (calls.py) and answered in OpenAI's shapes (shapes.py): a whole completion, or
server-sent events when `stream` is true. Closing the connection mid-stream cancels the view (Django's
ASGI handler), which stops the reply within a decode step; a kept call's reply is then stored `stopped`
with its text.
"""

import asyncio
import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from conversations.access.permissions import NO_CHAT, may_chat
from conversations.delivery import durable
from conversations.models import ApiKey
from conversations.openai_api import calls, shapes
from conversations.openai_api.requests import ApiError, read, usable_models
from modelhub.api import REASONING

log = logging.getLogger(__name__)


async def _key_of(request):
    """The live key the request carries; ApiError 401 otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    key = None
    if scheme.lower() == "bearer" and raw.strip():
        key = await durable.call(ApiKey.objects.authenticate, raw.strip())
    if key is None:
        raise ApiError(
            401, "Incorrect or revoked API key. Create one on the site's API keys page.", code="invalid_api_key"
        )
    if not await durable.call(may_chat, key.user):  # read on every call: a removed role stops its keys at once
        raise ApiError(403, NO_CHAT, code="permission_denied")
    return key


def _models_of(user):
    names = usable_models(user)
    return shapes.model_list(names, {name: int(spec.created_at.timestamp()) for name, (spec, _) in names.items()})


@csrf_exempt  # a bearer key authenticates these calls: a POST gets the API's 405, not the site's CSRF page
async def models(request):
    if request.method != "GET":
        return ApiError(405, "Use GET.", code="method_not_allowed").response()
    try:
        key = await _key_of(request)
    except ApiError as exc:
        return exc.response()
    return JsonResponse(await durable.call(_models_of, key.user))


@csrf_exempt  # a bearer key, never a cookie, authenticates these calls
async def chat_completions(request):
    if request.method != "POST":
        return ApiError(405, "Use POST.", code="method_not_allowed").response()
    try:
        key = await _key_of(request)
        try:
            body = request.body
        except RequestDataTooBig:
            raise ApiError(
                413, f"The body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.", code="request_too_large"
            ) from None
        call = await durable.call(read, body, key)
        running = calls.start(call)
        try:
            await running.start()
        except BaseException:
            await _finish(running)
            raise
    except ApiError as exc:
        return exc.response()
    if call.stream:
        response = StreamingHttpResponse(_events(call, running), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass the events on as they come
        return response
    return await _whole(call, running)


async def _whole(call, running):
    try:
        async for _ in running.chunks():
            pass
    except asyncio.CancelledError:
        await _stop(running)
        raise
    finally:
        await _finish(running)
    outcome = running.outcome
    if outcome.error is not None:
        return outcome.error.response()
    completion = shapes.Completion(call.model)
    return JsonResponse(
        completion.whole(
            outcome.text,
            outcome.finish_reason,
            outcome.prompt_tokens,
            outcome.completion_tokens,
            outcome.reasoning,
            outcome.tool_calls,
        )
    )


async def _events(call, running):
    """The call's events. It is closed before its last event is sent: a client that leaves as soon as it
    reads `[DONE]` cancels this request, and a cancelled request is not resumed (nor always closed) here."""
    completion = shapes.Completion(call.model, call.include_usage)
    try:
        yield completion.first()
        async for part, text in running.chunks():
            yield completion.text(text, reasoning=part == REASONING)
        await _finish(running)
        outcome = running.outcome
        if outcome.error is not None:
            yield shapes.event(outcome.error.body())
            return
        if outcome.tool_calls:
            yield completion.calls(outcome.tool_calls)
        yield completion.last(outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens)
    except (asyncio.CancelledError, GeneratorExit):  # the client closed the connection
        await _stop(running)
        raise
    finally:
        await _finish(running)


async def _stop(running):
    """Stop the call's reply even though this task is being cancelled."""
    await asyncio.shield(running.stop())


_closing = set()  # closes under way (the event loop holds a task only weakly)


async def _finish(running):
    """`running.close()`, run to its end even if this request is cancelled meanwhile (its client left): it
    frees the call's place under the reply cap and records its usage."""
    task = asyncio.ensure_future(running.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    await asyncio.shield(task)


@csrf_exempt
async def unknown(request, rest):
    """Any other path under /v1/: OpenAI's 404, in its JSON shape."""
    return ApiError(
        404,
        f"Unknown API path /v1/{rest}: this server answers /v1/models and /v1/chat/completions.",
        code="unknown_url",
    ).response()
