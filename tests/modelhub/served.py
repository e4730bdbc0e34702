"""The tiny Llama served by a real worker that waits at a gate before its first step, so that everything
submitted before `open()` is admitted into one batch; and the prompts the engine tests ask it."""

import threading

from modelhub import api
from modelhub.backends import loading
from modelhub.backends.local import TransformersBackend
from modelhub.registry import registry

PROMPTS = [
    "hello there, how are you doing today?",
    "hi",
    "what do you like to do on the weekend? i like to go hiking and read books.",
    "that sounds fun. where do you hike?",
    "i am doing well, thanks for asking!",
    "read books",
]


def ask(text):
    return [{"role": "user", "content": text}]


def read(request):
    return "".join(request)


class Served:
    """The tiny spec served by a worker that waits at a gate before its first step."""

    def __init__(self, spec, kv_cache_mb=64, prefill_chunk=512, hook=None):
        """`hook(module, args, kwargs)` runs before each forward pass of the loaded model."""
        self.spec = spec
        self.gate = threading.Event()

        def load(progress):
            self.gate.wait(30)
            loaded = loading.load(spec.load_settings(), progress)
            if hook is not None:
                loaded.model.register_forward_pre_hook(hook, with_kwargs=True)
            return TransformersBackend(loaded, kv_cache_bytes=int(kv_cache_mb * 2**20), prefill_chunk=prefill_chunk)

        registry.install(spec.name, load=load)
        self.worker = registry.worker(spec)

    def start(self, messages, adapter=None, **options):
        return api.start(self.spec, messages, {"temperature": 0, "max_new_tokens": 16, **options}, adapter=adapter)

    def open(self):
        self.gate.set()

    @property
    def backend(self):
        return self.worker.backend
