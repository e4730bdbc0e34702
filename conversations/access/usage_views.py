"""Usage as people see it: the account page (roles, quotas, what counts against them, 30 days of tokens)
and the bar chart it shares with the admin's usage page (access/usage_admin.py). The counting is quotas.py's."""

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from conversations.access import limits, quotas
from conversations.models import UnkeptCallUsage

DAYS = 30
CHART_HEIGHT = 120


def chart(days, first_day, count):
    """Bars for `count` days from `first_day` ({date: tokens}), scaled to CHART_HEIGHT pixels, for the
    template's SVG (attributes only: the Content-Security-Policy allows no inline style)."""
    values = [
        (first_day + timedelta(days=index), days.get(first_day + timedelta(days=index), 0)) for index in range(count)
    ]
    top = max((value for _, value in values), default=0)
    bars = []
    for index, (day, value) in enumerate(values):
        height = round(value / (top or 1) * CHART_HEIGHT)
        bars.append({"x": index * 12, "y": CHART_HEIGHT - height, "h": height, "day": day, "value": value})
    return {
        "top": top,
        "total": sum(value for _, value in values),
        "height": CHART_HEIGHT,
        "width": count * 12,
        "bars": bars,
    }


def since_days(count, now=None):
    """The start of the day `count - 1` days before today (TIME_ZONE): a chart of `count` days ends today."""
    return quotas.day_start(now or timezone.now()) - timedelta(days=count - 1)


@login_required
@require_GET
def account(request):
    user = request.user
    where = quotas.standing(user)
    since = since_days(DAYS)
    mine, unkept = quotas.replies_of(user), UnkeptCallUsage.objects.filter(user=user)
    context = {
        "roles": list(user.groups.values_list("name", flat=True)),
        "where": where,
        "writing": len(limits.in_flight(user)),
        "resets_in": quotas.human(where.day_resets_at - timezone.now()),
        "chart": chart(quotas.daily_tokens(mine, unkept, since), since.date(), DAYS),
        "by_model": quotas.usage_rows(mine, unkept, since, "model"),
        "days": DAYS,
    }
    return render(request, "conversations/account.html", context)
