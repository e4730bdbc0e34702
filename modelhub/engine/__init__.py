"""The serving engine, step by step (nano-vllm's shape):

    scheduler.py     who runs this step: admission, prefill budget, who leaves (no torch, no threads)
    worker.py        the thin loop that owns a model's thread and calls scheduler and runner
    model_runner.py  one prefill or batched decode step on the model, LoRA per row
    request.py       a reply as its caller sees it; sequence.py: as the engine sees it
    arrivals.py      replies on their way, held for a step so they start together
    kv_reuse.py      keys and values of finished replies, reused by the next turn

Imported by backends, the registry and serving; it imports decoding, prompts and options.
"""
