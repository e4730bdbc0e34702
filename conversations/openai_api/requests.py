"""What an API client asks, read and checked before anything is saved or generated.

`read(body, key)` turns a `/v1/chat/completions` body into a `Call` (the model and adapter the
key's user may use, the messages, the generation options) or raises `ApiError`, which becomes
an error in OpenAI's shape with its status code. Runs in the database thread.

Model names: a model's name (`chitchat`), or `name:adapter` for one of its enabled LoRA
adapters (`chitchat:support-v2`); `/v1/models` lists exactly the ones the key's user may use.
Options not given take the model's defaults (as in chat), not OpenAI's.
"""

import json
from dataclasses import dataclass, field

from django.conf import settings
from django.http import JsonResponse

from conversations.chat.protocol import unstorable
from conversations.forms import ModelChoiceForm
from modelhub import api
from modelhub.api import InvalidOptions
from modelhub.models import ModelSpec

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# OpenAI's name for each option that chatsite's options (modelhub/options.py) know, and extras vLLM also takes.
OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_completion_tokens": "max_new_tokens",
    "max_tokens": "max_new_tokens",
    "seed": "seed",
    "stop": "stop",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "ignore_eos": "ignore_eos",
}
# Fields whose meaning chatsite cannot honour: refused unless they ask for what it does anyway.
UNSUPPORTED = {
    "functions": (None, []),  # the old form of `tools`
    "function_call": (None, "none"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
}


class ApiError(Exception):
    """A refusal in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        403: "permission_error",
        404: "invalid_request_error",
        405: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        503: "server_error",
        500: "server_error",
    }

    def __init__(self, status, message, code=None, param=None, retry_after=None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.retry_after = retry_after  # seconds, sent as Retry-After

    def body(self):
        return {
            "error": {
                "message": self.message,
                "type": self.TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self):
        response = JsonResponse(self.body(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(self.retry_after)
        return response


@dataclass
class Call:
    """One chat completion asked with `key`: the model (and adapter) to answer, the prompt, the options."""

    key: object
    model: str  # as the client named it, echoed in every response
    spec: ModelSpec
    adapter: object
    messages: list  # [{"role", "content"}], system messages first, the last one the user's
    overrides: dict = field(default_factory=dict)  # chatsite option names
    stream: bool = False
    include_usage: bool = False


def usable_models(user):
    """{API model name: (spec, adapter or None)}: the chat's model menu (ModelChoiceForm), named for the API."""
    return {
        spec.name + (f":{adapter.name}" if adapter else ""): (spec, adapter)
        for spec, adapter, _ in ModelChoiceForm(user).options.values()
    }


def read(body, key):
    """The Call this body asks for with `key`; ApiError naming the first problem."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The body is not valid JSON.", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "The body's JSON is nested too deeply.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
    _refuse_unstorable(data)
    _refuse_unsupported(data)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            400, "`model` is required: one of the names /v1/models lists.", param="model", code="missing_model"
        )
    found = usable_models(key.user).get(model)
    if found is None:
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    spec, adapter = found
    call = Call(key, model, spec, adapter, _messages(data.get("messages")), _overrides(data, spec))
    call.stream = _flag(data, "stream")
    options = data.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not call.stream):
        raise ApiError(400, "`stream_options` is an object, and only for `stream: true`.", param="stream_options")
    call.include_usage = bool(options and _flag(options, "include_usage"))
    return call


def _refuse_unstorable(data):
    """400 naming the first string of the body (a value or a key) that could not be stored."""
    stack = [("", data)]
    while stack:
        path, value = stack.pop()
        texts = [value] if isinstance(value, str) else list(value) if isinstance(value, dict) else []
        for text in texts:
            problem = unstorable(text)
            if problem:
                param = path.encode("ascii", "backslashreplace").decode() or None
                raise ApiError(400, f"`{param or 'a key'}` contains {problem}.", param=param, code="invalid_text")
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}" if path else key, item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))


def _flag(data, name):
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"`{name}` must be true or false.", param=name)
    return value


def _refuse_unsupported(data):
    if data.get("n") not in (None, 1):
        raise ApiError(400, "Only `n: 1` is supported: ask again for more choices.", param="n")
    for name, allowed in UNSUPPORTED.items():
        if name in data and data[name] not in allowed:
            raise ApiError(400, f"`{name}` is not supported by this server.", param=name, code="unsupported_parameter")


def _messages(messages):
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty list.", param="messages")
    read_, call_ids = [], set()
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(
                400, f"`{param}.role` must be one of system, developer, user, assistant or tool.", param=param
            )
        role = ROLES[message["role"]]
        if role == "system" and read_ and read_[-1]["role"] != "system":
            raise ApiError(400, f"`{param}`: system messages must come before the conversation's turns.", param=param)
        calls = _tool_calls(message, param) if role == "assistant" else []
        content = "" if calls and message.get("content") is None else _text(message.get("content"), param)
        if len(content) > settings.CHAT_MAX_MESSAGE_CHARS:
            raise ApiError(
                400,
                f"`{param}.content` is longer than {settings.CHAT_MAX_MESSAGE_CHARS} characters.",
                param=param,
                code="message_too_long",
            )
        turn = {"role": role, "content": content}
        if calls:
            turn["tool_calls"] = calls
            call_ids.update(call["id"] for call in calls)
        reasoning = message.get("reasoning_content", message.get("reasoning")) if role == "assistant" else None
        if reasoning:  # what the model thought before this turn: the template decides what of it to keep
            turn["reasoning_content"] = _text(reasoning, f"{param}.reasoning")
        if role == "tool":
            turn["tool_call_id"] = message.get("tool_call_id")
            if turn["tool_call_id"] not in call_ids:
                raise ApiError(
                    400,
                    f"`{param}.tool_call_id` names no tool call of an earlier assistant message.",
                    param=f"{param}.tool_call_id",
                )
        read_.append(turn)
    if read_[-1]["role"] not in ("user", "tool"):
        raise ApiError(
            400,
            "The last message must be the user's (or a tool's result): it is what the model answers.",
            param="messages",
        )
    if not read_[-1]["content"].strip():
        param = f"messages[{len(read_) - 1}].content"
        raise ApiError(400, f"`{param}` is empty: there is nothing to answer.", param=param, code="empty_message")
    return read_


def _tool_calls(message, param):
    """An assistant turn's tool calls, checked: [{"id", "type": "function", "function": {"name", "arguments"}}]."""
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise ApiError(400, f"`{param}.tool_calls` must be a list.", param=f"{param}.tool_calls")
    for index, call in enumerate(calls):
        where = f"{param}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or not call["id"]:
            raise ApiError(400, f"`{where}.id` must be a non-empty string.", param=f"{where}.id")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ApiError(400, f"`{where}.function.name` is required.", param=f"{where}.function.name")
        if not isinstance(function.get("arguments", ""), str):
            raise ApiError(
                400, f"`{where}.function.arguments` must be a JSON string.", param=f"{where}.function.arguments"
            )
    return [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": call["function"].get("arguments", "")},
        }
        for call in calls
    ]


def _text(content, param):
    """A message's text: a string, or a list of text parts (what newer clients send)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        if all(part.get("type") == "text" and isinstance(part.get("text"), str) for part in content):
            return "".join(part["text"] for part in content)
        raise ApiError(
            400, f"`{param}.content`: only text parts are supported.", param=param, code="unsupported_content"
        )
    raise ApiError(400, f"`{param}.content` must be a string or a list of text parts.", param=param)


def _overrides(data, spec):
    """The options given, by chatsite's names, checked against the model's limits."""
    overrides = {}
    for name, option in OPTIONS.items():
        value = data.get(name)
        if value is None or (option in overrides and name == "max_tokens"):  # max_completion_tokens wins
            continue
        if option == "ignore_eos":
            if not isinstance(value, bool):
                raise ApiError(400, f"`{name}` must be true or false.", param=name)
        elif isinstance(value, bool) or (option != "stop" and not isinstance(value, (int, float))):
            raise ApiError(400, f"`{name}` must be a number.", param=name)
        overrides[option] = value
    overrides.update(_structure(data))
    try:
        problems = spec.default_options().merged(overrides).problems(settings.MODELHUB_MAX_NEW_TOKENS_LIMIT)
    except InvalidOptions as exc:
        raise ApiError(400, exc.message) from None
    if problems:
        option = next(iter(problems))
        param = next((name for name, known in OPTIONS.items() if known == option and name in data), option)
        raise ApiError(400, "; ".join(problems.values()), param=param, code="invalid_value")
    return overrides


def _structure(data):
    """`tools`, `tool_choice`, `parallel_tool_calls` and `response_format`, checked (their grammar compiled:
    a schema the grammar library cannot compile is refused here, naming the field), as options."""
    found = api.structure_problems(data.get("tools"), data.get("tool_choice", "auto"), data.get("response_format"))
    if found:
        param, problem = next(iter(found.items()))
        raise ApiError(400, f"`{param}`: {problem}.", param=param, code="invalid_value")
    options = {}
    if data.get("tools"):
        options.update(tools=data["tools"], tool_choice=data.get("tool_choice", "auto"))
        options["parallel_tool_calls"] = data.get("parallel_tool_calls") is None or _flag(data, "parallel_tool_calls")
    if data.get("response_format") not in (None, {"type": "text"}):
        options["response_format"] = data["response_format"]
    return options
