"""What goes into a generation and what comes out of it, with no torch in sight.

`GenerationOptions` is validated once, where a request enters modelhub; `Usage`
is recorded when a stream ends; `ModelhubError` is the one exception type callers
see, with a short machine-readable `code` and a message fit for a user.
"""

import math
from dataclasses import asdict, dataclass, field, fields, replace


class ModelhubError(Exception):
    code = "model_error"

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class InvalidOptions(ModelhubError):
    code = "invalid_options"


class ModelNotFound(ModelhubError):
    code = "unknown_model"


class ModelLoadError(ModelhubError):
    code = "model_load_failed"


class PromptTooLong(ModelhubError):
    code = "prompt_too_long"


# A frame's JSON can carry any value (json.loads reads 1e400 as inf): options are checked
# for type, then range, so that a bad value is an InvalidOptions here, never a crash later.
MIN_TEMPERATURE = 0.01  # between 0 (greedy) and this, logits / temperature overflow float32 into inf and nan
MAX_TOP_K = 1_000_000  # more than any vocabulary: a larger k would keep every token, as 0 (off) does
MAX_SEED = 2**63 - 1  # torch.Generator takes -2**63..2**64-1 (negative ones wrap); this fits a signed 64-bit column
MAX_STOP_STRINGS = 4  # the OpenAI API's limit
MAX_STOP_LENGTH = 200  # characters per stop string: text that long is held back while it might begin one
MAX_LOGPROBS = 20  # alternatives per token, as the OpenAI API's top_logprobs
WHOLE_NUMBER_OPTIONS = {"top_k", "max_new_tokens", "seed", "logprobs"}

_RANGES = {  # option: (is this number in range, given the max_new_tokens limit; what to say otherwise)
    "temperature": (
        lambda v, _: v == 0 or MIN_TEMPERATURE <= v <= 2,
        f"temperature must be between 0 and 2 (0 is greedy; above 0, at least {MIN_TEMPERATURE})",
    ),
    "top_p": (lambda v, _: 0 < v <= 1, "top_p must be in (0, 1]"),
    "top_k": (lambda v, _: 0 <= v <= MAX_TOP_K, f"top_k must be 0 (off) or more, up to {MAX_TOP_K}"),
    "max_new_tokens": (lambda v, limit: 1 <= v <= limit, "max_new_tokens must be between 1 and {limit}"),
    "repetition_penalty": (lambda v, _: 0.5 <= v <= 2, "repetition_penalty must be between 0.5 and 2"),
    "seed": (lambda v, _: 0 <= v <= MAX_SEED, f"seed must be between 0 and {MAX_SEED} (or unset, for a random one)"),
    "logprobs": (
        lambda v, _: 0 <= v <= MAX_LOGPROBS,
        f"logprobs must be between 0 and {MAX_LOGPROBS} alternatives per token (or unset, for none kept)",
    ),
}
NULLABLE_OPTIONS = {"seed", "logprobs"}  # None: a random seed; no probabilities kept
FLAG_OPTIONS = {"ignore_eos", "think"}  # true or false (think may also be None: the template's default)
# What a reply must look like (tools, a JSON format): their shape and their grammar are checked together by
# decoding/grammar.py `problems` (serving.options_for), not one by one here.
STRUCTURE_OPTIONS = {"tools", "tool_choice", "parallel_tool_calls", "response_format"}


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings. temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks)
    stop: tuple[str, ...] = ()  # the reply ends before the first of these strings it would contain (stopping.py)
    logprobs: int | None = None  # keep each token's probability and this many alternatives' (logprobs.py)
    think: bool | None = None  # a model that reasons first: on or off (the chat template's enable_thinking); None:
    # the template's own default
    # Tools the model may call (OpenAI's function tools, rendered by the chat template), whether it must
    # (tool_choice "auto" | "none" | "required" | {"type": "function", "function": {"name"}}), and the
    # answer's format (OpenAI's response_format): decoding/grammar.py.
    tools: tuple = ()
    tool_choice: object = "auto"
    parallel_tool_calls: bool = True
    response_format: dict | None = None

    def __post_init__(self):
        # As in the OpenAI API, one string is a list of one; a list becomes a tuple (the options stay hashable).
        # Anything else is left as it is, for `problems` to name.
        if self.stop is None or isinstance(self.stop, (str, list)):
            object.__setattr__(self, "stop", _stop_tuple(self.stop))
        if isinstance(self.tools, list):
            object.__setattr__(self, "tools", tuple(self.tools))

    def validated(self, max_new_tokens_limit):
        """Self, when every option has its type and range; else InvalidOptions naming each problem."""
        problems = self.problems(max_new_tokens_limit)
        if problems:
            raise InvalidOptions("; ".join(problems.values()))
        return self

    def problems(self, max_new_tokens_limit):
        """{option: what is wrong with its value}; empty when all are fine."""
        problems = {}
        for option in fields(self):
            name, value = option.name, getattr(self, option.name)
            if name in STRUCTURE_OPTIONS:
                continue
            if name in FLAG_OPTIONS:
                if not isinstance(value, bool) and not (name == "think" and value is None):
                    problems[name] = f"{name} must be true or false"
                continue
            if name == "stop":
                if problem := _stop_problem(value):
                    problems[name] = problem
                continue
            if name in NULLABLE_OPTIONS and value is None:
                continue
            in_range, message = _RANGES[name]
            problem = _type_problem(name, value)
            if problem is None and not in_range(value, max_new_tokens_limit):
                problem = message.format(limit=max_new_tokens_limit)
            if problem:
                problems[name] = problem
        return problems

    def merged(self, overrides):
        """A copy with the given keys replaced, numbers cast to the option's type (they may come
        as text from a form); unknown keys, wrong types and non-finite numbers are an error."""
        if not isinstance(overrides, dict):
            raise InvalidOptions("options must be a JSON object")
        known = {f.name for f in fields(self)}
        unknown = {str(key) for key in overrides if key not in known}
        if unknown:
            raise InvalidOptions(f"unknown option(s): {', '.join(sorted(unknown))}")
        return replace(self, **{key: _cast(key, value) for key, value in overrides.items()})

    def as_dict(self):
        """Plain JSON values (`stop` as a list), as a message's stored generation_options hold them."""
        return {**asdict(self), "stop": list(self.stop), "tools": list(self.tools)}

    @property
    def calls_tools(self):
        """Whether the reply may call a tool (tools given, and tool_choice is not "none")."""
        return bool(self.tools) and self.tool_choice != "none"


def _stop_tuple(value):
    """None (JSON's null), one string or a list of strings as a tuple; anything else unchanged."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _stop_type_problem(value):
    if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
        return "stop must be a string or a list of strings"
    return None


def _stop_problem(value):
    """What is wrong with a `stop` value (type, then count and lengths), or None."""
    problem = _stop_type_problem(value)
    if problem is None and len(value) > MAX_STOP_STRINGS:
        problem = f"stop takes at most {MAX_STOP_STRINGS} strings"
    elif problem is None and not all(1 <= len(item) <= MAX_STOP_LENGTH for item in value):
        problem = f"each stop string must be 1 to {MAX_STOP_LENGTH} characters long"
    return problem


def _type_problem(name, value):
    """Why `value` is not a number this option can take (whatever its range), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number"
    if name in WHOLE_NUMBER_OPTIONS and not isinstance(value, int):
        return f"{name} must be a whole number"
    return None


def _cast(name, value):
    if name in STRUCTURE_OPTIONS:  # JSON as the request gave it; decoding/grammar.py `problems` checks it
        return (
            (() if value is None else tuple(value) if isinstance(value, list) else value) if name == "tools" else value
        )
    if name == "stop":  # a JSON list (or one string, or null) from a request or a stored message
        value = _stop_tuple(value)
        if problem := _stop_type_problem(value):
            raise InvalidOptions(problem)
        return value
    if name in FLAG_OPTIONS:
        if not isinstance(value, bool) and not (name == "think" and value is None):
            raise InvalidOptions(f"{name} must be true or false")
        return value
    if name in NULLABLE_OPTIONS and value is None:
        return None
    if isinstance(value, str):
        value = _parse_number(name, value)
    if isinstance(value, float) and name in WHOLE_NUMBER_OPTIONS and value.is_integer():
        value = int(value)  # 12.0 is 12 (is_integer() is False for inf and nan)
    elif isinstance(value, int) and not isinstance(value, bool) and name not in WHOLE_NUMBER_OPTIONS:
        try:
            value = float(value)
        except OverflowError:  # an int past 1e308 (JSON has no limit): out of any range
            raise InvalidOptions(_RANGES[name][1]) from None
    problem = _type_problem(name, value)
    if problem:
        raise InvalidOptions(problem)
    return value


def _parse_number(name, text):
    for caster in (int, float):
        try:
            return caster(text)
        except ValueError:
            pass
    raise InvalidOptions(f"{name} must be a number")


@dataclass
class Usage:
    """Recorded when a stream ends, whatever ended it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None  # seconds from the request's start
    duration: float = 0.0  # seconds from the request's start to its end
    finish_reason: str = ""  # stop (end of turn), length, cancelled, error
    truncated_messages: int = 0  # oldest history messages left out to fit the context
    cached_prompt_tokens: int = 0  # prompt tokens whose keys and values were reused from an earlier turn
    # The prompt exactly as the model got it (prompts.py), recorded once at admission: the chat template's
    # text after truncation; where a server applies the template itself (remote, scripted), the JSON
    # messages sent. template_hash (prompts.template_hash) names the template; "" when chatsite did not render.
    prompt_text: str = ""
    template_hash: str = ""
    # Each sampled token's probability and its alternatives' (logprobs.py), when the options asked; else None.
    token_logprobs: list | None = None
    # What a model that reasons first wrote before its answer (decoding/parts.py; a remote server's
    # `reasoning` field), and how many of the completion tokens it took. The answer is the reply's text.
    reasoning: str = ""
    reasoning_tokens: int = 0
    # The tool calls the reply made, in OpenAI's shape: [{"id", "type": "function", "function": {"name",
    # "arguments": a JSON string}}] (finish_reason "tool_calls").
    tool_calls: list = field(default_factory=list)

    def as_dict(self):
        return asdict(self)
