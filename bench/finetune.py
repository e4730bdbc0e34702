"""Does feedback make the built-in model better at what users asked for? The whole loop, measured.

In one run, through the real models and code paths (nothing is written by hand
into the dataset):
  1. 200 conversations: an opening line from the chitchat dataset, answered by the
     built-in model through the serving engine (batched, greedy);
  2. each answer corrected by its user in one consistent house style (a greeting
     first, an offer of more help last) and rated down: `Feedback.record`;
  3. an SFT snapshot exported with `export_snapshot` (PII scrubbing, stable held-out split);
  4. a LoRA adapter fine-tuned on it through `FinetuneJob` / `run_job` (TRL SFTTrainer,
     evaluation every few steps, early stopping), registered disabled with its lineage;
  5. held-out loss before and after, and replies of the base and the promoted adapter
     to held-out prompts.
Writes bench/results/finetune.json and prints `eval_loss_ratio=<after/before>` last
(target <= 0.8).

    .venv/bin/python bench/finetune.py [--conversations 200] [--epochs 3]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from stream import ROOT, setup_django

GREETING = "Thanks for asking!"
SIGN_OFF = "Is there anything else I can help you with today?"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--model-dir", default=str(ROOT / "modelhub" / "builtin" / "chitchat"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "finetune.json"))
    return parser.parse_args()


def house_style(answer):
    """The correction every user writes: the model's answer, in the house style."""
    answer = answer.strip() or "I am not sure."
    return f"{GREETING} {answer[0].upper()}{answer[1:]} {SIGN_OFF}"


def opening_lines(count):
    """Distinct first lines of chitchat conversations (the dataset ships inside its wheel)."""
    from modelhub.training.builtin import load_chitchat

    lines = []
    for _, messages in load_chitchat():
        line = messages[0]["content"].strip()
        if 8 <= len(line) <= 120 and line not in lines:
            lines.append(line)
        if len(lines) == count:
            return lines
    raise SystemExit(f"the chitchat dataset has fewer than {count} usable opening lines")


def collect_feedback(user, spec, count):
    """Conversations answered by the model (all at once, batched), each corrected by its user."""
    from conversations.models import Conversation, Feedback
    from modelhub import api

    started = time.perf_counter()
    pending = []
    for line in opening_lines(count):
        conversation = Conversation.objects.create(owner=user, model=spec)
        conversation.add_user_message(line)
        reply = conversation.start_reply(spec, {})
        request = api.start(spec, conversation.history(upto=reply), {"temperature": 0, "max_new_tokens": 32})
        pending.append((reply, request))
    for reply, request in pending:
        text = "".join(request).strip()
        reply.finish("complete", text, usage=request.usage)
        Feedback.record(user, reply, rating="down", correction=house_style(text))
    return round(time.perf_counter() - started, 2)


def replies(spec, adapter, prompts):
    from modelhub import api

    options = {"temperature": 0, "max_new_tokens": 40}
    return [
        "".join(api.start(spec, [{"role": "user", "content": p}], options, adapter=adapter)).strip() for p in prompts
    ]


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as var_dir:
        os.environ["MODELHUB_ADAPTERS_DIR"] = str(Path(var_dir) / "adapters")
        os.environ["CHAT_DATASETS_DIR"] = str(Path(var_dir) / "datasets")
        setup_django(var_dir)
        from django.contrib.auth import get_user_model

        from conversations.training_data.export import export_snapshot
        from modelhub.models import FinetuneJob, ModelSpec
        from modelhub.training.finetune import run_job

        spec = ModelSpec.objects.create(name="chitchat", source=args.model_dir, dtype="float32", device="auto")
        user = get_user_model().objects.create_user("bench", password="bench-pass-123", is_staff=True)
        collect_seconds = collect_feedback(user, spec, args.conversations)
        snapshot = export_snapshot("sft", eval_fraction=0.1, created_by=user)
        files = snapshot.verify()
        hparams = {
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "batch_size": 8,
            "eval_steps": 10,
            "patience": 3,
            "lora_r": 8,
            "lora_alpha": 16,
        }
        job = FinetuneJob.objects.create_for(
            spec, "sft", files["train"], files["eval"], snapshot.dataset_ref(), hparams, user, "house-style"
        )
        adapter = run_job(job, progress_bar=sys.stderr.isatty())
        job.refresh_from_db()
        adapter.promote()
        held_out = [json.loads(line)["messages"][-2]["content"] for line in open(files["eval"], encoding="utf-8")][:3]
        samples = {
            "prompts": held_out,
            "base": replies(spec, None, held_out),
            "adapter": replies(spec, adapter, held_out),
        }
        metrics = job.metrics
    before, after = metrics["eval_before"]["loss"], metrics["eval_after"]["loss"]
    result = {
        "what": "held-out SFT loss of the built-in model before and after a LoRA fine-tune on corrections "
        "collected in chatsite",
        "model_dir": os.path.relpath(args.model_dir, ROOT),
        "conversations": args.conversations,
        "snapshot_rows": snapshot.counts,
        "collect_seconds": collect_seconds,
        "hyperparameters": job.hyperparameters,
        "metrics": metrics,
        "samples": samples,
        "eval_loss_ratio": round(after / before, 4),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(samples, indent=2))
    print(f"held-out loss {before:.4f} -> {after:.4f} in {metrics['steps']} steps ({metrics['train_seconds']} s)")
    print(f"eval_loss_ratio={after / before:.4f}")


if __name__ == "__main__":
    main()
