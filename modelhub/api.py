"""The one door into modelhub: everything the rest of chatsite uses of it, besides its models (the ORM).

    from modelhub import api
    spec = api.get_spec("chitchat")
    request = api.start(spec, [{"role": "user", "content": "Hello"}], {"temperature": 0})
    for text in request: print(text, end="")
    request.usage  # prompt/completion tokens, time to first token, duration, finish reason

The rest of modelhub (engine, backends, decoding, training, the registry) is its own: an
import-linter contract in pyproject.toml refuses `conversations` and `chatsite` any other import
of it. Nothing here imports torch; a model loads in its worker thread when it is first used.
"""

from modelhub.decoding.parts import ANSWER, REASONING
from modelhub.models.finetune_job import METHODS as FINETUNE_METHODS
from modelhub.models.finetune_job import Hyperparameters
from modelhub.options import (
    STRUCTURE_OPTIONS,
    GenerationOptions,
    InvalidOptions,
    ModelhubError,
    ModelLoadError,
    ModelNotFound,
    PromptTooLong,
    Usage,
)
from modelhub.serving import (
    Reservation,
    attention,
    check_default,
    get_adapter,
    get_spec,
    gpu_memory,
    load,
    loading,
    options_for,
    preload,
    reserve,
    runtime,
    start,
    structure_problems,
)
from modelhub.training.evaluation import candidate_name, evaluate
from modelhub.training.finetune import run_in_background, run_job
from modelhub.training.text_scores import LOWER_IS_BETTER, METRICS
from modelhub.validators import OptionValidator
from modelhub.workers import WorkerRequest, answer_attention, answer_try, ask_attention, model_channel

__all__ = [
    # serving replies in this process (serving.py)
    "get_spec",
    "get_adapter",
    "options_for",
    "reserve",
    "Reservation",
    "start",
    "attention",
    "load",
    "preload",
    "loading",
    "runtime",
    "gpu_memory",
    "check_default",
    "structure_problems",
    # a reply's parts as `Request.pieces()` hands them (decoding/parts.py): what it thought, what it answers
    "REASONING",
    "ANSWER",
    # options and what goes wrong (options.py), and the validator of a model's option limits
    "GenerationOptions",
    "STRUCTURE_OPTIONS",
    "Usage",
    "ModelhubError",
    "InvalidOptions",
    "ModelNotFound",
    "ModelLoadError",
    "PromptTooLong",
    "OptionValidator",
    # model worker processes (workers.py): asking one, and a worker's own side
    "WorkerRequest",
    "ask_attention",
    "model_channel",
    "answer_try",
    "answer_attention",
    # measuring and fine-tuning models (training/)
    "evaluate",
    "candidate_name",
    "METRICS",
    "LOWER_IS_BETTER",
    "FINETUNE_METHODS",
    "Hyperparameters",
    "run_job",
    "run_in_background",
]
