"""Manage models from the terminal, as the admin does from the browser.

    python manage.py modelhub list
    python manage.py modelhub add NAME SOURCE [--quantization nf4] [--default] ...
    python manage.py modelhub add-adapter BASE NAME FOLDER
    python manage.py modelhub load NAME        # load it here: proves it loads, shows memory
    python manage.py modelhub unload NAME      # disable it: servers stop serving and unload it
    python manage.py modelhub test NAME ["prompt"] [--adapter A] [--mixed]
    python manage.py modelhub add NAME [WEIGHTS] --server-url http://gpu-box:8000/v1 [--served-model-name M]
    python manage.py modelhub zero-adapter ADAPTER_FOLDER OUT_FOLDER

A model with --server-url is served by that OpenAI-compatible server (vLLM, SGLang, TGI,
llama.cpp); `test` checks first that it answers and serves the model, and `--mixed` checks
that base and adapter replies asked together equal the same replies asked alone.

A running server holds its own loaded models; this command works on the shared
database and on its own process. Hub downloads show their progress bars here.
"""

import time

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.management.base import BaseCommand, CommandError

from modelhub import serving
from modelhub.admin import describe_runtime
from modelhub.management.commands.chat import text_argument
from modelhub.mixing import PROMPTS, mixed_batch_differences, write_zero_adapter
from modelhub.models import Adapter, ModelSpec
from modelhub.options import ModelhubError
from modelhub.registry import registry


class Command(BaseCommand):
    help = "List, add, load, unload and try models (the admin's model management on the command line)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="registered models and adapters")
        add = sub.add_parser("add", help="register a local folder or Hub repo id")
        add.add_argument("name")
        add.add_argument(
            "source", nargs="?", default="", help="weights: a folder or Hub id (optional with --server-url)"
        )
        add.add_argument("--server-url", default="", help="an OpenAI-compatible server's API root: served there")
        add.add_argument("--served-model-name", default="")
        add.add_argument("--api-key-env", default="", help="the environment variable holding the server's API key")
        add.add_argument("--read-timeout", type=float, default=60.0)
        add.add_argument("--base-alias", default="", help="served name for base-model requests (see zero-adapter)")
        add.add_argument("--runtime-adapters", action="store_true", help="load adapters on the server when enabled")
        add.add_argument("--display-name", default="")
        add.add_argument("--revision", default="")
        add.add_argument("--dtype", default="auto", choices=ModelSpec.DType.values)
        add.add_argument("--device", default="auto")
        add.add_argument("--quantization", default="none", choices=ModelSpec.Quantization.values)
        add.add_argument("--double-quant", action="store_true")
        add.add_argument("--compute-dtype", default="auto", choices=ModelSpec.DType.values)
        add.add_argument("--context-length", type=int)
        add.add_argument("--chat-template-file", help="a Jinja file overriding the tokenizer's chat template")
        add.add_argument("--staff-only", action="store_true")
        add.add_argument("--default", action="store_true")
        adapter = sub.add_parser("add-adapter", help="register a LoRA adapter folder for a base model")
        adapter.add_argument("base")
        adapter.add_argument("name")
        adapter.add_argument("folder")
        adapter.add_argument("--description", default="")
        for action in ("load", "unload"):
            sub.add_parser(action).add_argument("name")
        test = sub.add_parser("test", help="stream a short reply")
        test.add_argument("name")
        test.add_argument("prompt", nargs="?", type=text_argument, default="Hello! How are you today?")
        test.add_argument("--adapter")
        test.add_argument("--max-new-tokens", type=int, default=64)
        test.add_argument(
            "--mixed",
            action="store_true",
            help="check that base and adapter replies asked together equal them asked alone",
        )
        zero = sub.add_parser("zero-adapter", help="copy a LoRA adapter with its B weights zeroed (a no-op adapter)")
        zero.add_argument("folder")
        zero.add_argument("out")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"do_{action.replace('-', '_')}")(**options)
        except ModelhubError as exc:
            raise CommandError(exc.message) from exc
        except ValidationError as exc:
            raise CommandError(_describe(exc)) from exc

    def do_list(self, **options):
        for spec in ModelSpec.objects.prefetch_related("adapters"):
            flags = [
                f
                for f, on in [
                    ("default", spec.is_default),
                    ("disabled", not spec.enabled),
                    ("staff only", spec.visibility == "staff"),
                ]
                if on
            ]
            self.stdout.write(
                f"{spec.name:20} {spec.source}  [{spec.quantization}, {spec.dtype}, {spec.device}]"
                + (f"  ({', '.join(flags)})" if flags else "")
            )
            for adapter in spec.adapters.all():
                state = "" if adapter.enabled else " (disabled)"
                self.stdout.write(f"{'':20}   + adapter {adapter.name}: {adapter.path}{state}")

    def do_add(self, name, source, **options):
        template = ""
        if options["chat_template_file"]:
            try:
                with open(options["chat_template_file"], encoding="utf-8") as handle:
                    template = handle.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"cannot read the chat template file: {exc}") from exc
        spec = ModelSpec(
            name=name,
            source=source,
            display_name=options["display_name"],
            revision=options["revision"],
            dtype=options["dtype"],
            device=options["device"],
            quantization=options["quantization"],
            double_quant=options["double_quant"],
            compute_dtype=options["compute_dtype"],
            context_length=options["context_length"],
            chat_template=template,
            is_default=options["default"],
            visibility=ModelSpec.Visibility.STAFF if options["staff_only"] else ModelSpec.Visibility.ALL,
            backend=ModelSpec.Backend.REMOTE if options["server_url"] else ModelSpec.Backend.TRANSFORMERS,
            server_url=options["server_url"],
            served_model_name=options["served_model_name"],
            api_key_env=options["api_key_env"],
            read_timeout=options["read_timeout"],
            base_model_alias=options["base_alias"],
            load_adapters_at_runtime=options["runtime_adapters"],
        )
        spec.full_clean()
        self.stdout.write(f"checked: {spec.check_source()}")
        spec.save()
        self.stdout.write(f"Added {spec.name}.")

    def do_add_adapter(self, base, name, folder, description, **options):
        adapter = Adapter(base=serving.get_spec(base), name=name, path=folder, description=description)
        adapter.full_clean()
        adapter.check_fits_base()
        adapter.save()
        self.stdout.write(f"Added adapter {name} to {base}.")
        said = adapter.load_on_server()
        if said:
            self.stdout.write(f"The server loaded it: {said}")

    def do_load(self, name, **options):
        spec = ModelSpec.objects.filter(name=name).first()
        if spec is None:
            raise CommandError(f"no model named {name!r}")
        spec.enabled = True
        spec.save(update_fields=["enabled"])
        started = time.monotonic()
        worker = registry.worker(spec)
        while worker.state == "loading":
            time.sleep(0.1)
        if worker.state == "failed":
            raise CommandError(worker.error)
        self.stdout.write(f"{name}: {describe_runtime(name)} (loaded in {time.monotonic() - started:.1f}s)")

    def do_unload(self, name, **options):
        updated = ModelSpec.objects.filter(name=name).update(enabled=False)
        if not updated:
            raise CommandError(f"no model named {name!r}")
        registry.unload(name)
        self.stdout.write(f"Disabled {name}: users can no longer pick it and running servers unload it.")

    def do_test(self, name, prompt, adapter, max_new_tokens, mixed, **options):
        spec = serving.get_spec(name)
        chosen = serving.get_adapter(spec, adapter) if adapter else None
        if spec.backend == ModelSpec.Backend.REMOTE:
            self.stderr.write(f"[{spec.check_server()}]")
        if mixed:
            return self._test_mixed(spec)
        request = serving.start(
            spec, [{"role": "user", "content": prompt}], {"max_new_tokens": max_new_tokens}, adapter=chosen
        )
        for text in request:
            self.stdout.write(text, ending="")
            self.stdout.flush()
        usage = request.usage
        self.stdout.write("")
        self.stderr.write(f"[{usage.completion_tokens} tokens in {usage.duration:.2f}s, {usage.finish_reason}]")

    def _test_mixed(self, spec):
        adapters = list(Adapter.objects.enabled().filter(base=spec))
        if not adapters:
            raise CommandError(f"{spec.name} has no enabled adapter to mix with its base model")
        differences = mixed_batch_differences(spec, adapters)
        total = 3 * len(PROMPTS) * (len(adapters) + 1)
        for who, prompt, together, alone in differences:
            self.stdout.write(f"{who} on {prompt!r}:\n  together: {together!r}\n  alone:    {alone!r}")
        if differences:
            raise CommandError(
                f"{len(differences)} of {total} replies differed when base and adapter requests shared "
                "a batch: this server applies adapters to the wrong rows. Set the model's base alias "
                "to an all-zero adapter (manage.py modelhub zero-adapter) and check again."
            )
        self.stdout.write(f"mixed batches are right: {total} replies equal their solo runs")

    def do_zero_adapter(self, folder, out, **options):
        self.stdout.write(write_zero_adapter(folder, out))


def _describe(error):
    """A ValidationError on one line: "field: problem; other_field: problem"."""
    if not hasattr(error, "error_dict"):
        return " ".join(error.messages)
    return "; ".join(
        " ".join(messages) if field == NON_FIELD_ERRORS else f"{field}: {' '.join(messages)}"
        for field, messages in error.message_dict.items()
    )
