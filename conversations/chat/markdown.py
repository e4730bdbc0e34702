"""Assistant replies as safe HTML: markdown-it-py -> Pygments -> nh3 allow-list.

Model output is untrusted: a model can be prompted into writing `<script>`,
event handlers, `javascript:` links or tracking images (Open WebUI and FastChat
shipped stored XSS this way). So raw HTML in the markdown is not rendered at all,
and whatever HTML the renderer produces passes an allow-list sanitizer: no
scripts, no event handlers, no iframes or SVG, only http(s)/mailto links (with
rel="noopener noreferrer nofollow"), and no images: a remote image would load
by itself and could leak the conversation, so it becomes a plain link.

No `style` attribute either: the Content-Security-Policy blocks inline styles, so a
table column's alignment becomes one of the ALIGN_CLASSES (static/chatsite/chat.css).

A finished answer is rendered once: its HTML is stored with it (`Message.html`, `reasoning_html`), with
the name of the renderer that made it (`RENDERER`: this file's own version and its libraries'). A page
shows the stored HTML; a message rendered by another renderer (or never) is rendered again when shown
(`html_of`) and stored again by the page (`store_rendered`), so a long conversation's page does not
render hundreds of answers on every view.
"""

from importlib.metadata import version

import nh3
import pygments
from markdown_it import MarkdownIt
from markdown_it import __version__ as markdown_it_version
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.util import ClassNotFound

ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    "strong",
    "em",
    "del",
    "s",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "a",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "span",
    "div",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "span": {"class"},
    "div": {"class", "data-language"},
    "code": {"class"},
    "ol": {"start"},
}
ALIGN_CLASSES = {"left": "align-left", "center": "align-center", "right": "align-right"}
ALLOWED_CLASSES = {"th": set(ALIGN_CLASSES.values()), "td": set(ALIGN_CLASSES.values())}
_FORMATTER = HtmlFormatter(nowrap=True)


def _highlight(code, language, _attrs):
    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return highlight(code, lexer, _FORMATTER)


def _image_as_link(self, tokens, idx, options, env):
    token = tokens[idx]
    src = token.attrGet("src") or ""
    alt = self.renderInlineAsText(token.children or [], options, env) or src
    return f'<a href="{nh3.clean_text(src)}">[image: {nh3.clean_text(alt)}]</a>'


def _fence(self, tokens, idx, options, env):
    token = tokens[idx]
    language = token.info.strip().split(" ")[0] if token.info else ""
    body = _highlight(token.content, language, None)
    label = nh3.clean_text(language or "text")
    return f'<div class="code-block" data-language="{label}"><pre><code class="highlight">{body}</code></pre></div>\n'


def _table_cell(self, tokens, idx, options, env):
    """A cell of an aligned column: markdown-it's `style="text-align:…"` becomes a class."""
    attrs = tokens[idx].attrs
    style = attrs.pop("style", None)
    if style:
        attrs["class"] = ALIGN_CLASSES[style.removeprefix("text-align:")]
    return self.renderToken(tokens, idx, options, env)


_md = (
    MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    .enable("table")
    .enable("strikethrough")
)
_md.add_render_rule("image", _image_as_link)
_md.add_render_rule("fence", _fence)
_md.add_render_rule("code_block", _fence)
_md.add_render_rule("th_open", _table_cell)
_md.add_render_rule("td_open", _table_cell)


def render_markdown(text):
    """Sanitized HTML for an assistant reply (safe to mark safe in a template)."""
    html = _md.render(text or "")
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        allowed_classes=ALLOWED_CLASSES,
        strip_comments=True,
    )


# Change the first part whenever what this file renders changes: every stored answer is rendered again.
RENDERER = f"chatsite-md-1 markdown-it-py-{markdown_it_version} nh3-{version('nh3')} pygments-{pygments.__version__}"


def html_of(message):
    """(answer HTML, reasoning HTML) of a finished message: stored, or rendered now (on the instance, not
    saved) where the stored ones are another renderer's."""
    if message.rendered_with != RENDERER:
        message.html = render_markdown(message.content)
        message.reasoning_html = render_markdown(message.reasoning) if message.reasoning else ""
        message.rendered_with = RENDERER
    return message.html, message.reasoning_html


def store_rendered(messages):
    """Render the finished assistant messages among `messages` whose HTML is not this renderer's, and store it
    (one query for them all; none when every one is current)."""
    stale = [
        message
        for message in messages
        if message.role == message.Role.ASSISTANT
        and message.status != message.Status.STREAMING
        and message.rendered_with != RENDERER
    ]
    for message in stale:
        html_of(message)
    if stale:
        type(stale[0]).objects.bulk_update(stale, ["html", "reasoning_html", "rendered_with"], batch_size=len(stale))
