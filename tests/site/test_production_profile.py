"""The production profile: with the environment the "Production settings" page documents
(docs/deployment/production.md), `manage.py check --deploy` reports nothing; without it, it warns
about each setting the profile sets; and the embedded default (no environment) still serves plain
http on 127.0.0.1.

The checks run `manage.py` in a subprocess, because settings are read from the environment once,
when Django starts."""

import json
import os
import re
import secrets
import subprocess
import sys

from tests import ROOT

PROFILE = {  # as the "Production settings" page gives it
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "chat.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    "CHATSITE_BEHIND_TLS_PROXY": "1",
    "SECURE_SSL_REDIRECT": "1",
    "SESSION_COOKIE_SECURE": "1",
    "CSRF_COOKIE_SECURE": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "METRICS_TOKEN": secrets.token_urlsafe(32),
}


def manage(tmp_path, *args, **env):
    """`manage.py ARGS` in a fresh process with only `env` of the profile's variables set."""
    base = {key: value for key, value in os.environ.items() if key not in PROFILE}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "CHATSITE_VAR_DIR": str(tmp_path), **env},
        timeout=120,
    )


def settings_in(tmp_path, **env):
    names = [
        "DEBUG",
        "SECURE_SSL_REDIRECT",
        "SECURE_PROXY_SSL_HEADER",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
        "ALLOWED_HOSTS",
    ]
    code = (
        "import json; from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {names}}}))"
    )
    result = manage(tmp_path, "shell", "-v0", "-c", code, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_check_deploy_reports_nothing_with_the_documented_environment(tmp_path):
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PROFILE)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stderr + result.stdout


def test_check_deploy_warns_about_each_setting_of_the_profile_without_it(tmp_path):
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    warned = set(re.findall(r"\(security\.(W\d+)\)", result.stderr))
    # HSTS, the HTTPS redirect, the secure session cookie, the secure CSRF cookie.
    assert warned == {"W004", "W008", "W012", "W016"}


def test_the_profile_is_read_from_the_environment_and_the_embedded_default_stays_plain_http(tmp_path):
    production = settings_in(tmp_path, **PROFILE)
    assert production["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert production["SECURE_HSTS_SECONDS"] == 31536000 and production["SECURE_SSL_REDIRECT"] is True

    embedded = settings_in(tmp_path)
    assert embedded == {
        "DEBUG": False,
        "SECURE_SSL_REDIRECT": False,
        "SECURE_PROXY_SSL_HEADER": None,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "ALLOWED_HOSTS": ["127.0.0.1", "localhost"],
    }


def test_a_bad_value_stops_start_up_with_its_name(tmp_path):
    result = manage(tmp_path, "check", SECURE_HSTS_SECONDS="a year")
    assert result.returncode != 0 and "SECURE_HSTS_SECONDS='a year' is not an integer" in result.stderr


def test_the_production_settings_page_documents_every_variable_of_the_profile():
    page = (ROOT / "docs" / "deployment" / "production.md").read_text()
    section = page.split("# Production settings", 1)[1].split("\n## ", 1)[0]
    assert [name for name in PROFILE if f"`{name}`" not in section] == []


# --- what the settings do, in this process -------------------------------------------------


def test_the_embedded_default_serves_plain_http_without_hsts_or_secure_cookies(client, owner):
    response = client.post("/login/", {"username": "owner", "password": "owner-pass-123"})
    assert response.status_code == 302
    assert "Strict-Transport-Security" not in response.headers
    assert not response.cookies["sessionid"]["secure"]


def test_with_the_https_redirect_on_probes_and_scrapes_still_answer_plain_http_and_pages_redirect(client, settings, db):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code != 301  # its answer is the checks' (test_health.py)
    assert client.get("/metrics").status_code == 403  # scraped at each process's own address
    redirect = client.get("/login/")
    assert (redirect.status_code, redirect["Location"]) == (301, "https://testserver/login/")
    assert client.get("/login/", headers={"X-Forwarded-Proto": "https"}).status_code == 200  # the proxy ended TLS
