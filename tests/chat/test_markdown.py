"""Assistant markdown is rendered, highlighted and sanitized; nothing a model writes can run."""

import pytest

from conversations.chat.markdown import ALLOWED_ATTRIBUTES, ALLOWED_TAGS, render_markdown
from tests.factories import add_reply
from tests.markup import HOSTILE, Elements


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_markdown_renders_nothing_that_runs_or_loads(payload):
    for tag, attrs in Elements(render_markdown(payload)).found:
        assert tag in ALLOWED_TAGS
        assert not [name for name in attrs if name.startswith("on") or name in ("style", "src")]
        if "href" in attrs:
            assert attrs["href"].startswith(("http://", "https://", "mailto:"))


def test_links_get_noopener_noreferrer_nofollow():
    html = render_markdown("[docs](https://example.com/a)")
    assert '<a href="https://example.com/a" rel="noopener noreferrer nofollow">docs</a>' in html


def test_images_become_links_so_nothing_loads_by_itself():
    html = render_markdown("![a cat](https://img.example/cat.png)")
    assert "<img" not in html
    assert '<a href="https://img.example/cat.png" rel="noopener noreferrer nofollow">[image: a cat]</a>' in html


def test_fenced_code_is_highlighted_and_escaped():
    html = render_markdown("```python\nif a < b:\n    print('<b>')\n```")
    assert 'class="code-block" data-language="python"' in html
    assert '<span class="k">if</span>' in html
    assert "&lt;b&gt;" in html and "<b>" not in html


def test_common_markdown_renders():
    html = render_markdown("# Title\n\n**bold** _it_ ~~gone~~\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    for fragment in [
        "<h1>Title</h1>",
        "<strong>bold</strong>",
        "<em>it</em>",
        "<s>gone</s>",
        "<li>one</li>",
        "<td>1</td>",
    ]:
        assert fragment in html


def test_table_alignment_becomes_a_class_not_an_inline_style_the_policy_would_block():
    html = render_markdown("| l | c | r | n |\n|:--|:-:|--:|---|\n| 1 | 2 | 3 | 4 |")
    aligned = [{"class": "align-left"}, {"class": "align-center"}, {"class": "align-right"}, {}]
    cells = [(tag, attrs) for tag, attrs in Elements(html).found if tag in ("th", "td")]
    assert cells == [("th", attrs) for attrs in aligned] + [("td", attrs) for attrs in aligned]
    assert "style=" not in html and not [tag for tag, names in ALLOWED_ATTRIBUTES.items() if "style" in names]


def test_the_page_renders_finished_replies_as_markdown_and_user_text_as_text(owner_client, conversation):
    conversation.add_user_message("**not bold** <b>raw</b>")
    add_reply(conversation, "**bold** <script>x()</script>")
    page = owner_client.get(conversation.get_absolute_url()).content.decode()
    assert "**not bold** &lt;b&gt;raw&lt;/b&gt;" in page
    assert "<strong>bold</strong>" in page and "<script>x()" not in page
