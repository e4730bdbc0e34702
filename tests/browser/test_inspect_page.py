"""Inside a reply, in a real browser (Debian's Chromium, Playwright) against a real daphne server on the
tiny Llama: the Inspect view colours each token by probability and shows its alternatives on focus;
choosing one writes a new answer beside the first that begins with it; the attention page draws its
heatmaps. Screenshots land in artifacts/ (looked at before a change is called done)."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.pages import ARTIFACTS, choose_model, last_reply, send, wait_done

pytestmark = [pytest.mark.live]


def test_inspect_shows_probabilities_and_an_alternative_starts_a_branch_from_it(page):
    choose_model(page, "tiny")
    send(page, "hello there, how are you?")
    wait_done(page)
    reply = last_reply(page)
    first_text = reply.get_attribute("data-raw")

    reply.locator("a:text-is('Inspect')").click()
    tokens = reply.locator(".message-inspect .tokens > .tok")
    expect(tokens.first).to_be_visible()
    assert tokens.count() > 3
    expect(reply.locator(".inspect-basis")).to_contain_text("after temperature 0.7, top-k 50, top-p 0.95")
    shaded = reply.locator(".message-inspect .tokens > .tok[class*=' p']")
    assert shaded.count() == tokens.count()
    token = tokens.nth(2)
    token.focus()
    alternatives = token.locator(".tok-alts")
    expect(alternatives).to_be_visible()
    assert alternatives.locator(".tok-alt").count() >= 1
    page.screenshot(path=ARTIFACTS / "browser-inspect.png")

    button = alternatives.locator("button[data-action=alternative]").first
    chosen = button.locator(".alt-text").inner_text()
    prefix = "".join(tokens.nth(n).get_attribute("data-text") for n in range(2))
    button.click()
    expect(page.locator(".message-assistant .siblings").last).to_contain_text("2/2")
    wait_done(page)
    branch = last_reply(page)
    assert branch.get_attribute("data-raw").startswith(prefix + chosen)
    assert branch.get_attribute("data-raw") != first_text
    page.screenshot(path=ARTIFACTS / "browser-inspect-branch.png")


def test_the_attention_page_draws_both_heatmaps(page, server):
    choose_model(page, "tiny")
    send(page, "what do you like to do on the weekend?")
    wait_done(page)

    last_reply(page).locator("a:text-is('Attention')").click()
    expect(page.locator("h1")).to_have_text("Attention of a reply")
    page.locator(".attention-tokens a.atok").filter(has_text=re.compile(r"\w")).nth(1).click()  # a word: a line
    # break's token may have no box of its own to click
    page.select_option("select[name=layer]", "1")
    page.select_option("select[name=head]", "0")
    page.click("text=Show")
    expect(page.locator(".attention-tokens .chosen")).to_have_count(1)
    images = page.locator("img.attention-image")
    expect(images).to_have_count(2)
    for n in range(2):
        # Each image is a forward pass and a matplotlib figure, the first of them importing matplotlib in the
        # server: on a busy 2-core machine that has taken more than expect's 5 s default.
        expect(images.nth(n)).to_have_js_property("complete", True, timeout=30000)
        assert images.nth(n).evaluate("img => img.naturalWidth") > 100
    assert "layer 1, head 0" in page.locator("h2").nth(1).inner_text()
    page.screenshot(path=ARTIFACTS / "browser-attention.png", full_page=True)
