"""Model management for admins: register, validate, load, unload, inspect, try a prompt; promote
adapters. Fine-tune jobs' admin is modelhub/training/admin.py.

Every action and view here needs a staff account with the change permission on
models; loads happen in the model's worker thread, so the admin page never waits
for one and chats on other models go on. Fine-tunes run in their own process
(`manage.py finetune --job ID`), which updates the job row as it goes.
"""

import time

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from modelhub import serving, workers
from modelhub.models import Adapter, ModelSpec, ModelWorker
from modelhub.options import ModelhubError
from modelhub.registry import registry
from modelhub.training.admin import loss_change  # and FinetuneJob's admin, registered there


class ModelSpecForm(forms.ModelForm):
    class Meta:
        model = ModelSpec
        fields = "__all__"  # noqa: DJ007 - the admin's fieldsets choose the fields it shows

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            self.instance.__dict__.update({k: v for k, v in cleaned.items() if k in self.instance.__dict__})
            self.instance.check_source()
        return cleaned


class AdapterForm(forms.ModelForm):
    class Meta:
        model = Adapter
        fields = "__all__"  # noqa: DJ007 - the admin's fieldsets choose the fields it shows

    def clean(self):
        cleaned = super().clean()
        if not self.errors and cleaned.get("base") is not None:
            adapter = Adapter(base=cleaned["base"], path=cleaned["path"])
            if not adapter.config_problem():  # a bad config is Adapter.clean's error, shown once
                adapter.check_fits_base()
        return cleaned


def describe_runtime(name):
    """How the model is doing: in this process, or, with model workers on, in each live worker."""
    if settings.MODELHUB_WORKERS:
        serving_it = ModelWorker.objects.serving(name)
        if not serving_it:
            return "no live model worker serves it (start manage.py modelhub_worker)"
        return "; ".join(f"worker {worker}: {describe_status(info)}" for worker, info in serving_it)
    info = registry.status().get(name)
    return "not loaded" if info is None else describe_status(info)


def describe_status(info):
    """One model's runtime status (Worker.describe / RemoteWorker.describe) in a line."""
    if info["state"] == "failed":
        return f"failed: {info['error']}"
    if info["state"] == "loading":
        progress = f", {info['progress']}" if info.get("progress") else ""
        return f"loading ({info['loading_for_seconds']:.0f}s so far{progress})"
    if info["state"] != "ready":
        return info["state"]
    if "server" in info:
        return (
            f"served by {info['server']} as {info['served_model']}; {info['running']} replying "
            f"(at most {info['peak_batch']} at once so far), last used {time.time() - info['last_used_at']:.0f}s ago"
        )
    memory = info.get("memory_bytes")
    parts = [info.get("device"), info.get("dtype"), info.get("quantization")]
    text = "loaded on " + ", ".join(str(p) for p in parts if p)
    if memory:
        text += f", {memory / 2**20:.1f} MiB"
    if info.get("adapters"):
        text += ", adapters: " + ", ".join(info["adapters"])
    text += (
        f"; {info['running']} replying, {info['waiting']} waiting (at most {info.get('peak_batch', 0)} at once so far)"
    )
    if "kv_cache_entries" in info:
        text += (
            f"; KV cache {info['kv_cache_entries']} turns, {info['kv_cache_bytes'] / 2**20:.1f} MiB, "
            f"{info['kv_cache_hits']} reuses ({info['kv_reused_tokens']} prompt tokens not recomputed)"
        )
    idle = time.time() - info["last_used_at"]
    return f"{text}, loaded in {info['load_seconds']}s, last used {idle:.0f}s ago"


@admin.register(ModelSpec)
class ModelSpecAdmin(admin.ModelAdmin):
    form = ModelSpecForm
    list_display = ["name", "source", "quantization", "runtime", "enabled", "is_default", "visibility"]
    list_filter = ["enabled", "backend", "quantization", "visibility"]
    search_fields = ["name", "display_name", "source"]
    readonly_fields = ["runtime", "try_it"]
    filter_horizontal = ["groups"]
    actions = ["load_models", "unload_models", "reload_models"]
    fieldsets = [
        (None, {"fields": ["name", "display_name", "backend", "source", "revision", "runtime", "try_it"]}),
        (
            "Loading",
            {
                "fields": [
                    "dtype",
                    "device",
                    "quantization",
                    "double_quant",
                    "compute_dtype",
                    "context_length",
                    "load_at_start",
                ]
            },
        ),
        (
            "OpenAI-compatible server",
            {
                "fields": [
                    "server_url",
                    "served_model_name",
                    "api_key_env",
                    "connect_timeout",
                    "read_timeout",
                    "base_model_alias",
                    "load_adapters_at_runtime",
                ],
                "description": 'For the backend "OpenAI-compatible server": chatsite sends each reply to this server '
                "(vLLM, SGLang, TGI, llama.cpp) and keeps everything else. Adapters are served names "
                "(vLLM: --lora-modules NAME=FOLDER).",
            },
        ),
        ("Chat", {"fields": ["system_prompt", "chat_template", "reply_parts"]}),
        ("Generation defaults", {"fields": ["temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty"]}),
        ("Inspection", {"fields": ["token_probabilities"]}),
        ("Access", {"fields": ["enabled", "is_default", "visibility", "groups"]}),
    ]

    @admin.display(description="runtime")
    def runtime(self, spec):
        return describe_runtime(spec.name) if spec.pk else "-"

    @admin.display(description="test prompt")
    def try_it(self, spec):
        if not spec.pk:
            return "-"
        return format_html('<a href="{}">Try a prompt</a>', reverse("admin:modelhub_modelspec_test", args=[spec.pk]))

    def _loaded_by_workers(self, request):
        if settings.MODELHUB_WORKERS:
            self.message_user(
                request,
                "The model workers load models (at start and on first use), not the web "
                "processes: restart a worker (manage.py modelhub_worker) to reload.",
                messages.WARNING,
            )
        return settings.MODELHUB_WORKERS

    @admin.action(description="Load selected models", permissions=["change"])
    def load_models(self, request, queryset):
        if self._loaded_by_workers(request):
            return
        for spec in queryset:
            registry.worker(spec)
        self.message_user(request, f"Loading {queryset.count()} model(s); the runtime column shows progress.")

    @admin.action(description="Unload selected models", permissions=["change"])
    def unload_models(self, request, queryset):
        if self._loaded_by_workers(request):
            return
        unloaded = [spec.name for spec in queryset if registry.unload(spec.name)]
        self.message_user(request, f"Unloaded: {', '.join(unloaded) or 'none were loaded'}.")

    @admin.action(description="Reload selected models", permissions=["change"])
    def reload_models(self, request, queryset):
        if self._loaded_by_workers(request):
            return
        for spec in queryset:
            registry.unload(spec.name)
            registry.worker(spec)
        self.message_user(request, f"Reloading {queryset.count()} model(s).", messages.INFO)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/test/", view(self.test_view), name="modelhub_modelspec_test"),
            path("<int:pk>/test/stream/", view(self.test_stream), name="modelhub_modelspec_test_stream"),
        ] + super().get_urls()

    def _spec_for_change(self, request, pk):
        spec = get_object_or_404(ModelSpec, pk=pk)
        if not self.has_change_permission(request, spec):
            raise PermissionDenied
        return spec

    def test_view(self, request, pk):
        spec = self._spec_for_change(request, pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "spec": spec,
            "adapters": spec.adapters.all(),
            "runtime": describe_runtime(spec.name),
            "title": f"Try {spec}",
        }
        return TemplateResponse(request, "admin/modelhub/modelspec/test.html", context)

    def test_stream(self, request, pk):
        """POST prompt (+ adapter): the reply as a plain-text stream, chunk by chunk."""
        if request.method != "POST":
            raise PermissionDenied
        spec = self._spec_for_change(request, pk)
        prompt = request.POST.get("prompt", "").strip() or "Hello!"
        try:
            adapter = serving.get_adapter(spec, request.POST["adapter"]) if request.POST.get("adapter") else None
            serving.options_for(spec, {"max_new_tokens": 64})
        except ModelhubError as exc:
            return StreamingHttpResponse([f"[error: {exc.message}]"], content_type="text/plain; charset=utf-8")
        response = StreamingHttpResponse(_stream(spec, prompt, adapter), content_type="text/plain; charset=utf-8")
        response["X-Accel-Buffering"] = "no"
        return response


async def _stream(spec, prompt, adapter):
    """The reply's text, from this process's model, or from a model worker (MODELHUB_WORKERS)."""
    messages, overrides = [{"role": "user", "content": prompt}], {"max_new_tokens": 64}
    if settings.MODELHUB_WORKERS:
        try:
            async for text in workers.WorkerRequest(spec, messages, overrides, adapter).chunks():
                yield text
        except ModelhubError as exc:
            yield f"\n[error: {exc.message}]"
        return
    request = serving.start(spec, messages, overrides, adapter=adapter)
    try:
        async for text in request.chunks():
            yield text
    except ModelhubError as exc:
        yield f"\n[error: {exc.message}]"
    finally:
        request.cancel()  # the admin closed the page: stop generating


@admin.register(Adapter)
class AdapterAdmin(admin.ModelAdmin):
    form = AdapterForm
    list_display = ["name", "base", "path", "enabled", "eval_loss", "created_at"]
    list_filter = ["enabled", "base"]
    search_fields = ["name", "description"]
    readonly_fields = ["template_hash"]
    filter_horizontal = ["groups"]
    actions = ["promote"]

    def get_list_display(self, request):
        served = {}  # base pk -> the hash of its chat template now, read once per page from its tokenizer files

        @admin.display(description="chat template")
        def template_check(adapter):
            if adapter.base_id not in served:
                served[adapter.base_id] = adapter.base.served_template_hash()
            return adapter.template_check(served[adapter.base_id])

        return [*self.list_display[:-1], template_check, self.list_display[-1]]

    @admin.display(description="held-out loss")
    def eval_loss(self, adapter):
        return loss_change((adapter.provenance or {}).get("metrics"))

    @admin.action(description="Promote: serve the selected adapters", permissions=["change"])
    def promote(self, request, queryset):
        for adapter in queryset:
            adapter.promote()
            self._load_on_server(request, adapter)
        self.message_user(request, f"Promoted: {', '.join(a.name for a in queryset)}.")

    def save_model(self, request, adapter, form, change):
        super().save_model(request, adapter, form, change)
        if adapter.enabled:
            self._load_on_server(request, adapter)

    def _load_on_server(self, request, adapter):
        """An adapter of a remote model whose server loads adapters at run time is loaded there now."""
        try:
            said = adapter.load_on_server()
        except ModelhubError as exc:
            self.message_user(
                request, f"{adapter.name} is saved but its server did not load it: {exc.message}", messages.WARNING
            )
            return
        if said:
            self.message_user(request, f"{adapter.base.server_url} loaded {adapter.name}: {said}")


# --- fine-tuning ----------------------------------------------------------------
