"""Quotas in the admin (per user and per group, over the site's defaults) and the usage page: tokens and
replies per user, group or model over the last days, with a chart of the chosen one over time.

Admin → Quotas → Usage needs conversations.view_quota (the admin role)."""

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path

from conversations.access import quotas
from conversations.access.usage_views import chart, since_days
from conversations.models import Message, Quota, UnkeptCallUsage


class UsageForm(forms.Form):
    by = forms.ChoiceField(choices=[(name, name) for name in quotas.DIMENSIONS], initial="user", required=False)
    name = forms.CharField(required=False, max_length=200)
    days = forms.TypedChoiceField(
        choices=[(7, "7 days"), (30, "30 days"), (90, "90 days")],
        coerce=int,
        initial=30,
        required=False,
        empty_value=30,
    )


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "group", "tokens_per_day", "replies_per_minute", "replies_at_once"]
    list_select_related = ["user", "group"]
    search_fields = ["user__username", "group__name"]
    autocomplete_fields = ["user"]

    def get_urls(self):
        view = self.admin_site.admin_view(self.usage_view)
        return [path("usage/", view, name="conversations_quota_usage"), *super().get_urls()]

    def usage_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = UsageForm({"by": "user", "days": 30, **request.GET.dict()})
        data = form.cleaned_data if form.is_valid() else {"by": "user", "name": "", "days": 30}
        by, name, days = data["by"] or "user", data["name"], data["days"] or 30
        since = since_days(days)
        replies = Message.objects.filter(role=Message.Role.ASSISTANT)
        unkept = UnkeptCallUsage.objects.all()
        rows = quotas.usage_rows(replies, unkept, since, by)
        if name:
            on_replies, on_unkept = quotas.DIMENSIONS[by]
            replies, unkept = replies.filter(**{on_replies: name}), unkept.filter(**{on_unkept: name})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Usage",
            "form": form,
            "by": by,
            "name": name,
            "days": days,
            "rows": rows,
            "chart": chart(quotas.daily_tokens(replies, unkept, since), since.date(), days),
        }
        return TemplateResponse(request, "admin/conversations/quota/usage.html", context)
