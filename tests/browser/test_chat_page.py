"""The chat page in a real browser (Debian's Chromium driven by Playwright) against a real
daphne server: streaming, stop, regenerate, edit, markdown, reload mid-stream, and XSS.

The server runs in its own process with its own SQLite database, like `make run`, with
two models: a scripted one that echoes the user's message word by word (slowly, so a
test can stop or reload mid-reply; it is how a hostile model is simulated: the reply is
exactly what the test typed) and a tiny random Llama through the real transformers path.
Screenshots land in artifacts/ (ignored by git).
"""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.pages import (
    ARTIFACTS,
    PASSWORD,
    choose_model,
    last_reply,
    send,
    wait_done,
    watch_for_policy_violations,
)

pytestmark = [pytest.mark.live]


def test_a_reply_streams_in_several_increments_on_the_real_model_path(page):
    choose_model(page, "tiny")
    page.evaluate("""() => {  // every length the reply's text has had, as the page updates it
        window.__lengths = new Set();
        new MutationObserver(() => {
            const text = document.querySelector('.message-assistant:last-child .message-text');
            if (text) window.__lengths.add(text.textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    send(page, "hello there, how are you?")
    wait_done(page)
    assert page.evaluate("window.__lengths.size") > 2
    assert last_reply(page).get_attribute("data-status") == "complete"
    assert "tokens" in last_reply(page).inner_text()
    page.screenshot(path=ARTIFACTS / "browser-streamed.png")


def test_stop_keeps_the_partial_reply(page):
    send(page, " ".join(f"word{i}" for i in range(80)))
    page.wait_for_selector(".message-assistant:last-child .message-text:has-text('word3')")
    page.click("#stop-button")
    wait_done(page)
    reply = last_reply(page)
    assert reply.get_attribute("data-status") == "stopped"
    assert "word79" not in reply.inner_text() and "word0" in reply.inner_text()
    page.screenshot(path=ARTIFACTS / "browser-stopped.png")


def test_regenerate_and_navigate_between_answers(page):
    send(page, "first question")
    wait_done(page)
    last_reply(page).locator("button[data-action=regenerate]").click()
    page.wait_for_selector(".message-assistant .siblings")
    wait_done(page)
    assert "2/2" in last_reply(page).locator(".siblings").inner_text()
    last_reply(page).locator("button[aria-label='Previous version']").click()
    expect(page.locator(".message-assistant .siblings").first).to_contain_text("1/2")
    assert page.locator(".message").count() == 2


def test_edit_makes_a_branch_and_the_old_one_stays_reachable(page):
    send(page, "original question")
    wait_done(page)
    page.locator(".message-user button[data-action=edit]").click()
    page.fill(".edit-box textarea", "edited question")
    page.click(".edit-box button[type=submit]")
    page.wait_for_selector(".message-user .siblings")
    wait_done(page)
    assert "edited question" in page.locator(".message-user").inner_text()
    page.locator(".message-user button[aria-label='Previous version']").click()
    expect(page.locator(".message-user").first).to_contain_text("original question")
    page.screenshot(path=ARTIFACTS / "browser-branches.png")


def test_a_code_block_renders_highlighted_with_a_copy_button_and_a_table_keeps_its_alignment(page):
    send(page, "```python\nprint('hi')\n```\n\n| left | middle | right |\n|:--|:--:|--:|\n| a | b | c |")
    wait_done(page)
    block = last_reply(page).locator(".code-block")
    assert block.locator(".highlight span").count() > 0
    assert block.locator("button.copy").count() == 1
    cells = last_reply(page).locator("table td")  # aligned by class: the policy blocks inline styles
    expect(cells).to_have_class(["align-left", "align-center", "align-right"])
    for cell, alignment in zip(cells.all(), ["left", "center", "right"]):
        expect(cell).to_have_css("text-align", alignment)
    page.screenshot(path=ARTIFACTS / "browser-code.png")


def test_a_long_conversation_shows_its_end_and_loads_the_earlier_messages_on_demand(page):
    """The server shows 6 messages at first (CHAT_PAGE_MESSAGES, conftest.py): after four turns and a
    reload the first turn is behind "Show earlier messages", which brings it in place, above, with its
    code's copy button, and leaves the reader where they were."""
    send(page, "first turn:\n```python\nprint('from the start')\n```")
    wait_done(page)
    for n in range(2, 5):
        send(page, f"turn {n}")
        expect(page.locator(".message-assistant")).to_have_count(n)
        wait_done(page)
    page.reload()
    page.wait_for_selector("#send-button:not([disabled])")
    expect(page.locator(".message")).to_have_count(6)
    button = page.get_by_role("button", name="Show earlier messages (2)")
    button.scroll_into_view_if_needed()
    read = page.locator(".message").first  # what the reader has in view, under the button
    top_before = read.bounding_box()["y"]
    button.click()
    expect(page.locator(".message")).to_have_count(8)
    expect(page.locator(".earlier")).to_have_count(0)
    assert page.locator(".message-user").first.get_attribute("data-raw").startswith("first turn")
    assert abs(page.locator(".message").nth(2).bounding_box()["y"] - top_before) < 60  # it stayed in view
    page.locator(".message").first.scroll_into_view_if_needed()
    expect(page.locator(".message-assistant").first.locator(".code-block button.copy")).to_have_count(1)
    page.screenshot(path=ARTIFACTS / "browser-earlier-messages.png")


def test_reloading_mid_reply_shows_it_still_streaming_then_finished(page):
    send(page, " ".join(f"w{i}" for i in range(40)))
    page.wait_for_selector(".message-assistant:last-child .message-text:has-text('w2')")
    page.reload()
    page.wait_for_selector(".message-assistant")
    assert last_reply(page).get_attribute("data-status") == "streaming"
    wait_done(page)
    assert "w39" in last_reply(page).inner_text()


def test_a_message_the_server_refuses_stays_in_the_box(page):
    send(page, " ".join(f"w{i}" for i in range(40)))  # the echo model takes a while over it
    page.wait_for_selector('.message-assistant[data-status="streaming"]')
    send(page, "keep these words")  # Enter sends even while a reply is written: the server says busy
    expect(page.locator("#chat-error")).to_contain_text("still being written")
    assert page.input_value("#composer-input") == "keep these words"
    page.click("#stop-button")
    wait_done(page)


def test_a_second_tab_sees_the_same_stream(page, browser):
    url = page.url
    other = page.context.new_page()
    reports = watch_for_policy_violations(other)
    other.goto(url)
    other.wait_for_selector("#send-button:not([disabled])")
    send(page, "shared words for two tabs to see")
    other.wait_for_selector('.message-assistant:last-child[data-status="complete"]', timeout=30000)
    assert "two tabs to see" in other.locator(".message-assistant").last.inner_text()
    other.close()
    assert reports == []


HOSTILE = """<script>window.__pwned = 1</script>
<img src="https://evil.example/beacon.png" onerror="window.__pwned = 2">
<svg onload="window.__pwned = 3"></svg> <iframe src="https://evil.example/"></iframe>
[click me](javascript:window.__pwned=4) ![beacon](https://evil.example/track.png)
<a href="#" onclick="window.__pwned = 5">x</a> <details open ontoggle="window.__pwned = 6">"""


def test_hostile_markup_from_the_user_and_the_model_never_runs_or_loads(page):
    send(page, HOSTILE)  # the echo model answers with exactly this markup
    wait_done(page)
    page.wait_for_timeout(500)
    texts = ".message-text"  # what the user and the model wrote (the page's own links and icons are not in it)
    hrefs = [link.get_attribute("href") for link in page.locator(f"{texts} a[href]").all()]
    assert hrefs and all(href.startswith(("http://", "https://", "#")) for href in hrefs)
    assert page.evaluate("window.__pwned") is None
    assert page.locator(f"{texts} img, {texts} iframe, {texts} svg, {texts} script").count() == 0
    page.screenshot(path=ARTIFACTS / "browser-xss.png")


def test_side_by_side_streams_two_columns_and_stores_the_verdict(page):
    page.select_option("#compare-model", label="tiny")
    send(page, "compare these two answers please")
    page.wait_for_selector(".comparison")
    finished = page.locator('.comparison .message-assistant:not([data-status="streaming"])')
    expect(finished).to_have_count(2, timeout=30000)
    columns = page.locator(".comparison .message-assistant")
    assert columns.count() == 2
    assert "echo" in columns.nth(0).inner_text() and "tiny" in columns.nth(1).inner_text()
    assert "compare these two answers please" in columns.nth(0).inner_text()
    page.screenshot(path=ARTIFACTS / "browser-side-by-side.png")
    page.click(".comparison-vote button[value=left]")
    page.wait_for_selector(".comparison-vote strong:has-text('Left')")


def test_the_chat_the_arena_and_the_admin_keep_to_the_content_security_policy(browser, server):
    """No inline script or style anywhere, yet the chat and the admin's "Try a prompt" still stream."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    reports = watch_for_policy_violations(page)
    page.goto(f"{server}/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/")
    page.click("text=+ New chat")
    page.wait_for_selector("#send-button:not([disabled])")  # not wait_for_function: it needs eval
    send(page, "streamed under the policy")
    wait_done(page)
    assert "streamed under the policy" in last_reply(page).inner_text()

    page.goto(f"{server}/arena/")
    page.wait_for_selector("text=New arena")
    page.goto(f"{server}/admin/modelhub/modelspec/")  # a changelist, then the echo model's change form
    page.click("#result_list a:text-is('echo')")
    page.wait_for_url("**/change/")
    page.goto(page.url.replace("/change/", "/test/"))
    page.fill("#prompt", "tried under the policy")
    page.click("#try-form input[type=submit]")
    page.wait_for_selector("#reply:has-text('tried under the policy')")
    page.screenshot(path=ARTIFACTS / "browser-csp-try.png")
    page.wait_for_timeout(300)  # reports arrive asynchronously
    context.close()
    assert reports == []


def test_a_key_made_on_the_keys_page_calls_the_api_and_the_call_shows_in_the_sidebar(page, server):
    """A user makes a key (shown once), a tool uses it with the official openai client, the user sees the
    call as a conversation with its key's name, and revoking the key ends its use at once."""
    import openai

    page.click("a:text-is('API keys')")
    page.fill("#id_name", "my notebook")
    page.click("text=Create key")
    raw = page.locator("#new-key").inner_text().strip()
    assert raw.startswith("cs-")
    page.screenshot(path=ARTIFACTS / "browser-api-key-created.png")
    page.goto(f"{server}/keys/")
    assert raw not in page.content()  # shown once

    client = openai.OpenAI(base_url=f"{server}/v1", api_key=raw, max_retries=0, timeout=60)
    reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello from a tool"}])
    assert reply.choices[0].message.content.strip() == "hello from a tool"

    page.click("text=← Chats")
    entry = page.locator(".conversation-list li", has_text="hello from a tool")
    expect(entry.locator(".badge.api")).to_have_text("API")
    entry.locator("a").click()
    expect(page.locator("#api-call")).to_have_text("API call · key “my notebook”")
    expect(last_reply(page)).to_contain_text("hello from a tool")
    page.screenshot(path=ARTIFACTS / "browser-api-call-in-sidebar.png")

    page.click("a:text-is('API keys')")
    page.wait_for_url(f"{server}/keys/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr", has_text="my notebook").get_by_role("button", name="Revoke").click()
    expect(page.locator("tr", has_text="my notebook")).to_contain_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_thinking_models_reasoning_streams_in_a_collapsed_block_above_its_answer(page):
    choose_model(page, "thinker")
    page.evaluate("""() => {  // every label the thinking block's summary has had
        window.__summaries = new Set();
        new MutationObserver(() => {
            const open = '.message-assistant:last-child details.reasoning:not([hidden]) summary';
            const summary = document.querySelector(open);
            if (summary) window.__summaries.add(summary.textContent.trim());
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true, attributes: true});
    }""")
    send(page, "what is two plus two?")
    wait_done(page)
    reply = last_reply(page)
    block = reply.locator("details.reasoning")
    summaries = page.evaluate("[...window.__summaries]")
    assert "Thinking…" in summaries and any(s.startswith("Thought for") for s in summaries), summaries
    expect(block.locator("summary")).to_have_text(re.compile(r"^Thought for \d+\.\d s$"))
    expect(reply.locator(".message-text")).to_have_text("four.")
    expect(block.locator(".reasoning-text")).to_be_hidden()  # collapsed until asked for
    assert reply.get_attribute("data-raw") == "four."  # what Copy copies: the answer alone
    block.locator("summary").focus()
    page.keyboard.press("Enter")  # keyboard-accessible: a <details> summary
    expect(block.locator(".reasoning-text")).to_have_text("two and two make four.")
    page.screenshot(path=ARTIFACTS / "browser-thinking.png")
