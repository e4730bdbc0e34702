"""What a registered model or adapter may hold, checked when it is saved through a form or
`full_clean()` (the admin, `manage.py modelhub add`), so that a bad value is refused there,
not on every request."""

import json
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.utils.deconstruct import deconstructible
from jinja2 import TemplateSyntaxError, ext, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelhub.options import GenerationOptions

validate_device = RegexValidator(
    r"\A(auto|cpu|mps|cuda(:[0-9]+)?)\Z", "Use auto, cpu, mps, cuda or cuda:N (N: the GPU's number)."
)


@deconstructible
class OptionValidator:
    """A model's default for a generation option must be a value a request may ask for."""

    def __init__(self, option):
        self.option = option

    def __call__(self, value):
        options = GenerationOptions(**{self.option: value})
        problem = options.problems(settings.MODELHUB_MAX_NEW_TOKENS_LIMIT).get(self.option)
        if problem:
            raise ValidationError(f"{problem}.")

    def __eq__(self, other):
        return isinstance(other, OptionValidator) and other.option == self.option


def validate_chat_template(template):
    """Compile it as transformers does (a sandboxed Jinja environment with its two extensions)."""

    class GenerationBlock(ext.Extension):
        """transformers' `{% generation %}...{% endgeneration %}` (it marks the assistant's text)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, ext.loopcontrols]
    )
    try:
        environment.from_string(template)
    except TemplateSyntaxError as exc:  # unknown filters and tests too
        raise ValidationError(f"Not a valid Jinja template: {exc.message} (line {exc.lineno}).") from exc


def adapter_config_problem(folder):
    """Why the folder's adapter_config.json is not a LoRA config peft can read, or ""."""
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{folder} has no adapter_config.json: it is not a peft adapter folder"
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read {path}: {exc}"
    except ValueError as exc:
        return f"{path} is not JSON: {exc}"
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        return f'{path} is not a LoRA adapter\'s config (its peft_type must be "LORA")'
    targets, rank = config.get("target_modules"), config.get("r")
    if not (isinstance(targets, str) or isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        return f"{path}: target_modules must be a list of module names or a pattern"
    if not targets:
        return f"{path}: target_modules is empty"
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        return f"{path}: r (the LoRA rank) must be a whole number above 0"
    return ""


validate_env_name = RegexValidator(
    r"\A[A-Za-z_][A-Za-z0-9_]*\Z",
    "The name of an environment variable: letters, digits and _, not starting with a digit.",
)


def validate_server_url(url):
    """An OpenAI API root over http(s), without credentials or a query (the key goes in api_key_env)."""

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Use an http:// or https:// URL, e.g. http://gpu-box:8000/v1.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValidationError(
            "Give the API root alone: no user:password@, ?query or #fragment (keys go in the API key variable)."
        )
