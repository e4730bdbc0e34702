"""The page a locked-out login gets (django-axes calls `locked_out`; settings: LOGIN_FAILURE_LIMIT,
LOGIN_LOCKOUT_MINUTES): 429, when to try again, and a Retry-After header for scripts."""

import math

from django.conf import settings
from django.shortcuts import render


def locked_out(request, original_response, credentials):
    seconds = math.ceil(settings.AXES_COOLOFF_TIME.total_seconds())
    response = render(
        request,
        "registration/locked_out.html",
        {"minutes": math.ceil(seconds / 60), "failures": settings.AXES_FAILURE_LIMIT},
        status=429,
    )
    response["Retry-After"] = str(seconds)
    return response
