"""The review queue in a real browser (Debian's Chromium, Playwright) against a real daphne server: a user
rates two answers (one with a correction); an admin makes a new account a reviewer in the admin; the
reviewer edits and approves one item and rejects the other; the admin exports a snapshot of approved items
only, which holds exactly the approved item with the reviewer's correction. Screenshots in artifacts/."""

import json

import pytest
from playwright.sync_api import expect

from tests.browser.pages import ARTIFACTS, PASSWORD, last_reply, send, wait_done, watch_for_policy_violations

pytestmark = [pytest.mark.live]

REVIEWER_PASSWORD = "review-pass-4821"


def logged_in(browser, server, username, password=PASSWORD):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.reports = watch_for_policy_violations(page)
    page.goto(f"{server}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def rate(page, thumbs, correction=""):
    reply = last_reply(page)
    if correction:
        reply.locator("button:text-is('Feedback…')").click()
        reply.locator("textarea[name=correction]").fill(correction)
        reply.locator("button:text-is('Save feedback')").click()
        expect(reply.locator(".chip:text-is('corrected')")).to_be_visible()
    reply.locator(f"button[aria-label='{thumbs}']").click()
    expect(reply.locator(f"button[aria-label='{thumbs}'][aria-pressed=true]")).to_be_visible()


def test_a_reviewer_approves_an_edited_item_and_rejects_another_and_a_snapshot_takes_only_the_approved(
    browser, server, page
):
    send(page, "name the capital of france")
    wait_done(page)
    rate(page, "Bad answer", correction="Paris is the capital of France.")
    send(page, "say something kind")
    expect(page.locator(".message-assistant")).to_have_count(2)
    wait_done(page)
    rate(page, "Good answer")

    admin = logged_in(browser, server, "root")
    admin.goto(f"{server}/admin/auth/user/add/")
    admin.fill("#id_username", "rita")
    admin.fill("#id_password1", REVIEWER_PASSWORD)
    admin.fill("#id_password2", REVIEWER_PASSWORD)
    admin.click("input[name=_save]")
    admin.wait_for_url("**/change/")
    admin.select_option("#id_groups_from", label="reviewer")
    admin.click("#id_groups_add")
    admin.select_option("#id_groups_to", label="user")
    admin.click("#id_groups_remove")  # rita reviews; she does not chat
    admin.click("input[name=_save]")
    expect(admin.locator(".messagelist")).to_contain_text("was changed successfully")

    rita = logged_in(browser, server, "rita", REVIEWER_PASSWORD)
    expect(rita.locator("h1")).to_have_text("Review queue")  # her role's home
    expect(rita.locator("#queue-counts")).to_contain_text("2 items wait for a review, of 2")
    rita.click("#review-next")
    expect(rita.locator("#reviewed-answer")).to_contain_text("name the capital of france")  # the echo model
    expect(rita.locator(".review-conversation")).to_contain_text("name the capital of france")
    expect(rita.locator("#review-rating")).to_have_text("thumbs down")
    expect(rita.locator("#id_correction")).to_have_value("Paris is the capital of France.")
    rita.fill("#id_correction", "Paris is the capital of France, on the Seine.")
    rita.screenshot(path=ARTIFACTS / "browser-review-item.png")
    rita.click("#approve")
    expect(rita.locator("#review-rating")).to_have_text("thumbs up")  # the next item, at once
    rita.click("#reject")
    expect(rita.locator("#queue-empty")).to_be_visible()
    expect(rita.locator("#my-decisions tbody tr")).to_have_count(2)
    expect(rita.locator("#my-decisions")).to_contain_text("edited")
    rita.screenshot(path=ARTIFACTS / "browser-review-queue.png")
    assert rita.reports == []
    rita.goto(f"{server}/")
    expect(rita.locator("#forbidden")).to_contain_text("none of its roles allows it")
    rita.reports.clear()  # the 403 just asked for, which the console reports

    admin.goto(f"{server}/admin/conversations/datasetsnapshot/add/")
    admin.select_option("#id_format", "sft")
    admin.check("#id_reviewed")
    admin.fill("#id_eval_fraction", "0")
    admin.click("input[type=submit]")
    card = json.loads(admin.locator(".field-pretty_card pre").inner_text())
    assert card["counts"]["train"] == 1 and card["filters"]["reviewed"] is True
    assert card["review"]["approved_only"] and card["review"]["reviewers"] == 1
    admin.screenshot(path=ARTIFACTS / "browser-review-snapshot.png")
    for other in (admin, rita):
        other.wait_for_timeout(100)
        assert other.reports == []
