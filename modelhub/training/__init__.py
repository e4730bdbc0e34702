"""Making and measuring models: the built-in chat model (builtin.py), LoRA fine-tunes with TRL
(finetune.py) and their jobs in the admin (admin.py), evaluation of a base and its adapters (evaluation.py)
and the text scores (text_scores.py).

Imports backends, serving and models; reached from outside through modelhub.api.
"""
