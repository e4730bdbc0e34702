"""The chat page survives a lost socket, in a real browser (Debian's Chromium through Playwright):
the server restarted mid-reply (the embedded default), and Redis restarted mid-reply (the
deployed setup, PostgreSQL + Redis). The page says it is reconnecting, keeps what the user typed,
reconnects with backoff and catches up without a reload. And a first reply that waits for its
model's load says so ("loading tiny… 2 s, loading weights") until its text starts.
"""

import re

import pytest

from tests.browser.pages import ARTIFACTS, last_reply, send, watch_for_policy_violations
from tests.live import SHELL_PRELUDE, RedisServer, Site
from tests.postgres import PostgresDatabase

pytestmark = [pytest.mark.slow, pytest.mark.live]

SETUP = (
    SHELL_PRELUDE
    + """
from modelhub.models import ModelSpec
from conversations.models import Conversation
owner = User.objects.create_user("owner", password="live-pass-123")
ModelSpec.objects.create(name="echo", backend="scripted", source="echo delay=0.05", is_default=True)
conversation = Conversation.objects.create(owner=owner)
print(json.dumps({"cookie": session_for("owner"), "conversation": conversation.pk}))
"""
)


def words(n):
    return " ".join(f"w{i}" for i in range(n))


def open_chat(browser, server, info):
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.add_cookies([{"name": "sessionid", "value": info["cookie"], "url": server.url}])
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(f"{server.url}/c/{info['conversation']}/")
    page.wait_for_selector("#send-button:not([disabled])")  # selectors, not wait_for_function: the CSP forbids eval
    return page


def test_the_page_catches_up_after_the_server_restarts_mid_reply(browser, tmp_path):
    site = Site(tmp_path, CHAT_ORPHAN_GRACE_SECONDS=30)
    try:
        info = site.setup(SETUP)
        server = site.server()
        page = open_chat(browser, server, info)
        send(page, words(200))  # 10 s of writing
        page.wait_for_selector(".message-assistant:last-child .message-text:has-text('w5')")

        server.stop()  # SIGTERM: the reply is saved `interrupted` with its text
        page.wait_for_selector("#chat-error:has-text('reconnecting')")
        assert page.locator("#send-button").is_disabled()
        page.fill("#composer-input", "typed while the server was away")
        page.keyboard.press("Enter")  # cannot go: stays in the box
        assert page.locator("#stop-button").is_disabled()
        page.screenshot(path=ARTIFACTS / "browser-reconnecting.png")
        assert page.input_value("#composer-input") == "typed while the server was away"

        server.restart()
        page.wait_for_selector('.message-assistant:last-child[data-status="interrupted"]', timeout=30000)
        # the reply's end may arrive before the socket drops (SIGTERM saves it and says so): then the page is
        # still reconnecting here, and the error goes once the new socket opens
        page.wait_for_selector("#chat-error", state="hidden", timeout=30000)
        saved = site.rows("SELECT content FROM conversations_message WHERE role = 'assistant'")[0][0]
        assert len(saved) > 5 and words(200).startswith(saved)
        assert last_reply(page).locator(".message-text").inner_text().strip() == saved
        assert page.input_value("#composer-input") == "typed while the server was away"

        page.keyboard.press("Enter")  # now it goes
        page.wait_for_selector('.message-assistant:last-child[data-status="complete"]', timeout=30000)
        assert "typed while the server was away" in last_reply(page).inner_text()
        page.screenshot(path=ARTIFACTS / "browser-reconnected.png")
        assert page.errors == []
    finally:
        site.close()


def test_the_page_shows_the_whole_reply_after_redis_restarts_mid_reply(browser, tmp_path):
    site = Site(tmp_path, database=PostgresDatabase(), redis=RedisServer(tmp_path), CHAT_ORPHAN_GRACE_SECONDS=30)
    try:
        info = site.setup(SETUP)
        server = site.server()
        page = open_chat(browser, server, info)
        send(page, words(120))  # 6 s of writing
        page.wait_for_selector(".message-assistant:last-child .message-text:has-text('w5')")

        site.redis.stop()
        page.wait_for_timeout(2000)
        site.redis.start()

        page.wait_for_selector('.message-assistant:last-child[data-status="complete"]', timeout=30000)
        assert last_reply(page).locator(".message-text").inner_text().strip() == words(120)
        assert site.rows("SELECT status, content FROM conversations_message WHERE role = 'assistant'") == [
            ("complete", words(120))
        ]
        send(page, "after the restart")
        page.wait_for_selector(
            '.message-assistant:last-child[data-status="complete"] >> text=after the restart', timeout=30000
        )
        assert page.errors == []
    finally:
        site.close()


COLD_SETUP = (
    SHELL_PRELUDE
    + """
from modelhub.models import ModelSpec
from conversations.models import Conversation
owner = User.objects.create_user("owner", password="live-pass-123")
ModelSpec.objects.create(name="tiny", display_name="tiny <b>cold</b>", source={source!r}, dtype="float32",
                         device="cpu", max_new_tokens=16, is_default=True)
conversation = Conversation.objects.create(owner=owner)
print(json.dumps({{"cookie": session_for("owner"), "conversation": conversation.pk}}))
"""
)

BADGE = ".message-assistant:last-child .badge.streaming"


def test_a_reply_waiting_for_its_model_to_load_says_so_then_streams(browser, tmp_path, tiny_model_dir):
    """The first reply of a server that did not load its model at start: the tiny Llama loads, torch and
    transformers imported first, while the page shows it; the model's name is shown as text, never markup."""
    site = Site(tmp_path, MODELHUB_PRELOAD=0)
    try:
        info = site.setup(COLD_SETUP.format(source=str(tiny_model_dir)))
        server = site.server()
        page = open_chat(browser, server, info)
        reports = watch_for_policy_violations(page)
        page.evaluate("""() => {  // every text the reply's badge has had
            window.__badges = [];
            new MutationObserver(() => {
                const badge = document.querySelector('.message-assistant:last-child .badge');
                if (badge && badge.textContent !== window.__badges[window.__badges.length - 1])
                    window.__badges.push(badge.textContent);
            }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
        }""")
        send(page, "hello there")
        page.wait_for_selector(f"{BADGE}:has-text('loading tiny <b>cold</b>…')", timeout=15000)
        page.screenshot(path=ARTIFACTS / "browser-loading-model.png")
        assert page.locator(f"{BADGE} b").count() == 0
        page.wait_for_selector('.message-assistant:last-child[data-status="complete"]', timeout=60000)

        badges = page.evaluate("window.__badges")
        loading = [i for i, text in enumerate(badges) if re.fullmatch(r"loading tiny <b>cold</b>… \d+ s(, .+)?", text)]
        assert loading, badges
        assert "writing…" in badges[loading[-1] :], badges  # the text started: the badge says so again
        assert any("importing torch and transformers" in text for text in badges), badges
        assert page.errors == [] and reports == []
    finally:
        site.close()
