"""Model management for admins: register, validate, load, unload, inspect, try a prompt.

Every action and view here needs a staff account with the change permission on
models; loads happen in the model's worker thread, so the admin page never waits
for one and chats on other models go on.
"""

import asyncio
import time

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from modelhub import api
from modelhub.models import Adapter, ModelSpec
from modelhub.options import ModelhubError
from modelhub.registry import registry


class ModelSpecForm(forms.ModelForm):
    class Meta:
        model = ModelSpec
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            self.instance.__dict__.update({k: v for k, v in cleaned.items() if k in self.instance.__dict__})
            self.instance.check_source()
        return cleaned


class AdapterForm(forms.ModelForm):
    class Meta:
        model = Adapter
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        if not self.errors and cleaned.get("base") is not None:
            Adapter(base=cleaned["base"], path=cleaned["path"]).check_fits_base()
        return cleaned


def describe_runtime(name):
    info = registry.status().get(name)
    if info is None:
        return "not loaded"
    if info["state"] == "failed":
        return f"failed: {info['error']}"
    if info["state"] == "loading":
        progress = f", {info['progress']}" if info.get("progress") else ""
        return f"loading ({info['loading_for_seconds']:.0f}s so far{progress})"
    if info["state"] != "ready":
        return info["state"]
    memory = info.get("memory_bytes")
    parts = [info.get("device"), info.get("dtype"), info.get("quantization")]
    text = "loaded on " + ", ".join(str(p) for p in parts if p)
    if memory:
        text += f", {memory / 2**20:.1f} MiB"
    if info.get("adapters"):
        text += ", adapters: " + ", ".join(info["adapters"])
    idle = time.time() - info["last_used_at"]
    return f"{text}, loaded in {info['load_seconds']}s, last used {idle:.0f}s ago"


@admin.register(ModelSpec)
class ModelSpecAdmin(admin.ModelAdmin):
    form = ModelSpecForm
    list_display = ["name", "source", "quantization", "runtime", "enabled", "is_default", "visibility"]
    list_filter = ["enabled", "backend", "quantization", "visibility"]
    search_fields = ["name", "display_name", "source"]
    readonly_fields = ["runtime", "try_it"]
    actions = ["load_models", "unload_models", "reload_models"]
    fieldsets = [
        (None, {"fields": ["name", "display_name", "backend", "source", "revision", "runtime", "try_it"]}),
        ("Loading", {"fields": ["dtype", "device", "quantization", "double_quant", "compute_dtype", "context_length"]}),
        ("Chat", {"fields": ["system_prompt", "chat_template"]}),
        ("Generation defaults", {"fields": ["temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty"]}),
        ("Access", {"fields": ["enabled", "is_default", "visibility"]}),
    ]

    @admin.display(description="runtime")
    def runtime(self, spec):
        return describe_runtime(spec.name) if spec.pk else "-"

    @admin.display(description="test prompt")
    def try_it(self, spec):
        if not spec.pk:
            return "-"
        return format_html('<a href="{}">Try a prompt</a>', reverse("admin:modelhub_modelspec_test", args=[spec.pk]))

    @admin.action(description="Load selected models", permissions=["change"])
    def load_models(self, request, queryset):
        for spec in queryset:
            registry.worker(spec)
        self.message_user(request, f"Loading {queryset.count()} model(s); the runtime column shows progress.")

    @admin.action(description="Unload selected models", permissions=["change"])
    def unload_models(self, request, queryset):
        unloaded = [spec.name for spec in queryset if registry.unload(spec.name)]
        self.message_user(request, f"Unloaded: {', '.join(unloaded) or 'none were loaded'}.")

    @admin.action(description="Reload selected models", permissions=["change"])
    def reload_models(self, request, queryset):
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
            adapter = api.get_adapter(spec, request.POST["adapter"]) if request.POST.get("adapter") else None
            api.options_for(spec, {"max_new_tokens": 64})
        except ModelhubError as exc:
            return StreamingHttpResponse([f"[error: {exc.message}]"], content_type="text/plain; charset=utf-8")
        response = StreamingHttpResponse(_stream(spec, prompt, adapter), content_type="text/plain; charset=utf-8")
        response["X-Accel-Buffering"] = "no"
        return response


async def _stream(spec, prompt, adapter):
    request = api.start(
        spec, [{"role": "user", "content": prompt}], {"max_new_tokens": 64}, loop=asyncio.get_running_loop(), adapter=adapter
    )
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
    list_display = ["name", "base", "path", "enabled", "created_at"]
    list_filter = ["enabled", "base"]
    search_fields = ["name", "description"]
