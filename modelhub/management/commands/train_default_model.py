"""Train the built-in chat model on chitchat-dataset and save it for modelhub.

python manage.py train_default_model --minutes 60
"""

import json
from dataclasses import asdict, fields
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from tqdm import tqdm

from modelhub.backends.loading import load_local_for_generation
from modelhub.backends.standalone import generate_text
from modelhub.training.builtin import TrainConfig, train

SAMPLE_PROMPTS = ["Hello! How are you today?", "What do you like to do on weekends?", "I just got back from a trip."]


class Command(BaseCommand):
    help = "Train the built-in chat model (tokenizer + small Llama) and report held-out bits per byte."

    def add_arguments(self, parser):
        parser.add_argument("--output", default=str(settings.MODELHUB_BUILTIN_DIR / "chitchat"))
        for field in fields(TrainConfig):
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--report", help="also write the result as JSON to this file")

    def handle(self, *args, **options):
        config = TrainConfig(**{f.name: options[f.name] for f in fields(TrainConfig)})
        output = Path(options["output"])
        bar = None

        def progress(step, total, loss):
            nonlocal bar
            if options["no_progress"]:
                return
            if bar is None:
                bar = tqdm(total=total, desc="training", unit="step")
            bar.total = total
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")

        result = train(config, output, progress=progress, log=self.stdout.write)
        if bar is not None:
            bar.close()
        self.stdout.write(
            f"held-out loss: {result.val_loss:.4f} nats/token = {result.val_bpb:.4f} bits per byte "
            f"({result.params / 1e6:.2f}M parameters, {result.steps} steps, {result.seconds:.0f}s, "
            f"best at step {result.best_step}{', stopped early' if result.stopped_early else ''})"
        )
        self.stdout.write(f"saved to {output}")
        for prompt, reply in self._samples(output):
            self.stdout.write(f"  user: {prompt}\n  model: {reply}")
        if options["report"]:
            Path(options["report"]).write_text(json.dumps(asdict(result), indent=2) + "\n")

    def _samples(self, output):
        model, tokenizer = load_local_for_generation(output)
        for prompt in SAMPLE_PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            yield prompt, generate_text(model, tokenizer, messages, max_new_tokens=40)
