"""Reviews in the admin (read only: decisions are made in the review queue) and the agreement page:
Cohen's kappa for each pair of reviewers on the items both decided, Fleiss' kappa over the items decided
by the same number of reviewers (agreement.py)."""

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path

from conversations.models import Review
from conversations.training_data.agreement import agreement_report


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["feedback", "reviewer", "decision", "edited", "assigned_at", "decided_at"]
    list_filter = ["decision", "edited", "reviewer"]
    list_select_related = ["feedback", "reviewer"]
    readonly_fields = ["feedback", "reviewer", "decision", "correction", "edited", "note", "assigned_at", "decided_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_urls(self):
        view = self.admin_site.admin_view(self.agreement_view)
        return [path("agreement/", view, name="conversations_review_agreement"), *super().get_urls()]

    def agreement_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Agreement",
            "report": agreement_report(),
            "per_item": settings.CHAT_REVIEWS_PER_ITEM,
        }
        return TemplateResponse(request, "admin/conversations/review/agreement.html", context)
