"""The admin's evaluation reports: the list, a report's page (its table of metrics side by side with
differences and 95% intervals, and a plot, a PNG served from its own URL with the page's permission),
"Export JSON", running a report in the background
for the snapshot and arena actions (conversations/admin.py), and the adapter list's action
(added to modelhub's Adapter admin by `extend_adapter_admin`: modelhub knows nothing of reports).

A report runs in a daemon thread of the web process, as an arena's answers do: its answers go
through the model's worker like any reply, and its perplexity loads a second copy of the base
(modelhub/training/evaluation.py). At most EVALUATION_MAX_ROWS held-out rows are evaluated. A process
that dies mid-run leaves the report `running`: it holds nothing else up; run it again.
"""

import io
import logging
import threading

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import connections, transaction
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse

from conversations.forms import AdapterEvaluateForm
from conversations.models import EvaluationReport
from conversations.models.evaluation import EvaluationError
from modelhub.api import LOWER_IS_BETTER, METRICS
from modelhub.models import Adapter

log = logging.getLogger(__name__)


def start_in_background(report):
    """Run the report in a daemon thread once its row is committed."""
    transaction.on_commit(
        lambda: threading.Thread(target=_run, args=(report.pk,), name=f"evaluation-{report.pk}", daemon=True).start()
    )


def _run(report_id):
    try:
        EvaluationReport.objects.select_related("base", "snapshot").get(pk=report_id).run()
    except Exception:  # stored on the report by run(); the log has the traceback
        log.exception("evaluation report %s failed", report_id)
    finally:
        connections.close_all()  # this thread's own database connection


def create_and_start(request, snapshot, base, adapters):
    """The admin's side of `manage.py evaluate`: messages the user; the started report, or None."""
    try:
        report = EvaluationReport.objects.create_for(snapshot, base, adapters, created_by=request.user)
    except EvaluationError as exc:
        messages.error(request, str(exc))
        return None
    start_in_background(report)
    messages.success(request, f"Started {report} on {snapshot}: its page shows the result when it is done.")
    return report


def table(report):
    """One row per metric: (metric, lower is better, [(value, difference or None)] per candidate)."""
    rows = []
    for metric in METRICS:
        cells = [
            ((report.metrics.get(name) or {}).get(metric), report.differences.get(name, {}).get(metric))
            for name in report.candidates
        ]
        rows.append((metric, metric in LOWER_IS_BETTER, cells))
    return rows


def plotted_metrics(report):
    """The metrics the plot shows: those with a difference to the base for some adapter (none: no plot)."""
    if report.status != report.Status.SUCCEEDED:
        return []
    others = report.candidates[1:]
    return [metric for metric in METRICS if any(metric in report.differences.get(name, {}) for name in others)]


def plot_png(report):
    """Each adapter's difference to the base per metric, with its 95% interval, as PNG bytes (None: no plot).

    One small panel per metric (their scales differ); matplotlib's Agg backend, imported here only. The page
    shows it from its own URL (`EvaluationReportAdmin.plot_view`): its Content-Security-Policy allows
    images from the site itself only, so a data: URI would never show."""
    shown = plotted_metrics(report)
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    others = report.candidates[1:]
    figure = Figure(figsize=(2.4 * min(len(shown), 5), 2.2 * ((len(shown) + 4) // 5)), layout="constrained")
    for index, metric in enumerate(shown):
        axes = figure.add_subplot((len(shown) + 4) // 5, min(len(shown), 5), index + 1)
        for position, name in enumerate(others):
            diff = report.differences.get(name, {}).get(metric)
            if diff is None:
                continue
            low, high = diff["low"], diff["high"]
            error = [[diff["difference"] - low], [high - diff["difference"]]] if low is not None else None
            axes.errorbar([position], [diff["difference"]], yerr=error, fmt="o", capsize=4)
        axes.axhline(0, color="grey", linewidth=0.8)
        axes.set_xlim(-0.5, len(others) - 0.5)
        axes.set_title(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""), fontsize=8)
        axes.set_xticks(range(len(others)), [name.rsplit(" + ", 1)[-1] for name in others], fontsize=7)
        axes.tick_params(axis="y", labelsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


@admin.register(EvaluationReport)
class EvaluationReportAdmin(admin.ModelAdmin):
    """Reports are made by `manage.py evaluate` or the snapshot and arena actions; here they are read."""

    list_display = ["__str__", "snapshot", "status", "created_by", "created_at", "finished_at"]
    list_filter = ["status", "base"]
    list_select_related = ["base", "snapshot", "created_by"]
    fields = [
        "status",
        "error",
        "metrics_table",
        "plot",
        "export",
        "snapshot",
        "base",
        "adapter_names",
        "options",
        "max_rows",
        "seed",
        "resamples",
        "arena",
        "created_by",
        "created_at",
        "finished_at",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_urls(self):
        json_view, plot_view = (self.admin_site.admin_view(view) for view in (self.json_view, self.plot_view))
        return [
            path("<int:pk>/json/", json_view, name="conversations_evaluationreport_json"),
            path("<int:pk>/plot.png", plot_view, name="conversations_evaluationreport_plot"),
            *super().get_urls(),
        ]

    def _get_report(self, request, pk):
        """The report, for those who may read reports (the report page's permission); else 403 or 404."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(EvaluationReport.objects.select_related("base"), pk=pk)

    def json_view(self, request, pk):
        report = self._get_report(request, pk)
        response = JsonResponse(report.as_json(), json_dumps_params={"indent": 2, "ensure_ascii": False})
        response["Content-Disposition"] = f'attachment; filename="evaluation-{report.pk}.json"'
        return response

    def plot_view(self, request, pk):
        png = plot_png(self._get_report(request, pk))
        if png is None:
            raise Http404("this report has no plot")
        return HttpResponse(png, content_type="image/png")

    @admin.display(description="metrics")
    def metrics_table(self, report):
        if not report.candidates:
            return "-"
        arena = [report.arena.get(name) for name in report.candidates] if report.arena else []
        return render_to_string(
            "admin/conversations/evaluationreport/metrics.html",
            {"report": report, "rows": table(report), "arena": arena},
        )

    @admin.display(description="differences to the base")
    def plot(self, report):
        url = reverse("admin:conversations_evaluationreport_plot", args=[report.pk]) if plotted_metrics(report) else ""
        return render_to_string("admin/conversations/evaluationreport/plot.html", {"url": url})

    @admin.display(description="export")
    def export(self, report):
        return render_to_string("admin/conversations/evaluationreport/export.html", {"report": report})


def evaluate_adapters(modeladmin, request, queryset):
    """The adapter list's action: the chosen adapters (of one base) against their base, on a snapshot picked next."""
    adapters = list(queryset.select_related("base"))
    if len({adapter.base_id for adapter in adapters}) != 1:
        modeladmin.message_user(request, "Pick adapters of one base model.", messages.ERROR)
        return None
    form = AdapterEvaluateForm(request.POST if "apply" in request.POST else None)
    if form.is_valid():
        report = create_and_start(request, form.cleaned_data["snapshot"], adapters[0].base, adapters)
        return redirect("admin:conversations_evaluationreport_change", report.pk) if report else None
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.model._meta,
        "form": form,
        "adapters": adapters,
        "base": adapters[0].base,
        "max_rows": settings.EVALUATION_MAX_ROWS,
        "title": f"Evaluate {', '.join(a.name for a in adapters)} against {adapters[0].base.name}",
    }
    return TemplateResponse(request, "conversations/admin_adapter_evaluate.html", context)


def extend_adapter_admin(site=admin.site):
    """Give modelhub's Adapter admin the evaluate action (ConversationsConfig.ready: every admin is registered)."""
    registered = type(site.get_model_admin(Adapter))

    class AdapterAdmin(registered):
        actions = [*registered.actions, "evaluate"]

        def has_evaluate_permission(self, request):
            return request.user.has_perm("conversations.add_evaluationreport")

        evaluate = admin.action(
            description="Evaluate against their base on a snapshot (in the background)", permissions=["evaluate"]
        )(evaluate_adapters)

    site.unregister(Adapter)
    site.register(Adapter, AdapterAdmin)
