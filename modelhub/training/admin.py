"""Fine-tune jobs in the admin: queue one, run it in the background (its own process, `manage.py finetune
--job ID`, which updates the row as it goes), follow its progress, loss plot, metrics and log.

Registered by modelhub/admin.py; the training itself is finetune.py.
"""

from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.template.loader import render_to_string
from django.utils.html import format_html

from modelhub.models import Adapter, FinetuneJob
from modelhub.models.finetune_job import Hyperparameters
from modelhub.options import ModelhubError
from modelhub.training import finetune


def loss_change(metrics):
    """A job's (or its adapter's) held-out loss before → after."""
    if not metrics or "eval_after" not in metrics:
        return "-"
    return f"{metrics['eval_before']['loss']:.4f} → {metrics['eval_after']['loss']:.4f}"


def plot_points(history, width=480, height=200, pad=24):
    """Train and eval loss as SVG polyline points, on shared axes (no JS, no plotting library)."""
    series = {name: history.get(name) or [] for name in ("train", "eval")}
    everything = [p for points in series.values() for p in points]
    if not everything:
        return None
    max_step = max(step for step, _ in everything) or 1
    low, high = min(loss for _, loss in everything), max(loss for _, loss in everything)
    span = (high - low) or 1.0

    def xy(step, loss):  # SVG's y axis points down: the lowest loss sits at the bottom
        x = pad + step / max_step * (width - 2 * pad)
        y = height - pad - (loss - low) / span * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    return {
        "width": width,
        "height": height,
        "pad": pad,
        "low": low,
        "high": high,
        "max_step": max_step,
        **{name: " ".join(xy(step, loss) for step, loss in points) for name, points in series.items()},
    }


class FinetuneJobForm(forms.ModelForm):
    class Meta:
        model = FinetuneJob
        fields = ["base", "method", "adapter_name", "train_path", "eval_path", "dataset_ref", "hyperparameters"]

    def clean(self):
        cleaned = super().clean()
        for name in ("train_path", "eval_path"):
            if cleaned.get(name) and not Path(cleaned[name]).is_file():
                self.add_error(name, "No such file.")
        try:
            Hyperparameters.from_dict(cleaned.get("hyperparameters") or {})
        except ModelhubError as exc:
            self.add_error("hyperparameters", exc.message)
        name, base = cleaned.get("adapter_name"), cleaned.get("base")
        if name and base and Adapter.objects.filter(base=base, name=name).exists():
            self.add_error("adapter_name", f"{base.name} already has an adapter with this name.")
        return cleaned


@admin.register(FinetuneJob)
class FinetuneJobAdmin(admin.ModelAdmin):
    """Add a job here (or with `manage.py finetune`), then "Run in background"; its page shows progress."""

    form = FinetuneJobForm
    list_display = ["__str__", "base", "method", "status", "progress", "eval_loss", "created_at"]
    list_filter = ["status", "method", "base"]
    list_select_related = ["base"]
    actions = ["run_in_background"]
    change_form_template = "admin/modelhub/finetunejob/change_form.html"
    shown = [
        "status",
        "progress",
        "loss_plot",
        "metrics_table",
        "error",
        "adapter",
        "log_tail",
        "base",
        "method",
        "adapter_name",
        "train_path",
        "eval_path",
        "dataset_ref",
        "hyperparameters",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    ]

    def get_fields(self, request, obj=None):
        return self.shown if obj else self.form.Meta.fields

    def get_readonly_fields(self, request, obj=None):
        return self.shown if obj else []  # a job is a record: once made, it is only read

    def changelist_view(self, request, extra_context=None):
        if self.has_view_or_change_permission(request):
            FinetuneJob.objects.fail_lost()  # a killed process cannot say so itself
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if self.has_view_or_change_permission(request):
            FinetuneJob.objects.fail_lost()
        read_only = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False}
        return super().change_view(request, object_id, form_url, {**read_only, **(extra_context or {})})

    def save_model(self, request, obj, form, change):
        """Through create_for, like the command: defaults filled in, adapter name chosen, creator kept."""
        job = FinetuneJob.objects.create_for(
            obj.base,
            obj.method,
            obj.train_path,
            obj.eval_path,
            obj.dataset_ref,
            obj.hyperparameters or {},
            request.user,
            obj.adapter_name,
        )
        obj.pk, obj.adapter_name, obj.hyperparameters = job.pk, job.adapter_name, job.hyperparameters

    @admin.display(description="progress")
    def progress(self, job):
        if not job.total_steps:
            return "-"
        return f"{job.step}/{job.total_steps} ({100 * job.step // job.total_steps}%)"

    @admin.display(description="held-out loss")
    def eval_loss(self, job):
        return loss_change(job.metrics)

    @admin.display(description="loss")
    def loss_plot(self, job):
        return render_to_string("admin/modelhub/finetunejob/loss_plot.html", {"plot": plot_points(job.loss_history)})

    @admin.display(description="metrics")
    def metrics_table(self, job):
        metrics = job.metrics or {}
        before, after = metrics.get("eval_before", {}), metrics.get("eval_after", {})
        rows = [(name.replace("_", " "), before.get(name), value) for name, value in after.items()]
        return render_to_string("admin/modelhub/finetunejob/metrics.html", {"metrics": metrics, "rows": rows})

    @admin.display(description="log (last lines)")
    def log_tail(self, job):
        path = Path(job.log_path) if job.log_path else None
        if path is None or not path.is_file():
            return "-"
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
        return format_html("<pre>{}</pre>", "\n".join(lines[-30:]))

    @admin.action(description="Run in background", permissions=["change"])
    def run_in_background(self, request, queryset):
        started = []
        for job in queryset.filter(status=FinetuneJob.Status.QUEUED, pid__isnull=True):
            finetune.run_in_background(job, settings.VAR_DIR / "logs")
            started.append(str(job.pk))
        skipped = queryset.count() - len(started)
        note = f"; {skipped} skipped (already started)" if skipped else ""
        self.message_user(request, f"Started job(s) {', '.join(started) or 'none'}{note}.", messages.INFO)
