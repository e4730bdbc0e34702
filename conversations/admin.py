import json

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html

from conversations.access import usage_admin  # noqa: F401 - registers Quota's admin and its usage page
from conversations.arena.leaderboard import SOURCES, leaderboard
from conversations.evaluation.admin import create_and_start
from conversations.forms import SnapshotEvaluateForm, SnapshotFinetuneForm, SnapshotForm
from conversations.models import (
    ApiKey,
    Arena,
    Conversation,
    DatasetSnapshot,
    Feedback,
    FeedbackTag,
    Message,
    Preference,
)
from conversations.models.datasets import SnapshotChanged
from conversations.review import admin as review_admin  # noqa: F401 - registers Review's admin
from conversations.training_data.export import export_snapshot
from modelhub import api
from modelhub.models import FinetuneJob


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["role", "status", "content", "model_name", "completion_tokens", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["title", "owner", "model", "allow_training", "sealed", "updated_at"]
    list_filter = ["allow_training", "sealed"]
    list_select_related = ["owner", "model"]
    search_fields = ["title", "owner__username"]
    inlines = [MessageInline]

    def get_queryset(self, request):
        """Not the viewer's own sealed arena answers: their labels would unblind the vote here too."""
        return super().get_queryset(request).exclude(owner=request.user, sealed=True)


@admin.register(FeedbackTag)
class FeedbackTagAdmin(admin.ModelAdmin):
    list_display = ["label", "name", "active", "description"]
    list_editable = ["active"]
    prepopulated_fields = {"name": ["label"]}


class ReadOnlyAdmin(admin.ModelAdmin):
    """Users write these rows; admins read, filter and delete them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    list_display = ["excerpt", "user", "rating", "tag_list", "model", "has_correction", "updated_at"]
    list_filter = ["rating", "tags", "message__model_name", "message__adapter_name"]
    list_select_related = ["message", "user"]
    search_fields = ["comment", "correction", "message__content", "user__username"]
    fields = [
        "user",
        "message",
        "reasoning",
        "answer",
        "rating",
        "tags",
        "comment",
        "correction",
        "correction_keeps_reasoning",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("tags")

    @admin.display(description="answer")
    def excerpt(self, feedback):
        text = " ".join(feedback.message.content.split())
        return text if len(text) <= 80 else text[:79] + "…"

    @admin.display(description="tags")
    def tag_list(self, feedback):
        return ", ".join(tag.label for tag in feedback.tags.all())

    @admin.display(description="model", ordering="message__model_name")
    def model(self, feedback):
        adapter = feedback.message.adapter_name
        return feedback.message.model_name + (f" + {adapter}" if adapter else "")

    @admin.display(boolean=True, description="corrected")
    def has_correction(self, feedback):
        return bool(feedback.correction)

    @admin.display(description="answer rated")
    def answer(self, feedback):
        return format_html('<pre class="feedback-answer">{}</pre>', feedback.message.content)  # admin.css

    @admin.display(description="reasoning (before the answer)")
    def reasoning(self, feedback):
        return format_html('<pre class="feedback-answer">{}</pre>', feedback.message.reasoning or "—")


@admin.register(Preference)
class PreferenceAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "user", "source", "verdict", "updated_at"]
    list_filter = ["source", "verdict", "chosen__model_name"]
    list_select_related = ["user"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are made by their users (the API keys page); staff read and revoke them, set how many calls each may
    have answered at once, and superusers may delete them. The digest is never shown, nor editable: it is what a
    call proves it holds the key with."""

    list_display = [
        "name",
        "user",
        "shown_prefix",
        "keep_calls",
        "replies_at_once",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["keep_calls", ("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["user"]
    search_fields = ["user__username", "name", "prefix"]
    exclude = ["digest"]
    readonly_fields = ["user", "name", "prefix", "keep_calls", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="key", ordering="prefix")
    def shown_prefix(self, key):
        return f"{key.prefix}…"

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset):
        revoked = queryset.revoke()
        self.message_user(request, f"Revoked {revoked} key(s); calls with them fail from now on.", messages.SUCCESS)


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    """Snapshots are made by the export ("Add" opens the export form), never edited."""

    list_display = ["__str__", "format", "train_rows", "eval_rows", "scrubbed", "withdrawn", "created_by", "created_at"]
    list_filter = ["format", "scrubbed"]
    fields = [
        "format",
        "filters",
        "scrubbed",
        "eval_fraction",
        "license",
        "withdrawn",
        "train_path",
        "train_sha256",
        "eval_path",
        "eval_sha256",
        "card_path",
        "pretty_card",
        "created_by",
        "created_at",
    ]
    readonly_fields = fields
    actions = ["finetune", "evaluate"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_finetune_permission(self, request):
        return request.user.has_perm("modelhub.add_finetunejob")

    def has_evaluate_permission(self, request):
        return request.user.has_perm("conversations.add_evaluationreport")

    @admin.action(
        description="Evaluate base vs its adapters on this snapshot (in the background)", permissions=["evaluate"]
    )
    def evaluate(self, request, queryset):
        """A form for the base model, then an EvaluationReport of it and all its adapters, run in a thread."""
        snapshot = queryset.first()
        if queryset.count() != 1:
            self.message_user(request, "Pick one snapshot to evaluate on.", messages.ERROR)
            return None
        form = SnapshotEvaluateForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            base = form.cleaned_data["base"]
            report = create_and_start(request, snapshot, base, list(base.adapters.all()))
            return redirect("admin:conversations_evaluationreport_change", report.pk) if report else None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "snapshot": snapshot,
            "title": f"Evaluate a base model and its adapters on {snapshot}",
            "max_rows": settings.EVALUATION_MAX_ROWS,
        }
        return TemplateResponse(request, "conversations/admin_snapshot_evaluate.html", context)

    @admin.action(description="Fine-tune an adapter on this snapshot (in the background)", permissions=["finetune"])
    def finetune(self, request, queryset):
        """Queue a FinetuneJob on the snapshot's verified files and start it as its own process."""
        snapshot = queryset.first()
        if queryset.count() != 1 or snapshot.format not in ("sft", "dpo"):
            self.message_user(request, "Pick one SFT or DPO snapshot to fine-tune on.", messages.ERROR)
            return None
        form = SnapshotFinetuneForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            job = _start_finetune(request, snapshot, form.cleaned_data)
            if job is not None:
                return redirect("admin:modelhub_finetunejob_change", job.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "snapshot": snapshot,
            "title": f"Fine-tune an adapter on {snapshot}",
        }
        return TemplateResponse(request, "conversations/admin_snapshot_finetune.html", context)

    @admin.display(description="train rows")
    def train_rows(self, snapshot):
        return snapshot.counts.get("train", 0)

    @admin.display(description="eval rows")
    def eval_rows(self, snapshot):
        return snapshot.counts.get("eval", 0)

    @admin.display(description="card")
    def pretty_card(self, snapshot):
        return format_html("<pre>{}</pre>", json.dumps(snapshot.card, indent=2, ensure_ascii=False))

    def add_view(self, request, form_url="", extra_context=None):
        """The export form: the admin site already refuses non-staff; the add permission is checked here."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = SnapshotForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            snapshot = export_snapshot(
                data["format"],
                filters=form.filters(),
                scrub=data["scrub"],
                eval_fraction=data["eval_fraction"],
                created_by=request.user,
                license=data["license"],
                include_reasoning=data["include_reasoning"],
            )
            self.message_user(request, f"Created {snapshot}.", messages.SUCCESS)
            return redirect("admin:conversations_datasetsnapshot_change", snapshot.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "title": "Create a dataset snapshot",
        }
        return TemplateResponse(request, "conversations/admin_snapshot_form.html", context)


@admin.register(Arena)
class ArenaAdmin(ReadOnlyAdmin):
    """Arenas are opened and voted on at /arena/; here staff read them and the leaderboard."""

    list_display = ["__str__", "status", "votes", "total", "snapshot", "created_by", "created_at"]
    list_filter = ["status"]
    list_select_related = ["base", "candidate", "opponent", "snapshot", "created_by"]
    fields = ["created_by", "snapshot", "base", "candidate", "opponent", "options", "seed", "status", "created_at"]
    readonly_fields = fields
    actions = ["evaluate"]

    def has_evaluate_permission(self, request):
        return request.user.has_perm("conversations.add_evaluationreport")

    @admin.action(
        description="Evaluate base vs this arena's adapters on its snapshot (in the background)",
        permissions=["evaluate"],
    )
    def evaluate(self, request, queryset):
        arena = queryset.select_related("snapshot", "base", "candidate", "opponent").first()
        if queryset.count() != 1 or arena.snapshot is None:
            self.message_user(request, "Pick one arena whose snapshot still exists.", messages.ERROR)
            return None
        adapters = [arena.candidate, *([arena.opponent] if arena.opponent else [])]
        report = create_and_start(request, arena.snapshot, arena.base, adapters)
        return redirect("admin:conversations_evaluationreport_change", report.pk) if report else None

    def get_queryset(self, request):
        return super().get_queryset(request).with_counts()

    def get_fields(self, request, obj=None):
        """The seed fixes which answer is shown on the left: shown once no match is left to vote on."""
        if obj is not None and obj.next_match() is not None:
            return [name for name in self.fields if name != "seed"]
        return self.fields

    @admin.display(description="votes", ordering="votes")
    def votes(self, arena):
        return arena.votes

    @admin.display(description="prompts", ordering="total")
    def total(self, arena):
        return arena.total

    def get_urls(self):
        view = self.admin_site.admin_view(self.leaderboard_view)
        return [path("leaderboard/", view, name="conversations_arena_leaderboard"), *super().get_urls()]

    def leaderboard_view(self, request):
        """Every model and model + adapter rated from arena votes and side-by-side verdicts (see arena/ratings.py)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Leaderboard",
            "ratings": leaderboard(),
            "sources": [Preference.Source(s).label for s in SOURCES],
        }
        return TemplateResponse(request, "admin/conversations/arena/leaderboard.html", context)


def _start_finetune(request, snapshot, data):
    """The admin's side of `manage.py finetune --snapshot`; messages the user, returns the job or None."""
    try:
        files = snapshot.verify()
        job = FinetuneJob.objects.create_for(
            data["base"],
            snapshot.format,
            files["train"],
            files["eval"],
            snapshot.dataset_ref(),
            {"epochs": data["epochs"], "learning_rate": data["learning_rate"]},
            request.user,
            data["adapter_name"],
        )
    except SnapshotChanged as exc:
        messages.error(request, str(exc))
        return None
    except api.ModelhubError as exc:
        messages.error(request, exc.message)
        return None
    api.run_in_background(job, settings.VAR_DIR / "logs")
    messages.success(request, f"Started fine-tune job {job.pk} on {snapshot}: its page shows the progress.")
    return job
