from django.contrib import admin

from modelhub.models import ModelSpec
from modelhub.registry import registry


@admin.register(ModelSpec)
class ModelSpecAdmin(admin.ModelAdmin):
    list_display = ["name", "display_name", "backend", "source", "dtype", "device", "enabled", "is_default", "runtime"]
    list_filter = ["enabled", "backend"]
    search_fields = ["name", "display_name", "source"]

    @admin.display(description="runtime")
    def runtime(self, spec):
        return registry.status().get(spec.name, {}).get("state", "not loaded")
