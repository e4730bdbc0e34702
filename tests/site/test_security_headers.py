"""Security headers (chatsite/settings.py): a Content-Security-Policy that allows nothing inline
and nothing from another site, Referrer-Policy and X-Content-Type-Options, on the app's pages
and the admin's. Templates keep no inline script, style or event handler, which the policy
would block; tests/browser/ checks the pages in a real browser for violations."""

import re

import pytest
from django.urls import reverse

from tests import ROOT
from tests.markup import INLINE

TEMPLATES = ROOT / "templates"
POLICY = {
    "default-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def policy(response):
    directives = (directive.strip().split(None, 1) for directive in response["Content-Security-Policy"].split(";"))
    return dict(directives)


@pytest.mark.parametrize(
    "who, url",
    [
        ("anonymous", "login"),
        ("owner", "conversations:list"),
        ("superuser", "admin:index"),
        ("superuser", "admin:conversations_arena_changelist"),
    ],
)
def test_pages_send_the_policy_and_the_other_security_headers(client, owner, admin_user, who, url):
    if who != "anonymous":
        client.force_login(owner if who == "owner" else admin_user)
    response = client.get(reverse(url))
    assert response.status_code == 200
    assert policy(response) == POLICY
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_htmx_is_told_not_to_inject_its_style_nor_evaluate(client):
    page = client.get(reverse("login")).content.decode()
    config = re.search(r"<meta name=\"htmx-config\" content='([^']*)'", page).group(1)
    assert '"includeIndicatorStyles": false' in config and '"allowEval": false' in config


def test_no_template_has_inline_script_style_or_event_handlers():
    found = [
        (str(path.relative_to(TEMPLATES)), what)
        for path in sorted(TEMPLATES.rglob("*.html"))
        for what, pattern in INLINE.items()
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert found == []
