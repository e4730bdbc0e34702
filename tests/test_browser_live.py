"""The chat page survives a lost socket, in a real browser (Debian's Chromium through Playwright):
the server restarted mid-reply (the embedded default), and Redis restarted mid-reply (the
deployed setup, PostgreSQL + Redis). The page says it is reconnecting, keeps what the user typed,
reconnects with backoff and catches up without a reload.
"""

import pytest

from tests.live import SHELL_PRELUDE, PostgresDatabase, RedisServer, Site
from tests.test_browser import ARTIFACTS, browser  # noqa: F401  (the module's Chromium, a fixture)

pytestmark = [pytest.mark.slow]

SETUP = SHELL_PRELUDE + """
from modelhub.models import ModelSpec
from conversations.models import Conversation
owner = User.objects.create_user("owner", password="live-pass-123")
ModelSpec.objects.create(name="echo", backend="scripted", source="echo delay=0.05", is_default=True)
conversation = Conversation.objects.create(owner=owner)
print(json.dumps({"cookie": session_for("owner"), "conversation": conversation.pk}))
"""


def words(n):
    return " ".join(f"w{i}" for i in range(n))


def open_chat(browser, server, info):  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    context.add_cookies([{"name": "sessionid", "value": info["cookie"], "url": server.url}])
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(f"{server.url}/c/{info['conversation']}/")
    page.wait_for_selector("#send-button:not([disabled])")  # selectors, not wait_for_function: the CSP forbids eval
    return page


def send(page, text):
    page.fill("#composer-input", text)
    page.keyboard.press("Enter")


def last_reply(page):
    return page.locator(".message-assistant").last


def test_the_page_catches_up_after_the_server_restarts_mid_reply(browser, tmp_path):  # noqa: F811
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
        assert page.locator("#chat-error").is_hidden()
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


def test_the_page_shows_the_whole_reply_after_redis_restarts_mid_reply(browser, tmp_path):  # noqa: F811
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
            ("complete", words(120))]
        send(page, "after the restart")
        page.wait_for_selector('.message-assistant:last-child[data-status="complete"] >> text=after the restart',
                               timeout=30000)
        assert page.errors == []
    finally:
        site.close()
