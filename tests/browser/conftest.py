"""The browser tests' fixtures: one daphne serving chatsite with its own SQLite database (`server`), one
headless Chromium (`browser`), both per module, and a logged-in page on a new conversation (`page`).

The server has two models: a scripted one that echoes the user's message word by word (slowly, so a
test can stop or reload mid-reply; it is how a hostile model is simulated: the reply is exactly what
the test typed), a tiny random Llama through the real transformers path, and the tiny Qwen3 that thinks
before it answers (tests/thinking.py)."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests import ROOT
from tests.browser.pages import ARTIFACTS, PASSWORD, SERVER_LOG, watch_for_policy_violations

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

SETUP = """
from django.contrib.auth.models import User
from modelhub.models import ModelSpec
User.objects.create_user("alice", password="{password}")
User.objects.create_superuser("root", password="{password}")
ModelSpec.objects.create(name="echo", backend="scripted", source="echo delay=0.04", is_default=True)
ModelSpec.objects.create(name="tiny", source="{tiny}", dtype="float32", device="cpu", max_new_tokens=48,
                         token_probabilities=True)
ModelSpec.objects.create(name="thinker", source="{thinker}", dtype="float32", device="cpu", temperature=0,
                         max_new_tokens=48)
"""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, thinking_model_dir, tmp_path_factory):
    """A daphne process serving chatsite on a free port, with its own database."""
    var = tmp_path_factory.mktemp("browser-var")
    env = {
        **os.environ,
        "CHATSITE_VAR_DIR": str(var),
        "SECRET_KEY": "browser-tests-secret-key-0123456789abcdef",
        "CHAT_ORPHAN_GRACE_SECONDS": "30",
        "HF_HUB_OFFLINE": "1",
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "PYTHONUNBUFFERED": "1",
        "CHAT_PAGE_MESSAGES": "6",  # a conversation of four turns already has earlier messages to load
    }
    env.pop("DATABASE_URL", None)  # the live server always has its own SQLite file
    env.pop("REDIS_URL", None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    setup = SETUP.format(password=PASSWORD, tiny=tiny_model_dir, thinker=thinking_model_dir)
    subprocess.run([*manage, "shell", "-c", setup], env=env, check=True, cwd=ROOT)
    port = _free_port()
    log = open(var / "server.log", "wb")  # shown when a wait times out
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    SERVER_LOG[:] = [var / "server.log"]
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A logged-in page on a new conversation, under the site's Content-Security-Policy; a test fails
    on any policy violation, console error or warning, script error or off-site request.

    The policy forbids eval, so the tests wait with selectors and `expect`, never with
    `wait_for_function("<js string>")` (it evaluates its string with eval when it polls).
    `page.evaluate` is not eval: Playwright runs it through the DevTools protocol, which the policy allows."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.reports, page.offsite = watch_for_policy_violations(page), []
    page.on("request", lambda r: None if r.url.startswith(server) else page.offsite.append(r.url))
    page.goto(f"{server}/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/")
    page.click("text=+ New chat")
    page.wait_for_selector("#send-button:not([disabled])")
    yield page
    page.wait_for_timeout(100)  # reports arrive asynchronously
    assert page.reports == []
    assert page.offsite == []
    context.close()
