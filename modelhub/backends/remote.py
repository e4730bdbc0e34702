"""A model served by another engine over the OpenAI API: vLLM, SGLang, TGI, llama.cpp's server.

Such an engine batches, pages its KV cache and mixes LoRA adapters itself, so here a remote
model is a backend at the request level: a request in, chunks out, cancel. `RemoteWorker`
stands where `engine.Worker` stands for a local model (the registry hands out either), and
callers get the same `Request`, chunks, `Usage` and `ModelhubError`s. It speaks the API with
httpx2 (the HTTP client the official `openai` package is built on) and its server-sent-events parser.

One thread per remote model runs an asyncio loop with one `httpx2.AsyncClient` (its connection
pool); each request is one streamed chat completion there. Cancelling a request cancels its
task, which closes the HTTP stream; vLLM aborts a request whose client went away. Whatever goes
wrong (no connection, an HTTP error, silence past `read_timeout`, a stream cut mid-reply) ends
the request with one ModelhubError saying so in a sentence; the text already passed on stays
with the caller.

An adapter of a remote model is a name the server serves (vLLM's `--lora-modules name=folder`,
or `POST /v1/load_lora_adapter` at run time), sent as the request's `model`. Base-model requests
may be sent under another served name (`base_alias`): see `ModelSpec.base_model_alias`.
"""

import asyncio
import json
import logging
import os
import threading
import time
from dataclasses import dataclass

from modelhub.decoding.parts import ANSWER, REASONING
from modelhub.engine.arrivals import arrivals
from modelhub.options import ModelhubError, ModelLoadError, PromptTooLong, Usage
from modelhub.prompts import messages_as_sent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteSettings:
    url: str  # the API root, e.g. http://gpu-box:8000/v1
    model: str  # the served name of the base model
    api_key_env: str = ""  # the environment variable holding the key ("" for none)
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # seconds the server may stay silent
    base_alias: str = ""  # served name for base-model requests instead of `model`

    def api_key(self):
        if not self.api_key_env:
            return "none"  # the client needs some key; a server started without --api-key ignores it
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ModelhubError(
                f"the API key variable {self.api_key_env} is not set in this process's environment",
                code="remote_refused",
            )
        return key

    def endpoint(self, path):
        return f"{self.url.rstrip('/')}/{path}"

    def headers(self):
        return {"Authorization": f"Bearer {self.api_key()}"}

    def timeout(self):
        import httpx2

        return httpx2.Timeout(self.read_timeout, connect=self.connect_timeout, pool=self.connect_timeout)

    def served_name(self, adapter=None):
        """The `model` to send: an adapter's served name, or the base model's (or its alias)."""
        if adapter is not None:
            return adapter[0]
        return self.base_alias or self.model


class RemoteWorker:
    """Serves one remote model's requests from an event loop in its own thread."""

    def __init__(self, name, settings, hold=0.0):
        """`hold`: seconds a request may wait for replies on their way (modelhub.engine.arrivals), see `_arrive`."""
        self.name = name
        self.settings = settings
        self.hold = hold
        self.state = "ready"  # nothing to load: a server that is down fails each request, clearly
        self.error = ""
        self.load_seconds = 0.0
        self.last_used = time.monotonic()
        self.last_used_at = time.time()
        self.peak = 0
        self._tasks = {}  # request -> its task (loop thread only)
        self._held = []  # requests waiting for the replies on their way (loop thread only)
        self._held_at = 0.0
        self._flusher = None
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._client = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"modelhub-remote-{name}", daemon=True)
        self._thread.start()

    @property
    def idle(self):
        return not self._tasks and not self._held

    def submit(self, request):
        try:
            if self._closing:
                raise ModelLoadError(f"model {self.name!r} is not loaded")
            self.last_used, self.last_used_at = time.monotonic(), time.time()
            if request.claim():  # else a cancel already ended it
                self._loop.call_soon_threadsafe(self._arrive, request)
                request.on_cancel(lambda: self._loop.call_soon_threadsafe(self._cancel, request))
        finally:
            arrivals.settle(request.arrival)
        return request

    def close(self, timeout=30):
        """Fail the replies in progress (the model was unloaded) and stop the loop."""
        self._closing = True
        self.state = "closed"
        future = asyncio.run_coroutine_threadsafe(self._shut(), self._loop)
        try:
            future.result(timeout)
        except Exception:
            log.exception("closing the remote model %s", self.name)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def describe(self):
        return {
            "state": self.state,
            "error": self.error,
            "last_used_at": self.last_used_at,
            "load_seconds": self.load_seconds,
            "running": len(self._tasks),
            "waiting": len(self._held),
            "peak_batch": self.peak,
            "server": self.settings.url,
            "served_model": self.settings.model,
        }

    # --- the loop thread -------------------------------------------------------

    def _arrive(self, request):
        """Send it now, or, while other replies of this process are being saved (announced in
        modelhub.engine.arrivals), together with them, at most `hold` seconds after the last one came: as on a
        local model, replies asked for together start together, and on a machine the server shares the
        saves run before it takes the cores rather than 10-50 times slower beside it (bench/scale.py)."""
        self._held.append(request)
        self._held_at = time.monotonic()
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._send_held())

    async def _send_held(self):
        while self.hold and len(arrivals) and time.monotonic() - self._held_at < self.hold:
            await asyncio.sleep(0.005)
        held, self._held, self._flusher = self._held, [], None
        for request in held:
            self._spawn(request)

    def _spawn(self, request):
        task = self._loop.create_task(self._serve(request))
        self._tasks[request] = task
        self.peak = max(self.peak, len(self._tasks))
        task.add_done_callback(lambda _: self._ended(request))

    def _cancel(self, request):
        task = self._tasks.get(request)
        if task is not None:
            task.cancel()
        elif request in self._held:  # not sent yet
            self._held.remove(request)
            request.finish(Usage(finish_reason="cancelled", duration=time.monotonic() - request.started))

    def _ended(self, request):
        task = self._tasks.pop(request)
        self.last_used, self.last_used_at = time.monotonic(), time.time()
        if task.cancelled():  # cancelled before it ran: nothing ended it yet
            request.finish(Usage(finish_reason="cancelled", duration=time.monotonic() - request.started))

    async def _shut(self):
        held, self._held = self._held, []
        for request in held:
            request.fail(ModelhubError(f"model {self.name!r} was unloaded", code="model_unloaded"))
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5)
        if self._client is not None:
            await self._client.aclose()

    def _http(self):
        if self._client is None:
            import httpx2

            settings = self.settings
            self._client = httpx2.AsyncClient(timeout=settings.timeout(), headers=settings.headers())
        return self._client

    async def _serve(self, request):
        usage = Usage(prompt_text=messages_as_sent(request.messages))  # the server renders its own template
        try:
            await self._stream(request, usage)
        except asyncio.CancelledError:
            if self._closing:
                request.fail(ModelhubError(f"model {self.name!r} was unloaded", code="model_unloaded"))
            else:
                usage.finish_reason = "cancelled"
                usage.duration = time.monotonic() - request.started
                request.finish(usage)
        except ModelhubError as exc:
            request.fail(exc)
        except Exception as exc:
            request.fail(describe_failure(exc, self.settings, midway=usage.time_to_first_token is not None))

    async def _stream(self, request, usage):
        """One streamed chat completion, read with httpx2's own server-sent-events parser: each event is
        plain JSON here (building the openai client's typed objects for every token took most of the web
        process's CPU in front of vLLM, bench/scale.py)."""
        settings = self.settings
        body = {
            "model": settings.served_name(request.adapter),
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **sampling(request.options),
        }
        finish, answered = "", []
        async with self._http().sse(settings.endpoint("chat/completions"), method="POST", json=body) as events:
            response = events.response  # leaving the block (the end, a cancel, an error) closes it
            if response.status_code >= 400:
                await response.aread()
                raise status_failure(response, settings)
            kind = response.headers.get("content-type", "").split(";")[0]
            if kind != "text/event-stream":
                raise ModelhubError(
                    f"the model server at {settings.url} did not answer as an OpenAI-compatible "
                    f"API (it sent {kind or 'no content type'}, not an event stream)",
                    code="remote_failed",
                )
            async for event in events:
                if event.data == "[DONE]":
                    break
                finish = self._take(event.data, request, usage, answered) or finish
        if not finish:
            raise ModelhubError(
                f"the model server at {settings.url} ended the stream before the reply was finished",
                code="remote_failed",
            )
        usage.finish_reason = finish
        usage.duration = time.monotonic() - request.started
        request.finish(usage)

    def _take(self, data, request, usage, answered):
        """One chunk of the stream: pass its text on, note the usage; its finish reason, if it has one.
        `answered`: empty until the answer's first text is passed on."""
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ModelhubError(
                f"the model server at {self.settings.url} sent an event that is not JSON: {data[:100]!r}",
                code="remote_failed",
            ) from None
        if "error" in chunk:  # an error after the stream began (vLLM sends it as an event)
            raise ModelhubError(
                f"the model server at {self.settings.url} failed mid-reply: {_error_text(chunk)}", code="remote_failed"
            )
        if chunk.get("usage"):
            usage.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
            usage.completion_tokens = chunk["usage"].get("completion_tokens", 0)
            details = chunk["usage"].get("completion_tokens_details") or {}
            usage.reasoning_tokens = details.get("reasoning_tokens") or usage.reasoning_tokens
        finish = ""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            # A reasoning parser's thinking (vLLM: `reasoning`; older releases and others: `reasoning_content`)
            # comes before the answer (`content`).
            for part, text in (
                (REASONING, delta.get("reasoning") or delta.get("reasoning_content")),
                (ANSWER, delta.get("content")),
            ):
                if part == ANSWER and usage.reasoning and not answered:
                    # The blank lines between the thinking and the answer (vLLM's qwen3 parser hands them on as
                    # the answer's first text) are not the answer's, as the in-process response templates say.
                    text = (text or "").lstrip()
                if text:
                    if usage.time_to_first_token is None:
                        usage.time_to_first_token = time.monotonic() - request.started
                    if part == REASONING:
                        usage.reasoning += text
                    elif not answered:
                        answered.append(True)
                    request.emit(text, part)
            for call in delta.get("tool_calls") or ():  # OpenAI's tool-call deltas, gathered by index
                _gather_call(usage.tool_calls, call)
            finish = choice.get("finish_reason") or finish
        return finish


def _gather_call(calls, delta):
    """Add one streamed tool-call delta ({"index", "id"?, "function": {"name"?, "arguments"?: a piece}})
    to the calls gathered so far (OpenAI's shape, arguments as a JSON string)."""
    index = delta.get("index", len(calls))
    while len(calls) <= index:
        calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    call, function = calls[index], delta.get("function") or {}
    call["id"] = delta.get("id") or call["id"]
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""


def sampling(options):
    """GenerationOptions as chat-completion fields. top_k, repetition_penalty and ignore_eos are not
    OpenAI fields: they go as extra fields (vLLM, SGLang and llama.cpp read them) only when they do
    something, so a server that knows none of them is not sent any by default. `stop` is sent only
    when set: the server stops, leaves the stop string out of the text (as stopping.py does here) and
    says finish_reason "stop"."""
    fields = {"temperature": options.temperature, "top_p": options.top_p, "max_tokens": options.max_new_tokens}
    if options.think is not None:  # the server's chat template's reasoning switch (vLLM, SGLang)
        fields["chat_template_kwargs"] = {"enable_thinking": options.think}
    if options.seed is not None:
        fields["seed"] = options.seed
    if options.stop:
        fields["stop"] = list(options.stop)
    if options.tools:  # never an empty list: vLLM refuses `tools: []`
        fields.update(tools=list(options.tools), tool_choice=options.tool_choice)
        fields["parallel_tool_calls"] = options.parallel_tool_calls
    if options.response_format is not None:
        fields["response_format"] = options.response_format
    extra = {}
    if options.top_k:
        extra["top_k"] = options.top_k
    if options.repetition_penalty != 1.0:
        extra["repetition_penalty"] = options.repetition_penalty
    if options.ignore_eos:
        extra["ignore_eos"] = True
    return fields | extra


def describe_failure(exc, settings, midway=False):
    """A failure talking to the server as one ModelhubError, in a sentence a user can act on.
    `midway`: the reply had begun (the server went away or went silent in the middle of it)."""
    import httpx2

    where = f"the model server at {settings.url}"
    if isinstance(exc, httpx2.TimeoutException):
        return ModelhubError(f"{where} did not answer within {settings.read_timeout:g}s", code="remote_timeout")
    if isinstance(exc, httpx2.ConnectError) and not midway:
        return ModelhubError(f"cannot reach {where}: {exc}", code="remote_unavailable")
    if isinstance(exc, httpx2.HTTPError):
        return ModelhubError(f"{where} broke off the reply: {exc or type(exc).__name__}", code="remote_failed")
    log.error("remote generation failed", exc_info=exc)
    return ModelhubError(f"generation failed: {exc}", code="generation_failed")


def status_failure(response, settings):
    """An HTTP error answer (its body read) as one ModelhubError."""
    where, status = f"the model server at {settings.url}", response.status_code
    try:
        message = _error_text(response.json())
    except ValueError:
        message = response.text.strip()[:300] or response.reason_phrase
    if status in (401, 403):
        return ModelhubError(f"{where} refused the API key (HTTP {status}): {message}", code="remote_refused")
    if status == 404:
        return ModelhubError(f"{where} does not serve this model (HTTP 404): {message}", code="unknown_model")
    if status == 400 and "context length" in message.lower():
        return PromptTooLong(f"the conversation is too long for the model: {message}")
    return ModelhubError(f"{where} answered HTTP {status}: {message}", code="remote_failed")


def _error_text(body):
    """The message of an OpenAI-shaped error body ({"error": {"message": ...}}), or the body itself."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)[:300]


# --- health and adapters: plain HTTP calls, for the admin and the CLI ------------


def check_server(settings):
    """What the server serves, in a line; ModelhubError in one sentence if it does not answer,
    does not answer as an OpenAI API, or does not list the model."""
    served = list_models(settings)
    wanted = {settings.model} | ({settings.base_alias} if settings.base_alias else set())
    missing = sorted(wanted - set(served))
    if missing:
        raise ModelhubError(
            f"the server at {settings.url} does not serve {', '.join(map(repr, missing))}; it serves: "
            f"{', '.join(served) or 'nothing'}",
            code="unknown_model",
        )
    return f"{settings.url} serves {', '.join(served)}"


def list_models(settings):
    """The served model names (`GET /models`)."""
    response = _call(settings, "GET", "models")
    try:
        data = response.json()["data"]
        return [entry["id"] for entry in data]
    except (ValueError, KeyError, TypeError):
        kind = response.headers.get("content-type", "unknown content").split(";")[0]
        raise ModelhubError(
            f"the server at {settings.url} is not an OpenAI-compatible API: GET /models answered "
            f"{kind}, not a model list",
            code="remote_failed",
        ) from None


def load_adapter(settings, name, folder):
    """Load a LoRA adapter on the server at run time (vLLM: `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`).
    A server that already serves it is fine."""
    response = _call(
        settings,
        "POST",
        "load_lora_adapter",
        {"lora_name": name, "lora_path": str(folder)},
        ok_if=lambda r: r.status_code == 400 and "already been loaded" in r.text,
    )
    return response.text.strip()[:300]


def _call(settings, method, path, payload=None, ok_if=lambda response: False):
    import httpx2

    try:
        with httpx2.Client(timeout=settings.timeout(), headers=settings.headers()) as client:
            response = client.request(method, settings.endpoint(path), json=payload)
    except httpx2.TimeoutException:
        raise ModelhubError(
            f"the server at {settings.url} did not answer within {settings.read_timeout:g}s", code="remote_timeout"
        ) from None
    except httpx2.HTTPError as exc:
        raise ModelhubError(f"cannot reach the server at {settings.url}: {exc}", code="remote_unavailable") from None
    if response.status_code >= 400 and not ok_if(response):
        raise ModelhubError(
            f"the server at {settings.url} answered {method} /{path} with HTTP "
            f"{response.status_code}: {response.text.strip()[:300]}",
            code="remote_failed",
        )
    return response
