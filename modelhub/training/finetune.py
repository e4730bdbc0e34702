"""Fine-tune a LoRA adapter on a registered base model with TRL: SFT or DPO.

Read top to bottom: what a run is told (hyper-parameters, two JSONL files in
TRL's conversational formats), how the base is loaded for training (the same
loader that serves it, plus QLoRA preparation when it is quantized), which
layers get LoRA, the TRL trainer with evaluation every few steps and early
stopping, evaluation of the held-out split before and after, and saving the
adapter. `finetune()` knows nothing of the database and can be driven from a
shell; `run_job()` ties it to a FinetuneJob row, and `run_in_background()`
starts `manage.py finetune --job ID` as a detached process for the admin.

Data formats (one JSON object per line), exactly what TRL takes:
    sft: {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}
    dpo: {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [{...}]}
An SFT row teaches its last message: it is trained as TRL's prompt-completion, so the
loss covers that answer only (the turns before it are context).

torch, transformers, peft, trl and datasets are imported inside functions, so
Django start-up and page views never pay for them.
"""

import math
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from django.conf import settings

from modelhub.backends.loading import LoadSettings, fetch, load
from modelhub.models.finetune_job import METHODS, FinetuneError, Hyperparameters
from modelhub.prompts import chat_template_sha256  # the template the adapter learns with

COLUMNS = {"sft": {"messages"}, "dpo": {"prompt", "chosen", "rejected"}}


@dataclass
class FinetuneResult:
    adapter_dir: Path
    metrics: dict  # eval before/after, steps, early stopping, durations
    history: dict  # {"train": [[step, loss]...], "eval": [[step, loss]...]}
    target_modules: list
    chat_template_sha256: str
    base_commit: str = ""  # the exact Hub commit trained on, when the base comes from the Hub


# --- data ---------------------------------------------------------------------


def load_split(path, method, cache_dir):
    """One JSONL file as a datasets.Dataset, with the columns the method needs."""
    from datasets import load_dataset

    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"the data file {path} does not exist")
    try:
        # cache_dir is the run's scratch folder: the Arrow copies go away with it.
        dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache_dir))
    except Exception as exc:  # not JSON, mixed shapes...
        raise FinetuneError(f"could not read {path} as JSON lines: {exc}") from exc
    missing = COLUMNS[method] - set(dataset.column_names)
    if len(dataset) == 0 or missing:
        problem = "is empty" if len(dataset) == 0 else f"lacks the {', '.join(sorted(missing))} column(s)"
        raise FinetuneError(f"{path} {problem}: {method} needs {', '.join(sorted(COLUMNS[method]))}")
    if method == "sft":
        dataset = _answer_as_completion(dataset, path)
    return dataset


def _answer_as_completion(dataset, path):
    """SFT rows as TRL's prompt-completion: the last message (the answer to learn) is the
    completion, the turns before it the prompt, so the loss covers the answer alone: not
    the user's words, nor earlier answers that were only context (whatever the template)."""
    if any(not row["messages"] or row["messages"][-1]["role"] != "assistant" for row in dataset):
        raise FinetuneError(f"{path}: every sft row must end with the assistant's answer")
    split = lambda row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}  # noqa: E731
    return dataset.map(split, remove_columns=["messages"])


# --- model --------------------------------------------------------------------


def base_commit(folder):
    """The Hub commit a cached snapshot folder holds (…/snapshots/<commit>), or "" for a local folder."""
    folder = Path(folder)
    return folder.name if folder.parent.name == "snapshots" else ""


def load_for_training(settings: LoadSettings, hp: Hyperparameters):
    """The base model exactly as it is served (dtype, device, quantization), ready for LoRA."""
    loaded = load(settings)
    if loaded.quantization not in ("", "none"):
        from peft import prepare_model_for_kbit_training

        # QLoRA: the frozen 4/8-bit weights stay quantized; norms and embeddings go to float32
        # so the small LoRA updates are not lost to rounding.
        loaded.model = prepare_model_for_kbit_training(
            loaded.model, use_gradient_checkpointing=hp.gradient_checkpointing
        )
        for module in loaded.model.modules():
            # bitsandbytes 0.50 repacks 4-bit weights for fast CPU inference the first time a
            # layer runs in eval mode, and gradients through a repacked layer come back as zero:
            # the evaluation before training would silently stop all learning. Not on this copy.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return loaded


def default_target_modules(model):
    """Names of the Linear layers inside the transformer blocks: attention and MLP projections.

    The output head is left out: it is as big as the vocabulary, and TRL computes the
    log-probabilities from its weight directly, so LoRA there would not train.
    """
    output = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        is_linear = hasattr(module, "in_features") and hasattr(module, "out_features") and hasattr(module, "weight")
        if is_linear and module is not output and "." in name:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_config(model, hp: Hyperparameters):
    from peft import LoraConfig

    targets = [t.strip() for t in hp.target_modules.split(",") if t.strip()] or default_target_modules(model)
    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


# --- trainer ------------------------------------------------------------------


def _progress_callback(report):
    from transformers import TrainerCallback

    class ProgressReporter(TrainerCallback):
        """Hands (step, total, loss history) to `report` on every log and at most every 2 s between."""

        def __init__(self):
            self.history, self.last = {"train": [], "eval": []}, 0.0

        def send(self, state, force=False):
            if force or time.monotonic() - self.last >= 2.0:
                self.last = time.monotonic()
                report(state.global_step, state.max_steps, self.history)

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key, series in (("loss", "train"), ("eval_loss", "eval")):
                if key in (logs or {}):
                    self.history[series].append([state.global_step, round(float(logs[key]), 5)])
            self.send(state, force=True)

        def on_step_end(self, args, state, control, **kwargs):
            self.send(state)

    return ProgressReporter()


def build_trainer(method, loaded, train, evals, hp: Hyperparameters, lora, output_dir, callbacks, progress_bar):
    from transformers import EarlyStoppingCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    on_gpu = loaded.device.startswith("cuda")
    common = dict(
        output_dir=str(output_dir),
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps,
        learning_rate=hp.learning_rate,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.grad_accumulation,
        seed=hp.seed,
        max_length=min(hp.max_length, loaded.context_length),
        # Evaluate and checkpoint on the same steps, so the best checkpoint can be restored at the end.
        eval_strategy="steps",
        eval_steps=hp.eval_steps,
        save_strategy="steps",
        save_steps=hp.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, hp.eval_steps // 4),
        report_to="none",
        disable_tqdm=not progress_bar,
        # TRL turns these on by default; mixed precision only where the base is in half precision on a GPU.
        gradient_checkpointing=hp.gradient_checkpointing,
        bf16=on_gpu and loaded.dtype == "bfloat16",
        fp16=on_gpu and loaded.dtype == "float16",
        use_cpu=loaded.device == "cpu",
    )
    callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=hp.patience)]
    kwargs = dict(
        model=loaded.model,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=loaded.tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )
    if method == "sft":  # prompt-completion rows (load_split): the loss covers the completion only
        return SFTTrainer(args=SFTConfig(**common, completion_only_loss=True), **kwargs)
    # ref_model=None with a peft_config: the reference model is the base with the adapter switched off.
    return DPOTrainer(ref_model=None, args=DPOConfig(**common, beta=hp.beta), **kwargs)


def evaluate(trainer, method):
    """Held-out loss (and perplexity for SFT: exp of the mean next-token loss)."""
    raw = trainer.evaluate()
    result = {"loss": round(raw["eval_loss"], 5)}
    if method == "sft":
        result["perplexity"] = round(math.exp(min(raw["eval_loss"], 50.0)), 4)
        result["token_accuracy"] = round(raw.get("eval_mean_token_accuracy", float("nan")), 4)
    else:
        result["reward_accuracy"] = round(raw.get("eval_rewards/accuracies", float("nan")), 4)
        result["reward_margin"] = round(raw.get("eval_rewards/margins", float("nan")), 5)
    return result


# --- the run ------------------------------------------------------------------


def finetune(
    settings: LoadSettings, method, train_path, eval_path, output_dir, hparams=None, progress=None, progress_bar=False
):
    """Train a LoRA adapter, save it to output_dir and return what was measured.

    `progress(step, total, history)` is called as training goes; the held-out split is
    evaluated before and after training, and the best checkpoint is the one saved.
    """
    if method not in METHODS:
        raise FinetuneError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    hp = hparams if isinstance(hparams, Hyperparameters) else Hyperparameters.from_dict(hparams)
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FinetuneError(f"{output_dir} already holds files: choose another adapter name")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chatsite-finetune-") as work:
        train = load_split(train_path, method, Path(work) / "data")
        evals = load_split(eval_path, method, Path(work) / "data")
        folder = fetch(settings)  # a Hub id resolves to one cached commit: train on that, record it
        loaded = load_for_training(replace(settings, source=folder, revision=""), hp)
        lora = lora_config(loaded.model, hp)  # before peft adds its own Linear layers to the model
        reporter = _progress_callback(progress or (lambda *args: None))
        trainer = build_trainer(
            method, loaded, train, evals, hp, lora, Path(work) / "checkpoints", [reporter], progress_bar
        )
        before = evaluate(trainer, method)
        train_started = time.monotonic()
        output = trainer.train()
        train_seconds = time.monotonic() - train_started
        after = evaluate(trainer, method)  # the best checkpoint, restored by load_best_model_at_end
        trainer.model.save_pretrained(str(output_dir))
        state = trainer.state
    metrics = {
        "method": method,
        "eval_before": before,
        "eval_after": after,
        "train_loss": round(output.training_loss, 5),
        "train_examples": len(train),
        "eval_examples": len(evals),
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "best_step": state.best_global_step,
        "stopped_early": state.global_step < state.max_steps,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "device": loaded.device,
        "dtype": loaded.dtype,
        "quantization": loaded.quantization,
    }
    return FinetuneResult(
        output_dir,
        metrics,
        reporter.history,
        sorted(lora.target_modules),
        chat_template_sha256(loaded.tokenizer),
        base_commit(folder),
    )


def run_job(job, progress_bar=False):
    """Run a queued FinetuneJob: mark it running, train, register the adapter (disabled).

    Any failure is stored on the job with its traceback and raised again, so the
    command exits non-zero and the admin shows the error.
    """

    job.start()
    try:
        output_dir = Path(settings.MODELHUB_ADAPTERS_DIR) / job.base.name / job.adapter_name
        result = finetune(
            job.base.load_settings(),
            job.method,
            job.train_path,
            job.eval_path,
            output_dir,
            job.hyperparameters,
            progress=job.record_progress,
            progress_bar=progress_bar,
        )
        return job.succeed(result)
    except BaseException as exc:  # KeyboardInterrupt too: a stopped job must not stay "running"
        job.fail(error_summary(exc))
        raise


def error_summary(exc, frames=6):
    """The error and the last few frames of its traceback: enough to act on, short enough to show."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    head = "".join(lines[-(frames + 1) :]).strip()
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{message}\n\n{head}"


def run_in_background(job, log_dir):
    """Start `manage.py finetune --job ID` as its own process; it updates the job row as it goes.

    The process outlives the web request (and a server restart): it has its own session,
    its output goes to a log file the admin shows, and it records its own failure.
    """

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"finetune-job-{job.pk}.log"
    command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "finetune", "--job", str(job.pk)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    job.launched(log_path, process.pid)
    return process
