"""Chat from the terminal through the same modelhub path the web app uses.

python manage.py chat "Hello"
python manage.py chat --model chitchat --temperature 0 "Hello"
python manage.py chat            # interactive: one line per turn, Ctrl-D to quit
"""

import sys
from argparse import ArgumentTypeError

from django.core.management.base import BaseCommand, CommandError

from modelhub import serving
from modelhub.options import ModelhubError


def _is_text(value):
    """False for bytes that were not UTF-8 (Python keeps them as lone surrogates no tokenizer takes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text_argument(value):
    """An argparse type: text a tokenizer can take, else a usage error."""
    if not _is_text(value):
        raise ArgumentTypeError("not valid UTF-8 text")
    return value


class Command(BaseCommand):
    help = "Stream a reply from a registered model to the terminal."

    def add_arguments(self, parser):
        parser.add_argument(
            "prompt", nargs="?", type=text_argument, help="the message; omit for an interactive session"
        )
        parser.add_argument("--model", help="model name (default: the default model)")
        parser.add_argument("--system", default="", type=text_argument, help="system prompt")
        parser.add_argument("--temperature", type=float)
        parser.add_argument("--max-new-tokens", type=int)
        parser.add_argument("--seed", type=int)

    def handle(self, *args, **options):
        try:
            spec = serving.get_spec(options["model"])
            overrides = {
                key: options[key] for key in ("temperature", "max_new_tokens", "seed") if options[key] is not None
            }
            serving.options_for(spec, overrides)
        except ModelhubError as exc:
            raise CommandError(exc.message) from exc
        history = [{"role": "system", "content": options["system"]}] if options["system"] else []
        prompts = [options["prompt"]] if options["prompt"] else self._lines()
        for prompt in prompts:
            history.append({"role": "user", "content": prompt})
            reply = self._reply(spec, history, overrides)
            history.append({"role": "assistant", "content": reply})

    def _lines(self):
        while True:
            self.stdout.write("> ", ending="")
            self.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                return
            if not _is_text(line):
                self.stderr.write("[that line is not valid UTF-8 text: left out]")
            elif line.strip():
                yield line.strip()

    def _reply(self, spec, history, overrides):
        try:
            request = serving.start(spec, history, overrides)  # a model that failed to load refuses it at once
        except ModelhubError as exc:
            raise CommandError(exc.message) from exc
        parts = []
        try:
            for text in request:
                parts.append(text)
                self.stdout.write(text, ending="")
                self.stdout.flush()
        except ModelhubError as exc:
            raise CommandError(exc.message) from exc
        except KeyboardInterrupt:
            request.cancel()
            list(request)  # let the worker finish the cancelled request
        usage = request.usage
        self.stdout.write("")
        if usage and usage.truncated_messages:
            self.stderr.write(f"[{usage.truncated_messages} oldest message(s) left out to fit the context window]")
        if usage:
            self.stderr.write(
                f"[{usage.completion_tokens} tokens, first after {usage.time_to_first_token or 0:.2f}s, "
                f"{usage.duration:.2f}s, {usage.finish_reason}]"
            )
        return "".join(parts)
