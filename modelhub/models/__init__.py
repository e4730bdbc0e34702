"""Registered models: what an admin configures; `modelhub.registry` turns rows into loaded models.

spec.py          ModelSpec: a model (local weights or a remote server), its defaults, its access
adapter.py       Adapter: a LoRA adapter on a base model
finetune_job.py  FinetuneJob: a fine-tune and what it made
worker.py        ModelWorker: what each model worker process reports it serves
"""

from modelhub.models.adapter import Adapter, AdapterQuerySet
from modelhub.models.finetune_job import FinetuneJob, FinetuneJobQuerySet
from modelhub.models.spec import DEFAULTS, ModelSpec, ModelSpecQuerySet, pick_default
from modelhub.models.worker import ModelWorker

__all__ = [
    "DEFAULTS",
    "Adapter",
    "AdapterQuerySet",
    "FinetuneJob",
    "FinetuneJobQuerySet",
    "ModelSpec",
    "ModelSpecQuerySet",
    "ModelWorker",
    "pick_default",
]
