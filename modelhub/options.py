"""What goes into a generation and what comes out of it, with no torch in sight.

`GenerationOptions` is validated once, where a request enters modelhub; `Usage`
is recorded when a stream ends; `ModelhubError` is the one exception type callers
see, with a short machine-readable `code` and a message fit for a user.
"""

from dataclasses import asdict, dataclass, fields, replace


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

    def validated(self, max_new_tokens_limit):
        problems = []
        if not 0.0 <= self.temperature <= 2.0:
            problems.append("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            problems.append("top_p must be in (0, 1]")
        if self.top_k < 0:
            problems.append("top_k must be 0 (off) or more")
        if not 1 <= self.max_new_tokens <= max_new_tokens_limit:
            problems.append(f"max_new_tokens must be between 1 and {max_new_tokens_limit}")
        if not 0.5 <= self.repetition_penalty <= 2.0:
            problems.append("repetition_penalty must be between 0.5 and 2")
        if problems:
            raise InvalidOptions("; ".join(problems))
        return self

    def merged(self, overrides):
        """A copy with the given keys replaced; unknown keys or wrong types are an error."""
        known = {f.name: f.type for f in fields(self)}
        unknown = set(overrides) - set(known)
        if unknown:
            raise InvalidOptions(f"unknown option(s): {', '.join(sorted(unknown))}")
        clean = {}
        for key, value in overrides.items():
            if key == "ignore_eos":
                if not isinstance(value, bool):
                    raise InvalidOptions("ignore_eos must be true or false")
                clean[key] = value
            elif key == "seed" and value is None:
                clean[key] = None
            else:
                clean[key] = _number(key, value, int if key in {"top_k", "max_new_tokens", "seed"} else float)
        return replace(self, **clean)

    def as_dict(self):
        return asdict(self)


def _number(key, value, caster):
    if isinstance(value, bool):
        raise InvalidOptions(f"{key} must be a number")
    try:
        number = caster(value)
    except (TypeError, ValueError):
        raise InvalidOptions(f"{key} must be a number") from None
    if caster is int and number != float(value):
        raise InvalidOptions(f"{key} must be a whole number")
    return number


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

    def as_dict(self):
        return asdict(self)
