"""What a model worker drives: a local Hugging Face model in step-level batches or a scripted one
(local.py), a remote OpenAI-compatible server (remote.py); loading weights, quantization and adapters
(loading.py), the attention pass (attention.py), and one reply generated on its own (standalone.py).

Imports engine, decoding, prompts and options; imported by the registry, serving, workers, training and
the models (to check a source or an adapter when it is saved).
"""
