"""Models: registering them (models/), loading and serving them in this process, step by step, or on a
remote engine, and training them. Where is X:

    api.py        the one door: everything the rest of chatsite uses of modelhub (besides its models)
    serving.py    replies served in this process: pick a model, reserve, start, read; what is loaded
    registry.py   loaded models behind one lock, one worker per model; loading and unloading
    workers.py    model worker processes: the channels they listen on, a request answered by one
    options.py    generation options, usage, and what goes wrong (ModelhubError and its kinds)
    prompts.py    chat templates: rendering a history, fitting it to the context, the template's hash
    validators.py the admin's checks of a model's fields
    mixing.py     checking that a server batches base and adapter requests right
    engine/       one decode loop: scheduler, worker thread, model runner, requests and sequences
    decoding/     sampling, token probabilities, stop strings
    backends/     what a worker drives: a local transformers model, a scripted one, a remote server;
                  loading weights and adapters, the attention pass, one reply on its own
    training/     the built-in model, LoRA fine-tunes, evaluation and text scores

modelhub never imports conversations and knows no chat rows; it can be driven from a Python shell.
"""
