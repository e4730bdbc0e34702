"""What a user does on the chat page, and what the browser tests watch on it.

The `server`, `browser` and `page` fixtures are in tests/browser/conftest.py."""

from tests import ROOT

ARTIFACTS = ROOT / "artifacts"
PASSWORD = "browser-pass-123"
SERVER_LOG = []  # the live server's log file, once it runs


def watch_for_policy_violations(page):
    """What the page reports against the Content-Security-Policy, its console errors and warnings
    (but the admin's missing /favicon.ico) and its script errors, from the first document it loads on."""
    reports = []
    page.expose_function("__reportViolation", lambda text: reports.append(text))
    page.add_init_script("""document.addEventListener("securitypolicyviolation", (e) => window.__reportViolation(
        `${e.effectiveDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`));""")
    page.on(
        "console",
        lambda m: (
            reports.append(f"console {m.type}: {m.text} ({m.location['url']})")
            if m.type in ("error", "warning") and not m.location["url"].endswith("/favicon.ico")
            else None
        ),
    )
    page.on("pageerror", lambda error: reports.append(f"script error: {error}"))
    return reports


def send(page, text):
    page.fill("#composer-input", text)
    page.keyboard.press("Enter")


def last_reply(page):
    return page.locator(".message-assistant").last


def wait_done(page, timeout=30000):
    try:
        page.wait_for_selector('.message-assistant:last-child:not([data-status="streaming"])', timeout=timeout)
    except Exception:  # say what the page and the server were doing
        page.screenshot(path=ARTIFACTS / "browser-timeout.png")
        messages = page.locator(".message").evaluate_all("ms => ms.map(m => [m.className, m.dataset.status])")
        server_log = SERVER_LOG[0].read_text(errors="replace")[-3000:] if SERVER_LOG else ""
        error = page.locator("#chat-error").text_content()
        raise AssertionError(
            f"no finished reply; messages: {messages}; error box: {error!r}\nserver log:\n{server_log}"
        ) from None


def choose_model(page, label):
    page.select_option("#model select", label=label)
    page.wait_for_timeout(300)
